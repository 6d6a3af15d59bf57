"""Gateway API on a real cluster: the nginx-based controller (NGINX Gateway Fabric's role) behind a
LoadBalancer Service, configured from Gateways and HTTPRoutes, reached from the `external`
host; every route checked through agnhost's answers, every status as upstream defines it."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from http_backends import backend, who

from lab_kit import config
from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.pytest_plugin import unique_name

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
CONTROLLER = REPO / "labs" / "manifests" / "nginx-gateway.yaml"
GW = "gateway.networking.k8s.io/v1"


def ref(name: str, weight: int | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, "port": 80}
    if weight is not None:
        r["weight"] = weight
    return r


def route(name: str, rules: list[dict[str, Any]], hostnames: list[str] | None = None,
          namespace: str = "default", parent: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [parent or {"name": "shop-gw"}], "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GW, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


GATEWAY = {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "shop-gw"},
           "spec": {"gatewayClassName": "nginx", "listeners": [
               {"name": "http", "protocol": "HTTP", "port": 80},
               {"name": "https", "protocol": "HTTPS", "port": 443,
                "hostname": "secure.example.com",
                "tls": {"certificateRefs": [{"name": "secure-tls"}]}}]}}

SHOP = route("shop", hostnames=["shop.example.com"], rules=[
    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
     "backendRefs": [ref("web")]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
     "backendRefs": [ref("api")]},
    {"matches": [{"path": {"type": "Exact", "value": "/docs/hostname"}}],
     "backendRefs": [ref("docs")]},
    # header, query and method matches on the same prefix: more specific wins
    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                  "headers": [{"name": "X-Env", "value": "canary"}]}],
     "backendRefs": [ref("canary")]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                  "queryParams": [{"name": "v", "value": "2"}]}],
     "backendRefs": [ref("docs")]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}, "method": "POST"}],
     "backendRefs": [ref("api")]},
])
CANARY = route("canary-split", hostnames=["canary.example.com"], rules=[
    {"backendRefs": [ref("web", 90), ref("canary", 10)]}])
FILTERS = route("filters", hostnames=["filters.example.com"], rules=[
    {"matches": [{"path": {"type": "PathPrefix", "value": "/headers"}}],
     "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
         "set": [{"name": "X-Set", "value": "from-the-route"}],
         "add": [{"name": "X-Add", "value": "added"}],
         "remove": ["X-Drop"]}},
                 {"type": "URLRewrite", "urlRewrite": {
                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
     "backendRefs": [ref("web")]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
     "filters": [{"type": "RequestRedirect", "requestRedirect": {
         "hostname": "shop.example.com", "statusCode": 301,
         "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}],
     "filters": [{"type": "URLRewrite", "urlRewrite": {
         "hostname": "internal.example.com",
         "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
     "backendRefs": [ref("web")]},
    {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
     "backendRefs": [ref("no-such-service")]},
])
SECURE = route("secure", hostnames=["secure.example.com"], rules=[{"backendRefs": [ref("docs")]}],
               parent={"name": "shop-gw", "sectionName": "https"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    conf = config.default_config(unique_name("gw"), workers=2)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp("gateway_state"))
    try:
        c.apply(CONTROLLER)
        c.apply(backend("web", 2) + backend("api") + backend("docs") + backend("canary"))
        c.apply([c.lab_ca().tls_secret("secure-tls", hosts=["secure.example.com"]), GATEWAY,
                 SHOP, CANARY, FILTERS, SECURE])
        yield c
    finally:
        c.down()


def lb_ip(c: Cluster) -> str:
    return c.service("nginx-gateway", "nginx-gateway")["status"]["loadBalancer"]["ingress"][0][
        "ip"]


def curl(c: Cluster, reqs: list[str], fmt: str = "%{http_code}") -> list[tuple[str, str]]:
    """(curl -w output, body) of each request ("URL [curl options]"), from the external host."""
    ip = lb_ip(c)
    script = []
    for r in reqs:
        url, _, extra = r.partition(" ")
        host = url.split("/")[2]
        port = 443 if url.startswith("https") else 80
        script.append(f"echo \"$(curl -s --max-time 5 --resolve {host}:{port}:{ip} {extra} "
                      f"-w '|{fmt}' '{url}' | tr -d '\\r\\n')\"")
    out = c.external.sh("\n".join(script), check=False).splitlines()
    res = []
    for line in out[:len(reqs)]:
        body, _, w = line.rpartition("|")
        res.append((w, body))
    return res


def test_routing_table_matches_and_precedence(cluster: Cluster) -> None:
    cases = [
        ("http://shop.example.com/hostname", "web"),
        ("http://shop.example.com/api/hostname", "api"),
        ("http://shop.example.com/apix/hostname", "web"),  # PathPrefix /api is not /apix
        ("http://shop.example.com/docs/hostname", "docs"),  # Exact
        ("http://shop.example.com/docs/hostname/x/hostname", "web"),  # ...and only exactly
        ("http://shop.example.com/api/hostname -H X-Env:canary", "canary"),  # header match
        ("http://shop.example.com/api/hostname?v=2", "docs"),  # query match
        ("http://shop.example.com/api/hostname?v=2 -H X-Env:canary", "canary"),  # headers first
        ("http://shop.example.com/admin/hostname -X POST", "api"),  # method match
        ("http://shop.example.com/admin/hostname", "web"),  # GET falls back to PathPrefix /
        ("http://nobody.example.com/hostname", "404 Not Found"),  # no route for the host
    ]
    got = curl(cluster, [u for u, _ in cases])
    assert {u: who(body) for (u, _), (_, body) in zip(cases, got, strict=True)} == dict(cases)


def test_weighted_canary_90_10_over_600_requests(cluster: Cluster) -> None:
    n = 600
    ip = lb_ip(cluster)
    # one curl process, one new connection per request
    script = (f"for i in $(seq {n}); do curl -s --max-time 5 --resolve "
              f"canary.example.com:80:{ip} http://canary.example.com/hostname; echo; done")
    counts = Counter(who(line.strip()) for line in cluster.external.sh(script).splitlines()
                     if line.strip())
    assert sum(counts.values()) == n and set(counts) == {"web", "canary"}, counts
    # binomial(600, 0.1): mean 60, sd 7.3; 4.5 sd either side (27..93) fails a 50/50 or
    # 100/0 split and fails a fair 90/10 once in ~99,000 runs (exact binomial tails, 1.0e-5)
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(counts["canary"] - n * 0.1) <= 4.5 * sd, counts
    table = [r for r in cluster.gateway_routes() if r["route"] == "default/canary-split"]
    assert table and table[0]["action"] == "default/web:80 90%, default/canary:80 10%"


def test_request_header_modifier_and_rewrite(cluster: Cluster) -> None:
    h = "-H X-Set:client -H X-Add:mine -H X-Drop:secret"
    got = curl(cluster, [
        f"http://filters.example.com/headers/header?key=X-Set {h}",
        f"http://filters.example.com/headers/header?key=X-Add {h}",
        "http://filters.example.com/headers/header?key=X-Add",
        f"http://filters.example.com/headers/header?key=X-Drop {h}",
        "http://filters.example.com/shop/echo?msg=rewritten",  # /shop/echo -> /echo
        "http://filters.example.com/shop/header?key=Host",
        "http://filters.example.com/missing/hostname",
    ])
    assert [b for _, b in got] == ["from-the-route", "mine,added", "added", "",
                                   "rewritten", "internal.example.com",
                                   "500 Internal Server Error: invalid backendRef"]
    assert [w for w, _ in got] == ["200"] * 6 + ["500"]


def test_redirect(cluster: Cluster) -> None:
    got = curl(cluster, ["http://filters.example.com/old/page?x=1"],
               "%{http_code} %{redirect_url}")
    assert got[0][0] == "301 http://shop.example.com/new/page?x=1"


def test_https_listener_with_a_lab_ca_certificate(cluster: Cluster) -> None:
    ca = cluster.lab_ca().cert_path
    got = curl(cluster, [f"https://secure.example.com/hostname --cacert {ca}",
                         "https://secure.example.com/hostname"])
    assert got[0][0] == "200" and who(got[0][1]) == "docs"
    assert got[1][0] == "000"  # without the CA: curl refuses the certificate


def test_status_conditions(cluster: Cluster) -> None:
    gc = cluster.get_gateway_object("GatewayClass", "nginx")
    assert [(c["type"], c["status"]) for c in gc["status"]["conditions"]] == [("Accepted", "True")]
    g = cluster.get_gateway_object("Gateway", "shop-gw")
    conds = {c["type"]: (c["status"], c["reason"]) for c in g["status"]["conditions"]}
    assert conds == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert g["status"]["addresses"] == [{"type": "IPAddress", "value": lb_ip(cluster)}]
    listeners = {ls["name"]: ls for ls in g["status"]["listeners"]}
    assert listeners["http"]["attachedRoutes"] == 3 and listeners["https"]["attachedRoutes"] == 1
    assert all(c["lastTransitionTime"] for c in g["status"]["conditions"])
    shop = cluster.get_gateway_object("HTTPRoute", "shop")
    [parent] = shop["status"]["parents"]
    assert parent["controllerName"] == "gateway.nginx.org/nginx-gateway-controller"
    assert [(c["type"], c["status"]) for c in parent["conditions"]] == [
        ("Accepted", "True"), ("ResolvedRefs", "True")]
    [parent] = cluster.get_gateway_object("HTTPRoute", "filters")["status"]["parents"]
    resolved = next(c for c in parent["conditions"] if c["type"] == "ResolvedRefs")
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert 'Service "default/no-such-service" not found' in resolved["message"]


def test_routes_that_do_not_attach_say_why(cluster: Cluster) -> None:
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
                   route("wrong-section", [{"backendRefs": [ref("web")]}],
                         parent={"name": "shop-gw", "sectionName": "nope"}),
                   route("other-ns", [{"backendRefs": [ref("web")]}], namespace="other",
                         parent={"name": "shop-gw", "namespace": "default"}),
                   route("wrong-host", [{"backendRefs": [ref("web")]}],
                         hostnames=["elsewhere.example.org"],
                         parent={"name": "shop-gw", "sectionName": "https"})])
    try:
        def accepted(name: str, ns: str = "default") -> tuple[str, str]:
            [p] = cluster.get_gateway_object("HTTPRoute", name, ns)["status"]["parents"]
            c = next(c for c in p["conditions"] if c["type"] == "Accepted")
            return c["status"], c["reason"]
        assert accepted("wrong-section") == ("False", "NoMatchingParent")
        assert accepted("other-ns", "other") == ("False", "NotAllowedByListeners")
        assert accepted("wrong-host") == ("False", "NoMatchingListenerHostname")
    finally:
        cluster.delete([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
                        route("wrong-section", []), route("wrong-host", [])])
    assert "default/wrong-host" not in (cluster.state.get("httproutes") or {})
    assert "other/other-ns" not in (cluster.state.get("httproutes") or {})


def test_get_httproute_yaml_from_the_cli(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lab_kit import cli
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(cluster.root))
    assert cli.main(["get", "httproute", "filters", "-o", "yaml", "--name", cluster.name]) == 0
    [obj] = list(yaml.safe_load_all(capsys.readouterr().out))
    assert obj["kind"] == "HTTPRoute" and obj["apiVersion"] == GW
    reasons = [c["reason"] for c in obj["status"]["parents"][0]["conditions"]]
    assert reasons == ["Accepted", "BackendNotFound"]
    assert cli.main(["get", "gateway", "--name", cluster.name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert lines[1].split()[:4] == ["shop-gw", "nginx", lb_ip(cluster), "True"]
    assert cli.main(["get", "gatewayclass", "--name", cluster.name]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == [
        "nginx", "gateway.nginx.org/nginx-gateway-controller", "True"]


def test_an_invalid_route_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    before = json.dumps(cluster.state, sort_keys=True)
    conf_before = _nginx_conf(cluster)
    bad = route("bad", [{"matches": [{"path": {"type": "PathPrefix", "value": "no-slash"}}],
                         "backendRefs": [ref("web")]}])
    with pytest.raises(ConfigError) as e:
        cluster.apply([bad])
    assert e.value.field == "spec.rules[0].matches[0].path.value"
    assert json.dumps(cluster.state, sort_keys=True) == before
    assert _nginx_conf(cluster) == conf_before


def _nginx_conf(c: Cluster) -> str:
    return next((c.store.dir / "nginx-gateway").glob("*/nginx.conf")).read_text()


def test_a_backend_in_another_namespace_needs_a_reference_grant(cluster: Cluster) -> None:
    team = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    cross = route("cross", [{"backendRefs": [{"name": "teamweb", "namespace": "team",
                                              "port": 80}]}], hostnames=["cross.example.com"])
    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "routes-from-default", "namespace": "team"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                "namespace": "default"}],
                      "to": [{"group": "", "kind": "Service", "name": "teamweb"}]}}
    cluster.apply([team, *backend("teamweb", namespace="team"), cross])
    try:
        def resolved() -> tuple[str, str]:
            [p] = cluster.get_gateway_object("HTTPRoute", "cross", "default")["status"][
                "parents"]
            c = next(c for c in p["conditions"] if c["type"] == "ResolvedRefs")
            return c["status"], c["reason"]
        url = ["http://cross.example.com/hostname"]
        assert resolved() == ("False", "RefNotPermitted")
        assert curl(cluster, url)[0][0] == "500"  # never proxied without the grant
        assert cluster.apply(grant) == [
            "referencegrant.gateway.networking.k8s.io/routes-from-default created"]
        assert resolved() == ("True", "ResolvedRefs")
        assert [(w, who(b)) for w, b in curl(cluster, url)] == [("200", "teamweb")]
        cluster.delete(grant)
        assert resolved() == ("False", "RefNotPermitted")
        assert curl(cluster, url)[0][0] == "500"
    finally:
        cluster.delete([cross, team])
