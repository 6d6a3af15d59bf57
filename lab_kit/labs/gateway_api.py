"""Checks of `labs/13-gateway-api.ipynb`: Gateway API, graded by real HTTP requests from outside.

The lab's cluster `gateway` (labs/clusters/gateway.yaml: a control plane and two workers,
host-gw, kube-proxy in iptables mode) runs the Gateway API controller
(labs/manifests/nginx-gateway.yaml: GatewayClass `nginx`, the controller pod in NGINX Gateway
Fabric's role, its LoadBalancer Service) and a small store (labs/manifests/gateway-store.yaml:
namespace `infra` for the cluster operator's Gateway; namespace `store`, labelled
`shared-gateway-access: "true"`, with the agnhost Deployments and Services `store-v1` (two
replicas), `store-v2` and `reviews`, each Service on port 80). The notebook applies an
HTTPRoute `store/hello` for hello.example.com that waits for the Gateway. In order, the
learner:

1. writes the shared Gateway `infra/shared-gateway` (class nginx, an HTTP listener `http` on
   port 80 for `*.example.com`) whose `allowedRoutes` admit routes from namespace store
   (`gateway`); the check reads the Gateway's conditions and address, the hello route's
   status, and asks http://hello.example.com/hostname;
2. sends store.example.com 90% to store-v1 and 10% to store-v2 with one HTTPRoute (`canary`);
   the check reads the route's status and measures who answers 1,000 real requests;
3. sends every request carrying `X-Canary: always` to store-v2, while all others keep the
   90/10 split (`header-routing`); the check measures both kinds of request;
4. repairs the HTTPRoute `store/reviews` the notebook applied broken (a parentRef to a listener
   the Gateway does not have, a backend Service name with a typo), having read why in its
   status, and names the two reasons (`fix-route`, answer `REASONS`); the check reads the
   route's conditions and asks http://reviews.example.com/hostname.

Every verdict on traffic comes from requests the external host really sent: DNS by its
dnsmasq, the route to the load-balancer IP, kube-proxy's DNAT on a node, nginx in the
controller pod, a store pod. The objects' status (written by the controller, as `kubectl get
-o yaml` shows it) and the controller's routing table (`c.gateway_routes()`) word the hints.

The split is judged as a binomial count: of N = 1,000 requests store-v2 should answer 10%
(mean 100, standard deviation 9.5). The check accepts the counts a fair 10% produces but for
at most 2.5 runs in a million on either side, computed from the binomial distribution itself
(it is skewed: the normal approximation's 4.5 standard deviations would fail a correct route
11 times in a million): 60 to 146. A correct 90/10 route fails that about 4 times in a million
runs; an 80/20 split (mean 200) passes it about 6 times in a million, a 50/50 one never.

Helpers for the notebook: `lb_ip`, `cli` (what `lab-kit ARGS` prints in a terminal),
`conditions` (an object's status conditions as a table), `measure_split` (who answers N
requests, in one curl), `routes_table` (the controller's routing table), `nginx_conf` (the
rendered config, one hostname's server block), `gateway_map` (GatewayClass → Gateway →
listeners → routes → Services → pods, from the live status).
"""

from __future__ import annotations

import io
import math
import re
import shlex
from collections import Counter
from collections.abc import Mapping
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.errors import LabError
from lab_kit.labs import norm_answer, web
from lab_kit.labs.web import who

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster, Table

__all__ = ["LAB", "Split", "cli", "conditions", "gateway_map", "lb_ip", "measure_split",
           "nginx_conf", "routes_table"]

LAB = Lab("13-gateway-api", "Gateway API: a shared Gateway, a canary and header routing",
          "gateway")

CONTROLLER_MANIFEST = "manifests/nginx-gateway.yaml"
STORE_MANIFEST = "manifests/gateway-store.yaml"
CONTROLLER_NS = "nginx-gateway"
CONTROLLER_SVC = "nginx-gateway"
CLASS = "nginx"
GATEWAY_NS, GATEWAY = "infra", "shared-gateway"
LISTENER = "http"
STORE = "store"
APPS = ("store-v1", "store-v2", "reviews")
V1, V2 = "store-v1", "store-v2"
SERVICE_PORT, CONTAINER_PORT = 80, 8080
HELLO_HOST = "hello.example.com"
HOST = "store.example.com"
REVIEWS_HOST = "reviews.example.com"
HELLO_ROUTE, REVIEWS_ROUTE = "hello", "reviews"
HEADER, HEADER_VALUE = "X-Canary", "always"
SETUP_HINT = (f'run the notebook\'s setup cell: c.apply("{CONTROLLER_MANIFEST}") and '
              f'c.apply("{STORE_MANIFEST}")')

# the canary: store-v2's share of N requests, judged as a binomial count (see the docstring)
N = 1000
HEADER_N = 100
SHARE = 0.10
TAIL = 2.5e-6  # the chance, on each side, that a fair split falls outside the bounds


def _binomial_pmf(n: int, p: float, k: int) -> float:
    """P(X = k) for X ~ Binomial(n, p), through logarithms (no overflow for large n)."""
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))


def bounds(n: int, p: float = SHARE, tail: float = TAIL) -> tuple[int, int]:
    """The counts of store-v2 accepted out of `n` requests, inclusive: the narrowest range
    whose two tails of Binomial(n, p) each hold at most `tail` of the probability."""
    pmf = [_binomial_pmf(n, p, k) for k in range(n + 1)]
    lo, below = 0, 0.0
    while below + pmf[lo] <= tail:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] <= tail:
        above += pmf[hi]
        hi -= 1
    return lo, hi


# --- helpers for the notebook ---------------------------------------------------------------------

def lb_ip(c: Cluster) -> str:
    """The Gateway controller's load-balancer IP: `status.loadBalancer.ingress[0].ip` of its
    Service (the address a programmed Gateway reports in `status.addresses`)."""
    return web.lb_ip(c, CONTROLLER_NS, CONTROLLER_SVC, SETUP_HINT)


def cli(c: Cluster, args: str) -> None:
    """Print what `lab-kit ARGS --name <cluster>` prints in a terminal, e.g.
    `cli(c, "get httproute reviews -n store -o yaml")` (`kubectl get … -o yaml`)."""
    from lab_kit.cli import main

    argv = [*shlex.split(args), "--name", c.name]
    buf = io.StringIO()
    with redirect_stdout(buf):
        main(argv)
    print(buf.getvalue(), end="")


def conditions(c: Cluster, kind: str, name: str, namespace: str = STORE) -> Table:
    """The status conditions of a GatewayClass, Gateway or HTTPRoute, one row each: for a
    Gateway its own and each listener's, for an HTTPRoute those of each parent it names."""
    from lab_kit.cluster import Table

    obj = c.get_gateway_object(kind, name, namespace)
    st = obj.get("status") or {}
    rows: list[list[Any]] = []

    def add(where: str, conds: list[dict[str, Any]]) -> None:
        rows.extend([where, x["type"], x["status"], x["reason"], x.get("message", "")]
                    for x in conds)
    if kind == "HTTPRoute":
        for p in st.get("parents", []):
            ref = p["parentRef"]
            where = f"parent {ref['namespace']}/{ref['name']}" + (
                f" sectionName {ref['sectionName']}" if ref.get("sectionName") else "")
            add(where, p["conditions"])
        if not st.get("parents"):
            rows.append(["(no parent)", "-", "-", "-", "no controller has taken the route"])
    else:
        add(kind, st.get("conditions", []))
        for ls in st.get("listeners", []):
            add(f"listener {ls['name']} ({ls.get('attachedRoutes', 0)} routes)",
                ls["conditions"])
    return Table(["WHERE", "TYPE", "STATUS", "REASON", "MESSAGE"], rows)


@dataclass(frozen=True, repr=False)
class Split:
    """Who answered `n` requests to one URL: Deployment (or `404`, `500`, `no answer`) ->
    count; `error` is curl's complaint when nothing answered."""

    url: str
    n: int
    counts: Counter[str]
    headers: tuple[tuple[str, str], ...] = ()
    error: str = ""

    def share(self, who_: str) -> float:
        return self.counts.get(who_, 0) / self.n if self.n else 0.0

    def text(self) -> str:
        """`store-v1 904 (90.4%), store-v2 96 (9.6%)`, the most frequent first."""
        return ", ".join(f"{k} {v} ({100 * v / self.n:.1f}%)"
                         for k, v in self.counts.most_common()) or "nothing"

    def __str__(self) -> str:
        hdr = "".join(f" -H '{k}: {v}'" for k, v in self.headers)
        out = f"{self.n} × GET {self.url}{hdr}: {self.text()}"
        return out + (f"\n  ({self.error})" if self.error else "")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html
        bars = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td style='text-align:right'>{v}</td>"
            f"<td style='text-align:right'>{100 * v / self.n:.1f}%</td><td><div style='"
            f"background:#4a7ebb;height:10px;width:{300 * v / self.n:.0f}px'></div></td></tr>"
            for k, v in self.counts.most_common())
        hdr = "".join(f" -H '{k}: {v}'" for k, v in self.headers)
        err = f"<div>{html.escape(self.error)}</div>" if self.error else ""
        return (f"<div><code>{self.n} × GET {html.escape(self.url + hdr)}</code></div>"
                f"<table>{bars}</table>{err}")


def measure_split(c: Cluster, url: str = f"http://{HOST}/hostname", n: int = N,
                  headers: Mapping[str, str] | None = None) -> Split:
    """GET `url` `n` times from the external host and count who answered (the Deployment of the
    pod that answered `/hostname`; other answers by their status): `web.tally`, one curl over
    one kept-alive connection; nginx picks a backend for each request anew."""
    counts = web.tally(c, url, n, headers)
    error = ""
    if counts.get("no answer"):  # curl's own words, from one more request
        error = web.get(c, url, headers).error or "no answer"
    return Split(url, n, counts, tuple((headers or {}).items()), error)


def routes_table(c: Cluster, hostname: str | None = None) -> Table:
    """The controller's routing table (`c.gateway_routes()`): for each hostname and path, the
    match conditions and the action (backends with their share, or the error nginx answers),
    and the route and rule it comes from; `hostname` keeps that host's rows only."""
    from lab_kit.cluster import Table

    rows = [[r["hostname"], r["path"], r["conditions"] or "-", r["action"],
             f"{r['route']} rule {r['rule']}"]
            for r in c.gateway_routes() if hostname is None or r["hostname"] == hostname]
    return Table(["HOSTNAME", "PATH", "MATCH", "ACTION", "FROM"], rows)


def _controller_pod(c: Cluster) -> Any:
    return web.controller_pod(c, CONTROLLER_NS)


def nginx_conf(c: Cluster, hostname: str | None = HOST) -> str:
    """The nginx config the controller rendered from the Gateway and its routes: the `server`
    block of `hostname` with the `split_clients` and `upstream` blocks it uses; `hostname=""`:
    the whole file."""
    path = web.nginx_conf_file(c, CONTROLLER_NS)
    if path is None:
        raise LabError(f"the Gateway controller has no nginx.conf yet: {SETUP_HINT}")
    text = path.read_text()
    if not hostname:
        return text
    lines = text.splitlines()
    servers = [b for b in web.conf_blocks(lines, "server {")
               if any(ln.strip() == f"server_name {hostname};" for ln in b)]
    if not servers:
        return f"# {path}: no server block for {hostname} (no attached route names it)"
    words = set(re.findall(r"[$\w.-]+", "\n".join(ln for b in servers for ln in b)))
    splits = [b for b in web.conf_blocks(lines, "split_clients ") if b[0].split()[2] in words]
    words |= set(re.findall(r"[$\w.-]+", "\n".join(ln for b in splits for ln in b)))
    ups = [b for b in web.conf_blocks(lines, "upstream ") if b[0].split()[1] in words]
    body = [ln[4:] for b in splits + ups + servers for ln in b]
    return f"# {path} (excerpt)\n" + "\n".join(body) + "\n"


def gateway_map(c: Cluster) -> str:
    """GatewayClass → Gateway (address, listeners) → the HTTPRoutes attached or refused (with
    the reason) → their rules' backends → the pods behind them, from the live objects and the
    status the controller wrote."""
    state = c.state
    lines: list[str] = []
    pods_of = {}
    for p in c.pods():
        owner = who(p.name)
        pods_of.setdefault(f"{p.namespace}/{owner}", []).append(f"{p.name} ({p.ip}, {p.node})")
    for gc_name in sorted(state.get("gatewayclasses") or {}):
        gc = c.get_gateway_object("GatewayClass", gc_name)
        ok = _cond(gc, "Accepted")
        lines.append(f"GatewayClass {gc_name}  controller {gc['spec']['controllerName']}  "
                     f"Accepted={ok['status'] if ok else 'Unknown'}")
    gws = sorted(state.get("gateways") or {})
    if not gws:
        lines.append("  (no Gateway)")
    routes = {k: c.get_gateway_object("HTTPRoute", k) for k in sorted(state.get("httproutes")
                                                                        or {})}
    for key in gws:
        g = c.get_gateway_object("Gateway", key)
        st = g["status"]
        addr = ", ".join(a["value"] for a in st.get("addresses", [])) or "no address"
        flags = " ".join(f"{x['type']}={x['status']}" for x in st.get("conditions", []))
        lines.append(f"└─ Gateway {key}  class {g['spec']['gatewayClassName']}  {addr}  {flags}")
        listeners = {ls["name"]: ls for ls in st.get("listeners", [])}
        for lst in g["spec"].get("listeners", []):
            ls = listeners.get(lst["name"], {})
            frm = ((lst.get("allowedRoutes") or {}).get("namespaces") or {}).get("from", "Same")
            lines.append(f"   └─ listener {lst['name']}: {lst['protocol']} port {lst['port']} "
                         f"hostname {lst.get('hostname', '(any)')}  routes from {frm}  "
                         f"attachedRoutes {ls.get('attachedRoutes', 0)}")
        for rkey, r in routes.items():
            for par in r["status"].get("parents", []):
                ref = par["parentRef"]
                if f"{ref['namespace']}/{ref['name']}" != key:
                    continue
                acc = next((x for x in par["conditions"] if x["type"] == "Accepted"), {})
                res = next((x for x in par["conditions"] if x["type"] == "ResolvedRefs"), {})
                hosts = ", ".join(r["spec"].get("hostnames") or ["(the listener's)"])
                if acc.get("status") != "True":
                    lines.append(f"      ✘ HTTPRoute {rkey} ({hosts}): not attached, "
                                 f"{acc.get('reason')}: {acc.get('message')}")
                    continue
                bad = "" if res.get("status") == "True" else (
                    f"  ✘ {res.get('reason')}: {res.get('message')}")
                lines.append(f"      └─ HTTPRoute {rkey} ({hosts}){bad}")
                for row in c.gateway_routes():
                    if row["route"] != rkey or row["gateway"] != key:
                        continue
                    cond = f" {row['conditions']}" if row["conditions"] else ""
                    lines.append(f"         └─ {row['hostname']} {row['path']}{cond} → "
                                 f"{row['action']}")
                    for ref_ in re.findall(r"([\w-]+/[\w.-]+):\d+", row["action"]):
                        for p in pods_of.get(ref_, []):
                            lines.append(f"               {ref_}: pod {p}")
    for rkey, r in routes.items():
        if not r["status"].get("parents"):
            lines.append(f"   ? HTTPRoute {rkey}: no controller has taken it")
    return "\n".join(lines)


# --- evidence ---------------------------------------------------------------------------------

def _cond(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((x for x in (obj.get("status") or {}).get("conditions", [])
                 if x["type"] == type_), None)


def _said(x: Mapping[str, Any] | None) -> str:
    """A condition as `Accepted=False (NotAllowedByListeners: …)`."""
    if not x:
        return "(no such condition)"
    return f"{x['type']}={x['status']} ({x['reason']}: {x.get('message', '')})"


def _missing(ctx: Context) -> Verdict | None:
    c = ctx.cluster
    if _controller_pod(c) is None:
        return failed(f"the Gateway controller is not running (no pod in namespace "
                      f"{CONTROLLER_NS})", hint=SETUP_HINT, expected="the nginx-gateway pod",
                      actual="no pod")
    have = {who(p.name) for p in c.pods(STORE)}
    gone = [a for a in APPS if a not in have]
    if gone:
        return failed(f"the store's Deployments {', '.join(gone)} have no pod in namespace "
                      f"{STORE}", hint=SETUP_HINT, expected=", ".join(APPS),
                      actual="missing: " + ", ".join(gone))
    return None


def _gateways(c: Cluster) -> list[dict[str, Any]]:
    return [c.get_gateway_object("Gateway", k) for k in sorted(c.state.get("gateways") or {})]


def _routes(c: Cluster) -> list[dict[str, Any]]:
    return [c.get_gateway_object("HTTPRoute", k)
            for k in sorted(c.state.get("httproutes") or {})]


def _key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata'].get('namespace', 'default')}/{obj['metadata']['name']}"


def _routes_for(c: Cluster, host: str) -> list[dict[str, Any]]:
    """The HTTPRoutes that name `host` in their hostnames (any namespace)."""
    return [r for r in _routes(c) if host in (r["spec"].get("hostnames") or [])]


def _parent_conds(route: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(parent Gateway key, Accepted, ResolvedRefs) for each parent in the route's status."""
    out = []
    for p in (route.get("status") or {}).get("parents", []):
        ref = p["parentRef"]
        acc = next((x for x in p["conditions"] if x["type"] == "Accepted"), {})
        res = next((x for x in p["conditions"] if x["type"] == "ResolvedRefs"), {})
        out.append((f"{ref['namespace']}/{ref['name']}", acc, res))
    return out


def _gateway_ready(ctx: Context) -> Verdict | None:
    """A failed verdict when the shared Gateway of exercise `gateway` is not programmed."""
    c = ctx.cluster
    try:
        g = c.get_gateway_object("Gateway", GATEWAY, GATEWAY_NS)
    except LabError:
        return failed(f"there is no Gateway {GATEWAY_NS}/{GATEWAY} to attach routes to",
                      hint="do exercise `gateway` first: the routes of this exercise name it "
                           "as their parent", expected=f"Gateway {GATEWAY_NS}/{GATEWAY}",
                      actual="not found")
    prog = _cond(g, "Programmed")
    if not prog or prog["status"] != "True":
        return failed(f"Gateway {GATEWAY_NS}/{GATEWAY} is not programmed: {_said(prog)}",
                      hint="do exercise `gateway` first (LAB.run(\"gateway\") says what is "
                           "wrong)", expected="Programmed=True", actual=_said(prog))
    return None


# --- exercise 1: the shared Gateway ---------------------------------------------------------------

def _no_gateway_hint(c: Cluster) -> str:
    others = [_key(g) for g in _gateways(c)]
    same_name = [k for k in others if k.endswith(f"/{GATEWAY}")]
    if same_name:
        return (f"there is a Gateway {same_name[0]}, in the wrong namespace: the cluster "
                f"operator's Gateway lives in namespace {GATEWAY_NS} (metadata.namespace: "
                f"{GATEWAY_NS}), and route store/{HELLO_ROUTE} names it there. Delete the other "
                "one: c.delete(...)")
    if others:
        return (f"the Gateways here are {', '.join(others)}; route store/{HELLO_ROUTE} names "
                f"its parent {GATEWAY_NS}/{GATEWAY}: metadata.name: {GATEWAY}, "
                f"metadata.namespace: {GATEWAY_NS}")
    return (f"write a Gateway (apiVersion gateway.networking.k8s.io/v1, kind Gateway, "
            f"metadata.name: {GATEWAY}, metadata.namespace: {GATEWAY_NS}, spec.gatewayClassName:"
            f" {CLASS}, one listener) and apply it with c.apply(...)")


def _not_accepted_hint(c: Cluster, g: Mapping[str, Any], acc: Mapping[str, Any] | None) -> str:
    if not acc or acc.get("reason") == "Pending":
        classes = sorted(c.state.get("gatewayclasses") or {})
        return (f"no controller has taken the Gateway: its gatewayClassName is "
                f"{g['spec'].get('gatewayClassName')!r}, and the GatewayClasses here are "
                f"{', '.join(classes) or 'none'}. A Gateway is served by the controller of "
                f"its class: gatewayClassName: {CLASS}")
    bad = [f"listener {ls['name']}: {x['reason']}: {x.get('message', '')}"
           for ls in (g.get("status") or {}).get("listeners", [])
           for x in ls["conditions"] if x["type"] in ("Accepted", "ResolvedRefs")
           and x["status"] == "False"]
    return (f"the controller refused every listener ({'; '.join(bad)}): one listener "
            f"{{name: {LISTENER}, protocol: HTTP, port: 80, hostname: \"*.example.com\"}}")


def _hello_hint(c: Cluster, acc: Mapping[str, Any]) -> str:
    reason = acc.get("reason", "")
    if reason == "NotAllowedByListeners":
        return (f"the listener admits routes from the Gateway's own namespace only "
                f"(allowedRoutes.namespaces.from defaults to Same), and the route lives in "
                f"{STORE}. Let the store in: allowedRoutes: {{namespaces: {{from: Selector, "
                "selector: {matchLabels: {shared-gateway-access: \"true\"}}}} (the label of "
                "namespace store), or from: All")
    if reason == "NoMatchingListenerHostname":
        return (f"no listener's hostname covers {HELLO_HOST}: a listener with hostname "
                f"\"*.example.com\" covers every name under example.com (one label or more); "
                "a name without the `*.` covers itself only")
    if reason == "NoMatchingParent":
        return (f"the route names Gateway {GATEWAY_NS}/{GATEWAY} and any of its listeners; "
                f"{acc.get('message', '')}: give the Gateway a listener named {LISTENER}")
    return f"the route's status says {reason}: {acc.get('message', '')}"


def _port_hint(c: Cluster, g: Mapping[str, Any]) -> str:
    ports = sorted({ls.get("port") for ls in g["spec"].get("listeners", [])})
    svc = c.service(CONTROLLER_SVC, CONTROLLER_NS)
    lb = sorted(p["port"] for p in svc["spec"]["ports"])
    if 80 not in ports:
        return (f"the Gateway's listeners are on port {', '.join(map(str, ports))}, and the "
                f"controller's LoadBalancer Service forwards ports {', '.join(map(str, lb))} "
                "only: an HTTP listener on port 80")
    return ("is the controller pod running and its Service intact? "
            f"c.get_pods('{CONTROLLER_NS}'), c.get_services('{CONTROLLER_NS}')")


@LAB.check("gateway", f"Gateway {GATEWAY_NS}/{GATEWAY} is programmed and admits routes from "
                      f"namespace {STORE}")
def check_gateway(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    c = ctx.cluster
    try:
        g = c.get_gateway_object("Gateway", GATEWAY, GATEWAY_NS)
    except LabError:
        return failed(f"there is no Gateway {GATEWAY} in namespace {GATEWAY_NS}",
                      hint=_no_gateway_hint(c),
                      expected=f"Gateway {GATEWAY_NS}/{GATEWAY}", actual="not found")
    acc, prog = _cond(g, "Accepted"), _cond(g, "Programmed")
    if not acc or acc["status"] != "True":
        return failed(f"Gateway {GATEWAY_NS}/{GATEWAY} is not accepted: {_said(acc)}",
                      hint=_not_accepted_hint(c, g, acc), expected="Accepted=True",
                      actual=_said(acc))
    if not prog or prog["status"] != "True":
        return failed(f"Gateway {GATEWAY_NS}/{GATEWAY} is not programmed: {_said(prog)}",
                      hint=_not_accepted_hint(c, g, acc) if prog and prog["reason"] == "Invalid"
                      else f"the controller's Service has no load-balancer IP: {SETUP_HINT}",
                      expected="Programmed=True", actual=_said(prog))
    ip = lb_ip(c)
    addrs = [a["value"] for a in g["status"].get("addresses", [])]
    if ip not in addrs:
        return failed(f"Gateway {GATEWAY_NS}/{GATEWAY} reports addresses {addrs}, not the "
                      f"controller's load-balancer IP {ip}", hint=SETUP_HINT, expected=ip,
                      actual=addrs)
    try:
        hello = c.get_gateway_object("HTTPRoute", HELLO_ROUTE, STORE)
    except LabError:
        return failed(f"the HTTPRoute {STORE}/{HELLO_ROUTE} is gone",
                      hint="run the notebook's cell that applies HELLO again: c.apply(HELLO)",
                      expected=f"HTTPRoute {STORE}/{HELLO_ROUTE}", actual="not found")
    mine = [(acc_, res) for gk, acc_, res in _parent_conds(hello)
            if gk == f"{GATEWAY_NS}/{GATEWAY}"]
    if not mine:
        return failed(f"route {STORE}/{HELLO_ROUTE} has no status for Gateway "
                      f"{GATEWAY_NS}/{GATEWAY}", hint="apply HELLO again, as the notebook does",
                      expected=f"parent {GATEWAY_NS}/{GATEWAY}", actual="none")
    hacc = mine[0][0]
    if hacc.get("status") != "True":
        return failed(f"route {STORE}/{HELLO_ROUTE} does not attach to the Gateway: "
                      f"{_said(hacc)}", hint=_hello_hint(c, hacc), expected="Accepted=True",
                      actual=_said(hacc))
    a = web.get(c, f"http://{HELLO_HOST}/hostname")
    if a.status == 0:
        return failed(f"http://{HELLO_HOST}/hostname: no answer ({a.error})",
                      hint=_port_hint(c, g), expected=f"an answer from {V1}", actual=a.error)
    if a.status != 200 or a.who != V1:
        return failed(f"http://{HELLO_HOST}/hostname answered {a.status} "
                      f"{a.body.strip()[:60]!r}, not {V1}",
                      hint=f"the route sends {HELLO_HOST} to Service {V1}; routes_table(c) "
                           "shows what the controller made of the routes",
                      expected=V1, actual=f"{a.status} {a.who}")
    n = next((ls.get("attachedRoutes", 0) for ls in g["status"].get("listeners", [])), 0)
    return passed(f"Gateway {GATEWAY_NS}/{GATEWAY}: Accepted and Programmed at {ip}; route "
                  f"{STORE}/{HELLO_ROUTE} attached (the listener has {n} route"
                  f"{'s' if n != 1 else ''}); http://{HELLO_HOST}/hostname answered by "
                  f"{a.body.strip()}")


# --- the canary: routes, their status, and the measured split -------------------------------------

def _route_problem(c: Cluster, host: str, what: str) -> Verdict | None:
    """A failed verdict when no route names `host`, or a route that does is not attached to
    the shared Gateway or has a backend that does not resolve; its status quoted."""
    routes = _routes_for(c, host)
    if not routes:
        nohost = [_key(r) for r in _routes(c) if not r["spec"].get("hostnames")
                  and _key(r).startswith(f"{STORE}/")]
        hint = (f"route {nohost[0]} has no hostnames: it serves the listener's "
                f"\"*.example.com\", and no name is published in DNS for it. Give it "
                f"hostnames: [{host}]" if nohost else
                f"write an HTTPRoute in namespace {STORE} with hostnames: [{host}] and "
                f"parentRefs: [{{name: {GATEWAY}, namespace: {GATEWAY_NS}}}], and apply it "
                "with c.apply(...)")
        return failed(f"no HTTPRoute names {host} in its hostnames", hint=hint,
                      expected=f"an HTTPRoute for {host} ({what})", actual="none")
    for r in routes:
        parents = _parent_conds(r)
        if not parents:
            return failed(f"route {_key(r)} names no parent the controller knows",
                          hint=f"parentRefs: [{{name: {GATEWAY}, namespace: {GATEWAY_NS}}}]",
                          expected="status.parents", actual="none")
        for gk, acc, res in parents:
            if acc.get("status") != "True":
                return failed(f"route {_key(r)} is not attached to Gateway {gk}: {_said(acc)}",
                              hint=_attach_hint(r, gk, acc), expected="Accepted=True",
                              actual=_said(acc))
            if res.get("status") != "True":
                return failed(f"route {_key(r)}: {_said(res)}", hint=_resolve_hint(res),
                              expected="ResolvedRefs=True", actual=_said(res))
    return None


def _attach_hint(r: Mapping[str, Any], gk: str, acc: Mapping[str, Any]) -> str:
    reason = acc.get("reason", "")
    if reason == "NoMatchingParent" and gk != f"{GATEWAY_NS}/{GATEWAY}":
        return (f"the route names Gateway {gk}, which does not exist. A parentRef without "
                f"`namespace` means the route's own namespace ({_key(r).split('/')[0]}): "
                f"parentRefs: [{{name: {GATEWAY}, namespace: {GATEWAY_NS}}}]")
    if reason == "NoMatchingParent":
        return (f"{acc.get('message', '')}: the Gateway's listener is named {LISTENER} "
                f"(sectionName: {LISTENER}, or no sectionName: any listener)")
    if reason == "NotAllowedByListeners":
        return (f"the Gateway's allowedRoutes do not admit namespace {_key(r).split('/')[0]}: "
                f"put the route in namespace {STORE} (exercise `gateway` lets that one in)")
    if reason == "NoMatchingListenerHostname":
        return ("the route's hostnames are outside the listener's \"*.example.com\": use a "
                "name under example.com")
    return f"{reason}: {acc.get('message', '')}"


def _resolve_hint(res: Mapping[str, Any]) -> str:
    msg = res.get("message", "")
    if "has no port" in msg:
        return (f"the controller says: {msg}. A backendRef's port is the Service's port, "
                f"{SERVICE_PORT}, not the pods' containerPort {CONTAINER_PORT}: "
                f"port: {SERVICE_PORT}")
    if "not found" in msg:
        return (f"the controller says: {msg}. The Services in {STORE} are "
                f"{', '.join(APPS)}; requests the route would send there get 500 from "
                "nginx")
    return f"the controller says: {res.get('reason')}: {msg}"


def _split_hint(c: Cluster, s: Split, host: str) -> str:
    """Why `s` is not a 90/10 split of store-v1 and store-v2, from the routing table."""
    rows = [r for r in c.gateway_routes() if r["hostname"] == host and not r["conditions"]]
    said = f" (the controller's routing table: {rows[0]['action']})" if rows else ""
    v2 = s.share(V2)
    if not s.counts.get(V2):
        return (f"store-v2 never answered{said}: the rule needs two backendRefs, {V1} with "
                f"weight: 90 and {V2} with weight: 10 (weight 0 sends nothing)")
    if not s.counts.get(V1):
        return (f"store-v1 never answered{said}: the rule needs two backendRefs, {V1} with "
                f"weight: 90 and {V2} with weight: 10")
    if 0.4 <= v2 <= 0.6:
        return (f"an even split{said}: a backendRef without `weight` has weight 1, so two "
                f"of them share equally. weight: 90 on {V1}, weight: 10 on {V2}")
    if v2 > 0.6:
        return (f"{V2} gets most of the requests{said}: the weights are swapped. weight: 90 "
                f"on {V1}, weight: 10 on {V2}")
    return (f"each backend gets its weight divided by the sum of the weights{said}: "
            f"90 and 10 (or 9 and 1) give {V2} 10%")


def _judge_split(c: Cluster, s: Split, host: str, what: str) -> Verdict | None:
    """A failed verdict unless `s` is store-v1 and store-v2 only, store-v2 within bounds."""
    others = {k: v for k, v in s.counts.items() if k not in (V1, V2)}
    if others:
        first = max(others, key=lambda k: others[k])
        if first == "no answer":
            hint = (f"the external host cannot resolve {host}: the controller publishes the "
                    "hostnames of accepted routes only" if "resolve" in s.error else
                    f"no HTTP answer: {s.error}")
        elif first == "404":
            hint = (f"nginx found no rule for these requests: every request {what} must match "
                    "a rule; a rule without `matches` matches every path")
        elif first in ("500", "503"):
            rows = [r for r in c.gateway_routes() if r["hostname"] == host]
            bad = [r["action"] for r in rows if "500" in r["action"] or "503" in r["action"]]
            hint = (f"nginx answered {first}: the controller's routing table says "
                    f"{bad[0] if bad else rows[0]['action'] if rows else 'nothing'}. A backendRef"
                    f" names a Service of namespace {STORE} ({', '.join(APPS)}) and its port "
                    f"{SERVICE_PORT}")
        else:
            hint = f"only {V1} and {V2} should answer {host}"
        return failed(f"{s.n} requests {what}: {s.text()}", hint=hint,
                      expected=f"{V1} ~90%, {V2} ~10%", actual=s.text())
    lo, hi = bounds(s.n)
    got = s.counts.get(V2, 0)
    if not lo <= got <= hi:
        return failed(f"{s.n} requests {what}: {s.text()}; {V2} should answer {100 * SHARE:g}% "
                      f"({lo} to {hi} of {s.n}: a fair 10% lands outside that at most "
                      f"{2 * TAIL * 1e6:g} times in a million)", hint=_split_hint(c, s, host),
                      expected=f"{V2}: {lo}..{hi} of {s.n}", actual=s.text())
    return None


@LAB.check("canary", f"{HOST}: 90% of the requests go to {V1}, 10% to {V2}")
def check_canary(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    if (not_ready := _gateway_ready(ctx)) is not None:
        return not_ready
    c = ctx.cluster
    bad = _route_problem(c, HOST, "for the canary")
    if bad is not None and bad.expected == "ResolvedRefs=True":  # what the users get, too
        s = measure_split(c, f"http://{HOST}/hostname", N)
        return failed(f"{bad.message}; {N} requests to http://{HOST}/hostname: {s.text()}",
                      hint=bad.hint, expected=bad.expected, actual=bad.actual)
    if bad is not None:
        return bad
    s = measure_split(c, f"http://{HOST}/hostname", N)
    if (wrong := _judge_split(c, s, HOST, f"to http://{HOST}/hostname")) is not None:
        return wrong
    lo, hi = bounds(N)
    return passed(f"{N} requests to http://{HOST}/hostname: {s.text()} ({V2} within "
                  f"{lo}..{hi}, a fair 10%)")


# --- exercise 3: header routing ---------------------------------------------------------------

def _header_rows(c: Cluster) -> list[dict[str, Any]]:
    """Routing-table rows (any hostname) whose match tests the header X-Canary."""
    return [r for r in c.gateway_routes() if HEADER.lower() in r["conditions"].lower()]


def _header_hint(c: Cluster, s: Split) -> str:
    rows = _header_rows(c)
    mine = [r for r in rows if r["hostname"] == HOST]
    if not rows:
        return (f"no rule matches the header {HEADER}: add a rule to the route of {HOST} with "
                f"matches: [{{headers: [{{name: {HEADER}, value: {HEADER_VALUE}}}]}}] and "
                f"backendRefs: [{{name: {V2}, port: {SERVICE_PORT}}}]")
    if not mine:
        r = rows[0]
        return (f"the header rule of route {r['route']} serves hostname {r['hostname']}, not "
                f"{HOST}: a route without hostnames takes the listener's \"*.example.com\", "
                f"and nginx picks the server of the exact name {HOST} first. Rules combine "
                f"only for the same hostname: put the rule in the route of {HOST}, or give "
                f"route {r['route']} hostnames: [{HOST}]")
    r = mine[0]
    values = [v for k, v in re.findall(r"header ([^=,]+)=([^,]*)", r["conditions"])
              if k.strip().lower() == HEADER.lower()]
    if values and HEADER_VALUE not in values:
        return (f"the rule matches {r['conditions']}: a header's name is compared without "
                f"case, its value exactly: value: {HEADER_VALUE}")
    if r["action"] != f"{STORE}/{V2}:{SERVICE_PORT}":
        return (f"the header rule sends the requests to {r['action']}: its backendRefs must be "
                f"{V2} alone (no weights needed)")
    return f"routes_table(c, \"{HOST}\") shows what the controller made of the rules"


def _or_hint(c: Cluster) -> str:
    rows = [r for r in c.gateway_routes() if r["hostname"] == HOST]
    by_rule: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_rule.setdefault((r["route"], r["rule"]), []).append(r)
    for (route, rule), rs in by_rule.items():
        has_header = any(HEADER.lower() in r["conditions"].lower() for r in rs)
        without = [r for r in rs if HEADER.lower() not in r["conditions"].lower()]
        if has_header and without:
            return (f"rule {rule} of route {route} has several `matches`, one with the header "
                    f"and one without ({without[0]['path']} "
                    f"{without[0]['conditions'] or 'alone'}): the entries of `matches` are "
                    "alternatives (OR), and the one without the header catches every request. "
                    "Conditions inside ONE match are ANDed: matches: [{path: …, headers: "
                    "[…]}], or the header alone")
    return (f"requests without the header must keep the 90/10 split: the rule with the "
            f"weights stays, and only the header rule sends to {V2} alone")


@LAB.check("header-routing", f"{HOST}: requests with '{HEADER}: {HEADER_VALUE}' go to {V2}, "
                             "all others keep the 90/10 split")
def check_header_routing(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    if (not_ready := _gateway_ready(ctx)) is not None:
        return not_ready
    c = ctx.cluster
    if (bad := _route_problem(c, HOST, "for the header rule")) is not None:
        return bad
    url = f"http://{HOST}/hostname"
    flagged = measure_split(c, url, HEADER_N, {HEADER: HEADER_VALUE})
    if flagged.counts.get(V2, 0) != HEADER_N:
        not_v2 = {k: v for k, v in flagged.counts.items() if k != V2}
        hint = (_header_hint(c, flagged) if set(not_v2) <= {V1} else
                f"nginx answered {', '.join(not_v2)}: routes_table(c, \"{HOST}\") shows the "
                "rule the header requests take")
        return failed(f"{HEADER_N} requests with '{HEADER}: {HEADER_VALUE}': "
                      f"{flagged.text()}", hint=hint,
                      expected=f"{V2} {HEADER_N} of {HEADER_N}", actual=flagged.text())
    plain = measure_split(c, url, N)
    if plain.counts.get(V2, 0) == N:
        return failed(f"{N} requests without the header: {plain.text()}: the header rule "
                      "takes every request", hint=_or_hint(c),
                      expected=f"{V1} ~90%, {V2} ~10%", actual=plain.text())
    if (wrong := _judge_split(c, plain, HOST, "without the header")) is not None:
        return wrong
    other = measure_split(c, url, HEADER_N, {HEADER: "never"})
    if other.counts.get(V2, 0) == HEADER_N:
        return failed(f"{HEADER_N} requests with '{HEADER}: never' all went to {V2}: the rule "
                      "matches the header whatever its value", hint=f"headers: [{{name: "
                      f"{HEADER}, value: {HEADER_VALUE}}}] (type Exact is the default)",
                      expected="the 90/10 split", actual=other.text())
    return passed(f"with '{HEADER}: {HEADER_VALUE}': {flagged.text()}; without it, {N} "
                  f"requests: {plain.text()}")


# --- exercise 4: read the status, fix the route ---------------------------------------------------

REASONS = ("NoMatchingParent", "BackendNotFound")


@LAB.check("fix-route", f"Route {STORE}/{REVIEWS_ROUTE} is accepted, its backend resolves, and "
                        "`REASONS` names what its status said")
def check_fix_route(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    if (not_ready := _gateway_ready(ctx)) is not None:
        return not_ready
    c = ctx.cluster
    try:
        r = c.get_gateway_object("HTTPRoute", REVIEWS_ROUTE, STORE)
    except LabError:
        return failed(f"there is no HTTPRoute {STORE}/{REVIEWS_ROUTE}",
                      hint="run the notebook's cell that applies BROKEN, then fix the route: "
                           "edit the YAML and c.apply(...) it again (same name, same namespace)",
                      expected=f"HTTPRoute {STORE}/{REVIEWS_ROUTE}", actual="not found")
    if (bad := _route_problem(c, REVIEWS_HOST, "for the reviews")) is not None:
        return bad
    parents = _parent_conds(r)
    if not any(gk == f"{GATEWAY_NS}/{GATEWAY}" for gk, _, _ in parents):
        return failed(f"route {STORE}/{REVIEWS_ROUTE} is not attached to {GATEWAY_NS}/{GATEWAY}",
                      hint=f"parentRefs: [{{name: {GATEWAY}, namespace: {GATEWAY_NS}}}]",
                      expected=f"parent {GATEWAY_NS}/{GATEWAY}",
                      actual=", ".join(gk for gk, _, _ in parents))
    answers = web.requests(c, [f"http://{REVIEWS_HOST}/hostname"] * 3)
    wrong = [a for a in answers if a.status != 200 or a.who != "reviews"]
    if wrong:
        a = wrong[0]
        said = a.error if a.status == 0 else f"{a.status} {a.body.strip()[:60]!r}"
        return failed(f"http://{REVIEWS_HOST}/hostname answered {said}",
                      hint=f"the route must send {REVIEWS_HOST} to Service reviews, port "
                           f"{SERVICE_PORT}; routes_table(c, \"{REVIEWS_HOST}\") shows the "
                           "controller's view",
                      expected="reviews", actual=said)
    raw = norm_answer(ctx.get("REASONS"))
    if isinstance(ctx.get("REASONS"), (list, tuple, set)):
        raw = " ".join(str(x) for x in ctx.get("REASONS"))
    missing_reasons = [x for x in REASONS if x.lower() not in raw.lower()]
    if missing_reasons:
        return failed(f"the route works; `REASONS` = {ctx.get('REASONS')!r} does not name "
                      f"{' and '.join('the reason of ' + w for w in _which(missing_reasons))}",
                      hint="the broken route's status.parents[0].conditions had two conditions "
                           "with status False, each with a `reason` (one word, CamelCase): the "
                           "cell that printed conditions(c, \"HTTPRoute\", \"reviews\") before "
                           "your fix shows them (to see them again: c.apply(BROKEN), read them, "
                           "then apply your fix once more)",
                      expected="the two reasons", actual=repr(ctx.get("REASONS")))
    return passed(f"route {STORE}/{REVIEWS_ROUTE}: Accepted and ResolvedRefs; "
                  f"http://{REVIEWS_HOST}/hostname answered by reviews; the broken route said "
                  f"{' and '.join(REASONS)}")


def _which(reasons: list[str]) -> list[str]:
    names = {"NoMatchingParent": "Accepted=False", "BackendNotFound": "ResolvedRefs=False"}
    return [names[x] for x in reasons]
