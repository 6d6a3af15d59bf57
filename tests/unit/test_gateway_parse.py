"""Gateway API parsing: what the API server accepts with the v1.2 standard-channel CRDs, what it
refuses, and where the error points.

Each refused case checks the exact field path the error names, a recognisable part of the
message (upstream's CEL message where the CRD has one) and that a fix is offered. Nothing here
needs root.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from lab_kit import gateway as gw
from lab_kit.errors import ConfigError
from lab_kit.gateway import (
    GROUP,
    BackendRef,
    Filter,
    GatewayClass,
    HeaderModifier,
    LabelSelector,
    Listener,
    ParentRef,
    PathMatch,
    PathModifier,
    Redirect,
    Requirement,
    Rewrite,
    RouteKind,
    RouteMatch,
    RouteRule,
    SecretRef,
    ValueMatch,
    gateway_class_from_json,
    gateway_class_to_json,
    gateway_from_json,
    gateway_to_json,
    httproute_from_json,
    httproute_to_json,
    parse_gateway,
    parse_gateway_class,
    parse_httproute,
)

# --- manifests --------------------------------------------------------------------------------

CLASS: dict[str, Any] = {"controllerName": "lab-kit.dev/gateway-controller",
                         "description": "nginx in the lab",
                         "parametersRef": {"group": "", "kind": "ConfigMap", "name": "gw-params",
                                           "namespace": "infra"}}

GATEWAY: dict[str, Any] = {
    "gatewayClassName": "lab",
    "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
         "tls": {"certificateRefs": [{"name": "wild-tls"},
                                     {"name": "other", "namespace": "certs"}]},
         "allowedRoutes": {
             "namespaces": {"from": "Selector",
                            "selector": {"matchLabels": {"shared-gateway": "true"},
                                         "matchExpressions": [{"key": "env", "operator": "In",
                                                               "values": ["dev", "lab"]}]}},
             "kinds": [{"kind": "HTTPRoute"}]}},
    ],
}

ROUTE: dict[str, Any] = {
    "parentRefs": [{"name": "gw", "namespace": "infra", "sectionName": "https"},
                   {"name": "gw", "namespace": "infra", "sectionName": "http", "port": 80}],
    "hostnames": ["shop.example.com", "*.shop.example.com"],
    "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                      "headers": [{"name": "X-Canary", "value": "yes"},
                                  {"type": "RegularExpression", "name": "User-Agent",
                                   "value": ".*curl.*"}],
                      "queryParams": [{"name": "debug", "value": "1"}],
                      "method": "GET"}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "X-Env", "value": "lab"}],
                                                "add": [{"name": "X-Via", "value": "gw"}],
                                                "remove": ["X-Debug"]}}],
         "backendRefs": [{"name": "api-v1", "port": 80, "weight": 90},
                         {"name": "api-v2", "port": 8080, "weight": 10,
                          "namespace": "canary"}]},
        {"name": "old-site",
         "matches": [{"path": {"type": "Exact", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect",
                      "requestRedirect": {"scheme": "https", "hostname": "www.example.com",
                                          "path": {"type": "ReplaceFullPath",
                                                   "replaceFullPath": "/new"},
                                          "port": 443, "statusCode": 301}}]},
        {"matches": [{"path": {"value": "/app"}}],
         "filters": [{"type": "URLRewrite",
                      "urlRewrite": {"hostname": "app.internal",
                                     "path": {"type": "ReplacePrefixMatch",
                                              "replacePrefixMatch": "/"}}}],
         "backendRefs": [{"name": "app", "port": 8080}]},
        {"backendRefs": [{"name": "web", "port": 80}]},
    ],
}


def gclass(spec: Any) -> GatewayClass:
    return parse_gateway_class("lab", {"tier": "infra"}, spec, file="gw.yaml")


def gateway(spec: Any) -> Any:
    return parse_gateway("infra", "gw", {"app": "gw"}, spec, file="gw.yaml")


def route(spec: Any) -> Any:
    return parse_httproute("shop", "front", {"app": "front"}, spec, file="gw.yaml")


PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "class": (gclass, "GatewayClass/lab"),
    "gw": (gateway, "Gateway/infra/gw"),
    "route": (route, "HTTPRoute/shop/front"),
}


def refused(kind: str, spec: Any) -> ConfigError:
    parse, obj = PARSERS[kind]
    with pytest.raises(ConfigError) as ei:
        parse(spec)
    assert ei.value.obj == obj and ei.value.file == "gw.yaml"
    return ei.value


# --- valid objects ----------------------------------------------------------------------------

def test_gateway_class_parses() -> None:
    c = gclass(CLASS)
    assert c == GatewayClass(name="lab", controller_name="lab-kit.dev/gateway-controller",
                             description="nginx in the lab", labels={"tier": "infra"},
                             spec=CLASS)
    assert c.spec is not CLASS
    assert gclass({"controllerName": "example.com/a/b~c%20"}).description is None


def test_gateway_parses_with_defaults() -> None:
    g = gateway(GATEWAY)
    assert g.key == "infra/gw" and g.gateway_class == "lab" and g.labels == {"app": "gw"}
    assert g.listeners == (
        Listener(name="http", hostname=None, port=80, protocol="HTTP", tls_mode=None,
                 certificate_refs=(), allowed_from="Same", allowed_selector=None,
                 allowed_kinds=()),
        Listener(name="https", hostname="*.example.com", port=443, protocol="HTTPS",
                 tls_mode="Terminate",
                 certificate_refs=(SecretRef("", "Secret", "wild-tls", None),
                                   SecretRef("", "Secret", "other", "certs")),
                 allowed_from="Selector",
                 allowed_selector=LabelSelector((("shared-gateway", "true"),),
                                                (Requirement("env", "In", ("dev", "lab")),)),
                 allowed_kinds=(RouteKind(GROUP, "HTTPRoute"),)),
    )
    assert g.spec == GATEWAY and g.spec is not GATEWAY


def test_httproute_parses_with_defaults() -> None:
    r = route(ROUTE)
    assert r.key == "shop/front" and r.labels == {"app": "front"}
    assert r.parent_refs == (ParentRef(GROUP, "Gateway", "infra", "gw", "https", None),
                             ParentRef(GROUP, "Gateway", "infra", "gw", "http", 80))
    assert r.hostnames == ("shop.example.com", "*.shop.example.com")
    api, old, app, web = r.rules
    assert api == RouteRule(
        name=None,
        matches=(RouteMatch(PathMatch("PathPrefix", "/api"),
                            (ValueMatch("Exact", "X-Canary", "yes"),
                             ValueMatch("RegularExpression", "User-Agent", ".*curl.*")),
                            (ValueMatch("Exact", "debug", "1"),), "GET"),),
        filters=(Filter("RequestHeaderModifier", request_header_modifier=HeaderModifier(
            set=(("X-Env", "lab"),), add=(("X-Via", "gw"),), remove=("X-Debug",))),),
        backend_refs=(BackendRef("", "Service", "api-v1", "shop", 80, 90, ()),
                      BackendRef("", "Service", "api-v2", "canary", 8080, 10, ())))
    assert old == RouteRule(
        name="old-site", matches=(RouteMatch(PathMatch("Exact", "/old"), (), (), None),),
        filters=(Filter("RequestRedirect", request_redirect=Redirect(
            "https", "www.example.com", PathModifier("ReplaceFullPath", "/new"), 443, 301)),),
        backend_refs=())
    assert app == RouteRule(
        name=None, matches=(RouteMatch(PathMatch("PathPrefix", "/app"), (), (), None),),
        filters=(Filter("URLRewrite", url_rewrite=Rewrite(
            "app.internal", PathModifier("ReplacePrefixMatch", "/"))),),
        backend_refs=(BackendRef("", "Service", "app", "shop", 8080, 1, ()),))
    default_match = RouteMatch(PathMatch("PathPrefix", "/"), (), (), None)
    assert web.matches == (default_match,)
    assert r.spec == ROUTE and r.spec is not ROUTE


def test_route_defaults() -> None:
    default_match = RouteMatch(PathMatch("PathPrefix", "/"), (), (), None)
    r = route({"parentRefs": [{"name": "gw"}]})
    assert r.parent_refs == (ParentRef(GROUP, "Gateway", "shop", "gw", None, None),)
    assert r.rules == (RouteRule(None, (default_match,), (), ()),)  # the CRD's default rule
    assert route({"rules": []}).rules == ()
    # `matches: []` reads as "every request"; a match without path has the default path
    r = route({"rules": [{"matches": []}, {"matches": [{"method": "POST"}]}]})
    assert r.rules[0].matches == (default_match,)
    assert r.rules[1].matches == (RouteMatch(PathMatch("PathPrefix", "/"), (), (), "POST"),)
    redirect = route({"rules": [{"filters": [{"type": "RequestRedirect",
                                              "requestRedirect": {}}]}]}).rules[0].filters[0]
    assert redirect.request_redirect == Redirect(None, None, None, None, 302)


def test_backend_filters_and_minimal_filters_are_kept() -> None:
    r = route({"rules": [{"filters": [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow",
                                                                   "port": 80}}},
        {"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Auth",
                                                  "name": "a"}}],
        "backendRefs": [{"name": "web", "port": 80, "weight": 0, "filters": [
            {"type": "ResponseHeaderModifier",
             "responseHeaderModifier": {"remove": ["Server"]}}]}]}]})
    rule = r.rules[0]
    assert rule.filters == (Filter("RequestMirror"), Filter("ExtensionRef"))
    assert rule.backend_refs[0].weight == 0
    assert rule.backend_refs[0].filters == (Filter(
        "ResponseHeaderModifier", response_header_modifier=HeaderModifier((), (), ("Server",))),)


@pytest.mark.parametrize("listener", [
    {"name": "https", "port": 443, "protocol": "HTTPS"},  # the controller reports the missing tls
    {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
    {"name": "tcp", "port": 5432, "protocol": "TCP"},
    {"name": "custom", "port": 9000, "protocol": "example.com/myproto"},
    {"name": "lower", "port": 80, "protocol": "http"},  # matches the CRD's pattern
    {"name": "opts", "port": 443, "protocol": "HTTPS", "tls": {"options": {"a/b": "c"}}},
    {"name": "from-all", "port": 80, "protocol": "HTTP",
     "allowedRoutes": {"namespaces": {"from": "All"}}},
])
def test_listeners_the_crd_accepts(listener: dict[str, Any]) -> None:
    g = gateway({"gatewayClassName": "lab", "listeners": [listener]})
    assert g.listeners[0].protocol == listener["protocol"]


def test_ports_protocols_and_hostnames_may_share_a_port() -> None:
    g = gateway({"gatewayClassName": "lab", "listeners": [
        {"name": "a", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
         "tls": {"certificateRefs": [{"name": "a"}]}},
        {"name": "b", "port": 443, "protocol": "HTTPS", "hostname": "b.example.com",
         "tls": {"certificateRefs": [{"name": "b"}]}},
        {"name": "c", "port": 443, "protocol": "HTTPS",
         "tls": {"certificateRefs": [{"name": "c"}]}}]})
    assert [ln.hostname for ln in g.listeners] == ["a.example.com", "b.example.com", None]


@pytest.mark.parametrize("path", [
    {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"},
    {"type": "RegularExpression", "value": "^(?i)//weird#"},
    {"type": "Exact", "value": "/a%20b/c.d/..e"},
    {"type": "PathPrefix", "value": "/"},
])
def test_paths_the_crd_accepts(path: dict[str, str]) -> None:
    assert route({"rules": [{"matches": [{"path": path}]}]}).rules[0].matches[0].path == \
        PathMatch(path["type"], path["value"])


def test_same_gateway_in_other_namespace_spelling_is_another_parent() -> None:
    # the CEL rules compare namespaces as written: absent and "shop" differ there
    r = route({"parentRefs": [{"name": "gw"}, {"name": "gw", "namespace": "shop"}]})
    assert [p.namespace for p in r.parent_refs] == ["shop", "shop"]


def test_round_trips_through_json() -> None:
    c = gclass(CLASS)
    assert gateway_class_to_json(c) == {"name": "lab", "labels": {"tier": "infra"},
                                        "spec": CLASS}
    assert gateway_class_from_json(gateway_class_to_json(c)) == c
    g = gateway(GATEWAY)
    d = gateway_to_json(g)
    assert d == {"namespace": "infra", "name": "gw", "labels": {"app": "gw"}, "spec": GATEWAY}
    assert gateway_from_json(d) == g
    r = route(ROUTE)
    d = httproute_to_json(r)
    assert set(d) == {"namespace", "name", "labels", "spec"} and d["spec"] == ROUTE
    assert httproute_from_json(d) == r
    d["spec"]["rules"].clear()  # a deep copy: the object keeps its own spec
    assert r.spec == ROUTE


def test_state_errors_name_the_state() -> None:
    with pytest.raises(ConfigError) as ei:
        httproute_from_json({"namespace": "a", "name": "b", "spec": {"hostnames": ["A"]}})
    assert ei.value.file == "<state>" and ei.value.obj == "HTTPRoute/a/b"


# --- refused ----------------------------------------------------------------------------------

def L(name: str = "http", port: Any = 80, protocol: str = "HTTP", **kw: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": protocol, **kw}


def HTTPS(name: str = "https", **kw: Any) -> dict[str, Any]:
    tls = kw.pop("tls", {"certificateRefs": [{"name": "tls"}]})
    return L(name, 443, "HTTPS", tls=tls, **kw)


def GW(*listeners: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"gatewayClassName": "lab", "listeners": list(listeners) or [L()], **kw}


def SEL(selector: Any) -> dict[str, Any]:
    return GW(L(allowedRoutes={"namespaces": {"from": "Selector", "selector": selector}}))


def HR(*rules: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"parentRefs": [{"name": "gw"}], "rules": list(rules), **kw}


def MATCH(**kw: Any) -> dict[str, Any]:
    return HR({"matches": [kw], "backendRefs": [{"name": "web", "port": 80}]})


def PATH(value: str, typ: str = "PathPrefix") -> dict[str, Any]:
    return MATCH(path={"type": typ, "value": value})


def F(typ: str, body: Any = None, field: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"type": typ}
    if body is not None:
        f[field or ("urlRewrite" if typ == "URLRewrite" else typ[0].lower() + typ[1:])] = body
    return f


def FILTERS(*filters: dict[str, Any], backends: bool = True) -> dict[str, Any]:
    rule: dict[str, Any] = {"filters": list(filters)}
    if backends:
        rule["backendRefs"] = [{"name": "web", "port": 80}]
    return HR(rule)


def HDR(**body: Any) -> dict[str, Any]:
    return FILTERS(F("RequestHeaderModifier", body))


def REDIR(**body: Any) -> dict[str, Any]:
    return FILTERS(F("RequestRedirect", body), backends=False)


def BACKEND(**ref: Any) -> dict[str, Any]:
    return HR({"backendRefs": [ref]})


RPM = {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}
H = {"name": "X-Env", "value": "lab"}

CASES: list[tuple[str, str, Any, str, str]] = [
    # (id, parser, spec, field, a fragment of the message)
    ("class-no-controller", "class", {}, "spec.controllerName", "Required value"),
    ("class-controller-no-path", "class", {"controllerName": "nginx"}, "spec.controllerName",
     "should match"),
    ("class-controller-upper", "class", {"controllerName": "Example.com/gw"},
     "spec.controllerName", "should match"),
    ("class-description-long", "class", {"controllerName": "a.b/c", "description": "d" * 65},
     "spec.description", "may not be more than 64"),
    ("class-params-no-group", "class", {"controllerName": "a.b/c",
                                        "parametersRef": {"kind": "ConfigMap", "name": "p"}},
     "spec.parametersRef.group", "Required value"),
    ("class-unknown-field", "class", {"controller": "a.b/c"}, "spec.controller",
     'unknown field "spec.controller"'),
    ("gw-spec-missing", "gw", None, "spec", "Required value"),
    ("gw-spec-list", "gw", ["listeners"], "spec", "must be of type object"),
    ("gw-no-class", "gw", {"listeners": [L()]}, "spec.gatewayClassName", "Required value"),
    ("gw-empty-class", "gw", GW(gatewayClassName=""), "spec.gatewayClassName",
     "at least 1 chars long"),
    ("gw-no-listeners", "gw", {"gatewayClassName": "lab"}, "spec.listeners", "Required value"),
    ("gw-zero-listeners", "gw", {"gatewayClassName": "lab", "listeners": []},
     "spec.listeners", "should have at least 1 items"),
    ("gw-65-listeners", "gw", GW(*[L(f"l{i}", 1000 + i) for i in range(65)]),
     "spec.listeners", "Too many: 65: must have at most 64 items"),
    ("listener-name-upper", "gw", GW(L("HTTP")), "spec.listeners[0].name", "should match"),
    ("listener-name-missing", "gw", GW({"port": 80, "protocol": "HTTP"}),
     "spec.listeners[0].name", "Required value"),
    ("listener-port-0", "gw", GW(L(port=0)), "spec.listeners[0].port",
     "greater than or equal to 1"),
    ("listener-port-high", "gw", GW(L(), L("b", 70000)), "spec.listeners[1].port",
     "less than or equal to 65535"),
    ("listener-port-string", "gw", GW(L(port="80")), "spec.listeners[0].port",
     "must be of type integer"),
    ("listener-no-protocol", "gw", GW({"name": "a", "port": 80}),
     "spec.listeners[0].protocol", "Required value"),
    ("listener-protocol-space", "gw", GW(L(protocol="HTTP 2")), "spec.listeners[0].protocol",
     "should match"),
    ("listener-hostname-ip", "gw", GW(L(hostname="10.0.0.1")), "spec.listeners[0].hostname",
     "not an IP address"),
    ("listener-hostname-double-wildcard", "gw", GW(L(hostname="*.*.example.com")),
     "spec.listeners[0].hostname", "wildcard DNS-1123 subdomain"),
    ("listener-hostname-upper", "gw", GW(L(hostname="Shop.example.com")),
     "spec.listeners[0].hostname", "RFC 1123 subdomain"),
    ("listener-http-with-tls", "gw", GW(L(tls={"certificateRefs": [{"name": "c"}]})),
     "spec.listeners[0].tls", "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']"),
    ("listener-https-passthrough", "gw", GW(HTTPS(tls={"mode": "Passthrough"})),
     "spec.listeners[0].tls.mode", "tls mode must be Terminate for protocol HTTPS"),
    ("listener-https-no-certs", "gw", GW(L(), HTTPS(tls={})),
     "spec.listeners[1].tls.certificateRefs",
     "certificateRefs or options must be specified when mode is Terminate"),
    ("listener-tls-mode-case", "gw", GW(HTTPS(tls={"mode": "terminate"})),
     "spec.listeners[0].tls.mode", "Unsupported value: 'terminate'"),
    ("listener-cert-no-name", "gw", GW(HTTPS(tls={"certificateRefs": [{"kind": "Secret"}]})),
     "spec.listeners[0].tls.certificateRefs[0].name", "Required value"),
    ("listener-cert-namespace", "gw", GW(HTTPS(tls={"certificateRefs": [
        {"name": "c", "namespace": "Certs"}]})),
     "spec.listeners[0].tls.certificateRefs[0].namespace", "should match"),
    ("listener-tcp-hostname", "gw", GW(L("db", 5432, "TCP", hostname="db.example.com")),
     "spec.listeners[0].hostname", "hostname must not be specified for protocols ['TCP', 'UDP']"),
    ("listener-duplicate-name", "gw", GW(L(), L(port=8080)), "spec.listeners[1].name",
     "Listener name must be unique within the Gateway"),
    ("listener-duplicate-combination", "gw", GW(L("a"), L("b")), "spec.listeners[1]",
     "Combination of port, protocol and hostname must be unique for each listener"),
    ("listener-unknown-field", "gw", GW(L(hostnames=["a.b"])), "spec.listeners[0].hostnames",
     "unknown field"),
    ("allowed-selector-missing", "gw",
     GW(L(allowedRoutes={"namespaces": {"from": "Selector"}})),
     "spec.listeners[0].allowedRoutes.namespaces.selector", "selector must be specified"),
    ("allowed-from-any", "gw", GW(L(allowedRoutes={"namespaces": {"from": "Any"}})),
     "spec.listeners[0].allowedRoutes.namespaces.from", "Unsupported value: 'Any'"),
    ("selector-operator", "gw", SEL({"matchExpressions": [{"key": "a", "operator": "Equals",
                                                           "values": ["b"]}]}),
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].operator",
     "Unsupported value: 'Equals'"),
    ("selector-in-no-values", "gw", SEL({"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values",
     "must be specified when `operator` is 'In' or 'NotIn'"),
    ("selector-exists-values", "gw", SEL({"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["b"]}]}),
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values",
     "may not be specified when `operator` is 'Exists'"),
    ("selector-label-value", "gw", SEL({"matchLabels": {"team": "a b"}}),
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchLabels[team]",
     "label value"),
    ("allowed-kind-missing", "gw", GW(L(allowedRoutes={"kinds": [{"group": GROUP}]})),
     "spec.listeners[0].allowedRoutes.kinds[0].kind", "Required value"),
    ("allowed-kinds-9", "gw", GW(L(allowedRoutes={"kinds": [{"kind": "HTTPRoute"}] * 9})),
     "spec.listeners[0].allowedRoutes.kinds", "must have at most 8 items"),
    ("gw-addresses", "gw", GW(addresses=[{"type": "IPAddress", "value": "10.0.0.9"}]),
     "spec.addresses", "`addresses` cannot be requested in lab_kit"),
    ("route-spec-missing", "route", None, "spec", "Required value"),
    ("parent-no-name", "route", {"parentRefs": [{"namespace": "infra"}]},
     "spec.parentRefs[0].name", "Required value"),
    ("parent-port-0", "route", {"parentRefs": [{"name": "gw", "port": 0}]},
     "spec.parentRefs[0].port", "greater than or equal to 1"),
    ("parent-section-name", "route", {"parentRefs": [{"name": "gw", "sectionName": "HTTP"}]},
     "spec.parentRefs[0].sectionName", "should match"),
    ("parent-section-missing", "route",
     {"parentRefs": [{"name": "gw", "sectionName": "http"}, {"name": "gw"}]},
     "spec.parentRefs[1].sectionName",
     "sectionName must be specified when parentRefs includes 2 or more references"),
    ("parent-section-repeated", "route",
     {"parentRefs": [{"name": "gw", "sectionName": "http"},
                     {"name": "gw", "sectionName": "http", "port": 80}]},
     "spec.parentRefs[1].sectionName",
     "sectionName must be unique when parentRefs includes 2 or more references"),
    ("parent-repeated", "route", {"parentRefs": [{"name": "gw"}, {"name": "gw"}]},
     "spec.parentRefs[1]", "sectionName must be unique"),
    ("parents-33", "route", {"parentRefs": [{"name": f"gw{i}"} for i in range(33)]},
     "spec.parentRefs", "must have at most 32 items"),
    ("hostname-ip", "route", HR(hostnames=["a.example.com", "10.1.2.3"]), "spec.hostnames[1]",
     "not an IP address"),
    ("hostname-port", "route", HR(hostnames=["shop.example.com:8080"]), "spec.hostnames[0]",
     "RFC 1123 subdomain"),
    ("hostnames-17", "route", HR(hostnames=[f"h{i}.example.com" for i in range(17)]),
     "spec.hostnames", "must have at most 16 items"),
    ("rules-17", "route", HR(*[{}] * 17), "spec.rules", "must have at most 16 items"),
    ("matches-65", "route", HR({"matches": [{}] * 65}), "spec.rules[0].matches",
     "must have at most 64 items"),
    ("matches-over-128", "route", HR(*[{"matches": [{}] * 64}] * 3), "spec.rules",
     "the total number of matches across all rules in a route must be less than 128"),
    ("path-relative", "route", PATH("api"), "spec.rules[0].matches[0].path.value",
     "must be an absolute path"),
    ("path-double-slash", "route", PATH("/a//b", "Exact"), "spec.rules[0].matches[0].path.value",
     "must not contain '//'"),
    ("path-dot-segment", "route", PATH("/a/./b"), "spec.rules[0].matches[0].path.value",
     "must not contain '/./'"),
    ("path-encoded-slash", "route", PATH("/a%2Fb"), "spec.rules[0].matches[0].path.value",
     "must not contain '%2F'"),
    ("path-fragment", "route", PATH("/a#top"), "spec.rules[0].matches[0].path.value",
     "must not contain '#'"),
    ("path-dotdot-end", "route", PATH("/a/.."), "spec.rules[0].matches[0].path.value",
     "must not end with '/..'"),
    ("path-space", "route", PATH("/a b"), "spec.rules[0].matches[0].path.value",
     "must only contain valid characters"),
    ("path-long", "route", PATH("/" + "a" * 1024), "spec.rules[0].matches[0].path.value",
     "may not be more than 1024"),
    ("path-type-prefix", "route", PATH("/", "Prefix"), "spec.rules[0].matches[0].path.type",
     "Unsupported value: 'Prefix'"),
    ("header-name-space", "route", MATCH(headers=[{"name": "X Env", "value": "a"}]),
     "spec.rules[0].matches[0].headers[0].name", "should match"),
    ("header-name-colon", "route", MATCH(headers=[H, {"name": "X-A:", "value": "a"}]),
     "spec.rules[0].matches[0].headers[1].name", "should match"),
    ("header-no-value", "route", MATCH(headers=[{"name": "X-Env"}]),
     "spec.rules[0].matches[0].headers[0].value", "Required value"),
    ("header-type", "route", MATCH(headers=[dict(H, type="Prefix")]),
     "spec.rules[0].matches[0].headers[0].type", "Unsupported value"),
    ("header-duplicate-case", "route", MATCH(headers=[H, {"name": "x-env", "value": "b"}]),
     "spec.rules[0].matches[0].headers[1].name", "header names are case-insensitive"),
    ("headers-17", "route", MATCH(headers=[{"name": f"X-{i}", "value": "a"} for i in range(17)]),
     "spec.rules[0].matches[0].headers", "must have at most 16 items"),
    ("query-duplicate", "route", MATCH(queryParams=[{"name": "q", "value": "1"},
                                                    {"name": "q", "value": "2"}]),
     "spec.rules[0].matches[0].queryParams[1].name", "Duplicate value: 'q'"),
    ("query-value-long", "route", MATCH(queryParams=[{"name": "q", "value": "v" * 1025}]),
     "spec.rules[0].matches[0].queryParams[0].value", "may not be more than 1024"),
    ("query-value-empty", "route", MATCH(queryParams=[{"name": "q", "value": ""}]),
     "spec.rules[0].matches[0].queryParams[0].value", "at least 1 chars long"),
    ("method-lowercase", "route", MATCH(method="get"), "spec.rules[0].matches[0].method",
     "Unsupported value: 'get'"),
    ("match-unknown-field", "route", MATCH(header=[H]), "spec.rules[0].matches[0].header",
     "unknown field"),
    ("filter-no-type", "route", FILTERS({"requestHeaderModifier": {}}),
     "spec.rules[0].filters[0].type", "Required value"),
    ("filter-type-typo", "route", FILTERS(F("RequestHeaderModifiers")),
     "spec.rules[0].filters[0].type", "Unsupported value: 'RequestHeaderModifiers'"),
    ("filter-body-missing", "route", FILTERS(F("RequestHeaderModifier")),
     "spec.rules[0].filters[0].requestHeaderModifier",
     "filter.requestHeaderModifier must be specified for RequestHeaderModifier filter.type"),
    ("filter-other-body", "route",
     FILTERS(dict(F("RequestRedirect", {}), urlRewrite={}), backends=False),
     "spec.rules[0].filters[0].urlRewrite",
     "filter.urlRewrite must be nil if the filter.type is not URLRewrite"),
    ("filter-repeated", "route",
     FILTERS(F("RequestHeaderModifier", {"set": [H]}), F("RequestHeaderModifier", {})),
     "spec.rules[0].filters[1]", "RequestHeaderModifier filter cannot be repeated"),
    ("filter-response-repeated", "route",
     FILTERS(F("ResponseHeaderModifier", {}), F("RequestHeaderModifier", {}),
             F("ResponseHeaderModifier", {})),
     "spec.rules[0].filters[2]", "ResponseHeaderModifier filter cannot be repeated"),
    ("filter-redirect-and-rewrite", "route",
     FILTERS(F("URLRewrite", {}), F("RequestRedirect", {}), backends=False),
     "spec.rules[0].filters[1]",
     "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, "
     "but not both"),
    ("filters-17", "route", FILTERS(*[F("ExtensionRef", {"group": "", "kind": "K",
                                                         "name": "n"})] * 17),
     "spec.rules[0].filters", "must have at most 16 items"),
    ("redirect-with-backends", "route", FILTERS(F("RequestRedirect", {"scheme": "https"})),
     "spec.rules[0]", "RequestRedirect filter must not be used together with backendRefs"),
    ("redirect-status-308", "route", REDIR(statusCode=308),
     "spec.rules[0].filters[0].requestRedirect.statusCode", "Unsupported value: 308"),
    ("redirect-scheme", "route", REDIR(scheme="ftp"),
     "spec.rules[0].filters[0].requestRedirect.scheme", "Unsupported value: 'ftp'"),
    ("redirect-wildcard-host", "route", REDIR(hostname="*.example.com"),
     "spec.rules[0].filters[0].requestRedirect.hostname", "should match"),
    ("redirect-port", "route", REDIR(port=65536),
     "spec.rules[0].filters[0].requestRedirect.port", "less than or equal to 65535"),
    ("redirect-full-path-missing", "route", REDIR(path={"type": "ReplaceFullPath"}),
     "spec.rules[0].filters[0].requestRedirect.path.replaceFullPath",
     "replaceFullPath must be specified when type is set to 'ReplaceFullPath'"),
    ("redirect-path-both", "route", REDIR(path={"type": "ReplaceFullPath",
                                                "replaceFullPath": "/a",
                                                "replacePrefixMatch": "/b"}),
     "spec.rules[0].filters[0].requestRedirect.path.replacePrefixMatch",
     "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set"),
    ("redirect-path-no-type", "route", REDIR(path={"replaceFullPath": "/a"}),
     "spec.rules[0].filters[0].requestRedirect.path.type", "Required value"),
    ("redirect-prefix-exact-match", "route",
     HR({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
         "filters": [F("RequestRedirect", RPM)]}),
     "spec.rules[0].matches",
     "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix "
     "match must be specified"),
    ("rewrite-prefix-two-matches", "route",
     HR({"matches": [{"path": {"value": "/a"}}, {"path": {"value": "/b"}}],
         "filters": [F("URLRewrite", RPM)], "backendRefs": [{"name": "w", "port": 80}]}),
     "spec.rules[0].matches",
     "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix"),
    ("rewrite-prefix-empty-matches", "route",
     HR({"matches": [], "filters": [F("URLRewrite", RPM)]}),
     "spec.rules[0].matches", "When using URLRewrite filter with path.replacePrefixMatch"),
    ("backend-rewrite-prefix", "route",
     HR({"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}],
         "backendRefs": [{"name": "w", "port": 80, "filters": [F("URLRewrite", RPM)]}]}),
     "spec.rules[0].matches",
     "Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch"),
    ("rewrite-wildcard-host", "route", FILTERS(F("URLRewrite", {"hostname": "*.a.b"})),
     "spec.rules[0].filters[0].urlRewrite.hostname", "should match"),
    ("modifier-set-duplicate", "route", HDR(set=[H, {"name": "X-ENV", "value": "b"}]),
     "spec.rules[0].filters[0].requestHeaderModifier.set[1].name", "Duplicate value: 'X-ENV'"),
    ("modifier-add-no-value", "route", HDR(add=[{"name": "X-A"}]),
     "spec.rules[0].filters[0].requestHeaderModifier.add[0].value", "Required value"),
    ("modifier-add-bad-name", "route", HDR(add=[{"name": "X(A)", "value": "1"}]),
     "spec.rules[0].filters[0].requestHeaderModifier.add[0].name", "should match"),
    ("modifier-remove-duplicate", "route", HDR(remove=["Server", "server"]),
     "spec.rules[0].filters[0].requestHeaderModifier.remove[1]", "Duplicate value"),
    ("modifier-set-17", "route", HDR(set=[{"name": f"X-{i}", "value": "1"} for i in range(17)]),
     "spec.rules[0].filters[0].requestHeaderModifier.set", "must have at most 16 items"),
    ("mirror-no-port", "route", FILTERS(F("RequestMirror", {"backendRef": {"name": "shadow"}})),
     "spec.rules[0].filters[0].requestMirror.backendRef.port",
     "Must have port for Service reference"),
    ("extension-ref-no-kind", "route", FILTERS(F("ExtensionRef", {"group": "", "name": "n"})),
     "spec.rules[0].filters[0].extensionRef.kind", "Required value"),
    ("backend-no-port", "route", BACKEND(name="web"), "spec.rules[0].backendRefs[0].port",
     "Must have port for Service reference"),
    ("backend-no-name", "route", BACKEND(port=80), "spec.rules[0].backendRefs[0].name",
     "Required value"),
    ("backend-weight-negative", "route", BACKEND(name="web", port=80, weight=-1),
     "spec.rules[0].backendRefs[0].weight", "greater than or equal to 0"),
    ("backend-weight-high", "route", BACKEND(name="web", port=80, weight=1_000_001),
     "spec.rules[0].backendRefs[0].weight", "less than or equal to 1000000"),
    ("backend-kind", "route", BACKEND(name="web", port=80, kind="my service"),
     "spec.rules[0].backendRefs[0].kind", "should match"),
    ("backend-filter-repeated", "route",
     BACKEND(name="web", port=80, filters=[F("URLRewrite", {}), F("URLRewrite", {})]),
     "spec.rules[0].backendRefs[0].filters[1]", "URLRewrite filter cannot be repeated"),
    ("backends-17", "route", HR({"backendRefs": [{"name": f"b{i}", "port": 80}
                                                 for i in range(17)]}),
     "spec.rules[0].backendRefs", "must have at most 16 items"),
    ("timeout-decimal", "route", HR({"timeouts": {"request": "1.5s"}}),
     "spec.rules[0].timeouts.request", "should match"),
    ("timeout-backend-longer", "route",
     HR({"timeouts": {"request": "10s", "backendRequest": "1m"}}),
     "spec.rules[0].timeouts.backendRequest",
     "backendRequest timeout cannot be longer than request timeout"),
    ("rule-name-duplicate", "route", HR({"name": "a"}, {"name": "b"}, {"name": "a"}),
     "spec.rules[2].name", "Rule name must be unique within the route"),
    ("rule-unknown-field", "route", HR({"backendRef": [{"name": "web", "port": 80}]}),
     "spec.rules[0].backendRef", 'unknown field "spec.rules[0].backendRef"'),
]


@pytest.mark.parametrize("kind,spec,field,fragment",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(kind: str, spec: Any, field: str, fragment: str) -> None:
    before = copy.deepcopy(spec)
    e = refused(kind, spec)
    assert e.field == field, e
    assert fragment in e.reason, e
    assert e.fix, e
    assert spec == before  # parsing never changes the manifest


def test_case_ids_are_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


# --- the fixes --------------------------------------------------------------------------------

def test_unknown_field_suggests_the_near_name() -> None:
    e = refused("route", HR({"backendRef": []}))
    assert e.fix == "did you mean `backendRefs`?"


def test_uppercase_names_suggest_lowercase() -> None:
    assert "'http'" in (refused("gw", GW(L("HTTP"))).fix or "")
    assert "'shop.example.com'" in (refused("route", HR(hostnames=["Shop.Example.com"])).fix
                                    or "")
    assert "'example.com/gw'" in (refused("class", {"controllerName": "Example.com/gw"}).fix
                                  or "")


def test_case_typos_suggest_the_value() -> None:
    assert "'GET'" in (refused("route", MATCH(method="get")).fix or "")
    assert "'Exact'" in (refused("route", PATH("/", "exact")).fix or "")
    assert "'PathPrefix'" in (refused("route", PATH("/", "Prefix")).fix or "")
    assert "'HTTPS'" not in (refused("gw", GW(L(protocol="HTTP 2"))).fix or "")


def test_quoted_port_suggests_a_number() -> None:
    assert refused("gw", GW(L(port="80"))).fix == "write `port: 80`, without quotes"


def test_header_duplicate_names_the_first_entry() -> None:
    e = refused("route", MATCH(headers=[H, {"name": "x-env", "value": "b"}]))
    assert "headers[0]" in (e.fix or "") and "'X-Env'" in e.reason


def test_first_problem_wins() -> None:
    # an HTTP listener with an empty tls: the protocol rule comes before the Terminate rule
    e = refused("gw", GW(L(tls={})))
    assert e.field == "spec.listeners[0].tls" and "HTTP" in e.reason
    # schema problems in a later listener come before the cross-listener rules
    e = refused("gw", GW(L(), L(), L("c", port=0)))
    assert e.field == "spec.listeners[2].port"


def test_message_names_file_object_and_field() -> None:
    e = refused("route", PATH("/a//b"))
    assert str(e).startswith("gw.yaml, `HTTPRoute/shop/front`, field "
                             "`spec.rules[0].matches[0].path.value`: ")


def test_reference_grant_parses_and_refuses_naming_the_field() -> None:
    spec = {"from": [{"group": gw.GROUP, "kind": "HTTPRoute", "namespace": "team"}],
            "to": [{"group": "", "kind": "Service", "name": "web"}]}
    g = gw.parse_reference_grant("default", "g", {}, spec)
    assert g.from_ == (gw.GrantFrom(gw.GROUP, "HTTPRoute", "team"),)
    assert g.to == (gw.GrantTo("", "Service", "web"),)
    assert gw.reference_grant_from_json(gw.reference_grant_to_json(g)) == g
    for bad, field in [
            ({"to": spec["to"]}, "spec.from"),
            ({"from": [], "to": spec["to"]}, "spec.from"),
            ({"from": [{"kind": "HTTPRoute", "namespace": "team"}], "to": spec["to"]},
             "spec.from[0].group"),
            ({"from": [{"group": gw.GROUP, "kind": "HTTPRoute"}], "to": spec["to"]},
             "spec.from[0].namespace"),
            ({"from": [{"group": gw.GROUP, "kind": "HTTPRoute", "namespace": "Team"}],
              "to": spec["to"]}, "spec.from[0].namespace"),
            ({"from": spec["from"], "to": [{"group": "", "kind": "Service", "name": ""}]},
             "spec.to[0].name"),
            ({"from": spec["from"], "to": [{"group": "", "kind": "Service", "nmae": "x"}]},
             "spec.to[0].nmae")]:
        with pytest.raises(ConfigError) as e:
            gw.parse_reference_grant("default", "g", {}, bad)
        assert e.value.field == field, (bad, str(e.value))
        assert e.value.obj == "ReferenceGrant/default/g"


def test_reference_grant_loads_as_v1beta1_only() -> None:
    from lab_kit import model
    doc = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
           "metadata": {"name": "g", "namespace": "default"},
           "spec": {"from": [{"group": gw.GROUP, "kind": "HTTPRoute", "namespace": "team"}],
                    "to": [{"group": "", "kind": "Service"}]}}
    [(o, _)] = model.load_manifests(doc)
    assert isinstance(o, gw.ReferenceGrant) and o.to[0].name is None
    with pytest.raises(ConfigError):
        model.load_manifests({**doc, "apiVersion": "gateway.networking.k8s.io/v1"})
