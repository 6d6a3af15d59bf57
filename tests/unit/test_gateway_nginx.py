"""The Gateway API controller's pure part: hostname intersection, attachment, status conditions and
the nginx config (every config rendered here goes through the real `nginx -t`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab_kit import gateway as gw
from lab_kit import gateway_nginx as gn
from lab_kit import pki

CLASS = gw.parse_gateway_class("nginx", {}, {"controllerName": gn.CONTROLLER_NAME})
OTHER_CLASS = gw.parse_gateway_class("other", {}, {"controllerName": "example.com/other"})


def gateway(listeners: list[dict[str, Any]], name: str = "gw", cls: str = "nginx") -> gw.Gateway:
    return gw.parse_gateway("default", name, {}, {"gatewayClassName": cls, "listeners": listeners})


def route(rules: list[dict[str, Any]], name: str = "r", namespace: str = "default",
          hostnames: list[str] | None = None, parent: dict[str, Any] | None = None
          ) -> gw.HTTPRoute:
    spec: dict[str, Any] = {"parentRefs": [parent or {"name": "gw", "namespace": "default"}],
                            "rules": rules}
    if hostnames:
        spec["hostnames"] = hostnames
    return gw.parse_httproute(namespace, name, {}, spec)


HTTP = [{"name": "http", "protocol": "HTTP", "port": 80}]
SVC = {f"default/{n}": {"spec": {"name": n, "namespace": "default", "type": "ClusterIP",
                                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
       for n in ("web", "canary", "empty")}
SLICES = {n: {"metadata": {"namespace": "default",
                           "labels": {"kubernetes.io/service-name": n}},
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
              "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]}
          for n, ip in (("web", "10.244.1.5"), ("canary", "10.244.2.6"))}


def render(tmp_path: Path, gateways: list[gw.Gateway], routes: list[gw.HTTPRoute],
           secrets: dict[str, Any] | None = None, address: str | None = "172.18.255.1",
           namespaces: dict[str, dict[str, str]] | None = None,
           grants: list[gw.ReferenceGrant] | None = None) -> gn.Result:
    res = gn.render([CLASS, OTHER_CLASS], [(g, float(i)) for i, g in enumerate(gateways)],
                    [(r, float(i)) for i, r in enumerate(routes)], SVC, SLICES, secrets or {},
                    namespaces or {"default": {}}, address=address, prefix=tmp_path,
                    check_cert=pki.check_tls_pair, grants=grants or [])
    _nginx_t(tmp_path, res)
    return res


def _nginx_t(d: Path, res: gn.Result) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (scripts/setup.sh installs it)")
    for sub in ("certs", "tmp"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    crt, key = pki.fake_certificate()
    (d / "certs" / "default-fake-certificate.pem").write_bytes(crt + key)
    for n, c in res.files.items():
        (d / "certs" / n).write_bytes(c)
    (d / "nginx.conf").write_text(res.conf)
    t = subprocess.run(["nginx", "-t", "-q", "-p", str(d), "-c", str(d / "nginx.conf")],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr + res.conf


def conds(obj: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["conditions"]}


@pytest.mark.parametrize(("listener", "hosts", "want"), [
    (None, [], [None]),
    ("a.example.com", [], ["a.example.com"]),
    (None, ["a.example.com"], ["a.example.com"]),
    ("*.example.com", ["a.example.com", "a.b.example.com", "example.com"],
     ["a.example.com", "a.b.example.com"]),  # a Gateway wildcard covers one or more labels
    ("a.example.com", ["*.example.com"], ["a.example.com"]),
    ("*.example.com", ["*.a.example.com", "*.example.com"], ["*.a.example.com", "*.example.com"]),
    ("a.example.com", ["b.example.com"], []),
])
def test_hostname_intersection(listener: str | None, hosts: list[str],
                               want: list[str | None]) -> None:
    assert gn.intersect(listener, hosts) == want


def test_precedence_exact_prefix_method_headers_query_then_age() -> None:
    r = route([{"matches": [
        {"path": {"type": "PathPrefix", "value": "/"}},
        {"path": {"type": "PathPrefix", "value": "/api"}, "queryParams": [
            {"name": "v", "value": "1"}]},
        {"path": {"type": "PathPrefix", "value": "/api"}, "headers": [
            {"name": "a", "value": "1"}]},
        {"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"},
        {"path": {"type": "PathPrefix", "value": "/api/v1"}},
        {"path": {"type": "Exact", "value": "/api"}}]}])
    cands = [gn._Candidate(r, 0.0, 0, i, m, 0) for i, m in enumerate(r.rules[0].matches)]
    order = [c.match_index for c in sorted(cands, key=gn._precedence)]
    assert order == [5, 4, 3, 2, 1, 0]
    # a location gets every match that fits all of its requests, best first
    loc = gn._location_candidates("", "/api/", cands)
    assert [c.match_index for c in loc] == [3, 2, 1, 0]
    assert [c.match_index for c in gn._location_candidates("=", "/api", cands)] == [5, 3, 2, 1, 0]


def test_a_typical_gateway_is_accepted_and_programmed(tmp_path: Path) -> None:
    res = render(tmp_path, [gateway(HTTP)], [route([{"backendRefs": [
        {"name": "web", "port": 80, "weight": 9}, {"name": "canary", "port": 80, "weight": 1}]}],
        hostnames=["shop.example.com"])])
    assert conds(res.classes["nginx"]) == {"Accepted": ("True", "Accepted")}
    assert "other" not in res.classes  # another controller's class is not ours to touch
    g = res.gateways["default/gw"]
    assert conds(g) == {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert g["addresses"] == [{"type": "IPAddress", "value": "172.18.255.1"}]
    [ls] = g["listeners"]
    assert ls["attachedRoutes"] == 1 and ls["supportedKinds"] == [gn.HTTPROUTE_KIND]
    assert conds(ls) == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
                         "Programmed": ("True", "Programmed"),
                         "Conflicted": ("False", "NoConflicts")}
    [parent] = res.routes["default/r"]["parents"]
    assert conds(parent) == {"Accepted": ("True", "Accepted"),
                             "ResolvedRefs": ("True", "ResolvedRefs")}
    assert "split_clients $request_id $lk_split_0 {" in res.conf
    assert "90.00% default_web_80;" in res.conf and "* default_canary_80;" in res.conf
    [row] = res.table
    assert row.action == "default/web:80 90%, default/canary:80 10%"
    assert row.endpoints == ("10.244.1.5:8080", "10.244.2.6:8080")


def test_no_address_yet_and_gateways_of_other_classes(tmp_path: Path) -> None:
    res = render(tmp_path, [gateway(HTTP), gateway(HTTP, "theirs", "other")], [], address=None)
    assert conds(res.gateways["default/gw"])["Programmed"] == ("False", "AddressNotAssigned")
    assert "default/theirs" not in res.gateways


def test_listener_problems_are_in_the_listener_status(tmp_path: Path) -> None:
    g = gateway([
        {"name": "tcp", "protocol": "TCP", "port": 9000},
        {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "s.example.com",
         "tls": {"certificateRefs": [{"name": "missing"}]}},
        {"name": "kinds", "protocol": "HTTP", "port": 80,
         "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}},
        {"name": "clash", "protocol": "HTTPS", "port": 80, "hostname": "x.example.com",
         "tls": {"certificateRefs": [{"name": "missing"}]}}])
    res = render(tmp_path, [g], [])
    ls = {x["name"]: conds(x) for x in res.gateways["default/gw"]["listeners"]}
    assert ls["tcp"]["Accepted"] == ("False", "UnsupportedProtocol")
    assert ls["tcp"]["Programmed"] == ("False", "Invalid")
    assert ls["https"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert ls["https"]["Programmed"] == ("False", "Invalid")
    assert ls["kinds"]["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert ls["clash"]["Conflicted"] == ("True", "ProtocolConflict")


def test_https_listener_with_a_good_secret(tmp_path: Path) -> None:
    ca = pki.LabCA.load_or_create(tmp_path / "ca", name="t")
    doc = ca.tls_secret("tls", hosts=["s.example.com"])
    from lab_kit.ingress import parse_secret
    sec = parse_secret("default", "tls", {}, doc)
    g = gateway([{"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "s.example.com",
                  "tls": {"certificateRefs": [{"name": "tls"}]}}])
    res = render(tmp_path / "p", [g], [route([{"backendRefs": [{"name": "web", "port": 80}]}])],
                 secrets={"default/tls": sec})
    assert conds(res.gateways["default/gw"]["listeners"][0])["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
    assert "listen 443 ssl;" in res.conf and "default-tls.pem" in res.conf


def test_routes_that_do_not_attach(tmp_path: Path) -> None:
    g = gateway([{"name": "http", "protocol": "HTTP", "port": 80, "hostname": "a.example.com"}])
    rules = [{"backendRefs": [{"name": "web", "port": 80}]}]
    res = render(tmp_path, [g], [
        route(rules, "no-gw", parent={"name": "nope"}),
        route(rules, "section", parent={"name": "gw", "sectionName": "https"}),
        route(rules, "other-ns", namespace="team", parent={"name": "gw", "namespace": "default"}),
        route(rules, "host", hostnames=["b.example.com"]),
        route([{"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9]+"}}],
                "backendRefs": [{"name": "web", "port": 80}]}], "regex"),
        route([{"backendRefs": [{"name": "nosuch", "port": 80}, {"name": "web", "port": 81}]}],
              "refs"),
    ], namespaces={"default": {}, "team": {}})

    def accepted(key: str) -> tuple[str, str]:
        return conds(res.routes[key]["parents"][0])["Accepted"]
    assert accepted("default/no-gw") == ("False", "NoMatchingParent")
    assert accepted("default/section") == ("False", "NoMatchingParent")
    assert accepted("team/other-ns") == ("False", "NotAllowedByListeners")
    assert accepted("default/host") == ("False", "NoMatchingListenerHostname")
    assert accepted("default/regex") == ("False", "UnsupportedValue")
    refs = res.routes["default/refs"]["parents"][0]
    assert conds(refs) == {"Accepted": ("True", "Accepted"),
                           "ResolvedRefs": ("False", "BackendNotFound")}
    assert res.gateways["default/gw"]["listeners"][0]["attachedRoutes"] == 1


def test_selector_namespaces(tmp_path: Path) -> None:
    g = gateway([{"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {
        "namespaces": {"from": "Selector", "selector": {"matchLabels": {"shared": "yes"}}}}}])
    rules = [{"backendRefs": [{"name": "web", "port": 80}]}]
    parent = {"name": "gw", "namespace": "default"}
    res = render(tmp_path, [g], [route(rules, "in", "a", parent=parent),
                                 route(rules, "out", "b", parent=parent)],
                 namespaces={"default": {}, "a": {"shared": "yes"}, "b": {}})
    assert conds(res.routes["a/in"]["parents"][0])["Accepted"][0] == "True"
    assert conds(res.routes["b/out"]["parents"][0])["Accepted"] == \
        ("False", "NotAllowedByListeners")


def test_filters_render_to_valid_nginx(tmp_path: Path) -> None:
    r = route([
        {"matches": [{"path": {"type": "PathPrefix", "value": "/h"},
                      "headers": [{"name": "X-Env", "value": "a$b\"c"}],
                      "queryParams": [{"name": "v", "value": "2"}], "method": "POST"}],
         "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
             "set": [{"name": "X-Set", "value": "$x"}], "add": [{"name": "X-Add", "value": "y"}],
             "remove": ["X-Rm"]}},
                     {"type": "URLRewrite", "urlRewrite": {"hostname": "in.example.com", "path": {
                         "type": "ReplaceFullPath", "replaceFullPath": "/new"}}}],
         "backendRefs": [{"name": "web", "port": 80}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/r"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "port": 8443, "path": {
                 "type": "ReplacePrefixMatch", "replacePrefixMatch": "/s"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/z"}}],
         "backendRefs": [{"name": "web", "port": 80, "weight": 0}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/e"}}],
         "backendRefs": [{"name": "empty", "port": 80}]},
    ])
    res = render(tmp_path, [gateway(HTTP)], [r])
    assert '"a${lk_dollar}b\\"c"' in res.conf  # `$` stays literal, quotes escaped
    assert "rewrite ^/r(/.*)?$ https://$host:8443/s$1 redirect;" in res.conf
    assert "map $http_x_add $lk_pre_h_x_add {" in res.conf
    actions = {row.path: row.action for row in res.table}
    assert actions["PathPrefix /z"] == "500 (no backend with a weight)"
    assert "no-ready-endpoints" in res.conf


def test_a_weighted_rule_in_several_locations_has_one_split(tmp_path: Path) -> None:
    # the weighted PathPrefix / rule is the fallback of location `= /x` too
    res = render(tmp_path, [gateway(HTTP)], [route([
        {"backendRefs": [{"name": "web", "port": 80, "weight": 3},
                         {"name": "canary", "port": 80, "weight": 1}]},
        {"matches": [{"path": {"type": "Exact", "value": "/x"}, "method": "POST"}],
         "backendRefs": [{"name": "canary", "port": 80}]}])])
    assert res.conf.count("split_clients") == 1
    assert res.conf.count("set $lk_up $lk_split_0;") == 2


def grant(namespace: str, from_ns: str, from_kind: str = "HTTPRoute", to_kind: str = "Service",
          name: str | None = None) -> gw.ReferenceGrant:
    to: dict[str, Any] = {"group": "", "kind": to_kind}
    if name:
        to["name"] = name
    return gw.parse_reference_grant(namespace, "g", {}, {
        "from": [{"group": gw.GROUP, "kind": from_kind, "namespace": from_ns}], "to": [to]})


def test_a_backend_in_another_namespace_needs_a_reference_grant(tmp_path: Path) -> None:
    g = gateway([{"name": "http", "protocol": "HTTP", "port": 80,
                  "allowedRoutes": {"namespaces": {"from": "All"}}}])
    r = route([{"backendRefs": [{"name": "web", "namespace": "default", "port": 80}]}],
              "cross", namespace="team", parent={"name": "gw", "namespace": "default"})
    nss = {"default": {}, "team": {}}

    def resolved(res: gn.Result) -> tuple[str, str]:
        return conds(res.routes["team/cross"]["parents"][0])["ResolvedRefs"]

    # no grant: not permitted, and the rule answers 500 rather than proxying
    res = render(tmp_path / "none", [g], [r], namespaces=nss)
    assert resolved(res) == ("False", "RefNotPermitted")
    assert "default_web_80" not in res.conf
    assert [row.action for row in res.table] == ["500 (RefNotPermitted default/web:80)"]
    # a grant for another kind, another source namespace, another name: still not
    for wrong in (grant("default", "team", from_kind="Gateway"), grant("default", "other"),
                  grant("default", "team", name="canary"), grant("team", "team")):
        assert resolved(render(tmp_path / "wrong", [g], [r], namespaces=nss,
                               grants=[wrong])) == ("False", "RefNotPermitted")
    # the Service's namespace lets team's HTTPRoutes refer to it (to every Service, or to web)
    for ok in (grant("default", "team"), grant("default", "team", name="web")):
        res = render(tmp_path / "ok", [g], [r], namespaces=nss, grants=[ok])
        assert resolved(res) == ("True", "ResolvedRefs")
        assert "default_web_80" in res.conf and res.table[0].action.startswith("default/web:80")


def test_a_certificate_in_another_namespace_needs_a_reference_grant(tmp_path: Path) -> None:
    ca = pki.LabCA.load_or_create(tmp_path / "ca", name="t")
    from lab_kit.ingress import parse_secret
    sec = parse_secret("certs", "tls", {}, ca.tls_secret("tls", "certs", hosts=["s.example.com"]))
    g = gateway([{"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "s.example.com",
                  "tls": {"certificateRefs": [{"name": "tls", "namespace": "certs"}]}}])
    rt = route([{"backendRefs": [{"name": "web", "port": 80}]}])

    def listener(grants: list[gw.ReferenceGrant]) -> dict[str, tuple[str, str]]:
        res = render(tmp_path / "p", [g], [rt], secrets={"certs/tls": sec},
                     namespaces={"default": {}, "certs": {}}, grants=grants)
        return conds(res.gateways["default/gw"]["listeners"][0])

    assert listener([])["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert listener([grant("certs", "default", from_kind="Gateway", to_kind="Service")])[
        "ResolvedRefs"] == ("False", "RefNotPermitted")
    assert listener([grant("certs", "default", from_kind="Gateway", to_kind="Secret")])[
        "ResolvedRefs"] == ("True", "ResolvedRefs")
