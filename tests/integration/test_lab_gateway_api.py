"""The checks of lab 13 (Gateway API) against the real kernel (root).

A cluster `gateway` is set up the way the notebook's cells do it: the Gateway controller of
nginx-gateway.yaml, the store of gateway-store.yaml (store-v1, store-v2, reviews) and the
HTTPRoute `store/hello` waiting for its Gateway; before exercise `fix-route`, the broken route
`store/reviews`. The reference solutions run one exercise at a time; further tests apply what a
learner plausibly writes instead (a Gateway of an unknown class or in the wrong namespace,
allowedRoutes left at Same, a listener hostname without the wildcard or on port 8080; a route
without weights, with swapped or 80/20 weights, with a backend name or port that does not exist,
with a parentRef missing its namespace or without hostnames; a header rule in a route of its
own without hostnames, two matches where one was meant, a header value in the wrong case, the
weighted rule replaced; the broken route half fixed, the reasons not named) and expect the
check to fail with a message naming what is wrong and a hint naming the mistake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.labs.gateway_api import conditions, measure_split

pytestmark = pytest.mark.root

LAB_ID = "13-gateway-api"
STEPS = [("gateway", ["gateway"]), ("canary", ["canary"]),
         ("header-routing", ["header-routing"]), ("fix-route", ["fix-route"])]
GW = "gateway.networking.k8s.io/v1"
PARENT = {"name": "shared-gateway", "namespace": "infra"}
# the notebook's two routes, as its cells apply them
HELLO = {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "hello", "namespace": "store"},
         "spec": {"parentRefs": [PARENT], "hostnames": ["hello.example.com"],
                  "rules": [{"backendRefs": [{"name": "store-v1", "port": 80}]}]}}
BROKEN = {"apiVersion": GW, "kind": "HTTPRoute",
          "metadata": {"name": "reviews", "namespace": "store"},
          "spec": {"parentRefs": [{**PARENT, "sectionName": "https"}],
                   "hostnames": ["reviews.example.com"],
                   "rules": [{"backendRefs": [{"name": "review", "port": 80}]}]}}
HEADER_MATCH = {"headers": [{"name": "X-Canary", "value": "always"}]}


def gateway(namespace: str = "infra", cls: str = "nginx", hostname: str = "*.example.com",
            port: int = 80, allowed: dict[str, Any] | None = None) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "http", "protocol": "HTTP", "port": port,
                                "hostname": hostname}
    if allowed is not None:
        listener["allowedRoutes"] = {"namespaces": allowed}
    return {"apiVersion": GW, "kind": "Gateway",
            "metadata": {"name": "shared-gateway", "namespace": namespace},
            "spec": {"gatewayClassName": cls, "listeners": [listener]}}


def ref(name: str, weight: int | None = None, port: int = 80) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "port": port}
    if weight is not None:
        r["weight"] = weight
    return r


def route(rules: list[dict[str, Any]], name: str = "store",
          hostnames: tuple[str, ...] | None = ("store.example.com",),
          parent: dict[str, Any] = PARENT) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [parent], "rules": rules}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "store"},
            "spec": spec}


SPLIT = {"backendRefs": [ref("store-v1", 90), ref("store-v2", 10)]}
TO_V2 = {"matches": [HEADER_MATCH], "backendRefs": [ref("store-v2")]}


class Lab13(LabDriver):
    """The notebook's setup cells, its names (`c`, `conditions`, `measure_split`) and checks."""

    lab_id = LAB_ID
    answer_names = ("REASONS",)
    undo_mistakes = False  # each mistake's objects replace the last one's (the same names)

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/gateway.yaml", replace=True)
        c.apply("manifests/nginx-gateway.yaml")
        c.apply("manifests/gateway-store.yaml")
        c.apply(HELLO)
        self.ns: dict[str, Any] = {"c": c, "conditions": conditions,
                                   "measure_split": measure_split}

    def before(self, exercise: str) -> None:
        """The notebook's cells between the exercises."""
        if exercise == "fix-route":
            self.c.apply(BROKEN)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab13]:
    with lab_state(LAB_ID, "lkgw", tmp_path, monkeypatch):
        yield Lab13()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS, before_each=lab.before)
    table = {(r["hostname"], r["conditions"]): r["action"] for r in lab.c.gateway_routes()}
    assert table[("store.example.com", "")] == "store/store-v1:80 90%, store/store-v2:80 10%"
    assert table[("store.example.com", "header X-Canary=always")] == "store/store-v2:80"
    assert table[("reviews.example.com", "")] == "store/reviews:80"
    g = lab.c.get_gateway_object("Gateway", "shared-gateway", "infra")
    assert g["status"]["listeners"][0]["attachedRoutes"] == 3


def test_gateway_mistakes_are_named(lab):
    check = "gateway"
    selector = {"from": "Selector", "selector": {"matchLabels": {"shared-gateway-access": "true"}}}
    # in the app's namespace instead of the operator's
    lab.mistake(check, [gateway(namespace="store", allowed=selector)],
                ["no Gateway shared-gateway in namespace infra"], ("in the wrong namespace",),
                undo=True)
    # a class no controller here serves
    lab.mistake(check, [gateway(cls="nginx-gateway", allowed=selector)],
                ["is not accepted", "Pending"], ("gatewayClassName: nginx",), undo=True)
    # allowedRoutes left out: Same, and the route lives in store
    lab.mistake(check, [gateway()], ["does not attach", "NotAllowedByListeners"],
                ("defaults to Same", "shared-gateway-access"), undo=True)
    # a listener hostname without the wildcard
    lab.mistake(check, [gateway(hostname="example.com", allowed={"from": "All"})],
                ["NoMatchingListenerHostname"], ('"*.example.com"',), undo=True)
    # a port the controller's LoadBalancer Service does not forward
    lab.mistake(check, [gateway(port=8080, allowed={"from": "All"})],
                ["http://hello.example.com/hostname: no answer"],
                ("on port 8080", "forwards ports 80, 443 only"), undo=True)
    lab.solve(check)
    assert lab.one(check).passed


def test_canary_mistakes_are_named(lab):
    check = "canary"
    lab.solve("gateway")
    # no route yet, then one without hostnames
    r = lab.one(check)
    assert not r.passed and "no HTTPRoute names store.example.com" in r.message, r.summary()
    lab.mistake(check, [route([SPLIT], hostnames=None)], ["no HTTPRoute names"],
                ("has no hostnames", "hostnames: [store.example.com]"))
    # the Gateway is in infra, the route in store: a parentRef without namespace misses it
    lab.mistake(check, [route([SPLIT], parent={"name": "shared-gateway"})],
                ["not attached", "NoMatchingParent", 'Gateway "store/shared-gateway" not found'],
                ("namespace: infra",))
    # no weights: an even split
    lab.mistake(check, [route([{"backendRefs": [ref("store-v1"), ref("store-v2")]}])],
                ["store-v2 should answer 10%"], ("an even split", "weight: 90"))
    # weights swapped
    lab.mistake(check, [route([{"backendRefs": [ref("store-v1", 10), ref("store-v2", 90)]}])],
                ["store-v2 should answer 10%"], ("swapped",))
    # 80/20: close, but not within the binomial bounds
    lab.mistake(check, [route([{"backendRefs": [ref("store-v1", 80), ref("store-v2", 20)]}])],
                ["store-v2 should answer 10%", "60 to 146"], ("divided by the sum",))
    # a Service name that does not exist: status says so, and 10% of the users get 500
    summary = lab.mistake(
        check, [route([{"backendRefs": [ref("store-v1", 90), ref("store-v3", 10)]}])],
        ["ResolvedRefs=False", "BackendNotFound", 'Service "store/store-v3" not found', "500"],
        ("The Services in store are store-v1, store-v2, reviews",))
    assert "store-v1" in summary
    # the pods' port instead of the Service's
    lab.mistake(check, [route([{"backendRefs": [ref("store-v1", 90),
                                                 ref("store-v2", 10, port=8080)]}])],
                ["BackendNotFound", "has no port 8080"], ("the Service's port, 80",))
    lab.solve(check)
    assert lab.one(check).passed


def test_header_routing_mistakes_are_named(lab):
    check = "header-routing"
    lab.solve("gateway", "canary")
    # the header rule in a route of its own, without hostnames: it serves *.example.com
    lab.mistake(check, [route([TO_V2], name="store-canary", hostnames=None)],
                ["requests with 'X-Canary: always'", "store-v1"],
                ("serves hostname *.example.com, not store.example.com",), undo=True)
    # two matches (OR) where one was meant, the rule listed first: it catches everything
    lab.mistake(check, [route([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}},
                                            HEADER_MATCH], "backendRefs": [ref("store-v2")]},
                               SPLIT])],
                ["without the header", "takes every request"], ("alternatives (OR)",))
    # the header rule instead of the weighted one: requests without it match nothing
    lab.mistake(check, [route([TO_V2])], ["without the header", "404"],
                ("nginx found no rule",))
    # the value in another case: values compare exactly
    lab.mistake(check, [route([SPLIT, {"matches": [{"headers": [
        {"name": "X-Canary", "value": "Always"}]}], "backendRefs": [ref("store-v2")]}])],
                ["requests with 'X-Canary: always'"], ("its value exactly",))
    # the weights copied into the header rule
    lab.mistake(check, [route([SPLIT, {**SPLIT, "matches": [HEADER_MATCH]}])],
                ["requests with 'X-Canary: always'"], ("must be store-v2 alone",))
    lab.solve(check)
    assert lab.one(check).passed


def test_fix_route_mistakes_are_named(lab):
    check = "fix-route"
    lab.solve("gateway")
    lab.before(check)
    # untouched: the listener it names does not exist
    r = lab.one(check, REASONS=[])
    assert not r.passed and "NoMatchingParent" in r.message, r.summary()
    assert "sectionName 'https'" in r.message and "listener is named http" in r.hint
    rows = conditions(lab.c, "HTTPRoute", "reviews", "store")
    assert {(x[1], x[2], x[3]) for x in rows} == {("Accepted", "False", "NoMatchingParent"),
                                                   ("ResolvedRefs", "False", "BackendNotFound")}
    # the parent fixed, the Service's name not
    half = {**BROKEN, "spec": {**BROKEN["spec"], "parentRefs": [PARENT]}}
    lab.mistake(check, [half], ["ResolvedRefs=False", 'Service "store/review" not found'],
                ("reviews",), REASONS=[])
    # the route fixed, the reasons not named (or only one of them)
    lab.solve(check)
    lab.mistake(check, [], ["`REASONS`", "ResolvedRefs=False"], ("reason",),
                REASONS="NoMatchingParent")
    lab.mistake(check, [], ["`REASONS`"], ("reason",), REASONS=["…", "…"])
    assert lab.one(check, REASONS="nomatchingparent, backendnotfound").passed
    assert lab.one(check).passed


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name)
        assert not r.passed and "cluster" in r.hint, r.summary()
