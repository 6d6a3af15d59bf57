"""Checks of `labs/12-ingress.ipynb`: Ingress, graded by real HTTP requests from outside.

The lab's cluster `ingress` (labs/clusters/ingress.yaml: a control plane and two workers,
host-gw, kube-proxy in iptables mode) runs the ingress-nginx controller
(labs/manifests/ingress-nginx.yaml: IngressClass `nginx`, the controller pod, its LoadBalancer
Service) and a small shop (labs/manifests/ingress-shop.yaml: namespace `shop` with the agnhost
Deployments and Services `web`, `api`, `docs` and `api-v2`, each Service on port 80 named
`http`). In order, the learner:

1. writes an Ingress for `shop.example.com`: `/` to web, `/api` to api, both `Prefix`
   (`host-and-paths`); the check fetches a routing table of URLs from the external host by
   name (`/hostname`, `/cart/hostname`, `/api/hostname`, `/api/v1/hostname`,
   `/apix/hostname`) and compares who answered each with what the exercise wants;
2. sends every request for a host no Ingress names to `docs`, with an Ingress that has only a
   `defaultBackend` (`default-backend`); the check asks the load-balancer IP by its address
   and with an unknown Host header, and shop.example.com again;
3. serves shop.example.com over HTTPS with a certificate from the lab CA in a
   `kubernetes.io/tls` Secret (`tls`); the check runs `curl --cacert <lab CA>` to https:// (it
   must verify), plain http:// (ingress-nginx redirects it, 308), and curl without the CA (it
   must refuse the certificate);
4. predicts which Deployment answers `/api` when a second, newer Ingress claims the same host and
   path (`conflict`, answer `WINNER`); the check measures it with real requests.

Every verdict comes from requests the external host really sent (`lab_kit.labs.web`): DNS by
its dnsmasq, the route to the load-balancer IP, kube-proxy's DNAT on a node, nginx in the
controller pod, a shop pod. The stored objects, the controller's routing table
(`c.ingress_routes()`) and its events (`c.ingress_status(...)`) only word the hints.

Helpers for the notebook: `lb_ip`, `curl_options` (follow redirects, trust the lab CA),
`routing_table`, `request_path` (one request's way, drawn from the live state), `nginx_conf` (the
controller's rendered config, one host's server block), `nginx_processes` and
`reload_under_load` (a graceful reload, watched), `served_certificate`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import ingress, kernel, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.errors import LabError
from lab_kit.labs import norm_answer, web
from lab_kit.labs.web import Answer, requests, table

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

__all__ = ["LAB", "curl_options", "lb_ip", "nginx_conf", "nginx_processes", "reload_under_load",
           "request_path", "routing_table", "served_certificate"]

LAB = Lab("12-ingress", "Ingress: one address, many hosts and paths", "ingress")

CONTROLLER_MANIFEST = "manifests/ingress-nginx.yaml"
SHOP_MANIFEST = "manifests/ingress-shop.yaml"
CONTROLLER_NS = "ingress-nginx"
CONTROLLER_SVC = "ingress-nginx-controller"
CLASS = "nginx"
SHOP = "shop"
HOST = "shop.example.com"
UNKNOWN_HOST = "unknown.example.org"  # a Host header no Ingress names
APPS = ("web", "api", "docs", "api-v2")
SERVICE_PORT, CONTAINER_PORT = 80, 8080
BETA = "shop-beta"  # the second team's Ingress of exercise 4
DEFAULT_404 = "default backend - 404"  # the controller's own answer for what nothing routes
FAKE_CERT_CN = "Kubernetes Ingress Controller Fake Certificate"
SETUP_HINT = (f'run the notebook\'s setup cell: c.apply("{CONTROLLER_MANIFEST}") and '
              f'c.apply("{SHOP_MANIFEST}")')

# exercise 1: URL path -> the Deployment that must answer it
ROUTES = (("/hostname", "web"), ("/cart/hostname", "web"), ("/api/hostname", "api"),
          ("/api/v1/hostname", "api"), ("/apix/hostname", "web"))


# --- helpers for the notebook ---------------------------------------------------------------------

def lb_ip(c: Cluster) -> str:
    """The controller's load-balancer IP: `status.loadBalancer.ingress[0].ip` of its Service."""
    return web.lb_ip(c, CONTROLLER_NS, CONTROLLER_SVC, SETUP_HINT)


def _ca_file(c: Cluster) -> Path | None:
    """The lab CA's certificate, if the cluster has made its CA (`c.lab_ca()` makes it in the
    state dir's pki/ on first use); a check only looks, it never creates one."""
    path = c.store.dir / "pki" / "ca.crt"
    return path if path.is_file() else None


def curl_options(c: Cluster) -> tuple[str, ...]:
    """curl options for the lab's URLs: follow redirects (`-L`: once the host has TLS,
    ingress-nginx answers http:// with 308 to https://) and trust the lab CA (`--cacert`),
    when the cluster has one."""
    ca = _ca_file(c)
    return ("-L", "--cacert", str(ca)) if ca else ("-L",)


def routing_table(c: Cluster, urls: Iterable[str], host: str | None = None) -> str:
    """GET each URL from the external host (with `Host: host` if given) and show who answered:
    URL, HTTP status, the Deployment whose pod answered (or nginx's own answer, or curl's
    error)."""
    return table(requests(c, urls, {"Host": host} if host else None, curl_options(c)))


def _controller_pod(c: Cluster) -> Any:
    return web.controller_pod(c, CONTROLLER_NS)


def nginx_conf(c: Cluster, host: str | None = HOST) -> str:
    """The nginx config the controller rendered and loaded: the `server` block of `host` (None:
    the default server, `server_name _`) and the `upstream` blocks it proxies to; `host=""`:
    the whole file."""
    path = web.nginx_conf_file(c, CONTROLLER_NS)
    if path is None:
        raise LabError(f"the ingress controller has no nginx.conf yet: {SETUP_HINT}")
    text = path.read_text()
    if host == "":
        return text
    lines = text.splitlines()
    name = host or "_"
    servers = [b for b in web.conf_blocks(lines, "server {")
               if any(ln.strip() == f"server_name {name};" for ln in b)]
    if not servers:
        return f"# {path}: no server block for {name} (no Ingress of class {CLASS} names it)"
    used = {ln.strip().split("http://", 1)[1].rstrip(";") for b in servers for ln in b
            if "proxy_pass http://" in ln}
    ups = [b for b in web.conf_blocks(lines, "upstream ") if b[0].split()[1] in used]
    body = [ln[4:] for b in ups + servers for ln in b]
    return f"# {path} (excerpt)\n" + "\n".join(body) + "\n"


def nginx_processes(c: Cluster) -> list[tuple[int, str]]:
    """The nginx processes of the controller pod, read from /proc: (pid, title), the master
    first. A graceful reload keeps the master and replaces the workers."""
    return web.nginx_processes(c, CONTROLLER_NS)


@dataclass(frozen=True)
class ReloadRun:
    """What `reload_under_load` saw: requests that got an answer and that failed, the number
    of configs loaded meanwhile, and the nginx processes before and after."""
    ok: int
    failed: int
    errors: tuple[str, ...]
    reloads: int
    before: tuple[tuple[int, str], ...]
    after: tuple[tuple[int, str], ...]

    def __str__(self) -> str:
        def procs(ps: Sequence[tuple[int, str]]) -> str:
            return "; ".join(f"{pid} {title.split(' -p ')[0]}" for pid, title in ps)
        errors = f" {list(self.errors)}" if self.errors else ""
        return (f"{self.ok + self.failed} requests during {self.reloads} reloads: {self.ok} "
                f"answered, {self.failed} failed{errors}"
                f"\nnginx before: {procs(self.before)}\nnginx after:  {procs(self.after)}")


def reload_under_load(c: Cluster, host: str = HOST, seconds: float = 4.0) -> ReloadRun:
    """Send requests for `host` from the external host without a pause for `seconds` (a new
    connection each), while an Ingress `reload-demo` is applied and deleted again and again:
    every change renders a new nginx.conf and reloads nginx (SIGHUP to the master)."""
    result: dict[str, Any] = {}
    ip = lb_ip(c)
    before = tuple(nginx_processes(c))
    t = threading.Thread(target=lambda: result.update(web.load(c, ip, host, seconds)))
    t.start()
    reloads = 0
    time.sleep(0.3)
    demo = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "reload-demo", "namespace": SHOP},
            "spec": {"rules": [{"host": "reload-demo.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {
                    "name": "docs", "port": {"number": SERVICE_PORT}}}}]}}]}}
    try:
        while t.is_alive() and reloads < 10:
            c.apply([demo])
            c.delete([demo])
            reloads += 2
            time.sleep(0.1)
    finally:
        t.join()
    statuses = result.get("statuses") or {}
    ok = sum(n for code, n in statuses.items() if code.isdigit() and int(code) < 400)
    bad = [f"{n} × {code}" for code, n in statuses.items()
           if code.isdigit() and int(code) >= 400]
    return ReloadRun(ok, sum(statuses.values()) - ok,
                     (*bad, *(str(e) for e in result.get("errors", []))), reloads, before,
                     tuple(nginx_processes(c)))


def served_certificate(c: Cluster, host: str = HOST) -> str:
    """The certificate nginx presents for `host` (TLS SNI) on the load-balancer IP, as
    `openssl x509` prints its subject, issuer and names."""
    out = c.external.sh(
        f"echo | openssl s_client -connect {lb_ip(c)}:443 -servername {host} 2>/dev/null "
        "| openssl x509 -noout -subject -issuer -ext subjectAltName 2>/dev/null", check=False)
    return out.strip() or "(no certificate: nothing answered TLS on port 443)"


def request_path(c: Cluster, url: str = f"http://{HOST}/api/hostname") -> str:
    """The way one request from the external host takes, each step read from the live cluster:
    the name in the external host's DNS, its route to the load-balancer IP, the node's
    kube-proxy DNAT rule to the controller pod, nginx's route for the host and path (the
    controller's routing table), and the endpoints behind it."""
    host = url.split("/")[2]
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    ip = lb_ip(c)
    resolved = c.external.sh(f"getent hosts {host} | cut -d' ' -f1", check=False).strip()
    route = kernel.Runner().json(["ip", "-j", "route", "get", ip],
                                 naming.external_netns(c.name))
    hops = [r.get("gateway", "") for r in route] if route else []
    nodes = {n.ip: n for n in c.nodes()}
    ctrl = _controller_pod(c)
    lines = [f"external host {c.external.ip}   $ curl {url}",
             f"  │  DNS (dnsmasq on the external host): {host} → {resolved or '(no answer)'}"]
    if not resolved:
        lines.append("  ✘  the name does not resolve: no Ingress of class nginx names this "
                     "host")
        return "\n".join(lines)
    via = ", ".join(f"{g} ({nodes[g].name})" if g in nodes else g for g in hops if g)
    lines += [f"  │  route on the external host: {ip} via {via or '(no route)'}",
              "  ▼"]
    node = nodes.get(hops[0]) if hops else None
    if node is None or ctrl is None:
        lines.append("  ✘  no node and controller pod on the way")
        return "\n".join(lines)
    nat = c.node(node.name).sh("iptables -t nat -S", check=False)
    dnat = [ln.split()[1] for ln in nat.splitlines()
            if f"--to-destination {ctrl.ip}:80" in ln and ln.startswith("-A ")]
    lines += [f"node {node.name} ({node.ip}), eth0",
              f"  │  kube-proxy (nat table): KUBE-SERVICES → KUBE-EXT-… → "
              f"{dnat[0] if dnat else 'KUBE-SEP-…'}: DNAT to {ctrl.ip}:80",
              "  ▼",
              f"pod {ctrl.key} ({ctrl.ip}, on {ctrl.node}): nginx"]
    route_ = _route_for(c.ingress_routes(), host, path.split("?")[0])
    if route_ is None:
        lines.append(f"  ✘  no server for {host}: the default server answers "
                     f"'{DEFAULT_404}'")
        return "\n".join(lines)
    lines.append(f"  │  server {route_['host']}, location {route_['path']} "
                 f"({route_['path_type']}, Ingress {route_['ingress'] or '-'}) → "
                 f"{route_['backend']}")
    if route_["status"] != "ok":
        lines.append(f"  ✘  503: {route_['status']}")
        return "\n".join(lines)
    if not route_["endpoints"]:
        lines.append(f"  ✘  no upstream: nginx answers '{DEFAULT_404}'")
        return "\n".join(lines)
    by_ip = {p.ip: p for p in c.pods(include_system=True)}
    lines += [f"  │  upstream {route_['upstream']}: one of the Service's endpoints "
              "(no second DNAT: nginx connects to the pod directly)", "  ▼"]
    for ep in route_["endpoints"]:
        p = by_ip.get(ep.split(":")[0])
        lines.append(f"pod {p.key} ({ep}, on {p.node})" if p else f"endpoint {ep}")
    return "\n".join(lines)


# --- evidence ---------------------------------------------------------------------------------

def _route_for(routes: list[dict[str, Any]], host: str, path: str) -> dict[str, Any] | None:
    """The controller's route nginx picks for `host` + `path`: the server of the host (else the
    default server, `*`), then an exact location (`= /api`), else the longest prefix
    location."""
    mine = [r for r in routes if r["host"] == host] or [r for r in routes if r["host"] == "*"]
    exact = [r for r in mine if r["path"] == f"= {path}"]
    if exact:
        return exact[0]
    prefix = [r for r in mine if not r["path"].startswith("= ") and path.startswith(r["path"])]
    return max(prefix, key=lambda r: len(r["path"])) if prefix else None


def _missing(ctx: Context) -> Verdict | None:
    c = ctx.cluster
    if _controller_pod(c) is None:
        return failed("the ingress controller is not running (no pod in namespace "
                      f"{CONTROLLER_NS})", hint=SETUP_HINT, expected="ingress-nginx-controller",
                      actual="no pod")
    have = {p.labels.get("app") for p in c.pods(SHOP)}
    gone = [a for a in APPS if a not in have]
    if gone:
        return failed(f"the shop's Deployments {', '.join(gone)} have no pod in namespace "
                      f"{SHOP}", hint=SETUP_HINT, expected=", ".join(APPS),
                      actual="missing: " + ", ".join(gone))
    return None


def _ingresses_for(c: Cluster, host: str) -> list[ingress.Ingress]:
    """The stored Ingresses with a rule for `host` (any class), oldest first."""
    return [i for i in c.ingresses() if any(r.host == host for r in i.rules)]


def _events(c: Cluster, ings: Iterable[ingress.Ingress]) -> list[str]:
    out = []
    for i in ings:
        with _quiet():
            out += [f"{i.key}: {e['message']}" for e in
                    c.ingress_status(i.name, i.namespace)["events"]]
    return out


class _quiet:
    """Ignore a LabError (an object deleted meanwhile)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, LabError)


def _served_classes(c: Cluster) -> list[str]:
    """The IngressClasses whose controller is running here."""
    return sorted(k for k, v in (c.state.get("ingressclasses") or {}).items()
                  if v["spec"]["controller"] == "k8s.io/ingress-nginx")


def _unresolved_hint(c: Cluster, host: str) -> str:
    """Why `host` is not in the external host's DNS: the controller publishes the hosts of the
    Ingresses it serves, and only those."""
    ings = _ingresses_for(c, host)
    classes = _served_classes(c)
    if not ings:
        nohost = [i for i in c.ingresses() if any(r.host is None for r in i.rules)]
        if nohost:
            return (f"Ingress {nohost[0].key} has a rule without `host`: it answers every "
                    f"host, but nothing publishes a name for it; give the rule host: {host}")
        return (f"no Ingress has a rule with host: {host}. Write one (kind: Ingress, "
                f"metadata.namespace: {SHOP}, spec.ingressClassName: {CLASS}) and apply it "
                "with c.apply(...)")
    other = [i for i in ings if i.ingress_class not in classes]
    if other:
        i = other[0]
        return (f"Ingress {i.key} has ingressClassName: {i.ingress_class}, and no controller "
                f"here serves that class (the classes served: {', '.join(classes) or 'none'}):"
                f" nothing serves it, and nothing publishes its host. Write "
                f"ingressClassName: {CLASS}, or leave it out (nginx is the default class)")
    return (f"an Ingress names {host} but the controller has no load-balancer address to "
            f"publish: is Service {CONTROLLER_NS}/{CONTROLLER_SVC} intact? {SETUP_HINT}")


def _no_answer(c: Cluster, a: Answer, host: str) -> Verdict:
    if "resolve" in a.error:
        return failed(f"{a.url}: no answer, the external host cannot resolve {host} "
                      f"({a.error})", hint=_unresolved_hint(c, host),
                      expected=f"{host} → the controller's load-balancer IP", actual=a.error)
    return failed(f"{a.url}: no answer ({a.error})",
                  hint=f"is the controller pod running? c.get_pods('{CONTROLLER_NS}'); "
                       f"request_path(c, '{a.url}') shows each step",
                  expected="an HTTP answer", actual=a.error)


def _curl_error(a: Answer) -> str:
    """curl's complaint, its first sentence only (web.requests joins its lines without a
    break: "…certificateMore details here: …")."""
    return a.error.split("More details")[0].strip()


def _said(a: Answer) -> str:
    """Who answered, in words."""
    if a.status == 0:
        return f"nothing ({_curl_error(a)})"
    if a.who == DEFAULT_404:
        return f"the controller's own 404 ('{DEFAULT_404}')"
    if a.status == 503:
        return "503 from nginx (no backend it can use)"
    if " " in a.who or not a.who:
        return f"{a.status} '{a.body[:60]}'"
    return a.who if a.status == 200 else f"{a.who} ({a.status})"


def _backend_problem(c: Cluster, ings: Sequence[ingress.Ingress], a: Answer,
                     route: dict[str, Any] | None) -> str:
    """The hint for a 503: the controller's reason, and what in the Ingress causes it."""
    why = route["status"] if route and route["status"] != "ok" else ""
    if not why:
        evs = [e for e in _events(c, ings) if "503" in e]
        why = evs[0].split(": ", 1)[1] if evs else "the backend's Service has no endpoints"
    if "not found" in why and "Service" in why:
        svc = why.split('"')[1] if '"' in why else ""
        ns, _, name = svc.partition("/")
        if ns != SHOP and name in APPS:
            return (f"the controller says: {why}. An Ingress reaches Services of its own "
                    f"namespace only, and the shop's Services are in {SHOP}: put the Ingress "
                    f"in metadata.namespace: {SHOP} (and delete the one in {ns}: "
                    "c.delete(...))")
        return (f"the controller says: {why}. The backend names a Service that does not "
                f"exist; the shop's Services: {', '.join(APPS)}")
    if "does not have port" in why:
        return (f"the controller says: {why}. The backend's port is the Service's port, "
                f"{SERVICE_PORT} (named http), not the pod's containerPort {CONTAINER_PORT}: "
                f"port: {{number: {SERVICE_PORT}}} or port: {{name: http}}")
    return f"the controller says: {why}"


def _route_hint(c: Cluster, a: Answer, path: str, want: str) -> str:
    """Why `path` of shop.example.com went elsewhere, from the controller's routing table and
    the Ingresses naming the host."""
    ings = _ingresses_for(c, HOST)
    routes = c.ingress_routes()
    route = _route_for(routes, HOST, path)
    if a.status == 503:
        return _backend_problem(c, ings, a, route)
    paths = [(i, p) for i in ings for r in i.rules if r.host == HOST for p in r.paths]
    api_paths = [(i, p) for i, p in paths if (p.path or "/").rstrip("/") == "/api"]
    if a.who == DEFAULT_404:
        if want == "web":
            return (f"no path of {HOST} covers {path}: add path: / with pathType: Prefix to web "
                    "(Prefix / matches every path)")
        return (f"no path of {HOST} covers {path}: add path: /api, pathType: Prefix, backend "
                "service api port 80")
    if want == "api" and a.who == "web" and api_paths:
        i, p = api_paths[0]
        if p.path_type == "Exact":
            return (f"Ingress {i.key} has path {p.path} with pathType: Exact: it matches the "
                    f"path {p.path} and nothing else, so {path} fell through to / (web). "
                    "pathType: Prefix matches /api and everything under /api/")
    if want == "web" and a.who == "api" and path.startswith("/apix"):
        i, p = api_paths[0] if api_paths else (None, None)
        if p is not None and p.path_type == "ImplementationSpecific":
            return (f"Ingress {i.key} has path {p.path} with pathType: ImplementationSpecific: "
                    "ingress-nginx matches it as a plain string prefix, so /apix matches too. "
                    "pathType: Prefix matches whole path elements: /api and /api/…, not /apix")
        return ("the path that sends /apix to api is a plain string prefix (a regex, or "
                "ImplementationSpecific): use path: /api with pathType: Prefix")
    if route is not None and route["ingress"] and ings and \
            route["ingress"] not in [i.key for i in ings if i.namespace == SHOP]:
        return (f"Ingress {route['ingress']} serves {HOST}{route['path']}, and it is older than "
                f"yours: when two Ingresses claim the same host and path, the oldest wins. "
                f"Delete it: c.delete(...) with its name and namespace")
    if route is not None:
        return (f"nginx routes {HOST}{path} by its location {route['path']} "
                f"({route['path_type']}, Ingress {route['ingress']}) to {route['backend']}: "
                f"{path} must reach the Service {want}")
    return f"{path} must reach the Service {want}; request_path(c, '{a.url}') shows each step"


# --- exercise 1: host and paths -----------------------------------------------------------------

@LAB.check("host-and-paths", f"{HOST}: / goes to web, /api (and below) to api")
def check_host_and_paths(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    c = ctx.cluster
    urls = [f"http://{HOST}{p}" for p, _ in ROUTES]
    got = requests(c, urls, options=curl_options(c))
    if all(a.status == 0 for a in got):
        return _no_answer(c, got[0], HOST)
    wrong = [(a, p, want) for a, (p, want) in zip(got, ROUTES, strict=True)
             if not (a.status == 200 and a.who == want)]
    if wrong:
        # the / route first: without it nothing else can be judged
        a, path, want = wrong[0]
        listed = "; ".join(f"{x.url} → {_said(x)}, should be {w}" for x, _, w in wrong)
        return failed(f"{len(wrong)} of {len(got)} URLs reach the wrong place: {listed}",
                      hint=_route_hint(c, a, path, want),
                      expected=", ".join(f"{p} → {w}" for p, w in ROUTES),
                      actual=", ".join(f"{p} → {_said(x)}" for x, (p, _) in
                                       zip(got, ROUTES, strict=True)))
    ings = _ingresses_for(c, HOST)
    by = ", ".join(sorted({r["ingress"] for r in c.ingress_routes() if r["host"] == HOST}))
    return passed(f"from the external host, {HOST} resolves to {lb_ip(c)} (the controller's "
                  f"load-balancer IP) and {', '.join(p for p, _ in ROUTES)} are answered by "
                  f"{', '.join(w for _, w in ROUTES)}: /apix is not under /api (Prefix matches "
                  f"whole path elements); served by Ingress {by or ings[0].key}")


# --- exercise 2: the default backend ------------------------------------------------------------

def _default_backend_hint(c: Cluster, a: Answer) -> str:
    ings = c.ingresses()
    if a.status == 503:
        route = _route_for(c.ingress_routes(), "*", "/hostname")
        owners = [i for i in ings if route and i.key == route["ingress"]]
        return _backend_problem(c, owners or ings, a, route)
    with_rules = [i for i in ings if i.default_backend is not None and i.rules]
    if a.who == DEFAULT_404 and with_rules:
        i = with_rules[0]
        return (f"Ingress {i.key} has a defaultBackend but also rules: ingress-nginx uses it "
                "only for the hosts of its own rules (where no path / is set). For hosts that no "
                "Ingress names, write an Ingress of its own with only spec.defaultBackend "
                f"(service docs, port {SERVICE_PORT}) and no rules")
    if a.who == DEFAULT_404:
        return ("nothing serves the default server yet: write an Ingress in namespace "
                f"{SHOP} with only spec.defaultBackend: {{service: {{name: docs, port: "
                f"{{number: {SERVICE_PORT}}}}}}} (no rules) and apply it")
    if a.status == 200:
        return (f"those requests reach {a.who}: the defaultBackend must name the Service docs "
                "(the help pages)")
    return f"request_path(c, '{a.url}') shows each step"


@LAB.check("default-backend", "Requests for hosts no Ingress names reach docs; the shop still "
                              "reaches web")
def check_default_backend(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    c = ctx.cluster
    ip = lb_ip(c)
    url = f"http://{ip}/hostname"
    got = requests(c, [url, f"http://{ip}/help/hostname"])
    got += [Answer(f"{a.url} (Host: {UNKNOWN_HOST})", a.status, a.body, a.error)
            for a in requests(c, [url], {"Host": UNKNOWN_HOST})]
    wrong = [a for a in got if not (a.status == 200 and a.who == "docs")]
    if wrong:
        return failed(f"requests that name no known host do not reach docs: "
                      f"{'; '.join(f'{a.url} → {_said(a)}' for a in wrong)}",
                      hint=_default_backend_hint(c, wrong[0]),
                      expected="docs", actual=", ".join(_said(a) for a in wrong))
    [shop] = requests(c, [f"http://{HOST}/hostname"], options=curl_options(c))
    if not (shop.status == 200 and shop.who == "web"):
        return failed(f"{shop.url} → {_said(shop)}, should still be web",
                      hint=(_unresolved_hint(c, HOST) if "resolve" in shop.error else
                            "the default backend is for hosts no Ingress names; "
                            f"{HOST} keeps its own rules (exercise host-and-paths)"),
                      expected="web", actual=_said(shop))
    owner = next((r["ingress"] for r in c.ingress_routes()
                  if r["host"] == "*" and r["path"] == "/"), "")
    by = f", Ingress {owner}" if owner else ""
    return passed(f"http://{ip}/ and Host: {UNKNOWN_HOST} reach docs (nginx's default server, "
                  f"`listen 80 default_server`, now proxies to docs{by}); {HOST} still "
                  "reaches web")


# --- exercise 3: TLS ----------------------------------------------------------------------------

def _tls_hint(c: Cluster) -> str:
    """Why nginx serves its fake certificate for HOST: the Ingress's tls, the Secret, the
    certificate's names, from the objects and the controller's events."""
    ings = [i for i in _ingresses_for(c, HOST) if i.ingress_class in _served_classes(c)]
    tls = [(i, t) for i in ings for t in i.tls]
    if not tls:
        return (f"no Ingress for {HOST} has a `tls` section: add tls: [{{hosts: [{HOST}], "
                "secretName: <your Secret>}] to the shop Ingress and apply it again")
    covering = [(i, t) for i, t in tls if HOST in t.hosts]
    if not covering:
        i, t = tls[0]
        return (f"Ingress {i.key} has tls, but its hosts ({', '.join(t.hosts) or 'none'}) do not"
                f" list {HOST}: nginx uses the certificate only for the hosts listed there; "
                f"write tls: [{{hosts: [{HOST}], secretName: {t.secret_name}}}]")
    i, t = covering[0]
    secrets = c.state.get("secrets") or {}
    if t.secret_name is None:
        return f"tls of Ingress {i.key} has no secretName: name the Secret you applied"
    if f"{i.namespace}/{t.secret_name}" not in secrets:
        elsewhere = sorted(k for k in secrets if k.split("/", 1)[1] == t.secret_name)
        if elsewhere:
            return (f"the controller says: Secret \"{i.namespace}/{t.secret_name}\" not found. "
                    f"There is {elsewhere[0]}, in another namespace: an Ingress uses Secrets of "
                    f"its own namespace only. Make it in {i.namespace}: "
                    f"c.lab_ca().tls_secret(\"{t.secret_name}\", namespace=\"{i.namespace}\", "
                    f"hosts=[\"{HOST}\"]), then c.apply(...) it")
        mine = sorted(k.split("/", 1)[1] for k in secrets if k.startswith(f"{i.namespace}/"))
        return (f"the controller says: Secret \"{i.namespace}/{t.secret_name}\" not found: "
                f"secretName must be the name of the Secret you applied (Secrets in "
                f"{i.namespace}: {', '.join(mine) or 'none'})")
    for e in _events(c, [i]):
        if "not valid for" in e:
            return (f"the controller says: {e.split(': ', 1)[1]}. Issue the certificate for "
                    f"the host itself: c.lab_ca().tls_secret(..., hosts=[\"{HOST}\"])")
        if "default fake certificate" in e:
            return f"the controller says: {e.split(': ', 1)[1]}"
    return ("nginx does not serve the Secret's certificate: was it issued by the lab CA? "
            "c.lab_ca().tls_secret(...) issues one")


@LAB.check("tls", f"https://{HOST} presents a certificate the lab CA vouches for; http:// "
                  "redirects to it")
def check_tls(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    c = ctx.cluster
    ca = _ca_file(c)
    if ca is None:
        return failed("the cluster has no lab CA yet, so no certificate from it",
                      hint=f"issue a certificate and its Secret: c.lab_ca().tls_secret("
                           f"\"shop-tls\", namespace=\"{SHOP}\", hosts=[\"{HOST}\"]); apply it "
                           "and add tls to the Ingress", expected="a lab CA", actual="none")
    urls = [f"https://{HOST}/hostname", f"https://{HOST}/api/hostname"]
    got = requests(c, urls, options=("--cacert", str(ca)))
    if all(a.status == 0 for a in got):
        a = got[0]
        if "resolve" in a.error:
            return _no_answer(c, a, HOST)
        cert = served_certificate(c)
        fake = FAKE_CERT_CN in cert
        what = ("its fake default certificate (\"Kubernetes Ingress Controller Fake "
                "Certificate\", self-signed)" if fake else "a certificate not from the lab CA")
        return failed(f"curl --cacert {ca} https://{HOST}/ refused the certificate: nginx "
                      f"presents {what}. curl said: {_curl_error(a)}", hint=_tls_hint(c),
                      expected=f"a certificate for {HOST} issued by the lab CA",
                      actual=cert.splitlines()[0])
    wrong = [(a, w) for a, w in zip(got, ("web", "api"), strict=True)
             if not (a.status == 200 and a.who == w)]
    if wrong:
        a, want = wrong[0]
        return failed(f"over HTTPS, {a.url} → {_said(a)}, should be {want}",
                      hint=_route_hint(c, a, "/" + a.url.split("/", 3)[3], want),
                      expected=want, actual=_said(a))
    [plain] = requests(c, [f"http://{HOST}/hostname"])
    [untrusted] = requests(c, [f"https://{HOST}/hostname"])
    if untrusted.status != 0:
        return failed(f"curl WITHOUT the lab CA accepted the certificate of https://{HOST}",
                      hint="the certificate must come from the lab CA (c.lab_ca()), which no "
                           "client trusts unless told to (--cacert)",
                      expected="refused (curl exit 60)", actual=untrusted.status)
    cert = served_certificate(c)
    issuer = next((ln.split("=", 1)[1].strip() for ln in cert.splitlines()
                   if ln.startswith("issuer")), "?")
    redirect = (f"http:// answers {plain.status} (ingress-nginx's ssl-redirect to https://)"
                if plain.status in (301, 308) else f"http:// answers {plain.status}")
    return passed(f"https://{HOST}/ verifies with --cacert (issuer: {issuer}) and reaches web, "
                  f"/api reaches api; without the lab CA curl refuses it "
                  f"({_curl_error(untrusted)}); {redirect}")


# --- exercise 4: two Ingresses, one path ---------------------------------------------------------

def _conflicts(c: Cluster) -> list[tuple[str, str]]:
    """(ingress key, event message) of every Conflict the controller reported for HOST."""
    out = []
    for i in _ingresses_for(c, HOST):
        with _quiet():
            out += [(i.key, e["message"]) for e in c.ingress_status(i.name, i.namespace)["events"]
                    if e["reason"] == "Conflict"]
    return out


def _created(c: Cluster, key: str) -> float:
    return float(((c.state.get("ingresses") or {}).get(key) or {}).get("created") or 0)


def _when(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 10) % 10}"


@LAB.check("conflict", "WINNER: the Deployment that answers /api when two Ingresses claim it")
def check_conflict(ctx: Context) -> Verdict:
    if (missing := _missing(ctx)) is not None:
        return missing
    c = ctx.cluster
    conflicts = [(k, m) for k, m in _conflicts(c) if "'/api" in m]
    if not conflicts:
        return failed(f"no two Ingresses claim {HOST}/api (the controller reports no conflict)",
                      hint=f"run the notebook's cell that applies Ingress {SHOP}/{BETA} (team B's "
                           f"/api → api-v2), after your Ingress {SHOP}/shop of exercise "
                           "host-and-paths", expected="a Conflict event", actual="none")
    loser, message = conflicts[0]
    winner_ing = message.split("older Ingress ", 1)[1].split(";", 1)[0] \
        if "older Ingress " in message else "?"
    raw = ctx.get("WINNER")
    answer = norm_answer(raw).lower().removeprefix("deployment/").removeprefix(f"{SHOP}/")
    hint = (f"which Deployment answers https://{HOST}/api/hostname now, api or api-v2? Read "
            f"the controller's rule in the notebook (which Ingress wins a host+path) and write "
            f"WINNER = \"api\" or WINNER = \"api-v2\"")
    if not answer:
        return failed("`WINNER` is empty", hint=hint, expected="api or api-v2", actual="(nothing)")
    tally = Counter(a.who if a.status == 200 else _said(a) for a in
                    requests(c, [f"http://{HOST}/api/hostname"] * 6, options=curl_options(c)))
    measured, _ = tally.most_common(1)[0]
    names = {i.name for i in c.ingresses(SHOP)}
    if answer in names and answer not in APPS:
        return failed(f"`WINNER` = {raw!r} is an Ingress; the question is which Deployment "
                      "answers", hint=hint, expected=measured, actual=repr(raw))
    if answer != measured:
        t_win, t_lose = _created(c, winner_ing), _created(c, loser)
        if answer == "api-v2":
            why = (f"applied last is not what counts: ingress-nginx keeps the rule of the OLDEST "
                   f"Ingress, by metadata.creationTimestamp ({winner_ing} was created at "
                   f"{_when(t_win)}, {loser} at {_when(t_lose)}); applying {winner_ing} again "
                   "changed it but did not make it newer. The newer one's rule is ignored, and "
                   f"its events say so: c.ingress_status(\"{loser.split('/')[1]}\", "
                   f"\"{SHOP}\")")
        else:
            why = (f"measured: {dict(tally)}; the rule of the oldest Ingress "
                   f"({winner_ing}) is the one nginx uses")
        return failed(f"`WINNER` = {raw!r}, but /api/hostname is answered by {measured}",
                      hint=why, expected=measured, actual=repr(raw))
    return passed(f"{measured} answers {HOST}/api ({dict(tally)}): Ingress {winner_ing} "
                  f"(created {_when(_created(c, winner_ing))}) is older than {loser} (created "
                  f"{_when(_created(c, loser))}), and the controller ignores the newer one's "
                  f"/api: \"{message}\"")
