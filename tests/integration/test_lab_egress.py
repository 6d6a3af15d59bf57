"""The checks of lab 14 (egress and SNAT) against the real kernel (root).

A cluster `egress` is set up the way the notebook's cells do it: the billing and shop pods of
egress-apps.yaml and the web server of the lab's internet on the external host; before
`seen-as` frontend calls the provider (the solution reads the server's last log line), before
`non-masquerade` the ledger is connected. The reference solutions run one exercise at a time;
further tests apply what a learner plausibly writes instead (the ConfigMap in the wrong
namespace, a /24 for the ledger, a list without the pod network; SNAT without routing, routing
without keeping the source, SNAT appended behind ip-masq-agent, no egress IP, a rule for a whole
pod CIDR) and expect the check to fail naming what the server saw and a hint naming the mistake.
Each mistake is undone before the next, so every test needs one cluster only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.labs.egress import (
    EGRESS_IP,
    EGRESS_NODE,
    INTERNET,
    LEDGER_IP,
    PROVIDER_IP,
    connect_ledger,
    internet_log,
    request_from,
    serve_internet,
)

pytestmark = pytest.mark.root

LAB_ID = "14-egress-snat"
STEPS = [("seen-as", ["seen-as"]), ("non-masquerade", ["non-masquerade"]),
         ("egress-gateway", ["egress-gateway"])]


def masq_configmap(*cidrs: str, namespace: str = "kube-system") -> dict[str, Any]:
    lines = "".join(f"- {c}\n" for c in cidrs)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ip-masq-agent", "namespace": namespace},
            "data": {"config": f"nonMasqueradeCIDRs:\n{lines}"}}


class Lab14(LabDriver):
    """The notebook's setup cells, its names and checks."""

    lab_id = LAB_ID
    answer_names = ("SEEN_AS",)
    outside_path = True

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/egress.yaml", replace=True)
        c.apply("manifests/egress-apps.yaml")
        serve_internet(c)
        self.ns: dict[str, Any] = {
            "c": c, "internet_log": internet_log, "EGRESS_IP": EGRESS_IP,
            "EGRESS_NODE": EGRESS_NODE, "INTERNET": INTERNET, "LEDGER_IP": LEDGER_IP,
            "PROVIDER_IP": PROVIDER_IP}

    def before(self, exercise: str) -> None:
        if exercise == "seen-as":
            assert request_from(self.c, "shop/frontend", PROVIDER_IP)[0]
        if exercise == "non-masquerade":
            connect_ledger(self.c)

    def sh_all(self, *commands: str) -> None:
        for n in self.c.nodes():
            for cmd in commands:
                self.c.node(n.name).sh(cmd, check=False)

    def undo_gateway(self) -> None:
        """Remove every egress-gateway rule, route and address a test made."""
        self.sh_all(
            "while ip rule del table 100 2>/dev/null; do :; done",
            "ip route flush table 100",
            f"ip addr del {EGRESS_IP}/32 dev eth0 2>/dev/null",
            f"iptables -t nat -S POSTROUTING | grep -e '-d {INTERNET}' | sed 's/^-A/-D/' | "
            "xargs -r -L1 iptables -t nat")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab14]:
    with lab_state(LAB_ID, "lkeg", tmp_path, monkeypatch):
        yield Lab14()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS, before_each=lab.before)
    # running the gateway solution again changes nothing: no rule twice
    def plumbing() -> dict[str, str]:
        return {n.name: lab.c.node(n.name).sh("ip rule; iptables -t nat -S POSTROUTING")
                for n in lab.c.nodes()}

    before = plumbing()
    lab.solve("egress-gateway")
    assert before == plumbing()
    # the gateway's conntrack holds billing's flow with its reply addressed to the egress IP
    b = lab.c.pod("billing/invoice-b")
    assert request_from(lab.c, b.name, PROVIDER_IP) == (True, EGRESS_IP)
    entries = lab.c.node(EGRESS_NODE).sh(f"conntrack -L -p tcp --dport 8080 -s {b.ip}",
                                         check=False)
    assert f"dst={EGRESS_IP}" in entries, entries


def test_seen_as_mistakes_are_named(lab):
    frontend = lab.c.pod("shop/frontend")
    assert request_from(lab.c, frontend.name, PROVIDER_IP)[0]
    r = lab.one("seen-as", SEEN_AS=frontend.ip)
    assert not r.passed and "frontend's own address" in r.message, r.summary()
    r = lab.one("seen-as", SEEN_AS="somewhere")
    assert not r.passed and "not an IPv4 address" in r.message, r.summary()
    node_ip = next(n.ip for n in lab.c.nodes() if n.name == frontend.node)
    assert lab.one("seen-as", SEEN_AS=node_ip).passed


def test_non_masquerade_mistakes_are_named(lab):
    check = "non-masquerade"
    lab.mistake(check, [], ["no route to the pod network"], ("connect_ledger(c)",))
    connect_ledger(lab.c)
    pod_net = lab.c.config.pod_subnet
    lab.mistake(check, [masq_configmap(pod_net, f"{LEDGER_IP}/32", namespace="default")],
                ["the ledger saw billing/invoice-b's request from", "node egress-worker"],
                ("namespace `kube-system`", "default/ip-masq-agent"))
    lab.c.apply(masq_configmap(pod_net, "172.18.0.0/24"))
    lab.mistake(check, [], ["the provider saw", "pod shop/frontend's own address"],
                ("exactly one address",))
    lab.c.apply(masq_configmap(f"{LEDGER_IP}/32"))
    lab.mistake(check, [], ["api saw frontend", "masqueraded"], (pod_net,))
    lab.solve(check)
    assert lab.one(check).passed
    lab.c.delete(masq_configmap())  # back to kind's default: the ledger sees the node again
    assert lab.c.node("egress-worker").sh("iptables -t nat -S IP-MASQ-AGENT").count("-j RETURN") \
        == 1
    assert not lab.one(check).passed


def test_egress_gateway_mistakes_are_named(lab):
    check = "egress-gateway"
    c = lab.c
    gw = c.node(EGRESS_NODE)
    billing = [p for p in c.pods() if p.namespace == "billing"]
    elsewhere = [p for p in billing if p.node != EGRESS_NODE]
    lab.mistake(check, [], [f"{EGRESS_IP} is on the eth0 of no node"], ("ip addr add",))
    gw.sh(f"ip addr replace {EGRESS_IP}/32 dev eth0")
    # SNAT on the gateway only: the other nodes still send straight out
    for p in billing:
        gw.sh(f"iptables -t nat -I POSTROUTING 1 -s {p.ip}/32 -d {INTERNET} -j SNAT "
              f"--to-source {EGRESS_IP}")
    lab.mistake(check, [], ["the provider saw billing/invoice-a (on egress-control-plane) as",
                        "node egress-control-plane's address"], ("ip rule add", "not via"))
    # routed to the gateway, but masqueraded by the pod's own node first
    for p in elsewhere:
        n = c.node(p.node)
        n.sh(f"ip route replace {INTERNET} via {gw.ip} dev eth0 table 100")
        n.sh(f"ip rule add from {p.ip} to {INTERNET} table 100")
    lab.mistake(check, [], ["billing/invoice-a (on egress-control-plane) as 172.18.0.4 (node "
                        "egress-worker2's address)"], ("masquerades them first", "ACCEPT"))
    lab.undo_gateway()
    # SNAT appended behind ip-masq-agent's jump: the gateway masquerades with its own address
    lab.solve(check)
    for p in billing:
        rule = f"-s {p.ip}/32 -d {INTERNET} -j SNAT --to-source {EGRESS_IP}"
        gw.sh(f"iptables -t nat -D POSTROUTING {rule}")
        gw.sh(f"iptables -t nat -A POSTROUTING {rule}")
    lab.mistake(check, [], ["node egress-worker2's address"], ("ahead of IP-MASQ-AGENT",))
    lab.undo_gateway()
    # a whole node's pod CIDR on the gateway: shop's api (on the gateway too) is caught
    lab.solve(check)
    gw_cidr = next(n.pod_cidr for n in c.nodes() if n.name == EGRESS_NODE)
    gw.sh(f"iptables -t nat -I POSTROUTING 1 -s {gw_cidr} -d {INTERNET} -j SNAT "
          f"--to-source {EGRESS_IP}")
    lab.mistake(check, [], ["the provider saw shop/api as", "the egress IP"],
                ("billing's pods only",))
    lab.undo_gateway()
    # the egress IP on the wrong node
    lab.solve(check)
    c.node("egress-worker").sh(f"ip addr replace {EGRESS_IP}/32 dev eth0")
    lab.mistake(check, [], [f"{EGRESS_IP} is on the eth0 of egress-worker, egress-worker2"])
    lab.undo_gateway()
    lab.solve(check)
    assert lab.one(check).passed


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name, SEEN_AS="172.18.0.3")
        assert not r.passed and "cluster" in r.hint, r.summary()
