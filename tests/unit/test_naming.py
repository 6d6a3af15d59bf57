"""Deterministic names, and which netns belongs to which cluster."""

from __future__ import annotations

import re

import pytest

from lab_kit import naming


def test_node_names_like_kind() -> None:
    assert naming.node_names("lab", ["control-plane", "worker", "worker"]) == [
        "lab-control-plane", "lab-worker", "lab-worker2"]
    assert naming.node_names("k", ["worker", "control-plane", "worker", "control-plane"]) == [
        "k-worker", "k-control-plane", "k-worker2", "k-control-plane2"]


def test_netns_names() -> None:
    assert naming.node_netns("lab-worker") == "lk-lab-worker"
    assert naming.external_netns("lab") == "lk-lab-external"
    assert naming.underlay_netns("lab") == "lk-lab-underlay"
    assert naming.pod_netns("lab", "default", "web-1") == "lk-lab.default.web-1"
    assert naming.pod_netns("lab", "shop", "a.b") == "lk-lab.shop.a.b"


@pytest.mark.parametrize(("cluster", "netns", "owned"), [
    ("lab", "lk-lab-worker", True),
    ("lab", "lk-lab-control-plane", True),
    ("lab", "lk-lab-external", True),
    ("lab", "lk-lab-underlay", True),
    ("lab", "lk-lab.default.web-1", True),
    ("lab", "lk-lab2-worker", False),
    ("lab", "lk-lab2.default.web", False),
    ("lab2", "lk-lab-worker", False),
    ("a", "lk-ab-worker", False),
    ("lab", "lab-worker", False),
    ("lab", "lk-lab", False),
    ("lab", "cni-1234", False),
])
def test_owns_netns(cluster: str, netns: str, owned: bool) -> None:
    assert naming.owns_netns(cluster, netns) is owned


def test_every_generated_name_is_owned_by_its_cluster_only() -> None:
    clusters = ["a", "ab", "lab", "lab2", "abcdefghijklmnop"]
    for c in clusters:
        nets = [naming.node_netns(n) for n in naming.node_names(c, ["control-plane", "worker"])]
        nets += [naming.external_netns(c), naming.underlay_netns(c),
                 naming.pod_netns(c, "default", "web-x"), naming.pod_netns(c, "kube-system", "d")]
        for ns in nets:
            assert naming.cluster_of_netns(ns) == c
            assert naming.owns_netns(c, ns)
            for other in clusters:
                if other != c:
                    assert not naming.owns_netns(other, ns), (other, ns)


@pytest.mark.parametrize(("netns", "cluster"), [
    ("lk-lab-worker", "lab"),
    ("lk-lab2.default.web", "lab2"),
    ("lk-abcdefghijklmnop-worker", "abcdefghijklmnop"),
    ("lk-lab", None),
    ("lk-Lab-worker", None),
    ("lk-1lab-worker", None),
    ("cni-123", None),
    ("lab-worker", None),
])
def test_cluster_of_netns(netns: str, cluster: str | None) -> None:
    assert naming.cluster_of_netns(netns) == cluster


@pytest.mark.parametrize(("name", "ok"), [
    ("lab", True), ("l", True), ("lab2", True), ("abcdefghijklmnop", True),
    ("abcdefghijklmnopq", False), ("Lab", False), ("2lab", False), ("la-b", False),
    ("la.b", False), ("", False),
])
def test_cluster_name_rule(name: str, ok: bool) -> None:
    assert bool(naming.CLUSTER_NAME_RE.match(name)) is ok


def test_safe_encode() -> None:
    a = naming.safe_encode("default/web", 10)
    assert a == naming.safe_encode("default/web", 10)
    assert a != naming.safe_encode("default/web2", 10)
    assert len(a) == 10
    assert set(a) <= set(naming.SAFE_ALPHABET)
    assert len(naming.safe_encode("x", 5)) == 5
    # no vowels and no 0/1/3 lookalikes, like Kubernetes' rand.SafeEncodeString
    assert not set("aeiou013") & set(naming.SAFE_ALPHABET)


def test_container_id_is_64_hex_and_depends_on_uid() -> None:
    a = naming.container_id("default", "web", "u1")
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert a == naming.container_id("default", "web", "u1")
    assert a != naming.container_id("default", "web", "u2")


def test_dns_rules() -> None:
    assert naming.DNS_LABEL_RE.match("kube-system")
    assert not naming.DNS_LABEL_RE.match("a.b")
    assert naming.DNS_SUBDOMAIN_RE.match("a.b-c")
    assert not naming.DNS_SUBDOMAIN_RE.match("a..b")
    assert not naming.DNS_SUBDOMAIN_RE.match("-a")
