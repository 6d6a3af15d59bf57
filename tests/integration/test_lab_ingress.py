"""The checks of lab 12 (Ingress) against the real kernel (root).

A cluster `ingress` is set up the way the notebook's cells do it: the ingress-nginx controller
and the shop of ingress-shop.yaml (web, api, docs, api-v2 in namespace shop), and, before
exercise `conflict`, team B's Ingress `shop-beta` with the shop's Ingress applied once more.
The reference solutions run one exercise at a time; further tests apply what a learner
plausibly writes instead (pathType Exact or ImplementationSpecific where Prefix was meant, a
class no controller serves, the pod's port instead of the Service's, the wrong namespace, a
rule without host, a defaultBackend inside the shop's Ingress, a Secret whose name, host or
namespace is wrong, …) and expect the check to fail with a message naming what the requests
got and a hint naming the mistake. Each mistake is deleted again before the next, so every
test needs one cluster only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.labs.ingress_routing import (
    BETA,
    HOST,
    lb_ip,
    nginx_conf,
    reload_under_load,
    request_path,
    routing_table,
)
from lab_kit.labs.web import requests

pytestmark = pytest.mark.root

LAB_ID = "12-ingress"
STEPS = [("host-and-paths", ["host-and-paths"]), ("default-backend", ["default-backend"]),
         ("tls", ["tls"]), ("conflict", ["conflict"])]


def backend(service: str, port: int | str = 80) -> dict[str, Any]:
    key = "number" if isinstance(port, int) else "name"
    return {"service": {"name": service, "port": {key: port}}}


def path(p: str, service: str, kind: str = "Prefix", port: int | str = 80) -> dict[str, Any]:
    return {"path": p, "pathType": kind, "backend": backend(service, port)}


def ingress(name: str = "shop", namespace: str = "shop", paths: list[dict[str, Any]] | None = None,
            host: str | None = HOST, **spec: Any) -> dict[str, Any]:
    """An Ingress manifest: one rule for `host` with `paths` (default: the exercise's / -> web,
    /api -> api), and `spec` as the YAML would have it (ingressClassName, tls, defaultBackend)."""
    body: dict[str, Any] = dict(spec)
    if paths is None:
        paths = [path("/", "web"), path("/api", "api")]
    if paths:
        rule: dict[str, Any] = {"http": {"paths": paths}}
        if host:
            rule["host"] = host
        body["rules"] = [rule]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def with_tls(secret: str = "shop-tls", hosts: tuple[str, ...] = (HOST,), **kw: Any
             ) -> dict[str, Any]:
    return ingress(tls=[{"hosts": list(hosts), "secretName": secret}], **kw)


class Lab12(LabDriver):
    """The notebook's setup cells, its names (`c`, `LB_IP`, `routing_table`) and checks."""

    lab_id = LAB_ID
    answer_names = ("WINNER",)

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/ingress.yaml", replace=True)
        c.apply("manifests/ingress-nginx.yaml")
        c.apply("manifests/ingress-shop.yaml")
        self.ns: dict[str, Any] = {"c": c, "LB_IP": lb_ip(c), "routing_table": routing_table}

    def before(self, exercise: str) -> None:
        """The notebook's cells between the exercises."""
        if exercise == "conflict":
            self.team_b()

    def team_b(self) -> None:
        """The notebook's cell before exercise `conflict`: team B's Ingress claims /api, then
        the shop's own Ingress is applied once more (configured, with an annotation)."""
        self.c.apply([ingress(BETA, paths=[path("/api", "api-v2")])])
        mine = self.c.get_ingress("shop", "shop")
        mine["metadata"]["annotations"] = {"owner": "team-a"}
        self.c.apply([mine])


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab12]:
    with lab_state(LAB_ID, "lkin", tmp_path, monkeypatch):
        yield Lab12()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS, before_each=lab.before)
    c = lab.c
    # the end state, measured from outside: https with the lab CA, the default server, /api
    ca = str(c.lab_ca().cert_path)
    got = requests(c, [f"https://{HOST}/hostname", f"https://{HOST}/api/hostname",
                       f"http://{lb_ip(c)}/hostname"], options=("--cacert", ca))
    assert [(a.status, a.who) for a in got] == [(200, "web"), (200, "api"), (200, "docs")]
    # the notebook's views of it
    conf = nginx_conf(c)
    assert f"server_name {HOST};" in conf and "location /api/ {" in conf
    assert "upstream shop-api-80 {" in conf and "listen 443 ssl;" in conf
    assert "server_name _;" in nginx_conf(c, None)
    way = request_path(c, f"http://{HOST}/api/hostname")
    assert lb_ip(c) in way and "DNAT to" in way and "shop/api:80" in way, way
    assert way.count("pod shop/api-") == 2, way
    run = reload_under_load(c, seconds=3)
    assert run.failed == 0 and run.ok > 50 and run.reloads >= 4, str(run)
    assert run.before[0][0] == run.after[0][0] and "master" in run.before[0][1]  # same master
    assert {p for p, _ in run.before[1:]}.isdisjoint(p for p, _ in run.after[1:])  # new workers


def test_host_and_paths_mistakes_are_named(lab):
    check = "host-and-paths"
    # nothing applied yet: the host does not resolve
    r = lab.one(check)
    assert not r.passed and "cannot resolve" in r.message and "no Ingress" in r.hint, r.summary()
    # Exact where Prefix was meant: /api/hostname falls through to /
    lab.mistake(check, [ingress(paths=[path("/", "web"), path("/api", "api", "Exact")])],
                [f"http://{HOST}/api/hostname → web, should be api"],
                ("pathType: Exact", "Prefix"))
    # ImplementationSpecific: nginx's own string prefix, /apix too
    lab.mistake(check, [ingress(paths=[path("/", "web"),
                                       path("/api", "api", "ImplementationSpecific")])],
                [f"http://{HOST}/apix/hostname → api, should be web"],
                ("ImplementationSpecific", "plain string prefix"))
    # a class no controller here serves: nothing serves it, its host is not published
    lab.mistake(check, [ingress(ingressClassName="traefik")],
                ["cannot resolve shop.example.com"],
                ("ingressClassName: traefik", "no controller", "ingressClassName: nginx"))
    # the pod's port instead of the Service's
    lab.mistake(check, [ingress(paths=[path("/", "web", port=8080), path("/api", "api")])],
                [f"http://{HOST}/hostname → 503"],
                ('"shop/web" does not have port 8080', "not the pod's containerPort 8080"))
    # the Ingress in the default namespace: its Services are looked up there
    lab.mistake(check, [ingress(namespace="default")], ["503"],
                ('Service "default/web" not found', "metadata.namespace: shop"))
    # no host: it answers any host, but no name is published for it
    lab.mistake(check, [ingress(host=None)], ["cannot resolve"], ("without `host`",))
    # no path /
    lab.mistake(check, [ingress(paths=[path("/api", "api")])],
                [f"http://{HOST}/hostname → the controller's own 404"], ("path: /",))
    # the wrong Service for /api
    lab.mistake(check, [ingress(paths=[path("/", "web"), path("/api", "api-v2")])],
                [f"http://{HOST}/api/hostname → api-v2, should be api"], ("Service api",))
    lab.solve(check)
    assert lab.one(check).passed


def test_an_older_ingress_in_the_wrong_namespace_is_named(lab):
    """Applied once without namespace, then right: the first, older one keeps the host."""
    wrong = ingress(namespace="default")
    lab.c.apply([wrong])
    lab.solve("host-and-paths")
    r = lab.one("host-and-paths")
    assert not r.passed and "503" in r.message, r.summary()
    assert "delete the one in default" in r.hint, r.summary()
    lab.c.delete([wrong])
    assert lab.one("host-and-paths").passed


def test_default_backend_mistakes_are_named(lab):
    lab.solve("host-and-paths")
    check = "default-backend"
    r = lab.one(check)
    assert not r.passed and "the controller's own 404" in r.message, r.summary()
    assert "only spec.defaultBackend" in r.hint, r.summary()
    # the defaultBackend inside the shop's Ingress: it serves the shop's host only
    lab.mistake(check, [ingress(defaultBackend=backend("docs"))],
                ["the controller's own 404"], ("but also rules",))
    lab.solve("host-and-paths")  # the mistake replaced the shop's Ingress, and was deleted
    # in the default namespace
    lab.mistake(check, [ingress("catch-all", "default", paths=[], host=None,
                                defaultBackend=backend("docs"))],
                ["503"], ('Service "default/docs" not found', "metadata.namespace: shop"))
    # the wrong Service
    lab.mistake(check, [ingress("catch-all", paths=[], host=None, defaultBackend=backend("web"))],
                ["→ web"], ("Service docs",))
    lab.solve(check)
    assert lab.one(check).passed


def test_tls_mistakes_are_named(lab):
    check = "tls"
    r = lab.one(check)
    assert not r.passed and "tls_secret(" in r.hint, r.summary()
    lab.solve("host-and-paths")
    ca = lab.c.lab_ca()
    good = ca.tls_secret("shop-tls", namespace="shop", hosts=[HOST])
    # the CA exists, the Ingress has no tls: the default server's fake certificate
    lab.mistake(check, [good], ["refused the certificate", "fake default certificate"],
                ("no Ingress for shop.example.com has a `tls` section",))
    # secretName does not match the Secret
    lab.mistake(check, [good, with_tls("shop-cert")], ["fake default certificate"],
                ('Secret "shop/shop-cert" not found', "secretName must be the name"))
    lab.solve("host-and-paths")
    # the Secret in the default namespace (tls_secret's default)
    lab.mistake(check, [ca.tls_secret("shop-tls", hosts=[HOST]), with_tls()],
                ["fake default certificate"], ("There is default/shop-tls", 'namespace="shop"'))
    lab.solve("host-and-paths")
    # a certificate for another name
    lab.mistake(check, [ca.tls_secret("shop-tls", namespace="shop",
                                      hosts=["www.shop.example.com"]), with_tls()],
                ["fake default certificate"], ("not valid for 'shop.example.com'",
                                               'hosts=["shop.example.com"]'))
    lab.solve("host-and-paths")
    # tls.hosts that do not list the host
    lab.mistake(check, [good, with_tls(hosts=("www.shop.example.com",))],
                ["refused the certificate"], ("do not list shop.example.com",))
    lab.solve("host-and-paths")
    lab.solve(check)
    r = lab.one(check)
    assert r.passed and "308" in r.message and "lab CA" in r.message, r.summary()


def test_conflict_mistakes_are_named(lab):
    check = "conflict"
    lab.solve("host-and-paths")
    r = lab.one(check, WINNER="api")
    assert not r.passed and "no two Ingresses" in r.message and "shop-beta" in r.hint
    lab.team_b()
    lab.mistake(check, [], ["`WINNER` is empty"], ("api-v2",))
    lab.mistake(check, [], ["answered by api"], ("OLDEST", "creationTimestamp",
                                                 'c.ingress_status("shop-beta"'),
                WINNER="api-v2")
    lab.mistake(check, [], ["is an Ingress"], ("Deployment",), WINNER="shop")
    assert lab.one(check, WINNER="Deployment/api").passed
    # recreated, the shop's Ingress is the newer one: now api-v2 answers, and the check agrees
    lab.c.delete([ingress()])
    lab.solve("host-and-paths")
    r = lab.one(check, WINNER="api-v2")
    assert r.passed and "shop/shop-beta" in r.message, r.summary()
    lab.mistake(check, [], ["answered by api-v2"], ("oldest",), WINNER="api")


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name, WINNER="api")
        assert not r.passed and "cluster" in r.hint, r.summary()
