"""The lab's ingress controller: Debian's nginx in the `ingress-nginx` controller pod, its
config rendered from Ingress objects the way ingress-nginx renders its own.

What it shares with ingress-nginx (facts from its docs and templates; the code is ours):

- Every Ingress of the class `nginx` (IngressClass `nginx`, controller `k8s.io/ingress-nginx`)
  is merged into one nginx config: one `server` per host, one `location` per path.
- Path types: `Exact` is `location = /p`; `Prefix` `/p` is `location = /p` plus
  `location /p/` (so `/p` matches `/p` and `/p/x` but not `/px`); `ImplementationSpecific` is a
  plain nginx prefix `location /p` (which does match `/px`). nginx picks an exact match first,
  then the longest prefix: the Ingress spec's "longest path wins, Exact before Prefix".
- The same host and path in two Ingresses: the oldest Ingress wins, the other gets a warning
  event. nginx never sees a duplicate location.
- A missing Service, a port the Service does not have, or no ready endpoints: that location
  answers 503 and the Ingress gets a warning event. The controller proxies to the endpoints
  (pod IPs) directly, not to the ClusterIP.
- No matching host or path: the Ingress's `defaultBackend` (an Ingress with only a default
  backend serves every unmatched host), else the controller's own 404 page.
- TLS: a host listed under `spec.tls` is served on 443 with the certificate of its Secret
  (type `kubernetes.io/tls`); HTTP requests to it are redirected (308) to HTTPS. A missing or
  malformed Secret, or a certificate that does not cover the host, leaves the host on the
  controller's self-signed fake certificate, with a warning event.
- Every config is checked with `nginx -t` before it replaces the running one; a config nginx
  refuses is never loaded (the last good one stays in force). A reload is nginx's own graceful
  one: new workers take new connections, old ones finish the requests they hold. A config
  carries its checksum (of the text and the certificates), which the status server answers:
  how the caller knows which config the workers run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit.ingress import HTTPPath, Ingress, Secret, ServiceBackend

CONTROLLER = "k8s.io/ingress-nginx"
STATUS_PORT = 10246  # ingress-nginx's internal status server (127.0.0.1 only)
HEALTH_PORT = 10254  # /healthz, as the controller's liveness probe
FAKE_CERT = "default-fake-certificate"


@dataclass(frozen=True)
class Event:
    """What `kubectl describe ingress` lists under Events."""
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Route:
    """One row of the controller's routing table: where a request for host+path goes."""
    host: str  # "*" for the default server
    path: str
    path_type: str
    backend: str  # "namespace/service:port", or "(404 default backend)"
    ingress: str  # "namespace/name" that won this location, "" for the controller's own
    upstream: str  # the nginx upstream name, or "" when the location answers by itself
    endpoints: tuple[str, ...]  # "ip:port" the upstream balances over
    tls: bool  # served on 443 with a certificate for the host
    status: str  # "ok" or why the location answers 503


@dataclass
class Rendered:
    """The full nginx config for one controller, plus what the controller reports."""
    conf: str
    checksum: str = ""  # of `conf` and `files`; in the config, answered by the status server
    files: dict[str, bytes] = field(default_factory=dict)  # certs/keys, by file name
    events: dict[str, list[Event]] = field(default_factory=dict)  # Ingress key -> events
    routes: list[Route] = field(default_factory=list)

    def warn(self, ing: str, reason: str, message: str) -> None:
        evs = self.events.setdefault(ing, [])
        ev = Event("Warning", reason, message)
        if ev not in evs:
            evs.append(ev)


def upstream_name(namespace: str, service: str, port: int | str) -> str:
    """ingress-nginx's upstream naming: `<namespace>-<service>-<port>`."""
    return f"{namespace}-{service}-{port}"


def host_regex(host: str) -> str:
    """nginx's `*.example.com` also matches `a.b.example.com`; a Kubernetes wildcard covers
    exactly one label, so wildcard hosts become a regex server name (as ingress-nginx does)."""
    rest = host[2:]
    return "~^[^.]+\\." + re.escape(rest).replace("\\-", "-") + "$"


def _host_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


@dataclass
class _Location:
    path_type: str
    ingress: str
    backend: ServiceBackend | None  # None: the controller's 404
    namespace: str


@dataclass
class _Server:
    host: str  # "_" for the default server
    locations: dict[tuple[str, str], _Location] = field(default_factory=dict)  # (kind, path)
    cert: str | None = None  # file name of the cert/key pair, when TLS is in force
    tls_wanted: bool = False


def _nginx_locations(p: HTTPPath) -> list[tuple[str, str]]:
    """(modifier, path) pairs of nginx `location`s one Ingress path becomes."""
    path = p.path or "/"
    if p.path_type == "Exact":
        return [("=", path)]
    if p.path_type == "Prefix":
        if path == "/":
            return [("", "/")]
        trimmed = path.rstrip("/")
        return [("=", trimmed), ("", trimmed + "/")]
    return [("", path)]  # ImplementationSpecific: nginx's own prefix match


def _resolve(backend: ServiceBackend, namespace: str, services: Mapping[str, dict[str, Any]],
             slices: Mapping[str, dict[str, Any]]) -> tuple[str, list[str], str]:
    """(upstream name, ["ip:port", ...], "ok" or why not) for one Service backend."""
    key = f"{namespace}/{backend.service}"
    stored = services.get(key)
    up = upstream_name(namespace, backend.service, backend.port)
    if stored is None:
        return up, [], f'Service "{key}" not found'
    spec = stored["spec"]
    if spec.get("type") == "ExternalName":
        return up, [], (f'Service "{key}" is of type ExternalName, which lab_kit\'s controller '
                        "does not proxy")
    port = next((p for p in spec["ports"]
                 if (backend.port_number is not None and p["port"] == backend.port_number)
                 or (backend.port_name is not None and p["name"] == backend.port_name)), None)
    if port is None:
        have = ", ".join(f"{p['name'] or '(unnamed)'}:{p['port']}" for p in spec["ports"])
        return up, [], f'Service "{key}" does not have port {backend.port} (it has {have})'
    eps = ready_endpoints(slices, namespace, backend.service, port)
    if not eps:
        return up, [], f'Service "{key}" has no ready endpoints for port {backend.port}'
    return up, eps, "ok"


def ready_endpoints(slices: Mapping[str, dict[str, Any]], namespace: str, service: str,
                    port: Mapping[str, Any]) -> list[str]:
    """"ip:port" of the ready endpoints behind one port (an entry of the Service's `ports`)
    of Service `namespace/service`, from its EndpointSlices; sorted, each once."""
    eps: set[str] = set()
    for s in slices.values():
        meta = s["metadata"]
        if meta["namespace"] != namespace or \
                meta["labels"].get("kubernetes.io/service-name") != service:
            continue
        num = next((sp["port"] for sp in s["ports"] if sp["name"] == port["name"]
                    and sp["protocol"] == port["protocol"] and sp["port"] is not None), None)
        if num is None:
            continue
        for ep in s["endpoints"]:
            if ep.get("conditions", {}).get("ready", True):
                eps.update(f"{a}:{num}" for a in ep["addresses"])
    return sorted(eps)


def render(ingresses: Sequence[Ingress], services: Mapping[str, dict[str, Any]],
           slices: Mapping[str, dict[str, Any]], secrets: Mapping[str, Secret], *,
           prefix: str | Path,
           check_cert: Callable[[bytes, bytes], Any] | None = None) -> Rendered:
    """The nginx config for `ingresses` (already filtered to this controller's class, oldest
    first). `check_cert(cert_pem, key_pem)` returns an object with `.matches(host)` or raises
    ValueError; without it certificates are not checked."""
    prefix = Path(prefix)
    out = Rendered(conf="")
    default = _Server("_")
    servers: dict[str, _Server] = {}

    def secret_cert(ing: Ingress, secret_name: str | None, host: str) -> str | None:
        if secret_name is None:
            out.warn(ing.key, "TLS", f"no secretName for host {host!r}: using the default "
                     "certificate")
            return None
        key = f"{ing.namespace}/{secret_name}"
        sec = secrets.get(key)
        why = None
        if sec is None:
            why = f'Secret "{key}" not found'
        elif sec.type != "kubernetes.io/tls" and not {"tls.crt", "tls.key"} <= set(sec.data):
            why = f'Secret "{key}" is of type {sec.type} without tls.crt and tls.key'
        else:
            try:
                info = check_cert(sec.data["tls.crt"], sec.data["tls.key"]) \
                    if check_cert else None
            except ValueError as e:
                why = f'Secret "{key}": {e}'
            else:
                if info is not None and not info.matches(host):
                    names = ", ".join(info.dns_names) or "no DNS names"
                    why = (f'the certificate in Secret "{key}" is not valid for {host!r} '
                           f"(it is for {names})")
        if why:
            out.warn(ing.key, "TLS", f"{why}: host {host!r} uses the default fake certificate")
            return None
        name = f"{ing.namespace}-{secret_name}.pem"
        assert sec is not None
        out.files[name] = sec.data["tls.crt"].rstrip(b"\n") + b"\n" + sec.data["tls.key"]
        return name

    def add(server: _Server, loc: _Location, kind: str, path: str) -> None:
        have = server.locations.get((kind, path))
        if have is not None and have.ingress != loc.ingress:
            out.warn(loc.ingress, "Conflict",
                     f"host {server.host if server.host != '_' else '*'!r} path {path!r} is "
                     f"already served by the older Ingress {have.ingress}; this rule is ignored")
            return
        if have is None:
            server.locations[(kind, path)] = loc

    for ing in ingresses:
        hosts_of_ing = []
        for rule in ing.rules:
            host = rule.host or "_"
            server = default if host == "_" else servers.setdefault(host, _Server(host))
            hosts_of_ing.append(server)
            for p in rule.paths:
                for kind, path in _nginx_locations(p):
                    add(server, _Location(p.path_type, ing.key, p.backend, ing.namespace),
                        kind, path)
        if ing.default_backend is not None:
            # the hosts of its rules fall back to it where no path `/` is set; an Ingress with
            # only a default backend takes the default server (a second one conflicts)
            for server in hosts_of_ing or [default]:
                if server is default or ("", "/") not in server.locations:
                    add(server, _Location("Prefix", ing.key, ing.default_backend,
                                          ing.namespace), "", "/")
        for tls in ing.tls:
            for host in tls.hosts:
                for server in servers.values():
                    if _host_matches(host, server.host) and server.cert is None:
                        server.tls_wanted = True  # a later entry may still bring a good cert
                        server.cert = secret_cert(ing, tls.secret_name, server.host)

    upstreams: dict[str, list[str]] = {}
    http = http_defaults(prefix)
    http += [f"ssl_certificate {prefix / 'certs' / (FAKE_CERT + '.pem')};",
             f"ssl_certificate_key {prefix / 'certs' / (FAKE_CERT + '.pem')};"]

    def location_block(server: _Server, kind: str, path: str, loc: _Location) -> list[str]:
        head = f"location {'= ' if kind == '=' else ''}{path} {{"
        body: list[str]
        if loc.backend is None:
            body = ['set $proxy_upstream_name "upstream-default-backend";',
                    'return 404 "default backend - 404\\n";']
            backend, up, eps, status = "(404 default backend)", "", [], "ok"
        else:
            up, eps, status = _resolve(loc.backend, loc.namespace, services, slices)
            backend = f"{loc.namespace}/{loc.backend.describe()}"
            if status != "ok":
                where = "*" if server.host == "_" else server.host
                out.warn(loc.ingress, "Backend", f"{status}: {where}{path} answers 503")
                body = [f'set $proxy_upstream_name "{up}";',
                        'return 503 "503 Service Temporarily Unavailable\\n";']
            else:
                upstreams[up] = eps
                body = [f'set $proxy_upstream_name "{up}";', f"proxy_pass http://{up};"]
        out.routes.append(Route(host="*" if server.host == "_" else server.host,
                                path=("= " if kind == "=" else "") + path,
                                path_type=loc.path_type, backend=backend, ingress=loc.ingress,
                                upstream=up, endpoints=tuple(eps), tls=server.cert is not None,
                                status=status))
        return [head, *["    " + b for b in body], "}"]

    def server_block(server: _Server) -> list[str]:
        if server.host == "_":
            listen = ["listen 80 default_server;", "listen 443 ssl default_server;",
                      "server_name _;"]
        else:
            name = host_regex(server.host) if server.host.startswith("*.") else server.host
            listen = ["listen 80;", f"server_name {name};"]
            if server.tls_wanted:
                listen.insert(1, "listen 443 ssl;")
            if server.cert is not None:
                crt = prefix / "certs" / server.cert
                listen += [f"ssl_certificate {crt};", f"ssl_certificate_key {crt};"]
        body = list(listen)
        if server.cert is not None:  # ssl-redirect (on by default in ingress-nginx)
            body += ['if ($scheme = http) {', '    return 308 https://$host$request_uri;', '}']
        locs = dict(server.locations)
        if ("", "/") not in locs:
            locs[("", "/")] = _Location("Prefix", "", None, "")
        for (kind, path), loc in sorted(locs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            body += location_block(server, kind, path, loc)
        return ["server {", *["    " + b for b in body], "}"]

    blocks: list[str] = []
    blocks += server_block(default)
    for host in sorted(servers):
        blocks += server_block(servers[host])
    http += upstream_blocks(upstreams)
    http += blocks
    out.conf, out.checksum = finish(http, out.files, prefix, "ingress-nginx")
    return out


# --- shared with the Gateway API side (gateway_nginx.py) --------------------------------------

PROXY_HEADERS = (("Host", "$host"), ("Connection", '""'), ("X-Real-IP", "$remote_addr"),
                 ("X-Forwarded-For", "$remote_addr"), ("X-Forwarded-Host", "$host"),
                 ("X-Forwarded-Proto", "$scheme"))


def http_defaults(prefix: Path) -> list[str]:
    """The `http` block's settings every controller config starts with: logs, temp paths, the
    proxy headers and timeouts, TLS protocols."""
    return [
        "log_format upstreaminfo '$remote_addr - [$time_local] \"$request\" $status "
        "$body_bytes_sent host=$host upstream=$proxy_upstream_name addr=$upstream_addr';",
        f"access_log {prefix / 'access.log'} upstreaminfo;",
        f"client_body_temp_path {prefix / 'tmp' / 'body'};",
        f"proxy_temp_path {prefix / 'tmp' / 'proxy'};",
        f"fastcgi_temp_path {prefix / 'tmp' / 'fastcgi'};",
        f"uwsgi_temp_path {prefix / 'tmp' / 'uwsgi'};",
        f"scgi_temp_path {prefix / 'tmp' / 'scgi'};",
        "server_names_hash_bucket_size 128;",
        "default_type text/plain;",
        "proxy_http_version 1.1;",
        *[f"proxy_set_header {h} {v};" for h, v in PROXY_HEADERS],
        "proxy_connect_timeout 5s;",
        "proxy_next_upstream error timeout;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ]


def upstream_blocks(upstreams: Mapping[str, Sequence[str]]) -> list[str]:
    """One `upstream` per name, over its "ip:port" endpoints. Like ingress-nginx (its
    upstream-keepalive-connections, 320 by default), idle connections to the endpoints stay
    open."""
    out: list[str] = []
    for up, eps in sorted(upstreams.items()):
        out += [f"upstream {up} {{", *[f"    server {e} max_fails=0;" for e in eps],
                "    keepalive 320;", "}"]
    return out


def finish(http: list[str], files: Mapping[str, bytes], prefix: Path, title: str
           ) -> tuple[str, str]:
    """The whole config around the `http` block's lines, with the status servers added: /checksum
    (127.0.0.1 only) tells which config the workers run; /healthz for probes. Returns (config,
    checksum); the checksum covers the text and the certificate files."""
    head = [f"# rendered by lab_kit for {title}, checksum @CHECKSUM@", "worker_processes 1;",
            f"pid {prefix / 'nginx.pid'};", f"error_log {prefix / 'error.log'} warn;",
            "events { worker_connections 1024; }"]
    http = [*http,
            "server {", f"    listen 127.0.0.1:{STATUS_PORT};",
            '    location = /checksum { return 200 "@CHECKSUM@\\n"; }', "}",
            "server {", f"    listen {HEALTH_PORT};",
            '    location = /healthz { return 200 "ok\\n"; }', "}"]
    conf = "\n".join([*head, "http {", *["    " + h for h in http], "}"]) + "\n"
    digest = hashlib.sha256(conf.encode())
    for name, content in sorted(files.items()):
        digest.update(name.encode() + b"\0" + content)
    checksum = digest.hexdigest()[:16]
    return conf.replace("@CHECKSUM@", checksum), checksum
