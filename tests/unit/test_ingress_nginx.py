"""The ingress-nginx renderer: Ingress objects -> one nginx config, checked by the real
`nginx -t` (no network: a config test only parses and opens files)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab_kit import ingress, ingress_nginx, pki

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx")


def svc(ns: str, name: str, *ports: tuple[str, int]) -> dict[str, Any]:
    return {"spec": {"namespace": ns, "name": name, "type": "ClusterIP",
                     "ports": [{"name": n, "protocol": "TCP", "port": p, "targetPort": 8080,
                                "nodePort": None} for n, p in ports]}}


def eps(ns: str, name: str, port_name: str, *ips: str, port: int = 8080) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": f"{name}-abc",
                         "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": port_name, "protocol": "TCP", "port": port}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


SERVICES = {"default/web": svc("default", "web", ("http", 80)),
            "default/api": svc("default", "api", ("", 8080)),
            "default/empty": svc("default", "empty", ("http", 80))}
SLICES = {"default/web-abc": eps("default", "web", "http", "10.244.1.2", "10.244.2.2"),
          "default/api-abc": eps("default", "api", "", "10.244.1.3")}


def ing(name: str, spec: dict[str, Any], ns: str = "default") -> ingress.Ingress:
    return ingress.parse_ingress(ns, name, {}, {}, spec)


def path(p: str, service: str, port: int | str = 80, kind: str = "Prefix") -> dict[str, Any]:
    return {"path": p, "pathType": kind, "backend": {"service": {
        "name": service, "port": {"number": port} if isinstance(port, int) else {"name": port}}}}


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host:
        r["host"] = host
    return r


def render(tmp_path: Path, ings: list[ingress.Ingress], secrets: dict[str, ingress.Secret]
           | None = None) -> ingress_nginx.Rendered:
    for sub in ("certs", "tmp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    crt, key = pki.fake_certificate()
    (tmp_path / "certs" / f"{ingress_nginx.FAKE_CERT}.pem").write_bytes(crt + key)
    out = ingress_nginx.render(ings, SERVICES, SLICES, secrets or {}, prefix=tmp_path,
                               check_cert=pki.check_tls_pair)
    for n, c in out.files.items():
        (tmp_path / "certs" / n).write_bytes(c)
    conf = tmp_path / "nginx.conf"
    conf.write_text(out.conf)
    done = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + out.conf
    return out


def routes(out: ingress_nginx.Rendered) -> dict[tuple[str, str], str]:
    return {(r.host, r.path): r.backend for r in out.routes}


def test_path_types_become_nginx_locations(tmp_path: Path) -> None:
    out = render(tmp_path, [ing("a", {"rules": [rule(
        "shop.example.com", path("/api", "api", 8080), path("/exact", "web", kind="Exact"),
        path("/impl", "web", kind="ImplementationSpecific"), path("/", "web"))]})])
    assert routes(out) == {
        ("*", "/"): "(404 default backend)",
        ("shop.example.com", "/"): "default/web:80",
        ("shop.example.com", "= /api"): "default/api:8080",  # Prefix /api: /api itself ...
        ("shop.example.com", "/api/"): "default/api:8080",  # ... and below it, not /apix
        ("shop.example.com", "= /exact"): "default/web:80",
        ("shop.example.com", "/impl"): "default/web:80",  # nginx's own prefix: /implx too
    }
    assert "upstream default-web-80 {" in out.conf
    assert "server 10.244.1.2:8080 max_fails=0;" in out.conf
    assert "server_name shop.example.com;" in out.conf
    assert out.events == {}


def test_named_service_port_and_endpoints(tmp_path: Path) -> None:
    out = render(tmp_path, [ing("a", {"defaultBackend": {"service": {
        "name": "web", "port": {"name": "http"}}}})])
    [r] = [r for r in out.routes if r.host == "*"]
    assert (r.backend, r.upstream, r.status) == ("default/web:http", "default-web-http", "ok")
    assert r.endpoints == ("10.244.1.2:8080", "10.244.2.2:8080")


def test_missing_service_port_or_endpoints_answer_503_with_an_event(tmp_path: Path) -> None:
    out = render(tmp_path, [ing("a", {"rules": [rule(
        "x.example.com", path("/gone", "nosuch"), path("/badport", "web", 81),
        path("/none", "empty"))]})])
    texts = [e.message for e in out.events["default/a"]]
    assert any('Service "default/nosuch" not found' in t for t in texts)
    assert any('does not have port 81 (it has http:80)' in t for t in texts)
    assert any("no ready endpoints" in t for t in texts)
    assert out.conf.count('return 503') == 6  # = and / locations of three Prefix paths
    assert all(e.type == "Warning" for e in out.events["default/a"])


def test_same_host_and_path_the_oldest_ingress_wins(tmp_path: Path) -> None:
    old = ing("old", {"rules": [rule("a.example.com", path("/", "web"))]})
    new = ing("new", {"rules": [rule("a.example.com", path("/", "api", 8080),
                                     path("/v2", "api", 8080))]})
    out = render(tmp_path, [old, new])
    assert routes(out)[("a.example.com", "/")] == "default/web:80"
    assert routes(out)[("a.example.com", "/v2/")] == "default/api:8080"  # merged: no conflict
    [ev] = out.events["default/new"]
    assert ev.reason == "Conflict" and "older Ingress default/old" in ev.message
    assert "default/old" not in out.events


def test_default_backend_of_an_ingress_with_rules_serves_its_hosts(tmp_path: Path) -> None:
    out = render(tmp_path, [ing("a", {"defaultBackend": {"service": {
        "name": "api", "port": {"number": 8080}}},
        "rules": [rule("a.example.com", path("/web", "web"))]})])
    assert routes(out)[("a.example.com", "/")] == "default/api:8080"
    assert routes(out)[("*", "/")] == "(404 default backend)"


def test_wildcard_host_matches_one_label_only() -> None:
    rx = ingress_nginx.host_regex("*.example.com")
    assert rx == "~^[^.]+\\.example\\.com$"
    import re
    assert re.match(rx[1:], "a.example.com") and not re.match(rx[1:], "a.b.example.com")


def test_tls_uses_the_secret_and_redirects_http(tmp_path: Path) -> None:
    ca = pki.LabCA.load_or_create(tmp_path / "ca")
    sec = ca.tls_secret("shop-tls", hosts=["shop.example.com"])
    secret = ingress.parse_secret("default", "shop-tls", {}, sec)
    out = render(tmp_path, [ing("a", {
        "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
        "rules": [rule("shop.example.com", path("/", "web"))]})], {secret.key: secret})
    assert out.events == {}
    assert list(out.files) == ["default-shop-tls.pem"]
    assert "return 308 https://$host$request_uri;" in out.conf
    assert [r.tls for r in out.routes if r.host == "shop.example.com"] == [True]


@pytest.mark.parametrize("case,words", [
    ("missing", 'Secret "default/shop-tls" not found'),
    ("malformed", "tls.crt is not a PEM certificate"),
    ("other-host", "is not valid for 'shop.example.com'"),
])
def test_bad_tls_secret_falls_back_to_the_fake_certificate(tmp_path: Path, case: str,
                                                           words: str) -> None:
    ca = pki.LabCA.load_or_create(tmp_path / "ca")
    secrets = {}
    if case != "missing":
        manifest = ca.tls_secret("shop-tls", hosts=["other.example.com"])
        s = ingress.parse_secret("default", "shop-tls", {}, manifest)
        if case == "malformed":
            s = ingress.Secret("default", "shop-tls", s.type,
                               {"tls.crt": b"junk", "tls.key": s.data["tls.key"]}, {})
        secrets[s.key] = s
    out = render(tmp_path, [ing("a", {
        "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
        "rules": [rule("shop.example.com", path("/", "web"))]})], secrets)
    [ev] = out.events["default/a"]
    assert words in ev.message and "default fake certificate" in ev.message
    assert out.files == {}
    assert "return 308" not in out.conf  # no redirect to a certificate nobody trusts
    assert "listen 443 ssl;" in out.conf  # still served on 443, with the fake one


def test_many_ingresses_render_a_config_nginx_accepts(tmp_path: Path) -> None:
    ings = [ing(f"i{n}", {"rules": [rule(f"h{n % 7}.example.com", path(f"/p{n % 5}", "web"),
                                         path("/", "api", 8080, kind="Exact")),
                                    rule("*.wild.example.com", path("/", "web"))]})
            for n in range(40)]
    out = render(tmp_path, ings)
    hosts = {r.host for r in out.routes}
    assert len(hosts) == 9  # seven hosts, the wildcard, the default server
    assert sum(len(v) for v in out.events.values()) > 0  # the repeats are conflicts


def test_checksum_covers_the_config_and_the_certificates(tmp_path: Path) -> None:
    ca = pki.LabCA.load_or_create(tmp_path / "ca")

    def with_cert() -> ingress_nginx.Rendered:
        sec = ingress.parse_secret("default", "t", {}, ca.tls_secret("t", hosts=["a.example.com"]))
        return render(tmp_path, [ing("a", {"tls": [{"hosts": ["a.example.com"], "secretName": "t"}],
                                           "rules": [rule("a.example.com", path("/", "web"))]})],
                      {sec.key: sec})
    plain = render(tmp_path, [ing("a", {"rules": [rule("a.example.com", path("/", "web"))]})])
    again = render(tmp_path, [ing("a", {"rules": [rule("a.example.com", path("/", "web"))]})])
    assert plain.conf == again.conf and len(plain.checksum) == 16
    assert f'location = /checksum {{ return 200 "{plain.checksum}\\n"; }}' in plain.conf
    first, second = with_cert(), with_cert()  # a new certificate for the same host and file
    assert first.checksum not in (plain.checksum, second.checksum)
    assert first.conf.replace(first.checksum, "") == second.conf.replace(second.checksum, "")
