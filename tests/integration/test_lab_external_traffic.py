"""The checks of lab 08 (NodePort, LoadBalancer and the client's source IP) against the real
kernel (root).

A cluster `nodeport` is set up the way the notebook's first cells do it (web-1 pinned to
nodeport-worker; the notebook's names `c`, `W1`, `W2`, `W1_IP`, `SHOP`, …); then the reference
solutions run one exercise at a time, and tests apply plausible wrong Services on purpose and
expect the check to name the mistake.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_driver import LabDriver, explain, lab_state

from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.labs.external_traffic import traffic_map

pytestmark = pytest.mark.root

LAB_ID = "08-nodeport-loadbalancer"
STEPS = [("nodeport", ["nodeport"]), ("source-ip", ["source-ip"]), ("local", ["local"]),
         ("loadbalancer", ["loadbalancer"]), ("shop", ["shop"])]
SHOP_IP = "172.18.255.210"


def service(name: str = "web", type: str = "NodePort", node_port: int | None = 30080,
            target: int = 8080, app: str = "web", **spec: Any) -> dict[str, Any]:
    """A Service like the ones the exercises ask for (and plausible wrong ones)."""
    port: dict[str, Any] = {"port": 80, "targetPort": target}
    if node_port is not None:
        port["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": type, "selector": {"app": app}, "ports": [port], **spec}}


class Lab08(LabDriver):
    """The notebook's setup cells, its names and its checks."""

    lab_id = LAB_ID
    answer_names = ("seen_via_worker2", "seen_via_worker")

    def __init__(self) -> None:
        super().__init__()
        c = Cluster.up("clusters/nodeport.yaml", replace=True)
        c.apply("manifests/nodeport-web.yaml")
        cp, w1, w2 = (c.node(f"nodeport-{n}") for n in ("control-plane", "worker", "worker2"))
        self.ns = {"c": c, "CP": cp, "W1": w1, "W2": w2, "CP_IP": cp.ip, "W1_IP": w1.ip,
                   "W2_IP": w2.ip, "EXT": c.external, "EXT_IP": c.external.ip,
                   "WEB1": c.pod("web-1"),
                   "SHOP": list(yaml.safe_load_all(Path("manifests/nodeport-shop.yaml")
                                                   .read_text()))}

    def lb_cluster(self) -> None:
        """The notebook's cell before exercise `loadbalancer` (web-cluster gets .200)."""
        self.c.apply("manifests/nodeport-lb-cluster.yaml")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab08]:
    with lab_state(LAB_ID, "lknp", tmp_path, monkeypatch):
        yield Lab08()


def test_checks_fail_before_and_pass_after_each_solution(lab):
    def notebook_cells_before(exercise: str) -> None:
        if exercise == "loadbalancer":
            lab.lb_cluster()
    lab.assert_each_exercise(STEPS, before_each=notebook_cells_before)
    # the picture agrees with the checks: Local, two next hops, the control plane drops
    text = str(traffic_map(lab.c))
    assert "externalTrafficPolicy Local" in text, text
    assert "172.18.255.201:80: next hops 172.18.0.3, 172.18.0.4" in text, text
    assert "nodeport-control-plane (172.18.0.2): DROP" in text, text
    assert "web-2 10.244.2.2:8080, the pod sees 172.18.0.100" in text, text


def test_nodeport_mistakes_are_named(lab):
    c = lab.c
    cases = [
        (service(type="ClusterIP", node_port=None), "ClusterIP Service", "type: NodePort"),
        (service(node_port=30081), "nodePort is 30081, not 30080", "nodePort: 30080"),
        (service(target=80), "where nothing listens", "targetPort: 8080"),
        (service(app="wbe"), "has no endpoints", "app: web"),
        (service(name="web-svc"), "belongs to `default/web-svc`", "name the Service `web`"),
    ]
    for svc, words, hint in cases:
        c.apply(svc)
        r = lab.one("nodeport")
        assert not r.passed and words in r.message and hint in r.hint, (svc, r.summary())
        c.delete(svc)
    lab.solve("nodeport")
    assert lab.one("nodeport").passed
    # a rule deleted by hand on one node: the probes would still work elsewhere
    lab.W2.sh("iptables -t nat -F KUBE-NODEPORTS")
    r = lab.one("nodeport")
    assert "nodeport-worker2 has no KUBE-NODEPORTS rule" in r.message, r.summary()
    assert "re-apply" in r.hint, r.summary()
    lab.solve("nodeport")  # the same apply again: kube-proxy resyncs every node
    assert lab.one("nodeport").passed


def test_source_ip_answers(lab):
    lab.solve("nodeport")
    ext, w1_ip, w2_ip, web1 = lab.EXT_IP, lab.W1_IP, lab.W2_IP, lab.WEB1.ip
    good = {"seen_via_worker2": w2_ip, "seen_via_worker": "10.244.1.1"}
    cases = [
        ({"seen_via_worker2": ""}, "`seen_via_worker2` is empty", "/clientip"),
        ({"seen_via_worker": "worker"}, "not an IPv4 address", "seen_via_worker = "),
        ({"seen_via_worker2": ext}, "client's address is gone", "ip route get"),
        ({"seen_via_worker": ext}, "KUBE-MARK-MASQ", "/clientip"),
        ({"seen_via_worker": w1_ip}, "leaves through cni0", "ip route get"),
        ({"seen_via_worker2": w1_ip}, "where web-1 runs", "ip route get"),
        ({"seen_via_worker2": web1}, "the receiver", "ip route get"),
        ({"seen_via_worker2": "10.244.1.1", "seen_via_worker": w2_ip},
         "nodeport-worker's cni0", "ip route get"),
        ({"seen_via_worker2": "10.9.9.9"}, "not an address of this cluster", "ip route get"),
    ]
    for change, words, hint in cases:
        r = lab.one("source-ip", **{**good, **change})
        assert not r.passed and words in r.message and hint in r.hint, (change, r.summary())
    assert lab.one("source-ip", **good).passed
    # what /clientip prints (ip:port) and a /prefix are fine
    assert lab.one("source-ip", seen_via_worker2=f"{w2_ip}:31234",
                   seen_via_worker=" 10.244.1.1/24 ").passed
    # later exercises change the Service, not the answer: it is still judged by the routes
    lab.solve("local")
    assert lab.one("source-ip", **good).passed
    assert not lab.one("source-ip", **{**good, "seen_via_worker": ext}).passed


def test_local_mistakes_are_named(lab):
    lab.solve("nodeport")
    r = lab.one("local")
    assert "still has externalTrafficPolicy: Cluster" in r.message, r.summary()
    assert "externalTrafficPolicy: Local" in r.hint, r.summary()
    # the other traffic policy: it is about pods reaching the ClusterIP
    lab.c.apply(service(internalTrafficPolicy="Local"))
    r = lab.one("local")
    assert "internalTrafficPolicy: Local" in r.message, r.summary()
    assert "externalTrafficPolicy: Local" in r.hint, r.summary()
    lab.solve("local")
    assert lab.one("local").passed
    # the DROP rule removed by hand: the check reads the filter table, not just the probes
    lab.W2.sh("iptables -F KUBE-EXTERNAL-SERVICES")
    r = lab.one("local")
    assert "nodeport-worker2 has no web pod, but no filter rule" in r.message, r.summary()
    lab.solve("local")
    assert lab.one("local").passed


def test_loadbalancer_mistakes_are_named(lab):
    lab.solve("nodeport", "local")
    lab.lb_cluster()
    r = lab.one("loadbalancer")
    assert "no load-balancer IP" in r.message and "type: LoadBalancer" in r.hint, r.summary()
    # type LoadBalancer, externalTrafficPolicy left out: back to the default, Cluster
    lab.c.apply(service(type="LoadBalancer"))
    r = lab.one("loadbalancer")
    assert "back to Cluster" in r.message and "externalTrafficPolicy: Local" in r.hint, \
        r.summary()
    ext_routes = lab.EXT.sh("ip route")
    assert "nexthop via 172.18.0.2" in ext_routes.split("172.18.255.201")[1], ext_routes
    # Local, but no second backend
    lab.c.apply(service(type="LoadBalancer", externalTrafficPolicy="Local"))
    r = lab.one("loadbalancer")
    assert "nodeport-worker2 has no local endpoint" in r.message, r.summary()
    assert "manifests/nodeport-web-2.yaml" in r.hint, r.summary()
    assert lab.one("local").passed  # Local itself is right
    lab.solve("loadbalancer")
    assert lab.one("loadbalancer").passed
    # the router's route changed by hand: the control plane would get clients it drops
    lab.EXT.sh("ip route replace 172.18.255.201/32 nexthop via 172.18.0.2 "
               "nexthop via 172.18.0.3 nexthop via 172.18.0.4")
    r = lab.one("loadbalancer")
    assert "nodeport-control-plane would get clients it drops" in r.message, r.summary()
    assert "Apply web again" in r.hint, r.summary()
    lab.solve("loadbalancer")
    assert lab.one("loadbalancer").passed


def test_shop_mistakes_are_named(lab):
    lab.solve("nodeport", "source-ip", "local")
    lab.lb_cluster()
    lab.solve("loadbalancer")
    c = lab.c
    # the manifest as committed: the API server refuses it, first for the port, then the IP
    with pytest.raises(ConfigError, match=r"spec\.ports\[0\]\.nodePort.*already allocated"):
        c.apply("manifests/nodeport-shop.yaml")
    shop = lab.SHOP
    del shop[1]["spec"]["ports"][0]["nodePort"]
    with pytest.raises(ConfigError, match=r"spec\.loadBalancerIP.*not in the lab's"):
        c.apply(shop)
    r = lab.one("shop")
    assert "there is no Service `shop`" in r.message and "names the field" in r.hint
    # the IP request dropped instead of fixed: shop gets the next free address
    del shop[1]["spec"]["loadBalancerIP"]
    c.apply(shop)
    r = lab.one("shop")
    assert "from the pool" in r.message and SHOP_IP in r.hint, r.summary()
    # web moved off 30080 to make room
    c.apply(service(type="LoadBalancer", node_port=30081, externalTrafficPolicy="Local"))
    shop[1]["spec"]["loadBalancerIP"] = SHOP_IP
    shop[1]["spec"]["ports"][0]["nodePort"] = 30080
    c.apply(shop)
    r = lab.one("shop")
    assert "web's nodePort is now 30081" in r.message, r.summary()
    # web deleted to make room
    c.delete(service())
    r = lab.one("shop")
    assert "no Service `web` on nodePort 30080" in r.message, r.summary()
    assert not lab.one("nodeport").passed
    # the fix: web back as it was, shop on a free nodePort at the address the DNS points at
    # (shop keeps an allocated nodePort when a later apply leaves it out: delete it first)
    c.delete(shop[1])
    lab.solve("loadbalancer")
    del shop[1]["spec"]["ports"][0]["nodePort"]
    c.apply(shop)
    assert lab.run().all_passed, explain(lab.run())


def test_checks_say_when_the_cluster_is_gone(lab):
    lab.c.down()
    for r in lab.run():
        assert not r.passed and "cluster" in r.hint, r.summary()
