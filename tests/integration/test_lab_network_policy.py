"""The checks of lab 11 (network policies) against the real kernel (root).

A cluster `netpol` is set up the way the notebook's cells do it: the x/y/z pods of
netpol-xyz.yaml and the shop of netpol-shop.yaml (frontend, api, db), and, before exercise
`ipblock-external`, the web server on the external host. The reference solutions run one
exercise at a time; further tests apply the policies a learner plausibly writes instead (one
that selects too few pods, a rule for everyone, two peers where one was meant, DNS without TCP or
to the Service's address, a forgotten `policyTypes`, a /24 where a /32 was meant, …) and expect
the check to fail with a message naming the wrong cells and a hint naming the mistake. Each
mistake is deleted again before the next, so every test needs one cluster only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.labs.network_policy import (
    OTHER_IP,
    PROVIDER_IP,
    apply_and_probe,
    internet_log,
    serve_internet,
)

pytestmark = pytest.mark.root

LAB_ID = "11-network-policies"
STEPS = [("default-deny", ["default-deny"]), ("frontend-api", ["frontend-api"]),
         ("egress-dns", ["egress-dns"]), ("namespace-isolation", ["namespace-isolation"]),
         ("ipblock-external", ["ipblock-external"])]
KUBE_DNS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                       "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
TO_API = {"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]}


def policy(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A NetworkPolicy manifest; `spec` as the YAML would have it (podSelector {} by default)."""
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def selecting(app: str) -> dict[str, Any]:
    return {"matchLabels": {"app": app}}


class Lab11(LabDriver):
    """The notebook's setup cells, its names (`c`, `FRONTEND`, `apply_and_probe`) and checks."""

    lab_id = LAB_ID
    outside_path = True  # ipblock-external: frontend -> the provider on the external host

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/netpol.yaml", replace=True)
        c.apply("manifests/netpol-xyz.yaml")
        c.apply("manifests/netpol-shop.yaml")
        self.ns: dict[str, Any] = {"c": c, "apply_and_probe": apply_and_probe,
                                   "FRONTEND": c.pod("shop/frontend")}

    def before(self, exercise: str) -> None:
        """The notebook's cells between the exercises."""
        if exercise == "ipblock-external":
            serve_internet(self.c)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab11]:
    with lab_state(LAB_ID, "lknp", tmp_path, monkeypatch):
        yield Lab11()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS, before_each=lab.before)
    # the end state, measured: the engine agrees with the probes on every pair
    r = lab.c.reachability(80)
    assert r.agrees, str(r)
    assert r.measured["shop/frontend"]["shop/api"] and not r.measured["shop/db"]["shop/api"]
    # the external host saw frontend's request from frontend's node (masqueraded after the
    # filter matched the pod's own address)
    node_ip = next(n.ip for n in lab.c.nodes() if n.name == lab.c.pod("shop/frontend").node)
    assert any(line.startswith(node_ip) and "client=shop/frontend" in line
               for line in internet_log(lab.c, last=50).splitlines())


def test_default_deny_mistakes_are_named(lab):
    check = "default-deny"
    # selects one pod of x only
    lab.mistake(check, [policy("deny", "x", podSelector={"matchLabels": {"pod": "a"}},
                               policyTypes=["Ingress"])],
                ["x/b:80 was connected but should be blocked", "x/b is not isolated for ingress"],
                ("x/b, x/c accept every pod", "podSelector: {}"))
    # a rule with nothing in it allows everything
    lab.mistake(check, [policy("deny", "x", policyTypes=["Ingress"], ingress=[{}])],
                ["ingress of x/a allowed by x/deny ingress rule 0"], ("`- {}` allows everyone",))
    # in the wrong namespace (no metadata.namespace: default)
    lab.mistake(check, [policy("deny", "default", policyTypes=["Ingress"])],
                ["connections into namespace x still get through"],
                ("no pod of x is isolated", "metadata.namespace: x"))
    # egress isolated too: x's own connections out are cut
    lab.mistake(check, [policy("deny", "x", policyTypes=["Ingress", "Egress"])],
                ["x/a → z/a:80 was blocked but should be connected",
                 "x/a is isolated for egress by x/deny"], ("policyTypes: [Ingress]",))
    # a rule left for UDP: TCP is blocked, UDP still gets in
    lab.mistake(check, [policy("deny", "x", policyTypes=["Ingress"],
                               ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}])],
                ["UDP still gets into x", "x/a:81/udp was connected"], ("no ingress rule",))
    lab.solve(check)
    assert lab.one(check).passed


def test_frontend_api_mistakes_are_named(lab):
    check = "frontend-api"
    db_from_api = policy("db-from-api", "shop", podSelector=selecting("db"),
                         policyTypes=["Ingress"],
                         ingress=[{"from": [{"podSelector": selecting("api")}]}])

    def api_from(*peers: dict[str, Any], ports: Any = ({"port": "http"},)) -> dict[str, Any]:
        rule: dict[str, Any] = {"from": list(peers)}
        if ports:
            rule["ports"] = list(ports)
        return policy("api-from-frontend", "shop", podSelector=selecting("api"),
                      policyTypes=["Ingress"], ingress=[rule])

    frontend = {"podSelector": selecting("frontend")}
    # no ports: api's metrics port is open to frontend too
    lab.mistake(check, [api_from(frontend, ports=()), db_from_api],
                ["shop/frontend → shop/api:9090", "metrics"], ("ports: [{port: http}]",))
    # the namespace and the pod as two peers (OR) instead of one (AND): db gets in
    lab.mistake(check, [api_from({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "shop"}}}, frontend), db_from_api],
                ["shop/db → shop/api:80 was connected but should be blocked",
                 "allowed by shop/api-from-frontend ingress rule 0"], ("ONE peer", "(OR)"))
    # db forgotten
    lab.mistake(check, [api_from(frontend)],
                ["→ shop/db:80 was connected", "shop/db is not isolated for ingress"],
                ("app: db",))
    # a typo in the label: nobody gets in, frontend included
    lab.mistake(check, [api_from({"podSelector": selecting("front-end")}), db_from_api],
                ["shop/frontend → shop/api:80 was blocked but should be connected"],
                ("app: frontend",))
    # the named port on the wrong protocol
    lab.mistake(check, [api_from(frontend, ports=({"port": "http", "protocol": "UDP"},)),
                        db_from_api],
                ["shop/frontend → shop/api:80 was blocked"], ("protocol TCP",))
    # a default deny for the whole shop: frontend's ingress is cut too
    lab.mistake(check, [policy("deny-all", "shop", policyTypes=["Ingress"]), api_from(frontend),
                        db_from_api],
                ["x/a → shop/frontend:80 was blocked but should be connected"],
                ("frontend's ingress",))
    lab.solve(check)
    assert lab.one(check).passed


def test_egress_dns_mistakes_are_named(lab):
    lab.solve("frontend-api")
    check = "egress-dns"

    def frontend_egress(*rules: dict[str, Any], types: Any = ("Egress",),
                        selector: Any = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": selector if selector is not None
                                else selecting("frontend"), "egress": list(rules)}
        if types is not None:
            spec["policyTypes"] = list(types)
        return policy("frontend-egress", "shop", **spec)

    dns = {"to": [KUBE_DNS_PEER], "ports": DNS_PORTS}
    # policyTypes says Ingress: the egress rules are ignored, frontend's egress stays open
    lab.mistake(check, [frontend_egress(dns, TO_API, types=["Ingress"])],
                ["shop/frontend → x/a:80 was connected",
                 "shop/frontend is not isolated for egress"], ("policyTypes: [Egress]",))
    # no policyTypes: defaulted to [Ingress, Egress], frontend's ingress is cut too
    lab.mistake(check, [frontend_egress(dns, TO_API, types=None)],
                ["x/a → shop/frontend:80 was blocked but should be connected"],
                ("policyTypes [Ingress, Egress]",))
    # DNS over UDP only
    lab.mistake(check, [frontend_egress({"to": [KUBE_DNS_PEER], "ports": DNS_PORTS[:1]},
                                        TO_API)],
                ["over TCP it does not", "+tcp"], ("protocol: TCP",))
    # DNS to the Service's address: kube-proxy's DNAT comes first, the rule never matches
    lab.mistake(check, [frontend_egress({"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}],
                                         "ports": DNS_PORTS}, TO_API)],
                ["DNS from frontend fails", "10.96.0.10"], ("DNAT", "k8s-app: kube-dns"))
    # the kube-dns pods without their namespace: pods of shop with that label (none)
    lab.mistake(check, [frontend_egress({"to": [{"podSelector": {"matchLabels": {
        "k8s-app": "kube-dns"}}}], "ports": DNS_PORTS}, TO_API)],
                ["DNS from frontend fails"], ("kube-system",))
    # DNS to anywhere
    lab.mistake(check, [frontend_egress({"ports": DNS_PORTS}, TO_API)],
                [f"external resolver {PROVIDER_IP}", "any address"], ("`to`",))
    # api forgotten
    lab.mistake(check, [frontend_egress(dns)],
                ["shop/frontend → shop/api:80 was blocked but should be connected"],
                ("frontend still needs api",))
    # every pod of the shop: api's and db's egress cut too
    lab.mistake(check, [frontend_egress(dns, TO_API, selector={})],
                ["shop/api → z/a:80 was blocked", "shop/api is isolated for egress"],
                ("more pods than frontend",))
    lab.solve(check)
    assert lab.one(check).passed


def test_namespace_isolation_mistakes_are_named(lab):
    check = "namespace-isolation"

    def isolate(*rules: dict[str, Any], selector: Any = None) -> dict[str, Any]:
        return policy("same-namespace", "y", podSelector={} if selector is None else selector,
                      policyTypes=["Ingress"], ingress=list(rules))

    # every namespace allowed
    lab.mistake(check, [isolate({"from": [{"namespaceSelector": {}}]})],
                ["x/a → y/a:80 was connected but should be blocked",
                 "allowed by y/same-namespace ingress rule 0"], ("namespaceSelector: {}",))
    # no rule: y's own pods cut off from each other
    lab.mistake(check, [isolate()],
                ["y/a → y/b:80 was blocked but should be connected"],
                ("without ingress rules denies everything",))
    # namespace AND pod in one peer: only y/a may connect
    lab.mistake(check, [isolate({"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                           "podSelector": {"matchLabels": {"pod": "a"}}}]})],
                ["y/b → y/a:80 was blocked but should be connected"], ("BOTH (AND)",))
    # pods of y carry no label ns: the policy selects nobody
    lab.mistake(check, [isolate({"from": [{"podSelector": {}}]},
                                selector={"matchLabels": {"ns": "y"}})],
                ["y/a is not isolated for ingress"], ("podSelector: {} in namespace y",))
    # TCP 80 only
    lab.mistake(check, [isolate({"from": [{"podSelector": {}}], "ports": [{"port": 80}]})],
                ["on UDP 81 it is not", "y/a → y/b:81/udp was blocked"], ("leave `ports` out",))
    lab.solve(check)
    assert lab.one(check).passed


def test_ipblock_external_mistakes_are_named(lab):
    check = "ipblock-external"
    r = lab.one(check)
    assert not r.passed and "serve_internet(c)" in r.hint, r.summary()
    serve_internet(lab.c)
    serve_internet(lab.c)  # again: nothing changes
    r = lab.one(check)  # frontend's egress is open: every address out there answers
    assert not r.passed and f"{OTHER_IP}:8080 (another site) connected" in r.message
    assert "not isolated at all" in r.hint, r.summary()
    lab.solve("frontend-api", "egress-dns")

    def payments(cidr: str = f"{PROVIDER_IP}/32", ports: Any = ({"port": 8080},),
                 types: Any = ("Egress",), selector: Any = None) -> dict[str, Any]:
        rule: dict[str, Any] = {"to": [{"ipBlock": {"cidr": cidr}}]}
        if ports:
            rule["ports"] = list(ports)
        return policy("frontend-to-payments", "shop", policyTypes=list(types),
                      podSelector=selecting("frontend") if selector is None else selector,
                      egress=[rule])

    # a /24: every address of the data centre's first 256
    lab.mistake(check, [payments(f"{PROVIDER_IP.rsplit('.', 1)[0]}.0/24")],
                [f"{OTHER_IP}:8080 (another site) connected"], ("/32 is exactly one address",))
    # no ports: the external resolver's port 53 too
    lab.mistake(check, [payments(ports=())], [f"{PROVIDER_IP}:53 connected"],
                ("without `ports` allows every port",))
    # policyTypes Ingress: the egress rule is ignored
    lab.mistake(check, [payments(types=["Ingress"])], [f"{PROVIDER_IP}:8080 is blocked"],
                ("policyTypes", "Egress"))
    # the whole shop: api's egress is isolated too
    lab.mistake(check, [payments(selector={})],
                [f"shop/api → {OTHER_IP}:8080 is blocked", "more pods than frontend"])
    lab.solve(check)
    assert lab.one(check).passed


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name)
        assert not r.passed and "cluster" in r.hint, r.summary()
