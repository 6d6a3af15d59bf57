"""The checks of lab 09 (iptables vs nftables at scale) against the real kernel (root).

Both clusters, `scaleipt` (iptables mode) and `scalenft` (nftables mode), are set up the way the
notebook's cells do it, with a small measurement (5 and 20 Services instead of 10 … 5,000);
then the reference solutions run one exercise at a time, and tests give wrong answers or break
one thing on purpose and expect the hint to name it. The truth always comes from the kernel: a
rule inserted by hand moves the answer the check expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, explain, lab_state

from lab_kit import kernel, proxyscale
from lab_kit.cluster import Cluster, sweep
from lab_kit.labs.proxy_scale import HAND_IP, NFT_CLUSTER, NFT_CONFIG

pytestmark = pytest.mark.root

LAB_ID = "09-iptables-vs-nftables"
SIZES = (5, 20)
STEPS = [("rules-per-service", ["rules-per-service"]), ("first-packet", ["first-packet"]),
         ("grows", ["grows"]), ("hand-element", ["hand-element"])]


class Lab09(LabDriver):
    """The notebook's setup and measurement cells, its names and its checks."""

    lab_id = LAB_ID
    answer_names = ("ipt_rules_per_service", "nft_rules_per_service", "ipt_position",
                    "nft_verdict", "grows_with_n", "why")

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/scale-iptables.yaml", replace=True)
        c_nft = Cluster.up(NFT_CONFIG, replace=True)
        results = proxyscale.measure([c, c_nft], SIZES, connections=20, settle_s=0.2)
        last = proxyscale.last_service(c)
        self.ns: dict[str, Any] = {
            "c": c, "c_nft": c_nft, "proxyscale": proxyscale, "HAND_IP": HAND_IP,
            "IPT": c.node(proxyscale.client_node(c)),
            "NFT": c_nft.node(proxyscale.client_node(c_nft)), "results": results,
            "LAST": last, "LAST_IP": proxyscale.cluster_ip(c, last),
            "LAST_IP_NFT": proxyscale.cluster_ip(c_nft, last)}


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab09]:
    with lab_state(LAB_ID, "lkps", tmp_path, monkeypatch):
        try:
            yield Lab09()
        finally:
            sweep(NFT_CLUSTER, kernel.Runner())  # lab_state sweeps only the lab's own cluster


def test_measurement_reads_the_kernel(lab):
    r = lab.results
    assert [(p.mode, p.services) for p in r.points] == [
        ("iptables", 5), ("nftables", 5), ("iptables", 20), ("nftables", 20)]
    for p in r.points:
        # iptables: 1 rule in KUBE-SERVICES per Service, then the NodePort rule
        assert p.rules.dispatch == p.services + (1 if p.mode == "iptables" else 0), p
        assert p.sync.nodes == 3 and p.sync.seconds > 0 and p.sync.load_s > 0, p
        assert len(p.latency.samples_us) == 20 and p.latency.median_us > 0, p
        assert p.latency.target.endswith(":80") and p.first.target != p.latency.target
    # one Service with 3 endpoints: 11 iptables rules, 8 nftables rules
    for mode, per in (("iptables", 11), ("nftables", 8)):
        assert r.at(mode, 20).rules.rules - r.at(mode, 5).rules.rules == 15 * per
    assert set(r.ratios()) == {"services", "sync", "connect"} and r.ratios()["services"] == 20
    assert "iptables mode" in str(r) and "<table>" in r._repr_html_()
    assert r.chart() is not None
    # a full sync rewrites the same rules: nothing changes, nothing is journaled as failed
    before = proxyscale.count_rules("iptables", proxyscale.client_node(lab.c))
    t = proxyscale.full_sync(lab.c)
    assert t.nodes == 3
    assert proxyscale.count_rules("iptables", proxyscale.client_node(lab.c)) == before
    assert lab.c.runner.__class__ is kernel.Runner  # the timed runner was swapped back


def test_checks_fail_before_and_pass_after_each_solution(lab):
    assert lab.one("scaled").passed, lab.one("scaled").summary()
    lab.assert_each_exercise(STEPS)
    assert lab.ns["ipt_rules_per_service"] == 11 and lab.ns["nft_rules_per_service"] == 8
    assert lab.ns["ipt_position"] == 20
    assert lab.run().all_passed, explain(lab.run())


def test_rules_per_service_hints(lab):
    good = {"ipt_rules_per_service": 11, "nft_rules_per_service": 8}
    cases = [
        ({"ipt_rules_per_service": None}, "is empty", "count its `-A` lines"),
        ({"ipt_rules_per_service": "eleven"}, "not a whole number", "iptables-save"),
        ({"ipt_rules_per_service": 15}, "chain declarations", "iptables-save"),
        ({"ipt_rules_per_service": 240}, "looks like a total", "iptables-save"),
        ({"nft_rules_per_service": 10}, "map elements", "nft list table"),
        ({"nft_rules_per_service": 12}, "`chain …` declarations", "nft list table"),
        ({"nft_rules_per_service": 11}, "the iptables count", "nft list table"),
    ]
    for change, words, hint in cases:
        r = lab.one("rules-per-service", **{**good, **change})
        assert not r.passed and words in r.message and hint in r.hint, (change, r.summary())
    assert lab.one("rules-per-service", ipt_rules_per_service="11",
                   nft_rules_per_service=8.0).passed


def test_first_packet_hints_and_truth_from_the_kernel(lab):
    lab.solve("first-packet")
    verdict = lab.ns["nft_verdict"]
    assert verdict.startswith("goto service-") and f"/{lab.LAST}/" in verdict
    good = {"ipt_position": 20, "nft_verdict": verdict}
    endpoint = lab.NFT.sh(f"nft list table ip kube-proxy | grep -o 'endpoint-[^ ]*{lab.LAST}/[^ ]*'"
                          ).split()[0]
    cases = [
        ({"ipt_position": 21}, "`-N KUBE-SERVICES`", "--line-numbers"),
        ({"ipt_position": 19}, "numbered from 1", "--line-numbers"),
        ({"ipt_position": 3}, "svc-00002", "--line-numbers"),
        ({"ipt_position": 99}, "only 21 rules", "--line-numbers"),
        ({"nft_verdict": ""}, "`nft_verdict` is empty", "service-ips"),
        ({"nft_verdict": "goto KUBE-SVC-ABCDEFGHIJKLMNOP"}, "an iptables chain", "service-ips"),
        ({"nft_verdict": f"goto {endpoint}"}, "one endpoint's chain", "service-ips"),
        ({"nft_verdict": "goto service-YCMZ66QZ-default/svc-00000/tcp/http"},
         "svc-00000's chain", "service-ips"),
    ]
    for change, words, hint in cases:
        r = lab.one("first-packet", **{**good, **change})
        assert not r.passed and words in r.message and hint in r.hint, (change, r.summary())
    # the bare chain name is accepted too
    assert lab.one("first-packet", ipt_position=20,
                   nft_verdict=verdict.removeprefix("goto ")).passed
    # a rule inserted at the top of KUBE-SERVICES moves the last Service's rule one down: the
    # check follows the kernel, not the stored Services
    lab.IPT.sh("iptables -t nat -I KUBE-SERVICES 1 -d 10.96.0.98/32 -p tcp --dport 80 -j RETURN")
    r = lab.one("first-packet", **good)
    assert not r.passed and "`ipt_position` = 20" in r.message, r.summary()
    assert lab.one("first-packet", ipt_position=21, nft_verdict=verdict).passed


def test_grows_hints(lab):
    why = "iptables walks the rules one by one; nftables looks the key up in a map"
    cases = [
        ({"grows_with_n": None}, "is empty", "chart"),
        ({"grows_with_n": "nftables"}, "map lookup costs the same", "one rule after another"),
        ({"grows_with_n": "both"}, "stays flat", "ONE lookup"),
        ({"grows_with_n": "neither"}, "get slower", "chart"),
        ({"grows_with_n": "ipvs"}, "is not a mode", "chart"),
        ({"why": ""}, "`why` is empty", "first packet"),
        ({"why": "because it is newer"}, "does not say how", "rule by rule"),
    ]
    for change, words, hint in cases:
        r = lab.one("grows", **{"grows_with_n": "iptables", "why": why, **change})
        assert not r.passed and words in r.message and hint in r.hint, (change, r.summary())
    r = lab.one("grows", grows_with_n="iptables mode", why=why)
    assert r.passed and "measured just now" in r.message, r.summary()


def test_hand_element_hints(lab):
    lab.solve("first-packet")
    chain = lab.ns["nft_verdict"].removeprefix("goto ")
    other = next(n for n in lab.c_nft.nodes() if n.name != lab.NFT.name)
    add = "nft add element ip kube-proxy service-ips '{{ {} }}'"
    # on the wrong node
    lab.c_nft.node(other.name).sh(add.format(f"{HAND_IP} . tcp . 80 : goto {chain}"))
    r = lab.one("hand-element")
    assert other.name in r.message and "NATed on ITS node" in r.message, r.summary()
    # the wrong port
    lab.NFT.sh(add.format(f"{HAND_IP} . tcp . 8080 : goto {chain}"))
    r = lab.one("hand-element")
    assert "must match all three" in r.message and "tcp . 80" in r.hint, r.summary()
    # straight to one endpoint: it connects, but always to the same pod
    endpoint = lab.NFT.sh(f"nft list table ip kube-proxy | grep -o 'endpoint-[^ ]*{lab.LAST}/[^ ]*'"
                          ).split()[0]
    lab.NFT.sh(add.format(f"{HAND_IP} . tcp . 80 : goto {endpoint}"))
    assert lab.c_nft.probe("client", HAND_IP, 80).ok
    r = lab.one("hand-element")
    assert "endpoint chain" in r.message and "numgen" in r.hint, r.summary()
    lab.NFT.sh(f"nft delete element ip kube-proxy service-ips '{{ {HAND_IP} . tcp . 80 }}'")
    lab.NFT.sh(add.format(f"{HAND_IP} . tcp . 80 : goto {chain}"))
    r = lab.one("hand-element")
    assert r.passed and "backend-" in r.message, r.summary()
    # kube-proxy's next full sync flushes the map: the element is gone, and the check says so
    proxyscale.full_sync(lab.c_nft)
    r = lab.one("hand-element")
    assert not r.passed and "no element" in r.message, r.summary()


def test_a_service_with_the_hand_ip_is_not_by_hand(lab):
    lab.c_nft.apply([{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
                      "spec": {"clusterIP": HAND_IP, "selector": {"app": "scale-backend"},
                               "ports": [{"port": 80, "targetPort": 8080}]}}])
    r = lab.one("hand-element")
    assert not r.passed and "kube-proxy made that element" in r.message, r.summary()


def test_scaled_notices_a_node_out_of_step(lab):
    assert lab.one("scaled").passed
    # one node of the iptables cluster loses a Service's dispatch rule
    cp = lab.c.node("scaleipt-control-plane")
    cp.sh("iptables -t nat -D KUBE-SERVICES 1")
    r = lab.one("scaled")
    assert not r.passed and "not all have the same Services" in r.message, r.summary()
    assert "scaleipt-control-plane (iptables): 19" in r.actual, r.summary()
    proxyscale.full_sync(lab.c)
    assert lab.one("scaled").passed
    # the nftables cluster is gone: every check says to run the setup
    lab.c_nft.down()
    r = lab.one("rules-per-service", ipt_rules_per_service=11, nft_rules_per_service=8)
    assert not r.passed and "not both running" in r.message and "setup" in r.hint, r.summary()
