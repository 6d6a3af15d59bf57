"""Egress from pods to the outside world, on the real kernel (root): SNAT to the node's
address as the external server and the node's conntrack table see it, ip-masq-agent's
ConfigMap (kube-system/ip-masq-agent) rewriting every node's chain, bad configs refused with
nothing changed, and an egress NetworkPolicy `ipBlock` working together with the SNAT path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lab_kit import config
from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.labs.egress import request_from
from lab_kit.labs.internet import OTHER_IP, PROVIDER_IP, serve_internet
from lab_kit.pytest_plugin import unique_name

pytestmark = pytest.mark.root

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.53"


def pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": AGNHOST,
                                                       "args": ["netexec", "--http-port=80"]}]}}


def masq_configmap(config_text: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ip-masq-agent", "namespace": "kube-system"},
            "data": {"config": config_text}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    name = unique_name("eg")
    conf = config.default_config(name, workers=1)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp("egress_state"))
    try:
        nodes = [n.name for n in c.nodes()]
        c.apply([pod("a", nodes[0]), pod("b", nodes[1])])
        serve_internet(c)
        yield c
    finally:
        c.down()


def nat_rules(c: Cluster) -> dict[str, str]:
    return {n.name: c.node(n.name).sh("iptables-save -t nat | grep -v '^#'")
            for n in c.nodes()}


def node_ip(c: Cluster, pod_key: str) -> str:
    return next(n.ip for n in c.nodes() if n.name == c.pod(pod_key).node)


def test_pods_leave_as_their_node_in_the_server_log_and_in_conntrack(cluster: Cluster) -> None:
    for key in ("default/a", "default/b"):
        p, ip = cluster.pod(key), node_ip(cluster, key)
        assert request_from(cluster, key, PROVIDER_IP) == (True, ip)
        entries = cluster.node(p.node).sh(
            f"conntrack -L -p tcp -s {p.ip} -d {PROVIDER_IP} --dport 8080", check=False)
        # original direction from the pod, reply direction to the node: masqueraded
        assert f"src={p.ip} dst={PROVIDER_IP}" in entries and f"dst={ip} " in entries, entries


def test_the_configmap_rewrites_every_nodes_chain_and_bad_input_changes_nothing(
        cluster: Cluster) -> None:
    pod_net = cluster.config.pod_subnet
    before, state = nat_rules(cluster), json.dumps(cluster.state, sort_keys=True)
    for text, field in [("nonMasqueradeCIDRs: [10.0.0.0/33]", "nonMasqueradeCIDRs[0]"),
                        ("nonMasqueradeCIDR: [10.0.0.0/8]", "nonMasqueradeCIDR"),
                        ("masqLinkLocal: 1", "masqLinkLocal")]:
        with pytest.raises(ConfigError) as e:
            cluster.apply(masq_configmap(text))
        assert e.value.obj == "ConfigMap/kube-system/ip-masq-agent"
        assert e.value.field == f"data[config].{field}", str(e.value)
    assert nat_rules(cluster) == before
    assert json.dumps(cluster.state, sort_keys=True) == state
    # the provider's own address exempt: it sees pods as they are (the external host gets a
    # route back to each node's pod CIDR, as a router peering with the cluster would have)
    for n in cluster.nodes():
        cluster.external.sh(f"ip route replace {n.pod_cidr} via {n.ip} dev eth0")
    try:
        assert cluster.apply(masq_configmap(
            f"nonMasqueradeCIDRs: [{pod_net}, {PROVIDER_IP}/32]\nmasqLinkLocal: true")) == \
            ["configmap/ip-masq-agent created"]
        for n in cluster.nodes():
            chain = cluster.node(n.name).sh("iptables -t nat -S IP-MASQ-AGENT")
            returns = [ln.split()[3] for ln in chain.splitlines() if "-j RETURN" in ln]
            assert returns == [pod_net, f"{PROVIDER_IP}/32"], chain
            post = cluster.node(n.name).sh("iptables -t nat -S POSTROUTING")
            assert post.count("-j IP-MASQ-AGENT") == 1, post
        a = cluster.pod("default/a")
        assert request_from(cluster, "default/a", PROVIDER_IP) == (True, a.ip)
        assert request_from(cluster, "default/a", OTHER_IP) == (True, node_ip(cluster,
                                                                               "default/a"))
        # a kube-proxy sync checks the rules against the ConfigMap and leaves them be
        cluster.sync_services()
        assert request_from(cluster, "default/a", PROVIDER_IP) == (True, a.ip)
    finally:
        cluster.delete(masq_configmap(""))
        for n in cluster.nodes():
            cluster.external.sh(f"ip route del {n.pod_cidr}", check=False)
    # kind's default again, rule for rule as before the ConfigMap: the pod network alone
    assert nat_rules(cluster) == before
    for n in cluster.nodes():
        chain = cluster.node(n.name).sh("iptables -t nat -S IP-MASQ-AGENT")
        assert [ln.split()[3] for ln in chain.splitlines() if "-j RETURN" in ln] == [pod_net]
    assert request_from(cluster, "default/a", PROVIDER_IP)[1] == node_ip(cluster, "default/a")


def test_egress_policy_ipblock_works_with_snat(cluster: Cluster) -> None:
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "provider-only"},
              "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"ipBlock": {"cidr": f"{PROVIDER_IP}/32"}}],
                                   "ports": [{"port": 8080, "protocol": "TCP"}]}]}}
    cluster.apply(policy)
    try:
        # the filter matched the pod's address and the real destination, then SNAT rewrote
        # the source: the provider answers and sees the node
        assert request_from(cluster, "default/a", PROVIDER_IP) == (
            True, node_ip(cluster, "default/a"))
        assert request_from(cluster, "default/a", OTHER_IP)[0] is False
        assert request_from(cluster, "default/b", OTHER_IP)[0] is True  # b is not selected
    finally:
        cluster.delete(policy)
    assert request_from(cluster, "default/a", OTHER_IP)[0] is True
