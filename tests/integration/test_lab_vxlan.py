"""Lab 04 (the VXLAN overlay): its checks against the real kernel, without a notebook (root).

The notebook's flow is replayed: the `vxlan` cluster with its pods, the capture exercise, the
cluster rebuilt with pods at MTU 1500 (`clusters/vxlan-mtu.yaml`) and fixed, then one overlay
entry broken and repaired; the reference solutions (tests/notebooks/solutions/04-vxlan-overlay.py)
are exec'd with the names the notebook defines. Further tests break one thing on purpose and
expect the check's message and hint to name it. The cluster uses the lab's own name (`vxlan`):
a learner's cluster of that name on this machine is replaced.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, explain, lab_state

from lab_kit.backends import vtep_ip, vtep_mac
from lab_kit.checks import CheckResult
from lab_kit.cluster import Cluster
from lab_kit.errors import LabError
from lab_kit.labs import get_lab
from lab_kit.labs.vxlan import ICMP_FILTER, break_overlay, icmp_filter_present, overlay_path

pytestmark = pytest.mark.root

LAB_ID = "04-vxlan-overlay"
LAB = get_lab(LAB_ID)
ANSWERS = ("cap_reply", "outer_src", "udp_dport", "vni")
NODES = {"NODE_A": "vxlan-worker", "NODE_B": "vxlan-worker2", "NODE_C": "vxlan-control-plane"}
PODS = {"POD_A": "web-a", "POD_B": "web-b", "POD_C": "web-c"}


class Lab04(LabDriver):
    """The lab's cluster, the names the notebook defines, and its checks."""

    lab_id = LAB_ID
    answer_names = ANSWERS

    def __init__(self) -> None:
        super().__init__()
        self.ns.update(Cluster=Cluster, NODES=tuple(NODES.values()))
        self.up("clusters/vxlan.yaml")

    def up(self, config: str) -> Cluster:
        """What the notebook's cluster cells do: build, apply the pods, define the names."""
        c = Cluster.up(config, replace=True)
        c.apply("manifests/overlay-pods.yaml")
        self.ns["c"] = c
        self.ns.update({k: c.node(v) for k, v in NODES.items()})
        self.ns.update({k: c.pod(v) for k, v in PODS.items()})
        return c

    def sh(self, shell: str, command: str) -> str:
        return self.ns[shell].sh(command)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab04]:
    with lab_state(LAB_ID, "lkvx", tmp_path, monkeypatch):
        yield Lab04()


def test_the_notebook_flow_fails_before_and_passes_after_each_exercise(lab: Lab04) -> None:
    assert list(LAB.checks) == ["reply-headers", "pod-mtu", "no-black-hole", "overlay-entries",
                                "cross-node"]
    assert list(lab.solutions) == ["capture-reply", "fix-mtu", "repair-overlay"]
    # a fresh, correct cluster: only the capture exercise is still to do
    fresh = lab.run()
    assert [r.name for r in fresh if not r.passed] == ["reply-headers"], explain(fresh)
    assert "no capture" in fresh[0].message and "c.capture(" in fresh[0].hint

    lab.solve("capture-reply")
    assert lab.one("reply-headers").passed

    # part 3: the same cluster with pods at 1500
    lab.up("clusters/vxlan-mtu.yaml")
    for name in ("pod-mtu", "no-black-hole"):
        r = lab.one(name)
        assert not r.passed, r.summary()
        for words in ("50 bytes", "mtu: 1500", "clusters/vxlan.yaml"):
            assert words in r.hint, r.summary()
    assert "MTU 1500" in lab.one("pod-mtu").message
    r = lab.one("no-black-hole")
    assert "timed out" in r.message and "added the ICMP filter" in r.message, r.summary()
    assert not any(icmp_filter_present(n.netns) for n in lab.c.nodes()), "filter left behind"
    assert lab.one("reply-headers").passed  # node IPs and pod names survive the rebuild

    lab.solve("fix-mtu")
    assert lab.one("pod-mtu").passed and lab.one("no-black-hole").passed

    # part 4: one FDB entry gone
    break_overlay(lab.c)
    assert "bridge fdb del" in str(lab.c.journal(last=1))
    for name in ("overlay-entries", "cross-node"):
        r = lab.one(name)
        assert not r.passed and r.hint, r.summary()
    r = lab.one("overlay-entries")
    assert "vxlan-worker2 has no FDB entry" in r.message, r.summary()
    assert 'NODE_B.sh("bridge fdb replace' in r.hint and "self permanent" in r.hint
    r = lab.one("cross-node")
    assert "web-a→web-b" in r.message and "web-b→web-a" in r.message, r.summary()
    assert "web-c" not in r.message
    path = overlay_path(lab.c, "web-b", "web-a")
    assert not path.ok and path.steps[-1].table == "FDB" and not path.steps[-1].entry
    assert overlay_path(lab.c, "web-a", "web-b").ok  # the other direction is fine

    lab.solve("repair-overlay")
    final = lab.run()
    assert final.all_passed, explain(final)


def test_reply_headers_hints_name_the_mistake(lab: Lab04) -> None:
    lab.solve("capture-reply")
    right = {k: lab.ns[k] for k in ANSWERS}
    b, c_ = lab.c.pod("web-b"), lab.c.pod("web-c")
    ip = {n.name: n.ip for n in lab.c.nodes()}
    cases = {
        "outer_src": {b.ip: "inner source", c_.ip: "inner destination",
                      ip["vxlan-control-plane"]: "outer *destination*",
                      ip["vxlan-worker"]: "never crosses", "10.9.9.9": "neither"},
        "vni": {8472: "not the VNI", 0: "not the VNI"},
    }
    for key, wrong in cases.items():
        for value, words in wrong.items():
            r = lab.one("reply-headers", **{key: value})
            assert not r.passed and words in r.message and r.hint, (key, value, r.summary())
    answer = next(p for p in right["cap_reply"] if p.layer("IPv4", -1)["src"] == b.ip)
    r = lab.one("reply-headers", udp_dport=answer.layer("UDP")["sport"])
    assert "*source* port" in r.message and "hash" in r.message, r.summary()
    r = lab.one("reply-headers", udp_dport=None)
    assert "udp_dport" in r.message and "layers(" in r.hint, r.summary()
    # strings as a learner might type them
    assert lab.one("reply-headers", udp_dport="8472", vni=" 1 ").passed
    # the pcap file instead of the Capture (the CLI's way)
    assert lab.one("reply-headers", cap_reply=str(right["cap_reply"].pcap)).passed
    # the right exchange, but captured where it is not wrapped
    plain = lab.c.capture("vxlan-control-plane", interface="flannel.1",
                          during=lambda: lab.c.probe("web-c", "web-b"))
    r = lab.one("reply-headers", cap_reply=plain)
    assert "without its VXLAN wrapping" in r.message and "eth0" in r.hint, r.summary()
    # a capture of some other exchange
    other = lab.c.capture("vxlan-worker", interface="eth0", filter="udp port 8472",
                          during=lambda: lab.c.probe("web-a", "web-c"))
    r = lab.one("reply-headers", cap_reply=other)
    assert "no packet from web-b" in r.message and "during" in r.hint, r.summary()


def test_mtu_checks_hints_and_cleanup(lab: Lab04) -> None:
    # the kernel refuses a VXLAN MTU above its underlay's minus 50 ...
    with pytest.raises(Exception, match="Invalid argument"):
        lab.sh("NODE_A", "ip link set flannel.1 mtu 1500")
    # ... but not an underlay that shrinks later (Flannel reads it only at start)
    lab.sh("NODE_A", "ip link set eth0 mtu 1400")
    r = lab.one("pod-mtu")
    assert "flannel.1 on vxlan-worker has MTU 1450" in r.message, r.summary()
    assert 'NODE_A.sh("ip link set flannel.1 mtu 1350")' in r.hint
    lab.sh("NODE_A", "ip link set eth0 mtu 1500")
    assert lab.one("pod-mtu").passed

    # a filter the learner (or the notebook) put in place stays; one the check adds goes
    lab.sh("NODE_B", "iptables -I OUTPUT " + " ".join(ICMP_FILTER))
    assert icmp_filter_present(lab.ns["NODE_B"].netns)
    r = lab.one("no-black-hole")
    assert r.passed and "added the ICMP filter on 2 of 3 nodes" in r.message, r.summary()
    present = {n.name: icmp_filter_present(n.netns) for n in lab.c.nodes()}
    assert present == {"vxlan-control-plane": False, "vxlan-worker": False,
                       "vxlan-worker2": True}

    # pods at 1500 by hand on a cluster whose config is right: the hint says so
    for pod in ("POD_A", "POD_B", "POD_C"):
        lab.sh("NODE_A", f"ip -n {lab.ns[pod].netns} link set eth0 mtu 1500")
    r = lab.one("pod-mtu")
    assert not r.passed and "raised by hand" in r.hint, r.summary()

    # pods at 1500 from the config; the path MTU they learned while ICMP still flowed must not
    # hide the black hole: the check flushes it before measuring
    lab.up("clusters/vxlan-mtu.yaml")
    r = lab.c.probe("web-a", "web-b", 8080, path="/echo?msg=" + "x" * 5000, timeout=2)
    assert r.ok, r
    assert "mtu 1450" in lab.sh("POD_A", f"ip route get {lab.ns['POD_B'].ip}")
    r = lab.one("no-black-hole")
    assert not r.passed and "timed out" in r.message, r.summary()

    # pods fixed by hand on the 1500 cluster: it passes, and says the config is still wrong
    for pod in ("POD_A", "POD_B", "POD_C"):
        lab.sh("NODE_A", f"ip -n {lab.ns[pod].netns} link set eth0 mtu 1450")
    r = lab.one("pod-mtu")
    assert r.passed and "next pod" in r.message, r.summary()
    assert lab.one("no-black-hole").passed


def _neighbour(lab: Lab04, shell: str, ip: str) -> dict[str, Any]:
    return next(n for n in json.loads(lab.sh(shell, "ip -j neigh show dev flannel.1"))
                if n["dst"] == ip)


def test_overlay_entries_hints_name_the_mistake(lab: Lab04) -> None:
    conf = lab.c.config
    w1, w2, cp = (conf.node(n) for n in ("vxlan-worker", "vxlan-worker2", "vxlan-control-plane"))

    def fails_with(*words: str) -> CheckResult:
        r = lab.one("overlay-entries")
        assert not r.passed, r.summary()
        for w in words:
            assert w in r.message + " | " + r.hint, (w, r.summary())
        return r

    # the neighbour entry gone: the kernel tries to ARP through the tunnel and fails
    lab.sh("NODE_A", f"ip neigh del {vtep_ip(w2)} dev flannel.1")
    assert not lab.c.probe("web-a", "web-b", timeout=0.5)
    assert "INCOMPLETE" in lab.sh("NODE_A", "ip neigh show dev flannel.1") or \
        "FAILED" in lab.sh("NODE_A", "ip neigh show dev flannel.1")
    path = overlay_path(lab.c, "web-a", "web-b")
    assert path.steps[-1].table == "neighbour" and not path.steps[-1].ok
    fails_with("vxlan-worker has no MAC for VTEP 10.244.2.0",
               f'NODE_A.sh("ip neigh replace 10.244.2.0 lladdr {vtep_mac(w2)} dev flannel.1 '
               'nud permanent")')
    # a neighbour entry with the wrong MAC (ip neigh replace is permanent by default)
    lab.sh("NODE_A", f"ip neigh replace {vtep_ip(w2)} lladdr {vtep_mac(cp)} dev flannel.1")
    fails_with("neighbour entry for VTEP 10.244.2.0 is not Flannel's")
    # the right MAC, but not permanent
    lab.sh("NODE_A", f"ip neigh replace {vtep_ip(w2)} lladdr {vtep_mac(w2)} dev flannel.1 "
                     "nud reachable")
    assert "REACHABLE" in _neighbour(lab, "NODE_A", vtep_ip(w2))["state"]
    fails_with("not Flannel's", "nud permanent")
    lab.sh("NODE_A", f"ip neigh replace {vtep_ip(w2)} lladdr {vtep_mac(w2)} dev flannel.1 "
                     "nud permanent")
    assert lab.one("overlay-entries").passed

    # an FDB entry pointing at the wrong node: the frame reaches a node that is not its VTEP
    lab.sh("NODE_C", f"bridge fdb replace {vtep_mac(w1)} dev flannel.1 dst {w2.ip} self "
                     "permanent")
    fails_with("vxlan-control-plane's FDB entry for", f"dst {w1.ip} self permanent")
    assert not overlay_path(lab.c, "web-c", "web-a").ok
    lab.sh("NODE_C", f"bridge fdb replace {vtep_mac(w1)} dev flannel.1 dst {w1.ip} self "
                     "permanent")
    # a flood entry Flannel never programs
    lab.sh("NODE_C", f"bridge fdb append 00:00:00:00:00:00 dev flannel.1 dst {w1.ip}")
    fails_with("flood entry", f"bridge fdb del 00:00:00:00:00:00 dev flannel.1 dst {w1.ip} self")
    lab.sh("NODE_C", f"bridge fdb del 00:00:00:00:00:00 dev flannel.1 dst {w1.ip} self")

    # the route gone: the node has no way to the other pods
    lab.sh("NODE_B", f"ip route del {w1.pod_cidr}")
    fails_with(f"vxlan-worker2 has no route to {w1.pod_cidr}",
               f"ip route replace {w1.pod_cidr} via {vtep_ip(w1)} dev flannel.1 onlink")
    assert overlay_path(lab.c, "web-b", "web-a").steps[0].ok is False
    lab.sh("NODE_B", f"ip route replace {w1.pod_cidr} via {vtep_ip(w1)} dev flannel.1 onlink")
    assert lab.one("overlay-entries").passed

    # the device itself down
    lab.sh("NODE_C", "ip link set flannel.1 down")
    fails_with("flannel.1 on vxlan-control-plane is DOWN", 'NODE_C.sh("ip link set flannel.1 up")')
    r = lab.one("cross-node")
    assert not r.passed and "overlay_path" in r.hint, r.summary()
    lab.sh("NODE_C", "ip link set flannel.1 up")
    # down took the link's routes and neighbour entries with it: flanneld would program them
    # again, and so does the reference solution
    fails_with("vxlan-control-plane has no MAC for VTEP")
    lab.solve("repair-overlay")
    assert lab.one("overlay-entries").passed and lab.one("cross-node").passed


def test_checks_say_when_pods_are_missing(lab: Lab04) -> None:
    lab.c.delete(pod="web-b")
    for name in ("reply-headers", "pod-mtu", "no-black-hole", "cross-node"):
        r = lab.one(name)
        assert not r.passed and "web-b does not exist" in r.message, r.summary()
        assert "manifests/overlay-pods.yaml" in r.hint
    lab.c.apply("manifests/overlay-pods.yaml")
    lab.c.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-d"},
                  "spec": {"nodeName": "vxlan-worker", "containers": [{
                      "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                      "ports": [{"containerPort": 8080}]}]}}])
    with pytest.raises(LabError, match="both on vxlan-worker"):
        overlay_path(lab.c, "web-a", "web-d")
    assert LAB.run("cross-node", record=False).all_passed  # web-d is new: it is probed too
