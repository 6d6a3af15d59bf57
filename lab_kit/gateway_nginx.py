"""The lab's Gateway API controller: the same nginx-based controller as the Ingress one, run as
NGINX Gateway Fabric's data plane (controller name `gateway.nginx.org/nginx-gateway-controller`,
GatewayClass `nginx`), its config rendered from Gateways and HTTPRoutes.

What it does, as the Gateway API spec has it (facts from gateway-api's API docs; the code is
ours):

- **Attachment.** A route attaches to a listener when its parentRef names the Gateway (and the
  listener, by `sectionName` and/or `port`, when given), the listener's `allowedRoutes` admits
  the route's namespace (`Same` by default, `All`, or a namespace label `Selector`) and kind,
  and the route's `hostnames` intersect the listener's `hostname` (a wildcard `*.example.com`
  covers one or more labels; the effective hostname is the more specific of the two).
- **Matching.** Within one hostname, of all the rules' matches that fit a request, the winner
  is: an `Exact` path before any `PathPrefix`; the longest prefix; a match with a `method`; the
  most header matches; the most query matches; then the oldest route, then
  `namespace/name` alphabetically, then the first rule. No match: 404.
- **Backends.** `weight`s split the requests (nginx `split_clients` over the request id, as NGINX
  Gateway Fabric does). Requests that would go to an invalid backend (no such Service, no such
  port, another namespace that no ReferenceGrant opens) get 500; to a backend without ready
  endpoints, 503. A ReferenceGrant (v1beta1) in the target's namespace permits HTTPRoutes'
  backendRefs to its Services and Gateways' certificateRefs to its Secrets.
- **Filters.** `RequestHeaderModifier` (set, add, remove), `RequestRedirect` (scheme, hostname,
  port, path, 301/302) and `URLRewrite` (hostname, full path or prefix). Other filters, a
  `RegularExpression` path and per-backend filters make the route `Accepted: False` with reason
  `UnsupportedValue`.
- **Status.** GatewayClass `Accepted`; Gateway `Accepted`, `Programmed` and its `addresses` (the
  controller Service's load-balancer IP); each listener's `Accepted`, `ResolvedRefs`,
  `Programmed`, `Conflicted`, `supportedKinds` and `attachedRoutes`; each route's
  `status.parents[]` with `Accepted` and `ResolvedRefs` (reasons `NoMatchingParent`,
  `NotAllowedByListeners`, `NoMatchingListenerHostname`, `BackendNotFound`, `RefNotPermitted`,
  `InvalidKind`, `UnsupportedValue`).

Routing in nginx: one `server` per listener port and effective hostname; one `location` per
distinct path; inside a location, `if` blocks that only set variables pick the winning match
(lowest precedence first, so the last that holds wins), then the winner's action: a redirect,
or the upstream, headers and rewrite for `proxy_pass`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit import gateway as gw
from lab_kit.ingress import Secret
from lab_kit.ingress_nginx import (
    FAKE_CERT,
    PROXY_HEADERS,
    finish,
    http_defaults,
    ready_endpoints,
    upstream_blocks,
)

CONTROLLER_NAME = "gateway.nginx.org/nginx-gateway-controller"
ERROR_PORT = 10250  # local servers answering 500 (invalid backend) and 503 (no endpoints)
NO_ENDPOINTS_PORT = 10251
INVALID_UPSTREAM = "invalid-backend-ref"
NO_ENDPOINTS_UPSTREAM = "no-ready-endpoints"
SUPPORTED_PROTOCOLS = ("HTTP", "HTTPS")
HTTPROUTE_KIND = {"group": gw.GROUP, "kind": "HTTPRoute"}
SUPPORTED_FILTERS = ("RequestHeaderModifier", "RequestRedirect", "URLRewrite")


# --- status -------------------------------------------------------------------------------

def cond(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, str]:
    """A metav1.Condition without the times (the caller stamps lastTransitionTime)."""
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message}


@dataclass(frozen=True)
class Row:
    """One row of the gateway's routing table: which requests go where."""
    gateway: str  # namespace/name
    listener: str
    port: int
    hostname: str  # "*" for any host
    path: str  # "Exact /x" or "PathPrefix /x"
    conditions: str  # "method GET, header X-Env=canary, query v=2" or ""
    action: str  # "default/web:80 90%, default/canary:80 10%", "redirect 302 https://…", "500"
    route: str  # namespace/name
    rule: int
    endpoints: tuple[str, ...]


@dataclass
class Result:
    conf: str = ""
    checksum: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> status
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> status
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> status
    table: list[Row] = field(default_factory=list)


# --- hostnames ----------------------------------------------------------------------------

def _covers(wild: str, host: str) -> bool:
    """`*.example.com` covers `a.example.com`, `a.b.example.com` and `*.a.example.com`."""
    return host.endswith(wild[1:]) and len(host) > len(wild) - 1


def intersect(listener: str | None, route_hosts: Sequence[str]) -> list[str | None]:
    """The effective hostnames of a route on a listener ([None]: any host; []: none)."""
    if not route_hosts:
        return [listener]
    if listener is None:
        return list(dict.fromkeys(route_hosts))
    out: list[str | None] = []
    for h in route_hosts:
        if h == listener:
            out.append(h)
        elif listener.startswith("*.") and (not h.startswith("*.") or len(h) > len(listener)) \
                and _covers(listener, h):
            out.append(h)
        elif h.startswith("*.") and _covers(h, listener):
            out.append(listener)
    return list(dict.fromkeys(out))


# --- nginx text helpers -------------------------------------------------------------------

def _q(s: str) -> str:
    """A double-quoted nginx string whose `$` are literal (the `$lk_dollar` variable)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "${lk_dollar}") + '"'


def _rq(regex: str) -> str:
    """A double-quoted nginx regex (not interpolated)."""
    return '"' + regex.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _var(name: str) -> str:
    """The nginx variable of request header `name` ($http_x_env for X-Env)."""
    return "$http_" + re.sub(r"[^a-z0-9_]", "_", name.lower().replace("-", "_"))


def _hvar(name: str) -> str:
    return "$lk_h_" + re.sub(r"[^a-z0-9_]", lambda m: f"{ord(m.group()):02x}",
                             name.lower().replace("-", "_"))


def _pcre(s: str) -> str:
    return re.sub(r"([^A-Za-z0-9_/])", r"\\\1", s)


# --- the render ---------------------------------------------------------------------------

@dataclass
class _Candidate:
    """One match of one rule, on one server."""
    route: gw.HTTPRoute
    created: float
    rule_index: int
    match_index: int
    match: gw.RouteMatch
    action: int  # index into _Server.actions


@dataclass
class _Action:
    route: gw.HTTPRoute
    rule_index: int
    rule: gw.RouteRule
    match: gw.RouteMatch  # the (only) match a ReplacePrefixMatch refers to
    listener: gw.Listener


@dataclass
class _Server:
    port: int
    hostname: str | None
    listener: gw.Listener
    gateway: gw.Gateway
    cert: str | None = None
    candidates: list[_Candidate] = field(default_factory=list)
    actions: list[_Action] = field(default_factory=list)
    routes: set[str] = field(default_factory=set)


def _precedence(c: _Candidate) -> tuple[Any, ...]:
    m = c.match
    exact = m.path.type == "Exact"
    return (0 if exact else 1, -len(m.path.value.rstrip("/") or "/"),
            0 if m.method else 1, -len(m.headers), -len(m.query_params),
            c.created, c.route.key, c.rule_index, c.match_index)


def _prefix(value: str) -> str:
    return value.rstrip("/") or "/"


def _location_candidates(kind: str, path: str, cands: list[_Candidate]) -> list[_Candidate]:
    """The matches that fit every request nginx sends to location (`kind`, `path`)."""
    out = []
    for c in cands:
        p = c.match.path
        if p.type == "Exact":
            if kind == "=" and p.value == path:
                out.append(c)
            continue
        q = _prefix(p.value)
        if q == "/" or path == q or path.startswith(q + "/") or \
                (kind == "" and path == q + "/"):
            out.append(c)
    return sorted(out, key=_precedence)


def _conditions(m: gw.RouteMatch) -> list[str]:
    """nginx `if` conditions, all of which must hold."""
    out = []
    if m.method:
        out.append(f"$request_method = {m.method}")
    for h in m.headers:
        if h.type == "Exact":
            out.append(f"{_var(h.name)} = {_q(h.value)}")
        else:
            out.append(f"{_var(h.name)} ~ {_rq(h.value)}")
    for qp in m.query_params:
        if qp.type == "Exact":
            rx = f"(^|&){_pcre(qp.name)}={_pcre(qp.value)}(&|$)"
        else:
            rx = f"(^|&){_pcre(qp.name)}=(?:{qp.value.removeprefix('^').removesuffix('$')})(&|$)"
        out.append(f"$args ~ {_rq(rx)}")
    return out


def describe_match(m: gw.RouteMatch) -> str:
    parts = [f"method {m.method}"] if m.method else []
    parts += [f"header {h.name}{'=' if h.type == 'Exact' else '~'}{h.value}" for h in m.headers]
    parts += [f"query {q.name}{'=' if q.type == 'Exact' else '~'}{q.value}"
              for q in m.query_params]
    return ", ".join(parts)


class _Renderer:
    def __init__(self, services: Mapping[str, dict[str, Any]],
                 slices: Mapping[str, dict[str, Any]],
                 grants: Sequence[gw.ReferenceGrant] = ()) -> None:
        self.services, self.slices, self.grants = services, slices, grants
        self.upstreams: dict[str, list[str]] = {}
        self.splits: list[str] = []
        self.appended: dict[str, None] = {}  # headers a rule appends to (need a `map`)
        self.chosen: dict[tuple[str, int], tuple[str, str, list[str]]] = {}

    def backend(self, b: gw.BackendRef, route_ns: str, register: bool = True
                ) -> tuple[str, str, list[str]]:
        """(upstream, "ok" or the ResolvedRefs reason: message, endpoints) of one backendRef
        of a route in namespace `route_ns`."""
        if b.group != "" or b.kind != "Service":
            return INVALID_UPSTREAM, f"InvalidKind: {b.group or 'core'}/{b.kind} is not a " \
                "Service; lab_kit's gateway forwards to Services only", []
        key = f"{b.namespace}/{b.name}"
        if not gw.permitted(self.grants, (gw.GROUP, "HTTPRoute", route_ns),
                            (b.group, b.kind, b.namespace, b.name)):
            return INVALID_UPSTREAM, f'RefNotPermitted: backendRef to Service "{key}" in ' \
                f"another namespace is not permitted: no ReferenceGrant in namespace " \
                f"{b.namespace!r} lets HTTPRoutes from {route_ns!r} refer to it", []
        svc = self.services.get(key)
        if svc is None:
            return INVALID_UPSTREAM, f'BackendNotFound: Service "{key}" not found', []
        spec = svc["spec"]
        if spec.get("type") == "ExternalName":
            return INVALID_UPSTREAM, f'UnsupportedValue: Service "{key}" is of type ' \
                "ExternalName, which lab_kit's gateway does not proxy", []
        port = next((p for p in spec["ports"] if p["port"] == b.port), None)
        if port is None:
            have = ", ".join(str(p["port"]) for p in spec["ports"])
            return INVALID_UPSTREAM, f'BackendNotFound: Service "{key}" has no port {b.port} ' \
                f"(it has {have})", []
        eps = ready_endpoints(self.slices, b.namespace, b.name, port)
        up = f"{b.namespace}_{b.name}_{b.port}"  # NGINX Gateway Fabric's upstream naming
        if not eps:
            return NO_ENDPOINTS_UPSTREAM, "ok", []
        if register:
            self.upstreams[up] = eps
        return up, "ok", eps

    def choose(self, route: str, index: int, rule: gw.RouteRule) -> tuple[str, str, list[str]]:
        """(nginx value for $lk_up, description, endpoints) of a rule's backendRefs; a rule
        served by several locations shares one `split_clients`."""
        if (route, index) not in self.chosen:
            self.chosen[(route, index)] = self._choose(rule, route.split("/", 1)[0])
        return self.chosen[(route, index)]

    def _choose(self, rule: gw.RouteRule, route_ns: str) -> tuple[str, str, list[str]]:
        picks = []
        eps: list[str] = []
        for b in rule.backend_refs:
            up, status, e = self.backend(b, route_ns)
            if b.weight > 0:
                ref = f"{b.namespace}/{b.name}:{b.port}"
                picks.append((up, b.weight, ref if up != INVALID_UPSTREAM else
                              f"500 ({status.split(':', 1)[0]} {ref})"))
                eps += e
        if not picks:
            return INVALID_UPSTREAM, "500 (no backend with a weight)", []
        if len(picks) == 1:
            return picks[0][0], picks[0][2], eps
        total = sum(w for _, w, _ in picks)
        name = f"$lk_split_{len(self.splits)}"
        lines = [f"split_clients $request_id {name} {{"]
        for i, (up, w, _) in enumerate(picks):
            share = "*" if i == len(picks) - 1 else f"{100 * w / total:.2f}%"
            lines.append(f"    {share} {up};")
        lines.append("}")
        self.splits += lines
        desc = ", ".join(f"{d} {100 * w / total:.4g}%" for _, w, d in picks)
        return name, desc, eps


def _redirect_target(r: gw.Redirect, a: _Action) -> str:
    """The Location of a RequestRedirect (its path part is added by the caller)."""
    scheme = r.scheme or ("https" if a.listener.protocol == "HTTPS" else "http")
    host = r.hostname or "$host"
    if r.port is not None:
        port = r.port
    elif r.scheme:
        port = 443 if r.scheme == "https" else 80
    else:
        port = a.listener.port
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def _rewrite_lines(pm: gw.PathModifier, a: _Action, target: str, flag: str) -> list[str]:
    """`rewrite` directives for a path modifier; `target` is prepended (a redirect's
    scheme://host:port, or "" for a URL rewrite)."""
    if pm.type == "ReplaceFullPath":
        return [f"rewrite ^ {target}{pm.value} {flag};"]
    q = _prefix(a.match.path.value)
    qq = "" if q == "/" else _pcre(q)
    rr = pm.value.rstrip("/")
    if rr:
        return [f"rewrite ^{qq}(/.*)?$ {target}{rr}$1 {flag};"]
    return [f"rewrite ^{qq}$ {target}/ {flag};", f"rewrite ^{qq}(/.*)$ {target}$1 {flag};"]


def _filter(rule: gw.RouteRule, kind: str) -> gw.Filter | None:
    return next((f for f in rule.filters if f.type == kind), None)


def render(classes: Sequence[gw.GatewayClass], gateways: Sequence[tuple[gw.Gateway, float]],
           routes: Sequence[tuple[gw.HTTPRoute, float]], services: Mapping[str, dict[str, Any]],
           slices: Mapping[str, dict[str, Any]], secrets: Mapping[str, Secret],
           namespaces: Mapping[str, Mapping[str, str]], *, address: str | None,
           prefix: str | Path,
           check_cert: Callable[[bytes, bytes], Any] | None = None,
           grants: Sequence[gw.ReferenceGrant] = ()) -> Result:
    """The nginx config and the status of every object this controller owns. `gateways` and
    `routes` come with their creation times; `namespaces` maps a namespace to its labels;
    `address` is the controller Service's load-balancer IP (None: not assigned yet);
    `grants` are the ReferenceGrants that permit references across namespaces."""
    prefix = Path(prefix)
    out = Result()
    ours = {c.name for c in classes if c.controller_name == CONTROLLER_NAME}
    for c in classes:
        if c.name in ours:
            out.classes[c.name] = {"conditions": [cond("Accepted", True, "Accepted",
                                                        "GatewayClass is accepted")]}
    mine = sorted(((g, t) for g, t in gateways if g.gateway_class in ours),
                  key=lambda gt: (gt[1], gt[0].key))
    r = _Renderer(services, slices, grants)
    servers: dict[tuple[int, str | None], _Server] = {}
    listener_ok: dict[tuple[str, str], bool] = {}
    certs: dict[tuple[str, str], str | None] = {}
    attached: dict[tuple[str, str], int] = {}
    port_protocol: dict[int, str] = {}

    # listeners
    for g, _t in mine:
        lst_status = []
        for lst in g.listeners:
            conds = []
            ok = True
            kinds_ok = all(k.group == gw.GROUP and k.kind == "HTTPRoute"
                           for k in lst.allowed_kinds)
            if lst.protocol not in SUPPORTED_PROTOCOLS:
                ok = False
                conds.append(cond("Accepted", False, "UnsupportedProtocol",
                                  f"protocol {lst.protocol} is not supported by lab_kit's "
                                  "gateway: use HTTP or HTTPS"))
            elif port_protocol.setdefault(lst.port, lst.protocol) != lst.protocol:
                ok = False
                conds += [cond("Conflicted", True, "ProtocolConflict",
                               f"port {lst.port} already serves "
                               f"{port_protocol[lst.port]} for an older listener"),
                          cond("Accepted", False, "ProtocolConflict",
                               "the listener conflicts with another one")]
            else:
                conds.append(cond("Accepted", True, "Accepted", "listener is accepted"))
            refs_ok, why = True, ""
            cert = None
            if not kinds_ok:
                refs_ok, why = False, "InvalidRouteKinds"
                msg = "lab_kit's gateway supports HTTPRoute only"
            elif lst.protocol == "HTTPS" and ok:
                if lst.tls_mode == "Passthrough":
                    ok = False
                    conds[-1] = cond("Accepted", False, "UnsupportedValue",
                                     "tls.mode Passthrough needs protocol TLS, which lab_kit's "
                                     "gateway does not serve")
                else:
                    cert, why, msg = _listener_cert(g, lst, secrets, check_cert, out, grants)
                    refs_ok = cert is not None
            if refs_ok:
                conds.append(cond("ResolvedRefs", True, "ResolvedRefs",
                                  "all references are resolved"))
            else:
                conds.append(cond("ResolvedRefs", False, why, msg))
            good = ok and refs_ok
            conds.append(cond("Programmed", good, "Programmed" if good else "Invalid",
                              "listener is programmed" if good else "listener is invalid"))
            if not any(c["type"] == "Conflicted" for c in conds):
                conds.append(cond("Conflicted", False, "NoConflicts", "no conflicts"))
            listener_ok[(g.key, lst.name)] = good
            certs[(g.key, lst.name)] = cert
            attached[(g.key, lst.name)] = 0
            lst_status.append({"name": lst.name, "conditions": conds,
                               "supportedKinds": [HTTPROUTE_KIND] if lst.protocol in
                               SUPPORTED_PROTOCOLS else []})
        any_ok = any(listener_ok[(g.key, lst.name)] for lst in g.listeners)
        gconds = [cond("Accepted", any_ok, "Accepted" if any_ok else "ListenersNotValid",
                       "Gateway is accepted" if any_ok else "no listener is valid")]
        if address and any_ok:
            gconds.append(cond("Programmed", True, "Programmed", "Gateway is programmed"))
        elif not address:
            gconds.append(cond("Programmed", False, "AddressNotAssigned",
                               "the controller's LoadBalancer Service has no IP yet"))
        else:
            gconds.append(cond("Programmed", False, "Invalid", "no listener is programmed"))
        out.gateways[g.key] = {"addresses": [{"type": "IPAddress", "value": address}]
                               if address else [], "conditions": gconds,
                               "listeners": lst_status}

    # routes
    by_key = {g.key: g for g, _ in mine}
    for route, created in sorted(routes, key=lambda rt: (rt[1], rt[0].key)):
        parents = []
        unsupported = _unsupported(route)
        refs = [r.backend(b, route.namespace, register=False) for rule in route.rules
                for b in rule.backend_refs]
        # RefNotPermitted first: it is the reason to fix before any other
        bad_ref = next((s for _, s, _ in refs if s.startswith("RefNotPermitted")),
                       next((s for _, s, _ in refs if s != "ok"), None))
        for pref in route.parent_refs:
            if pref.group != gw.GROUP or pref.kind != "Gateway":
                continue
            g = by_key.get(f"{pref.namespace}/{pref.name}")
            if g is None:
                if f"{pref.namespace}/{pref.name}" in {x.key for x, _ in gateways}:
                    continue  # another controller's Gateway: its status is not ours to write
                accepted = cond("Accepted", False, "NoMatchingParent",
                                f'Gateway "{pref.namespace}/{pref.name}" not found')
            else:
                accepted = _attach(route, created, pref, g, namespaces, listener_ok, certs,
                                   attached, servers, unsupported)
            resolved = cond("ResolvedRefs", bad_ref is None,
                            "ResolvedRefs" if bad_ref is None else bad_ref.split(":")[0],
                            "all references are resolved" if bad_ref is None
                            else bad_ref.split(": ", 1)[1])
            ref: dict[str, Any] = {"group": pref.group, "kind": pref.kind,
                                   "namespace": pref.namespace, "name": pref.name}
            if pref.section_name:
                ref["sectionName"] = pref.section_name
            if pref.port:
                ref["port"] = pref.port
            parents.append({"parentRef": ref, "controllerName": CONTROLLER_NAME,
                            "conditions": [accepted, resolved]})
        out.routes[route.key] = {"parents": parents}

    for (gkey, lname), n in attached.items():
        for ls in out.gateways[gkey]["listeners"]:
            if ls["name"] == lname:
                ls["attachedRoutes"] = n

    http = http_defaults(prefix)
    http += [f"ssl_certificate {prefix / 'certs' / (FAKE_CERT + '.pem')};",
             f"ssl_certificate_key {prefix / 'certs' / (FAKE_CERT + '.pem')};",
             'geo $lk_dollar { default "$"; }']
    blocks: list[str] = []
    for _key, s in sorted(servers.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        blocks += _server_block(s, r, out, prefix)
    # every port a listener is programmed on answers 404 for hosts no route serves
    ports = {lst.port: lst.protocol for g, _ in mine for lst in g.listeners
             if listener_ok[(g.key, lst.name)]}
    for port, proto in sorted(ports.items()):
        if (port, None) not in servers:
            ssl = " ssl" if proto == "HTTPS" else ""
            blocks += ["server {", f"    listen {port}{ssl} default_server;",
                       "    server_name _;", '    return 404 "404 Not Found\\n";', "}"]
    http += add_header_maps(list(r.appended))
    http += r.splits
    http += upstream_blocks(r.upstreams)
    http += [f"upstream {INVALID_UPSTREAM} {{ server 127.0.0.1:{ERROR_PORT}; }}",
             f"upstream {NO_ENDPOINTS_UPSTREAM} {{ server 127.0.0.1:{NO_ENDPOINTS_PORT}; }}",
             # (these two also declare $proxy_upstream_name for the log format, which a
             # config without routes would otherwise never set)
             f"server {{ listen 127.0.0.1:{ERROR_PORT}; set $proxy_upstream_name -; return 500 "
             '"500 Internal Server Error: invalid backendRef\\n"; }',
             f"server {{ listen 127.0.0.1:{NO_ENDPOINTS_PORT}; set $proxy_upstream_name -; "
             "return 503 "
             '"503 Service Unavailable: no ready endpoints\\n"; }']
    http += blocks
    out.conf, out.checksum = finish(http, out.files, prefix, "nginx-gateway")
    return out


def _unsupported(route: gw.HTTPRoute) -> str | None:
    for i, rule in enumerate(route.rules):
        for m in rule.matches:
            if m.path.type == "RegularExpression":
                return (f"spec.rules[{i}]: a RegularExpression path is not supported by "
                        "lab_kit's gateway (use Exact or PathPrefix)")
        for f in rule.filters:
            if f.type not in SUPPORTED_FILTERS:
                return (f"spec.rules[{i}]: filter {f.type} is not supported by lab_kit's "
                        f"gateway (it supports {', '.join(SUPPORTED_FILTERS)})")
        for b in rule.backend_refs:
            if b.filters:
                return f"spec.rules[{i}]: backendRef filters are not supported by lab_kit's gateway"
    return None


def _listener_cert(g: gw.Gateway, lst: gw.Listener, secrets: Mapping[str, Secret],
                   check_cert: Callable[[bytes, bytes], Any] | None, out: Result,
                   grants: Sequence[gw.ReferenceGrant] = ()) -> tuple[str | None, str, str]:
    """(cert file name or None, ResolvedRefs reason, message) of an HTTPS listener."""
    if not lst.certificate_refs:
        return None, "InvalidCertificateRef", "no certificateRefs"
    ref = lst.certificate_refs[0]
    ns = ref.namespace or g.namespace
    if ref.group != "" or ref.kind != "Secret":
        return None, "InvalidCertificateRef", f"{ref.group or 'core'}/{ref.kind} is not a Secret"
    if not gw.permitted(grants, (gw.GROUP, "Gateway", g.namespace),
                        ("", "Secret", ns, ref.name)):
        return None, "RefNotPermitted", (f'certificateRef to Secret "{ns}/{ref.name}" in another '
                                         f"namespace is not permitted: no ReferenceGrant in "
                                         f"namespace {ns!r} lets Gateways from "
                                         f"{g.namespace!r} refer to it")
    key = f"{ns}/{ref.name}"
    sec = secrets.get(key)
    if sec is None:
        return None, "InvalidCertificateRef", f'Secret "{key}" does not exist'
    if sec.type != "kubernetes.io/tls":
        return None, "InvalidCertificateRef", f'Secret "{key}" is not of type kubernetes.io/tls'
    try:
        if check_cert is not None:
            check_cert(sec.data["tls.crt"], sec.data["tls.key"])
    except (ValueError, KeyError) as e:
        return None, "InvalidCertificateRef", f'Secret "{key}": {e}'
    name = f"{ns}-{ref.name}.pem"
    out.files[name] = sec.data["tls.crt"].rstrip(b"\n") + b"\n" + sec.data["tls.key"]
    return name, "ResolvedRefs", ""


def _attach(route: gw.HTTPRoute, created: float, pref: gw.ParentRef, g: gw.Gateway,
            namespaces: Mapping[str, Mapping[str, str]], listener_ok: dict[tuple[str, str], bool],
            certs: dict[tuple[str, str], str | None], attached: dict[tuple[str, str], int],
            servers: dict[tuple[int, str | None], _Server],
            unsupported: str | None) -> dict[str, str]:
    """Attach `route` to the listeners of `g` its parentRef selects; its Accepted condition."""
    lsts = [lst for lst in g.listeners
            if (pref.section_name is None or lst.name == pref.section_name)
            and (pref.port is None or lst.port == pref.port)]
    if not lsts:
        what = " ".join(x for x in (f"sectionName {pref.section_name!r}" if pref.section_name
                                    else "", f"port {pref.port}" if pref.port else "") if x)
        return cond("Accepted", False, "NoMatchingParent",
                    f'Gateway "{g.key}" has no listener with {what}')
    allowed = [lst for lst in lsts if _allows(lst, g, route, namespaces)]
    if not allowed:
        return cond("Accepted", False, "NotAllowedByListeners",
                    f"the listeners' allowedRoutes do not admit HTTPRoutes from namespace "
                    f"{route.namespace!r}")
    hosts = {lst.name: intersect(lst.hostname, route.hostnames) for lst in allowed}
    if not any(hosts.values()):
        return cond("Accepted", False, "NoMatchingListenerHostname",
                    "no hostname of the route matches a listener's hostname")
    if unsupported:
        return cond("Accepted", False, "UnsupportedValue", unsupported)
    for lst in allowed:
        if not hosts[lst.name] or not listener_ok[(g.key, lst.name)]:
            continue
        attached[(g.key, lst.name)] += 1
        for h in hosts[lst.name]:
            s = servers.setdefault((lst.port, h),
                                   _Server(lst.port, h, lst, g, certs[(g.key, lst.name)]))
            if route.key in s.routes:  # already there through another listener
                continue
            s.routes.add(route.key)
            for ri, rule in enumerate(route.rules):
                s.actions.append(_Action(route, ri, rule, rule.matches[0], lst))
                for mi, m in enumerate(rule.matches):
                    s.candidates.append(_Candidate(route, created, ri, mi, m,
                                                   len(s.actions) - 1))
    return cond("Accepted", True, "Accepted", "the route is accepted")


def _allows(lst: gw.Listener, g: gw.Gateway, route: gw.HTTPRoute,
            namespaces: Mapping[str, Mapping[str, str]]) -> bool:
    if lst.allowed_kinds and not any(k.group == gw.GROUP and k.kind == "HTTPRoute"
                                     for k in lst.allowed_kinds):
        return False
    if lst.allowed_from == "All":
        return True
    if lst.allowed_from == "Same":
        return route.namespace == g.namespace
    sel = lst.allowed_selector
    return sel is not None and sel.matches(namespaces.get(route.namespace, {}))


def _server_block(s: _Server, r: _Renderer, out: Result, prefix: Path) -> list[str]:
    ssl = " ssl" if s.listener.protocol == "HTTPS" else ""
    body = [f"listen {s.port}{ssl};", f"server_name {s.hostname or '_'};",
            'set $proxy_upstream_name "-";']
    if s.hostname is None:
        body[0] = f"listen {s.port}{ssl} default_server;"
    if s.cert:
        crt = prefix / "certs" / s.cert
        body += [f"ssl_certificate {crt};", f"ssl_certificate_key {crt};"]
    locations: set[tuple[str, str]] = {("", "/")}
    for c in s.candidates:
        p = c.match.path
        if p.type == "Exact":
            locations.add(("=", p.value))
        elif _prefix(p.value) != "/":
            q = _prefix(p.value)
            locations |= {("=", q), ("", q + "/")}
    for kind, path in sorted(locations, key=lambda kp: (kp[1], kp[0])):
        cands = _location_candidates(kind, path, s.candidates)
        body += _location(s, kind, path, cands, r, out)
    return ["server {", *["    " + b for b in body], "}"]


def _location(s: _Server, kind: str, path: str, cands: list[_Candidate], r: _Renderer,
              out: Result) -> list[str]:
    head = f"location {'= ' if kind == '=' else ''}{path} {{"
    if not cands:
        return [head, '    return 404 "404 Not Found\\n";', "}"]
    # the highest-precedence unconditional match hides every match below it
    live: list[_Candidate] = []
    for c in cands:
        live.append(c)
        if not _conditions(c.match):
            break
    choose: list[str] = []  # sets $lk_route to the winning rule's action
    conditional = bool(_conditions(live[-1].match))
    if conditional:
        choose.append('set $lk_route "";')
    for c in reversed(live):  # lowest precedence first: the last that holds wins
        conds = _conditions(c.match)
        if not conds:
            choose.append(f"set $lk_route {c.action};")
        elif len(conds) == 1:
            choose.append(f"if ({conds[0]}) {{ set $lk_route {c.action}; }}")
        else:  # nginx has no `and`: count the conditions that hold
            choose.append('set $lk_m "";')
            choose += [f'if ({cd}) {{ set $lk_m "${{lk_m}}1"; }}' for cd in conds]
            choose.append(f'if ($lk_m = "{"1" * len(conds)}") {{ set $lk_route {c.action}; }}')
    if conditional:
        choose.append('if ($lk_route = "") { return 404 "404 Not Found\\n"; }')
    actions = list(dict.fromkeys(c.action for c in live))
    branched = len(actions) > 1 or conditional
    headers: dict[str, str] = {}  # lowercase name -> spelling, of every header a rule changes
    act: list[str] = []
    rewrites: list[str] = []
    proxied = False
    for ai in actions:
        a = s.actions[ai]
        branch, rw_lines, desc, eps = _action(a, r, headers)
        proxied = proxied or any(x.startswith("set $lk_up ") for x in branch)
        if branched:
            act.append(f"if ($lk_route = {ai}) {{ " + " ".join(branch) + " }")
            if rw_lines:
                rewrites.append(f"if ($lk_route = {ai}) {{ " + " ".join(rw_lines) + " }")
        else:
            act += branch
            rewrites += rw_lines
        for c in live:
            row = Row(gateway=s.gateway.key, listener=s.listener.name, port=s.port,
                      hostname=s.hostname or "*", path=f"{c.match.path.type} {c.match.path.value}",
                      conditions=describe_match(c.match), action=desc, route=c.route.key,
                      rule=c.rule_index, endpoints=tuple(eps))
            if c.action == ai and row not in out.table:
                out.table.append(row)
    body: list[str] = []
    if proxied:
        body += ['set $lk_up "";', "set $lk_host $host;",
                 *[f"set {_hvar(n)} {_var(n)};" for n in headers]]
    body += [*(choose if branched else []), *act, *rewrites]
    if proxied:
        hdrs = [(h, "$lk_host" if h == "Host" else v) for h, v in PROXY_HEADERS]
        body += [f"proxy_set_header {h} {v};" for h, v in hdrs]
        body += [f"proxy_set_header {spelling} {_hvar(n)};" for n, spelling in headers.items()]
        body += ["set $proxy_upstream_name $lk_up;", "proxy_pass http://$lk_up;"]
    return [head, *["    " + b for b in body], "}"]


def _action(a: _Action, r: _Renderer, headers: dict[str, str]
            ) -> tuple[list[str], list[str], str, list[str]]:
    """(rewrite-module directives, `rewrite ... break` lines run after every `set`, the routing
    table's description, endpoints) of one rule."""
    rule = a.rule
    redirect = _filter(rule, "RequestRedirect")
    rewrite = _filter(rule, "URLRewrite")
    mod = _filter(rule, "RequestHeaderModifier")
    if redirect is not None and redirect.request_redirect is not None:
        rd = redirect.request_redirect
        target = _redirect_target(rd, a)
        flag = "permanent" if rd.status_code == 301 else "redirect"
        desc = f"redirect {rd.status_code} {target}"
        if rd.path is None:
            return [f"return {rd.status_code} {target}$request_uri;"], [], desc, []
        desc += f" ({rd.path.type} {rd.path.value})"
        return _rewrite_lines(rd.path, a, target, flag), [], desc, []
    if not rule.backend_refs:
        return ['return 500 "500 Internal Server Error: no backendRefs\\n";'], [], \
            "500 (no backendRefs)", []
    up, desc, eps = r.choose(a.route.key, a.rule_index, rule)
    branch = [f"set $lk_up {up};"]
    if mod is not None and mod.request_header_modifier is not None:
        hm = mod.request_header_modifier
        for name, value in hm.set:
            headers.setdefault(name.lower(), name)
            branch.append(f"set {_hvar(name)} {_q(value)};")
        for name, value in hm.add:
            headers.setdefault(name.lower(), name)
            r.appended[name] = None
            # appended to the client's value, comma-separated, on one header line
            branch.append(f'set {_hvar(name)} "${{lk_pre{_hvar(name)[3:]}}}{_q(value)[1:-1]}";')
        for name in hm.remove:
            headers.setdefault(name.lower(), name)
            branch.append(f'set {_hvar(name)} "";')
        desc += " (headers: " + ", ".join(
            [f"set {n}" for n, _ in hm.set] + [f"add {n}" for n, _ in hm.add] +
            [f"remove {n}" for n in hm.remove]) + ")"
    rw_lines: list[str] = []
    if rewrite is not None and rewrite.url_rewrite is not None:
        rw = rewrite.url_rewrite
        if rw.hostname:
            branch.append(f"set $lk_host {_q(rw.hostname)};")
            desc += f" (host {rw.hostname})"
        if rw.path is not None:
            rw_lines = _rewrite_lines(rw.path, a, "", "break")
            desc += f" ({rw.path.type} {rw.path.value})"
    return branch, rw_lines, desc, eps


def add_header_maps(conf_headers: Sequence[str]) -> list[str]:
    """`map`s giving "<client value>," (or "") for each header a rule appends to."""
    out = []
    for n in conf_headers:
        out += [f"map {_var(n)} $lk_pre{_hvar(n)[3:]} {{", '    "" "";',
                f'    default "{_var(n)},";', "}"]
    return out
