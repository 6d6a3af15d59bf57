"""The checks of lab 03 (routing between nodes, host-gw) against the real kernel (root).

A cluster `hostgw` is set up the way the notebook's first cells do it (the two pods applied, the
host-gw routes between the two workers deleted); then the reference solutions run one exercise
at a time, and tests break one thing on purpose and expect the hint to name it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, explain, lab_state

from lab_kit.cluster import Cluster

pytestmark = pytest.mark.root

LAB_ID = "03-routing-between-nodes"
STEPS = [("route-there", ["route-there"]), ("route-back", ["routes"]),
         ("next-hop", ["next-hop"]), ("on-link", ["on-link"])]


class Lab03(LabDriver):
    """The notebook's setup cells, its names (`W1`, `A`, `W2_CIDR`, …) and its checks."""

    lab_id = LAB_ID
    answer_names = ("next_hop", "wire_src", "wire_dst", "kernel_error", "vxlan_answer")
    aliases = {"w1": "W1", "w2": "W2", "cp": "CP", "a": "A", "b": "B"}

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/hostgw.yaml", replace=True)
        c.apply("manifests/cross-node-pods.yaml")
        nodes = {n.name: n for n in c.nodes()}
        w1, w2 = nodes["hostgw-worker"], nodes["hostgw-worker2"]
        self.ns: dict[str, Any] = {
            "c": c, "W1": c.node(w1.name), "W2": c.node(w2.name), "CP": c.node(
                "hostgw-control-plane"), "A": c.pod("pod-a"), "B": c.pod("pod-b"),
            "W1_IP": w1.ip, "W1_CIDR": w1.pod_cidr, "W2_IP": w2.ip, "W2_CIDR": w2.pod_cidr}
        # the notebook's "without the host-gw routes" cell
        self.w1.sh(f"ip route del {w2.pod_cidr} via {w2.ip} dev eth0")
        self.w2.sh(f"ip route del {w1.pod_cidr} via {w1.ip} dev eth0")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab03]:
    with lab_state(LAB_ID, "lkhg", tmp_path, monkeypatch):
        yield Lab03()


def _wait_reachable(node: Any, ip: str) -> None:
    """Wait until `node` pings `ip`: a next hop the node has not used yet is first resolved
    with ARP, and the probe right after a route change must not race that."""
    node.sh(f"timeout 5 bash -c 'until ping -c 1 -W 0.2 {ip} >/dev/null; do :; done'")


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS)


def test_the_missing_return_route_is_named(lab):
    lab.solve("route-there")
    assert lab.one("route-there").passed
    # the way there works, the replies do not: the check says so and names the other node
    assert not lab.c.probe("pod-a", "pod-b", timeout=0.5).ok
    r = lab.one("routes")
    assert "no route back" in r.message and "pod-b's replies" in r.message, r.summary()
    assert "return traffic" in r.hint and f'W2.sh("ip route add {lab.W1_CIDR} via ' \
        f'{lab.W1_IP} dev eth0")' in r.hint, r.summary()
    lab.w2.sh(f"ip route add {lab.W1_CIDR} via {lab.W1_IP} dev eth0")
    assert lab.one("routes").passed


def test_wrong_next_hops_are_named(lab):
    w2_cidr, fix = lab.W2_CIDR, f"ip route replace {lab.W2_CIDR} via {lab.W2_IP} dev eth0"
    lab.solve("route-back")
    cp_ip = next(n.ip for n in lab.c.nodes() if n.name == "hostgw-control-plane")
    # via the control plane: a detour, and not host-gw. The control plane forwards the SYN,
    # but the SYN-ACK comes straight back from hostgw-worker2: the control plane's conntrack
    # sees the handshake's ACK without the SYN-ACK, calls it INVALID, and kube-proxy's
    # KUBE-FORWARD drops it (as on a real kube-proxy node), so the connection never completes
    lab.w1.sh(f"ip route add {w2_cidr} via {cp_ip} dev eth0")
    _wait_reachable(lab.w1, cp_ip)
    assert not lab.c.probe("pod-a", "pod-b", timeout=0.5).ok
    dropped = lab.c.node("hostgw-control-plane").sh("iptables -L KUBE-FORWARD -v -x -n")
    invalid = next(ln for ln in dropped.splitlines() if "INVALID" in ln)
    assert int(invalid.split()[0]) > 0, dropped
    for name in ("route-there", "routes"):
        r = lab.one(name)
        assert "hostgw-control-plane" in r.message and "detour" in r.message, r.summary()
        assert fix in r.hint, r.summary()
    # via the node's own address: the kernel takes it
    lab.w1.sh(f"ip route replace {w2_cidr} via {lab.W1_IP} dev eth0")
    r = lab.one("routes")
    assert "OWN address" in r.message and fix in r.hint, r.summary()
    # via an underlay address no node has: ARP fails
    lab.w1.sh(f"ip route replace {w2_cidr} via 172.18.0.50 dev eth0")
    lab.c.probe("pod-a", "pod-b", timeout=0.5)
    r = lab.one("route-there")
    assert "no node has 172.18.0.50" in r.message and "neighbour entry" in r.message, r.summary()
    # a route without a next hop
    lab.w1.sh(f"ip route replace {w2_cidr} dev eth0")
    r = lab.one("route-there")
    assert "ARPs for it" in r.message, r.summary()
    # only pod-b's /32
    lab.w1.sh(f"ip route del {w2_cidr}")
    lab.w1.sh(f"ip route add {lab.B.ip} via {lab.W2_IP} dev eth0")
    assert lab.c.probe("pod-a", "pod-b").ok
    r = lab.one("routes")
    assert "whole of" in r.message and f"ip route del {lab.B.ip}/32" not in r.hint, r.summary()
    assert f"ip route del {lab.B.ip} via {lab.W2_IP} dev eth0" in r.hint, r.summary()
    lab.w1.sh(f"ip route del {lab.B.ip} via {lab.W2_IP} dev eth0")
    lab.w1.sh(fix)
    assert lab.one("routes").passed


def test_a_route_on_the_wrong_node_is_named(lab):
    lab.solve("route-there")
    # the return route typed on hostgw-worker with `replace`: it overwrites cni0's route
    lab.w1.sh(f"ip route replace {lab.W1_CIDR} via {lab.W1_IP} dev eth0")
    r = lab.one("routes")
    assert "OWN pods" in r.message and "wrong node" in r.message, r.summary()
    assert "restore it with W1.sh(" in r.hint, r.summary()
    restore = r.hint.split("restore it with W1.sh(\"", 1)[1].split("\")", 1)[0]
    lab.w1.sh(restore)
    r = lab.one("routes")
    assert "no route back" in r.message, r.summary()
    lab.solve("route-back")
    assert lab.one("routes").passed


def test_route_there_typed_on_the_wrong_node_is_named(lab):
    # hostgw-worker's route, typed on hostgw-worker2 with `replace`
    lab.w2.sh(f"ip route replace {lab.W2_CIDR} via {lab.W2_IP} dev eth0")
    r = lab.one("route-there")
    assert "hostgw-worker2's route to its OWN pods" in r.message, r.summary()
    assert "wrong node" in r.message and "restore it with W2.sh(" in r.hint, r.summary()
    lab.w2.sh(r.hint.split("restore it with W2.sh(\"", 1)[1].split("\")", 1)[0])
    r = lab.one("route-there")
    assert "hostgw-worker has no route" in r.message and "W1.sh(" in r.hint, r.summary()
    lab.solve("route-there")
    assert lab.one("route-there").passed


def test_ip_forwarding_off_is_named(lab):
    lab.solve("route-there", "route-back")
    lab.w2.sh("sysctl -q -w net.ipv4.ip_forward=0")
    r = lab.one("routes")
    assert "hostgw-worker2 does not forward" in r.message and "ip_forward=1" in r.hint
    lab.w2.sh("sysctl -q -w net.ipv4.ip_forward=1")
    assert lab.one("routes").passed


def test_next_hop_hints(lab):
    r = lab.one("next-hop", next_hop="172.18.0.4")
    assert "no next hop" in r.message and "exercise 1" in r.hint, r.summary()
    lab.solve("route-there", "route-back", "next-hop")
    a, b, w1_ip, w2_ip = lab.A.ip, lab.B.ip, lab.W1_IP, lab.W2_IP
    good = {"next_hop": w2_ip, "wire_src": a, "wire_dst": b}
    cases = [
        ({"next_hop": ""}, "`next_hop` is empty", "ip route get"),
        ({"next_hop": "node two"}, "not an IPv4 address", "next_hop = "),
        ({"next_hop": b}, "where the packet is going", "via NEXT_HOP"),
        ({"next_hop": "10.244.1.1"}, "FIRST hop", "via NEXT_HOP"),
        ({"wire_dst": w2_ip}, "does NOT rewrite", "capture"),
        ({"wire_src": w1_ip}, "does NOT rewrite", "capture"),
        ({"wire_src": b, "wire_dst": a}, "packet's destination", "swapped"),
        ({"wire_dst": "10.244.2.77"}, "not an address", "c.get_pods()"),
    ]
    for change, words, hint in cases:
        r = lab.one("next-hop", **{**good, **change})
        assert not r.passed and words in r.message and hint in r.hint, (change, r.summary())
    assert lab.one("next-hop", next_hop=f" {w2_ip}/16 ", wire_src=f"{a}/24", wire_dst=b).passed


def test_next_hop_truth_comes_from_the_kernel(lab):
    lab.solve("route-there", "route-back")
    cp_ip = next(n.ip for n in lab.c.nodes() if n.name == "hostgw-control-plane")
    lab.w1.sh(f"ip route replace {lab.W2_CIDR} via {cp_ip} dev eth0")
    answers = {"wire_src": lab.A.ip, "wire_dst": lab.B.ip}
    assert lab.one("next-hop", next_hop=cp_ip, **answers).passed
    r = lab.one("next-hop", next_hop=lab.W2_IP, **answers)
    assert not r.passed and "hostgw-worker2's underlay address" in r.message, r.summary()


def test_on_link_hints(lab):
    lab.solve("route-there", "route-back", "next-hop")
    good = "it wraps the pod packet in UDP between the nodes"
    r = lab.one("on-link", vxlan_answer=good)
    assert "`kernel_error` is empty" in r.message and "check=False" in r.hint, r.summary()
    # a destination that already has a route: the kernel never looks at the next hop
    out = lab.w1.sh(f"ip route add {lab.W2_CIDR} via {lab.W2_IP} dev eth0", check=False)
    assert "File exists" in out
    r = lab.one("on-link", kernel_error=out, vxlan_answer=good)
    assert "File exists" in r.message and "10.244.7.0/24" in r.hint, r.summary()
    r = lab.one("on-link", kernel_error="it did not work", vxlan_answer=good)
    assert "not the kernel's answer" in r.message, r.summary()
    # an on-link next hop no node has: accepted, so no error to read
    lab.w1.sh("ip route add 10.244.7.0/24 via 172.18.0.77 dev eth0")
    r = lab.one("on-link", kernel_error="", vxlan_answer=good)
    assert "no node" in r.message and "on-link" in r.message, r.summary()
    assert 'W1.sh("ip route del 10.244.7.0/24")' in r.hint, r.summary()
    lab.w1.sh("ip route del 10.244.7.0/24")
    # forced with onlink
    lab.w2.sh("ip route add 10.244.7.0/24 via 192.168.7.3 dev eth0 onlink")
    r = lab.one("on-link", kernel_error="", vxlan_answer=good)
    assert "`onlink`" in r.message and "hostgw-worker2" in r.message, r.summary()
    assert r.hint.startswith('delete it (W2.sh("ip route del 10.244.7.0/24"))'), r.summary()
    lab.w2.sh("ip route del 10.244.7.0/24")
    # a next hop that is on-link, but on another link than the one named: not the point
    out = lab.w1.sh(f"ip route add 10.244.7.0/24 via {lab.W2_IP} dev cni0", check=False)
    assert "invalid gateway" in out
    r = lab.one("on-link", kernel_error=out, vxlan_answer=good)
    assert f"{lab.W2_IP} IS on-link" in r.message and "`dev cni0`" in r.message, r.summary()
    assert "192.168.7.3" in r.hint, r.summary()
    lab.solve("on-link")
    for wrong, words in (("it uses NAT", "NAT rewrites"), ("more routes", "ARP"),
                         ("", "empty"), ("magic", "not what the vxlan backend changes")):
        r = lab.one("on-link", vxlan_answer=wrong)
        assert not r.passed and words in r.message, (wrong, r.summary())
        assert r.hint, r.summary()
    for right in ("VXLAN encapsulation", "a tunnel between the nodes", "Encapsulates in UDP",
                  "puts the pod's packet inside another packet addressed to the node"):
        assert lab.one("on-link", vxlan_answer=right).passed, right
    assert lab.run().all_passed, explain(lab.run())


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name)
        assert not r.passed and "cluster" in r.hint, r.summary()
