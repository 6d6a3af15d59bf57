"""Ingress on a real cluster: ingress-nginx (Debian's nginx in the controller pod) behind a
LoadBalancer Service, reached from the `external` host by name, over HTTP and HTTPS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from http_backends import backend, who

from lab_kit import config
from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.labs.web import load
from lab_kit.pytest_plugin import unique_name

REPO = Path(__file__).resolve().parents[2]
CONTROLLER = REPO / "labs" / "manifests" / "ingress-nginx.yaml"


def path(p: str, service: str, kind: str = "Prefix", port: int = 80) -> dict[str, Any]:
    return {"path": p, "pathType": kind,
            "backend": {"service": {"name": service, "port": {"number": port}}}}


def ingress(name: str, rules: list[tuple[str | None, list[dict[str, Any]]]],
            **spec: Any) -> dict[str, Any]:
    rs = []
    for host, paths in rules:
        r: dict[str, Any] = {"http": {"paths": paths}}
        if host:
            r["host"] = host
        rs.append(r)
    body: dict[str, Any] = dict(spec)
    if rs:
        body["rules"] = rs
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name}, "spec": body}


SHOP = ingress("shop", [("shop.example.com", [
    path("/", "web"), path("/api", "api"), path("/docs/hostname", "docs", "Exact")])])
IMPL = ingress("impl", [("impl.example.com", [path("/v1", "api", "ImplementationSpecific")])])
WILD = ingress("wild", [("*.apps.example.com", [path("/", "docs")])])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    conf = config.default_config(unique_name("in"), workers=2)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp("ingress_state"))
    try:
        c.apply(CONTROLLER)
        c.apply(backend("web", 2) + backend("api") + backend("docs"))
        c.apply([SHOP, IMPL, WILD])
        yield c
    finally:
        c.down()


def lb_ip(c: Cluster) -> str:
    return c.service("ingress-nginx-controller", "ingress-nginx")["status"]["loadBalancer"][
        "ingress"][0]["ip"]


def curl(c: Cluster, urls: list[str], *extra: str) -> list[tuple[int, str]]:
    """(status, body) of each URL, fetched from the external host (one shell for all)."""
    ip = lb_ip(c)
    script = []
    for u in urls:
        host = u.split("/")[2]
        port = 443 if u.startswith("https") else 80
        args = " ".join([f"--resolve {host}:{port}:{ip}", *extra])
        # one line per URL: the body (line breaks dropped), then |status
        script.append(f"echo \"$(curl -s --max-time 5 {args} -w '|%{{http_code}}' '{u}' "
                      "| tr -d '\\r\\n')\"")
    out = c.external.sh("\n".join(script), check=False).splitlines()
    res = []
    for line in out[:len(urls)]:
        body, _, code = line.rpartition("|")
        res.append((int(code) if code.isdigit() else 0, body))
    return res


def test_routing_table_host_and_path_to_backend(cluster: Cluster) -> None:
    cases = [  # (url, expected backend, or the answer of whoever must answer)
        ("http://shop.example.com/hostname", "web"),
        ("http://shop.example.com/api/hostname", "api"),
        ("http://shop.example.com/api", "404 page not found"),  # api's agnhost, not nginx
        ("http://shop.example.com/apix/hostname", "web"),  # Prefix /api is not /apix
        ("http://shop.example.com/docs/hostname", "docs"),  # Exact
        ("http://impl.example.com/v1x/hostname", "api"),  # nginx's own prefix match
        ("http://impl.example.com/hostname", "default backend - 404"),
        ("http://a.apps.example.com/hostname", "docs"),
        ("http://a.b.apps.example.com/hostname", "default backend - 404"),  # one label only
        ("http://nobody.example.com/hostname", "default backend - 404"),
    ]
    got = curl(cluster, [u for u, _ in cases])
    table = {u: who(body) for (u, _), (_, body) in zip(cases, got, strict=True)}
    assert table == dict(cases)


def test_external_host_resolves_ingress_hosts_to_the_load_balancer(cluster: Cluster) -> None:
    ip = lb_ip(cluster)
    for host in ("shop.example.com", "impl.example.com"):
        assert cluster.external.sh(f"getent hosts {host}").split()[0] == ip
    # and by name, without --resolve: dnsmasq answers from the Ingress hosts
    assert who(cluster.external.sh("curl -s --max-time 5 http://shop.example.com/hostname")) \
        == "web"


def test_requests_spread_over_the_endpoints_and_status_is_published(cluster: Cluster) -> None:
    got = curl(cluster, ["http://shop.example.com/hostname"] * 20)
    pods = {body for _, body in got}
    assert len(pods) == 2 and all(who(p) == "web" for p in pods)
    st = cluster.ingress_status("shop")
    assert st["address"] == lb_ip(cluster) and st["events"] == []
    obj = cluster.get_ingress("shop")
    assert obj["spec"]["ingressClassName"] == "nginx"  # defaulted: nginx is the default class
    assert obj["status"]["loadBalancer"]["ingress"] == [{"ip": lb_ip(cluster)}]


def test_tls_with_a_lab_ca_certificate(cluster: Cluster) -> None:
    ca = cluster.lab_ca()
    secret = ca.tls_secret("secure-tls", hosts=["secure.example.com"])
    ing = ingress("secure", [("secure.example.com", [path("/", "web")])],
                  tls=[{"hosts": ["secure.example.com"], "secretName": "secure-tls"}])
    cluster.apply([secret, ing])
    try:
        cacert = f"--cacert {ca.cert_path}"
        [(code, body)] = curl(cluster, ["https://secure.example.com/hostname"], cacert)
        assert code == 200 and who(body) == "web"
        [(code, _)] = curl(cluster, ["http://secure.example.com/hostname"])
        assert code == 308  # ingress-nginx's ssl-redirect
        # a client that does not trust the lab CA refuses the certificate (curl exit 60)
        r = cluster.external.sh(f"curl -s -o /dev/null --resolve secure.example.com:443:"
                                f"{lb_ip(cluster)} https://secure.example.com/; echo $?",
                                check=False)
        assert r.strip().splitlines()[-1] == "60"
        assert cluster.ingress_status("secure")["events"] == []
    finally:
        cluster.delete([secret, ing])


@pytest.mark.parametrize("case", ["missing", "malformed", "wrong-host"])
def test_bad_tls_secret_serves_the_fake_certificate_with_an_event(cluster: Cluster,
                                                                  case: str) -> None:
    ca = cluster.lab_ca()
    host = "bad.example.com"
    objs: list[dict[str, Any]] = [ingress("bad", [(host, [path("/", "web")])],
                                          tls=[{"hosts": [host], "secretName": "bad-tls"}])]
    if case != "missing":
        secret = ca.tls_secret("bad-tls", hosts=[host if case == "malformed"
                                                 else "other.example.com"])
        if case == "malformed":
            secret["data"]["tls.crt"] = "bm90IGEgY2VydGlmaWNhdGU="  # "not a certificate"
        objs.insert(0, secret)
    cluster.apply(objs)
    try:
        [(code, _)] = curl(cluster, [f"https://{host}/hostname"], f"--cacert {ca.cert_path}")
        assert code == 0  # the fake certificate is not trusted
        [(code, body)] = curl(cluster, [f"https://{host}/hostname"], "-k")
        assert code == 200 and who(body) == "web"  # but the host is still served
        issuer = cluster.external.sh(
            f"echo | openssl s_client -connect {lb_ip(cluster)}:443 -servername {host} "
            "2>/dev/null | openssl x509 -noout -subject", check=False)
        assert "Kubernetes Ingress Controller Fake Certificate" in issuer
        [ev] = cluster.ingress_status("bad")["events"]
        assert ev["type"] == "Warning" and "default fake certificate" in ev["message"]
    finally:
        cluster.delete(objs)


def test_conflicting_ingresses_the_oldest_wins(cluster: Cluster) -> None:
    dup = ingress("shop-copy", [("shop.example.com", [path("/", "docs")])])
    cluster.apply([dup])
    try:
        [(_, body)] = curl(cluster, ["http://shop.example.com/hostname"])
        assert who(body) == "web"  # shop is older
        [ev] = cluster.ingress_status("shop-copy")["events"]
        assert ev["reason"] == "Conflict" and "default/shop" in ev["message"]
    finally:
        cluster.delete([dup])


def test_missing_service_and_port_answer_503_and_say_why(cluster: Cluster) -> None:
    bad = ingress("broken", [("broken.example.com", [path("/nosvc", "nosuch"),
                                                     path("/noport", "web", port=81)])])
    cluster.apply([bad])
    try:
        got = curl(cluster, ["http://broken.example.com/nosvc", "http://broken.example.com/noport",
                             "http://shop.example.com/hostname"])
        assert [c for c, _ in got] == [503, 503, 200]
        msgs = " ".join(e["message"] for e in cluster.ingress_status("broken")["events"])
        assert 'Service "default/nosuch" not found' in msgs
        assert "does not have port 81" in msgs
    finally:
        cluster.delete([bad])


def test_a_config_nginx_refuses_is_never_loaded(cluster: Cluster) -> None:
    # a valid host name too long for nginx's server_names_hash_bucket_size (a classic
    # ingress-nginx failure): `nginx -t` fails, the last good config stays in force
    long_host = ".".join(["a" * 60] * 3) + ".example.com"
    before = (cluster.store.dir / "ingress-nginx").glob("*/nginx.conf")
    conf_before = [p.read_text() for p in before]
    cluster.apply([ingress("long", [(long_host, [path("/", "docs")])])])
    try:
        after = [p.read_text() for p in (cluster.store.dir / "ingress-nginx").glob("*/nginx.conf")]
        assert after == conf_before
        ev = cluster.ingress_status("long")["events"]
        assert any(e["reason"] == "RELOAD" and "server_names_hash" in e["message"] for e in ev)
        [(_, body)] = curl(cluster, ["http://shop.example.com/hostname"])
        assert who(body) == "web"  # still serving
    finally:
        cluster.delete([ingress("long", [(long_host, [path("/", "docs")])])])
    assert cluster.ingress_status("shop")["events"] == []


def test_reload_under_load_fails_no_request(cluster: Cluster) -> None:
    result: dict[str, Any] = {}
    ip = lb_ip(cluster)
    t = threading.Thread(target=lambda: result.update(load(cluster, ip, "shop.example.com", 6)))
    t.start()
    reloads = 0
    time.sleep(0.5)
    while t.is_alive() and reloads < 8:
        extra = ingress(f"extra{reloads}", [(f"x{reloads}.example.com", [path("/", "api")])])
        cluster.apply([extra])  # each apply renders a new config and reloads nginx
        cluster.delete([extra])
        reloads += 2
        time.sleep(0.2)
    t.join()
    assert reloads >= 6
    # every request answered by web, none failed (no other status, no exception)
    assert set(result["statuses"]) == {"200"} and not result["errors"], result
    assert result["statuses"]["200"] > 100


def test_invalid_ingress_is_refused_and_nothing_changes(cluster: Cluster) -> None:
    conf = [p.read_text() for p in (cluster.store.dir / "ingress-nginx").glob("*/nginx.conf")]
    bad = ingress("bad", [("shop.example.com", [path("api", "web")])])
    with pytest.raises(ConfigError) as e:
        cluster.apply([bad])
    assert e.value.field == "spec.rules[0].http.paths[0].path"
    assert "bad" not in {i.name for i in cluster.ingresses()}
    assert [p.read_text() for p in (cluster.store.dir / "ingress-nginx").glob(
        "*/nginx.conf")] == conf


def test_cli_get_ingress(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from lab_kit import cli
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(cluster.root))
    assert cli.main(["get", "ingress", "--name", cluster.name]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    shop = next(ln.split() for ln in lines if ln.startswith("shop "))
    assert shop[:5] == ["shop", "nginx", "shop.example.com", lb_ip(cluster), "80"]
    assert cli.main(["get", "ingress", "shop", "-o", "yaml", "--name", cluster.name]) == 0
    [obj] = list(yaml.safe_load_all(capsys.readouterr().out))
    assert obj["kind"] == "Ingress" and obj["status"]["loadBalancer"]["ingress"][0]["ip"]


def test_controller_pod_deleted_and_recreated_serves_again(cluster: Cluster) -> None:
    [ctl] = [p for p in cluster.pods("ingress-nginx")]
    cluster.delete(pod=ctl.name, namespace="ingress-nginx")
    # the Deployment is reconciled by the next apply, as lab_kit's controllers run on apply
    cluster.apply(CONTROLLER)
    [new] = [p for p in cluster.pods("ingress-nginx")]
    assert new.ip != ctl.ip  # a new pod (the same name: lab_kit's names are deterministic)
    [(_, body)] = curl(cluster, ["http://shop.example.com/hostname"])
    assert who(body) == "web"


def test_teardown_leaves_no_nginx(tmp_path: Path) -> None:
    from lab_kit.pytest_plugin import processes_with
    c = Cluster.up(config.default_config(unique_name("in"), workers=1), root=tmp_path)
    try:
        c.apply(CONTROLLER)
        state = str(c.store.dir)
        assert [p for p in processes_with("nginx") if state in
                Path(f"/proc/{p}/cmdline").read_text()]
    finally:
        c.down()
    assert not [p for p in processes_with("nginx") if state in
                Path(f"/proc/{p}/cmdline").read_text()]
