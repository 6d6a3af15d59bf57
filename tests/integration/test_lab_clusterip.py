"""The checks of lab 07 (ClusterIP: kube-proxy's chains) against the real kernel (root).

A cluster `clusterip` is set up the way the notebook's cells do it: web's Deployment, Service and
the client pod applied, the long-lived connection from client port 40000 started, the broken
`api` app applied. Then the reference solutions run one exercise at a time, and further tests
make the mistakes a learner plausibly makes (an answer computed the wrong way, a workaround
instead of the fix) and expect the check to fail and its message to name the mistake.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.labs.clusterip import hash16, hold_command

pytestmark = pytest.mark.root

LAB_ID = "07-clusterip-kube-proxy"
STEPS = [("chain-names", ["chain-names"]), ("which-endpoint", ["which-endpoint"]),
         ("scale", ["scale"]), ("spread", ["spread"]), ("fix-api", ["fix-api"]),
         ("hairpin", ["hairpin"])]
SPN = "default/web:http"


def manifest(path: str, kind: str) -> dict[str, Any]:
    with open(path) as f:
        return next(d for d in yaml.safe_load_all(f) if d["kind"] == kind)


class Lab07(LabDriver):
    """The notebook's setup cells, its names (`CLIENT`, `NODE`, `VIP`, `WEB`, `ME`, `API_VIP`)
    and its checks."""

    lab_id = LAB_ID
    answer_names = ("svc_chain", "sep_chain", "endpoint_pod", "counts", "p_first", "seen_as")

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/clusterip.yaml", replace=True)
        c.apply("manifests/clusterip-web.yaml")
        client = c.pod("client")
        vip = c.service("web")["spec"]["clusterIP"]
        web = sorted(p.name for p in c.pods() if p.owner == "Deployment/web")
        self.ns: dict[str, Any] = {"c": c, "CLIENT": client, "NODE": c.node(client.node),
                                   "VIP": vip, "WEB": web, "ME": c.pod(web[0])}
        self.hold()
        c.apply("manifests/clusterip-api.yaml")
        self.ns["API_VIP"] = c.service("api")["spec"]["clusterIP"]

    def hold(self) -> None:
        """The notebook's cell that starts the long-lived connection."""
        self.ns["CLIENT"].sh(hold_command(self.ns["VIP"]))
        self.ns["CLIENT"].sh("timeout 5 bash -c 'until ss -tnH state established "
                             "sport = :40000 | grep -q .; do sleep 0.05; done'")

    def held_pid(self) -> int:
        """The pid of the client pod's socat (it holds the long-lived connection)."""
        out = self.ns["CLIENT"].sh("ss -tnpH state established sport = :40000")
        return int(out.split("pid=", 1)[1].split(",", 1)[0])

    def web_ips(self) -> dict[str, str]:
        return {p.name: p.ip for p in self.c.pods() if p.owner == "Deployment/web"}


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab07]:
    with lab_state(LAB_ID, "lkcip", tmp_path, monkeypatch):
        yield Lab07()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS)


def test_chain_name_slips_are_named(lab):
    lab.solve("chain-names")
    svc, sep = lab.ns["svc_chain"], lab.ns["sep_chain"]
    ip = lab.c.pod(lab.WEB[0]).ip
    cases = [
        ("KUBE-SVC-" + hash16(f"{SPN}TCP"), "in capitals"),
        ("KUBE-SVC-" + hash16("default/webtcp"), "the port has a name"),
        ("KUBE-SVC-" + hash16("default/web:80tcp"), "by its NAME"),
        ("KUBE-SVC-" + hash16(SPN), "protocol is part"),
        ("KUBE-SVC-" + hash16(f"{SPN}:tcp"), "nothing goes between"),
        (svc[len("KUBE-SVC-"):], "without its prefix"),
        (svc.lower(), "wrong case"),
        (sep, "ENDPOINT chain"),
        ("KUBE-SVC-AAAAAAAAAAAAAAAA", "not a chain in the nodes' nat tables"),
        ("", "`svc_chain` is empty"),
    ]
    for answer, words in cases:
        r = lab.one("chain-names", svc_chain=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
        assert r.hint, r.summary()
    sep_cases = [
        ("KUBE-SEP-" + hash16(f"{SPN}tcp{ip}:80"), "not the Service's 80"),
        ("KUBE-SEP-" + hash16(f"{SPN}tcp{ip}"), "not the IP alone"),
        ("KUBE-SEP-" + hash16(f"{SPN}tcp{lab.VIP}:80"), "hashes the ClusterIP"),
        ("KUBE-SEP-" + hash16(f"{SPN}tcp"), "the SERVICE's hash"),
        (svc, "the SERVICE chain"),
        ("kube-sep-" + sep[len("KUBE-SEP-"):], "wrong case"),
        (sep[len("KUBE-SEP-"):], "without its prefix"),
    ]
    for answer, words in sep_cases:
        r = lab.one("chain-names", sep_chain=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
    # any endpoint's chain is right: they are all computed the same way
    other = lab.c.pod(lab.WEB[1]).ip
    assert lab.one("chain-names", sep_chain="KUBE-SEP-" + hash16(f"{SPN}tcp{other}:8080")).passed


def test_which_endpoint_wrong_answers(lab):
    lab.solve("which-endpoint")
    right = lab.ns["endpoint_pod"]
    ips = lab.web_ips()
    assert lab.one("which-endpoint", endpoint_pod=ips[right]).passed
    assert lab.one("which-endpoint", endpoint_pod=f"{ips[right]}:8080").passed
    assert lab.one("which-endpoint", endpoint_pod=f"default/{right}").passed  # c.pod(…).name
    other = next(n for n in ips if n != right)
    cases = [(lab.VIP, "what the client ASKED for"), (other, "not where THIS connection goes"),
             (lab.CLIENT.ip, "the client itself"), ("web", "neither a pod name nor an IP")]
    for answer, words in cases:
        r = lab.one("which-endpoint", endpoint_pod=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
        assert r.hint, r.summary()
    # the connection closed: the check says so and names the cell that starts it
    lab.CLIENT.sh(f"kill {lab.held_pid()}")
    time.sleep(0.2)
    r = lab.one("which-endpoint")
    assert not r.passed and "not open" in r.message and "sourceport=40000" in r.hint, r.summary()
    lab.hold()
    lab.solve("which-endpoint")
    assert lab.one("which-endpoint").passed


def test_scaling_the_wrong_way_is_named(lab):
    deployment = manifest("manifests/clusterip-web.yaml", "Deployment")
    deployment["spec"]["replicas"] = 5
    lab.c.apply([deployment])
    r = lab.one("scale")
    assert not r.passed and "5 endpoints" in r.message, r.summary()
    # back to 3, and a fourth pod by hand with web's label: 4 endpoints, but not a replica
    deployment["spec"]["replicas"] = 3
    lab.c.apply([deployment])
    template = deployment["spec"]["template"]
    lab.c.apply([{"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "extra", "labels": template["metadata"]["labels"]},
                  "spec": template["spec"]}])
    r = lab.one("scale")
    assert not r.passed and "pod extra" in r.message and "does not own" in r.message, \
        r.summary()
    assert 'c.delete(pod="extra")' in r.hint, r.summary()
    lab.c.delete(pod="extra")
    # a rule edited by hand on one node
    lab.solve("scale")
    assert lab.one("scale").passed
    node = lab.c.node("clusterip-worker")
    svc = "KUBE-SVC-" + hash16(f"{SPN}tcp")
    node.sh(f"iptables -t nat -D {svc} 2")
    r = lab.one("scale")
    assert not r.passed and "disagree" in r.message and "clusterip-worker" in r.message, \
        r.summary()
    lab.solve("scale")  # an apply re-syncs every node
    assert lab.one("scale").passed


def test_spread_wrong_answers(lab):
    # counted before scaling: 3 endpoints, then the Deployment grows to 4
    lab.solve("spread")
    three = dict(lab.ns["counts"])
    assert len(three) == 3
    lab.solve("scale")
    r = lab.one("spread", counts=three, p_first=0.25)
    assert not r.passed and "no connection of yours reached" in r.message, r.summary()
    assert "after the `scale` exercise" in r.hint, r.summary()
    lab.solve("spread")
    counts = lab.ns["counts"]
    assert lab.one("spread", p_first="1/4").passed
    assert lab.one("spread", p_first="25%").passed
    cases = [(1 / 3, "rule 2's probability"), ("1/2", "rule 3's probability"),
             (1, "only the LAST rule"), (1 / 16, "no need to multiply"), (None, "empty"),
             ("a quarter", "not a probability")]
    for answer, words in cases:
        r = lab.one("spread", p_first=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
        assert r.hint, r.summary()
    few = {k: 5 for k in counts}
    r = lab.one("spread", counts=few)
    assert not r.passed and "too few" in r.message, r.summary()
    r = lab.one("spread", counts={**counts, "": 3})
    assert not r.passed and "failed connection" in r.message, r.summary()
    r = lab.one("spread", counts={**counts, "client": 3})
    assert not r.passed and "not an endpoint of web" in r.message, r.summary()
    lopsided = dict.fromkeys(counts, 2)
    lopsided[next(iter(counts))] = 200
    r = lab.one("spread", counts=lopsided)
    assert not r.passed and "far from 1/4" in r.message, r.summary()
    assert lab.one("spread").passed


def test_api_workarounds_are_named(lab):
    r = lab.one("fix-api")
    assert "REJECT" in r.message and "has no endpoints" in r.message, r.summary()
    assert "targetPort" in r.hint, r.summary()
    # the client's connection fails at once, without a timeout: the node has no route to the
    # ClusterIP; with a default route, as the notebook shows, the filter table's REJECT answers
    p = lab.c.probe("client", lab.API_VIP, 80, timeout=2)
    assert not p.ok and p.ms < 500, p
    lab.NODE.sh(f"ip route replace default via {lab.c.external.ip} dev eth0")
    p = lab.c.probe("client", lab.API_VIP, 80, timeout=2)
    assert not p.ok and "refused" in p.error.lower() and p.ms < 500, p
    counted = lab.NODE.sh(f"iptables-save -c -t filter | grep -F {lab.API_VIP}")
    assert counted.startswith("[1:") and "has no endpoints" in counted, counted
    lab.NODE.sh("ip route del default")
    service = manifest("manifests/clusterip-api.yaml", "Service")
    # a number instead of the name, the Service's own port: kube-proxy DNATs, the pod refuses
    service["spec"]["ports"][0]["targetPort"] = 80
    lab.c.apply([service])
    r = lab.one("fix-api")
    assert not r.passed and "nothing listens on port 80" in r.message, r.summary()
    assert lab.c.endpointslices("api")[0]["endpoints"], "the slice has endpoints now"
    # the selector "fixed" to web's pods: connections work, but reach the wrong app
    service["spec"]["ports"][0]["targetPort"] = "http"
    service["spec"]["selector"] = {"app": "web"}
    lab.c.apply([service])
    assert lab.c.probe("client", lab.API_VIP, 80).ok
    r = lab.one("fix-api")
    assert not r.passed and "not an api pod" in r.message, r.summary()
    # the number the api containers listen on is a fix too (the name is better)
    service["spec"]["selector"] = {"app": "api"}
    service["spec"]["ports"][0]["targetPort"] = 9376
    lab.c.apply([service])
    assert lab.one("fix-api").passed
    lab.solve("fix-api")
    assert lab.one("fix-api").passed
    # the Service deleted
    lab.c.delete([service])
    r = lab.one("fix-api")
    assert not r.passed and "no Service `api`" in r.message, r.summary()


def test_hairpin_wrong_answers(lab):
    lab.solve("hairpin")
    seen = lab.ns["seen_as"]
    me = lab.ME
    bridge = lab.c.node(me.node).sh("ip -4 -br addr show cni0").split()[2].split("/")[0]
    assert seen == bridge
    node_ip = next(n.ip for n in lab.c.nodes() if n.name == me.node)
    cases = [(me.ip, "own address"), (node_ip, "LEAVES by"), (lab.VIP, "ClusterIP"),
             (lab.CLIENT.ip, "does not take part"), ("10.1.2.3", "no interface"),
             ("", "empty")]
    for answer, words in cases:
        r = lab.one("hairpin", seen_as=answer)
        assert not r.passed and words in r.message, (answer, r.summary())
        assert r.hint, r.summary()
    assert lab.one("hairpin", seen_as=f"{seen}:41234").passed


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name)
        assert not r.passed and "cluster" in r.hint, r.summary()
