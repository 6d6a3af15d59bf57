"""The checks of lab 10 (cluster DNS) against the real kernel (root).

A cluster `dns` is set up the way the notebook's cells do it: the apps of dns-apps.yaml (web and
the client pod in `default`, api in `backend`), then the db pods before exercise `headless` and
the broken checkout Deployment before exercise `fix-dns`. The reference solutions run one
exercise at a time; further tests make the mistakes a learner plausibly makes (a name that
resolves from the wrong namespace, a Service that is not headless, a port without a name, the
answers counted too, a dnsConfig that breaks short names, half a repair) and expect the check to
fail and its message to name the mistake.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_driver import LabDriver, lab_state

from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.labs.cluster_dns import dns_queries, getent, lookup_queries

pytestmark = pytest.mark.root

LAB_ID = "10-cluster-dns"
STEPS = [("search-path", ["search-path"]), ("headless", ["headless"]),
         ("count-queries", ["count-queries"]), ("ndots", ["ndots"]), ("fix-dns", ["fix-dns"])]
BEFORE = {"headless": "manifests/dns-db.yaml", "fix-dns": "manifests/dns-checkout.yaml"}


def manifest(path: str, kind: str) -> dict[str, Any]:
    with open(path) as f:
        return next(d for d in yaml.safe_load_all(f) if d["kind"] == kind)


def db_service(**spec: Any) -> dict[str, Any]:
    base = {"clusterIP": "None", "selector": {"app": "db"},
            "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres",
                       "protocol": "TCP"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": base}


class Lab10(LabDriver):
    """The notebook's setup cells, its names (`CLIENT`, `DNS_IP`, `dns_queries`) and its
    checks."""

    lab_id = LAB_ID
    answer_names = ("api_name", "api_search", "queries_relative", "queries_absolute")
    outside_path = True  # fix-dns and count-queries: forwarded to the external resolver

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/dns.yaml", replace=True)
        c.apply("manifests/dns-apps.yaml")
        self.ns: dict[str, Any] = {"c": c, "CLIENT": c.pod("client"), "DNS_IP": c.dns_ip,
                                   "dns_queries": dns_queries}

    def before(self, exercise: str) -> None:
        """The notebook's cells between the exercises: the manifests they apply."""
        if exercise in BEFORE:
            self.c.apply(BEFORE[exercise])

    def ndots_pod(self, **spec: Any) -> None:
        """(Re)make pod client-ndots: the client pod with `spec` merged into its spec."""
        if any(p.name == "client-ndots" for p in self.c.pods("default")):
            self.c.delete(pod="client-ndots")
        pod = copy.deepcopy(manifest("manifests/dns-apps.yaml", "Pod"))
        pod["metadata"]["name"] = "client-ndots"
        pod["spec"].update(spec)
        self.c.apply([pod])

    def checkout(self, **spec: Any) -> None:
        """Apply the checkout Deployment with its pod template's spec changed: keys set to None
        are removed."""
        d = manifest("manifests/dns-checkout.yaml", "Deployment")
        tpl = d["spec"]["template"]["spec"]
        for k, v in spec.items():
            if v is None:
                tpl.pop(k, None)
            else:
                tpl[k] = v
        self.c.apply([d])


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab10]:
    with lab_state(LAB_ID, "lkdns", tmp_path, monkeypatch):
        yield Lab10()


def expect_fail(lab: Lab10, check: str, words: list[str], hint_words: tuple[str, ...] = (),
                **answers: Any) -> None:
    r = lab.one(check, **answers)
    assert not r.passed, r.summary()
    for w in words:
        assert w in r.message, (w, r.summary())
    for w in hint_words:
        assert w in r.hint, (w, r.summary())
    assert r.hint.strip(), r.summary()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    lab.assert_each_exercise(STEPS, before_each=lab.before)


def test_search_path_wrong_answers(lab):
    right = {"api_name": "api.backend", "api_search": "svc.cluster.local"}
    assert lab.one("search-path", **right).passed
    assert lab.one("search-path", api_name="api.backend",
                   api_search="svc.cluster.local.").passed  # a trailing dot is fine here
    cases = [
        ("api", ["does not resolve", "api.default.svc.cluster.local.", "api.cluster.local."]),
        ("web", ["the ClusterIP of Service default/web", "not to backend/api's ClusterIP"]),
        ("api.backend.svc.cluster.local", ["so does the shorter `api.backend`"]),
        ("api.backend.svc", ["so does the shorter `api.backend`"]),
        ("api.backend.", ["ends with a dot"]),
        ("", ["`api_name` is empty"]),
    ]
    for answer, words in cases:
        expect_fail(lab, "search-path", words, ("resolv.conf",), api_name=answer,
                    api_search="svc.cluster.local")
    expect_fail(lab, "search-path", ["not a DNS name"], ("without scheme or port",),
                api_name="http://api.backend")
    expect_fail(lab, "search-path", ["not in client's search list",
                                     "namespace of the pod that asks"],
                api_name="api.backend", api_search="backend.svc.cluster.local")
    for wrong in ("default.svc.cluster.local", "cluster.local"):
        expect_fail(lab, "search-path", ["NXDOMAIN", "moves on"], ("dig",),
                    api_name="api.backend", api_search=wrong)
    expect_fail(lab, "search-path", ["`api_search` is empty"], api_name="api.backend",
                api_search=None)


def test_headless_mistakes_are_named(lab):
    lab.c.apply("manifests/dns-db.yaml")
    expect_fail(lab, "headless", ["no Service `db`", "NXDOMAIN", "hostname.subdomain"],
                ("clusterIP: None", "postgres"))
    # an ordinary ClusterIP Service: one address, no names per pod; clusterIP is immutable
    clusterip = db_service()
    del clusterip["spec"]["clusterIP"]
    lab.c.apply([clusterip])
    vip = lab.c.service("db")["spec"]["clusterIP"]
    expect_fail(lab, "headless", ["has a ClusterIP", vip, "NXDOMAIN"],
                ("clusterIP: None", "c.delete"))
    with pytest.raises(ConfigError, match="immutable"):
        lab.c.apply([db_service()])
    lab.c.delete([clusterip])
    # headless, but the port has no name, or another name: no _postgres._tcp SRV records
    unnamed = db_service(ports=[{"port": 5432, "targetPort": 5432, "protocol": "TCP"}])
    lab.c.apply([unnamed])
    expect_fail(lab, "headless", ["has no name", "SRV records exist only for named ports"])
    lab.c.apply([db_service(ports=[{"name": "db", "port": 5432, "targetPort": "postgres",
                                    "protocol": "TCP"}])])
    expect_fail(lab, "headless", ["named after the port", "named db"])
    # the wrong pods, or none
    # (a named targetPort would leave web's pods out: they have no port named postgres)
    lab.c.apply([db_service(selector={"app": "web"},
                            ports=[{"name": "postgres", "port": 5432, "targetPort": 5432,
                                    "protocol": "TCP"}])])
    expect_fail(lab, "headless", ["not the db pods' addresses", "pod default/web-"])
    lab.c.apply([db_service(selector={"app": "dbs"})])
    expect_fail(lab, "headless", ["NXDOMAIN", "READY endpoint"], ("app: db",))
    lab.solve("headless")
    r = lab.one("headless")
    assert r.passed, r.summary()
    ips = sorted(lab.c.pod(n).ip for n in ("db-0", "db-1"))
    assert all(ip in r.message for ip in ips), r.summary()


def test_count_queries_wrong_answers(lab):
    lab.solve("count-queries")
    rel, ab = lab.ns["queries_relative"], lab.ns["queries_absolute"]
    # glibc's gethostbyname2: AAAA, then A, each through 3 search domains and the name itself
    assert (rel, ab) == (8, 2)
    r = lab.one("count-queries")
    assert r.passed and "sent 8 queries, 6 of them" in r.message, r.summary()
    cases = [
        ({"queries_relative": 4}, "one address family"),
        ({"queries_relative": 16}, "counts the answers too"),
        ({"queries_relative": 7}, "not what a capture shows"),
        ({"queries_absolute": 1}, "one address family"),
        ({"queries_absolute": 4}, "counts the answers too"),
        ({"queries_relative": None}, "`queries_relative` is empty"),
        ({"queries_absolute": "two"}, "not a whole number"),
    ]
    for answers, words in cases:
        expect_fail(lab, "count-queries", [words], ("capture",), **answers)
    assert lab.one("count-queries", queries_relative="8", queries_absolute=2.0).passed
    # the client's own view agrees with the check's: the capture helper is the same one
    queries, _ = lookup_queries(lab.c, lab.CLIENT.netns, "client",
                                ["getent", "hosts", "www.example.com"])
    assert [q.qtype for q in queries] == ["AAAA"] * 4 + ["A"] * 4
    assert queries[0].qname == "www.example.com.default.svc.cluster.local."


def test_ndots_mistakes_are_named(lab):
    expect_fail(lab, "ndots", ["no pod `client-ndots`"], ("dnsConfig", "ndots"))
    lab.ndots_pod(dnsPolicy="Default")  # the node's resolver: no cluster names at all
    expect_fail(lab, "ndots", ["nameserver 172.18.0.100", "not cluster DNS"],
                ("ClusterFirst",))
    lab.ndots_pod(dnsPolicy="None", dnsConfig={"nameservers": ["10.96.0.10"],
                                               "options": [{"name": "ndots", "value": "1"}]})
    expect_fail(lab, "ndots", ["search list", "`web` would not resolve"], ("ClusterFirst",))
    lab.ndots_pod(dnsConfig={"options": [{"name": "ndots", "value": "3"}]})
    expect_fail(lab, "ndots", ["ndots:3", "fewer than 3"])
    lab.ndots_pod(dnsConfig={"options": [{"name": "ndots", "value": "0"}]})
    expect_fail(lab, "ndots", ["even the short name `web`", "`web.` first"])
    lab.ndots_pod(dnsConfig={"options": [{"name": "ndots", "value": "2"}]})
    assert lab.one("ndots").passed  # 2 dots in www.example.com: as it is, first
    lab.c.delete(pod="client-ndots")
    lab.solve("ndots")
    r = lab.one("ndots")
    assert r.passed and "sends 2 queries" in r.message and "client 8" in r.message, r.summary()


def test_fix_dns_half_repairs_are_named(lab):
    lab.c.apply("manifests/dns-checkout.yaml")
    expect_fail(lab, "fix-dns", ["nothing answers DNS", "10.96.0.100", "nothing in the cluster"],
                ("dnsPolicy", "c.apply"))
    # the nameserver fixed, the search list not: web.default is a name failure now
    lab.checkout(dnsConfig={"nameservers": ["10.96.0.10"],
                            "searches": ["shop.svc.cluster.local"],
                            "options": [{"name": "ndots", "value": "5"}]})
    expect_fail(lab, "fix-dns", ["still does not", "web.default.shop.svc.cluster.local."],
                ("svc.cluster.local",))
    # a coredns pod's own address: works, but is not the Service
    dns_pod = lab.c.dns_pods()[0]
    lab.checkout(dnsConfig={"nameservers": [dns_pod.ip],
                            "searches": ["shop.svc.cluster.local", "svc.cluster.local",
                                         "cluster.local"],
                            "options": [{"name": "ndots", "value": "5"}]})
    expect_fail(lab, "fix-dns", ["coredns pod", dns_pod.ip], ("kube-dns", "10.96.0.10"))
    # dnsPolicy Default: the node's resolver answers, but knows nothing of cluster.local
    lab.checkout(dnsPolicy="Default", dnsConfig=None)
    expect_fail(lab, "fix-dns", ["172.18.0.100", "the external host", "only cluster DNS"])
    # the right nameserver and search list, by hand: a repair too
    lab.checkout(dnsConfig={"nameservers": ["10.96.0.10"],
                            "searches": ["shop.svc.cluster.local", "svc.cluster.local",
                                         "cluster.local"],
                            "options": [{"name": "ndots", "value": "5"}]}, dnsPolicy="None")
    assert lab.one("fix-dns").passed
    lab.solve("fix-dns")
    r = lab.one("fix-dns")
    assert r.passed and "api.example.com → 172.18.0.100" in r.message, r.summary()
    pods = [p for p in lab.c.pods("shop") if p.owner == "Deployment/checkout"]
    assert len(pods) == 1  # the old pod was replaced, not kept
    assert getent(pods[0].netns, "web.default") == [lab.c.service("web")["spec"]["clusterIP"]]


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for name in lab.lab.checks:
        r = lab.one(name)
        assert not r.passed and "cluster" in r.hint, r.summary()
