"""The three backends on a real kernel: connectivity, the devices and entries each one makes,
nodes joining and leaving, and BIRD's sessions and routes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from typing import Any

import pytest

from lab_kit import backends, config, kernel, naming
from lab_kit.cluster import Cluster
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root


def make_conf(cni: str, workers: int = 2, **kw: Any) -> config.ClusterConfig:
    conf = config.default_config(unique_name(), workers=workers)
    return dataclasses.replace(conf, cni=cni, **kw)


def pod(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "t"}},
            "spec": {"nodeName": node, "containers": [{
                "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                "args": ["netexec", "--http-port=8080", "--udp-port=8081"],
                "ports": [{"containerPort": 8080}, {"containerPort": 8081, "protocol": "UDP"}]}]}}


def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


def pod_routes(netns: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ip_json(netns, "route", "show") if r["dst"].startswith("10.244.")}


def all_pairs(c: Cluster) -> list[str]:
    failures = []
    for a in c.pods():
        for b in c.pods():
            for port, proto in ((8080, "TCP"), (8081, "UDP")):
                r = c.probe(a.key, b.key, port, proto)
                if not (r.ok and r.reply == b.name):
                    failures.append(str(r))
    return failures


def bird_pids(c: Cluster) -> list[int]:
    return processes_with(f"-s {c._socket_dir}/bird")  # BIRD's control socket argument


@pytest.mark.parametrize("cni", config.CNI_BACKENDS)
def test_all_pairs_tcp_and_udp(lab_cluster_factory, cni: str) -> None:
    c = lab_cluster_factory(make_conf(cni))
    cp, w1, w2 = (n.name for n in c.nodes())
    c.apply([pod("a1", w1), pod("a2", w1), pod("b1", w2), pod("b2", w2), pod("cp", cp)])
    assert all_pairs(c) == []
    mtu = 1450 if cni == "vxlan" else 1500
    for p in c.pods():
        assert ip_json(p.netns, "link", "show", "eth0")[0]["mtu"] == mtu, p.name


def test_vxlan_is_flannels_layout(lab_cluster_factory) -> None:
    c = lab_cluster_factory(make_conf("vxlan"))
    nodes = c.config.nodes
    for n in nodes:
        ns = naming.node_netns(n.name)
        dev = ip_json(ns, "-d", "link", "show", "flannel.1")[0]
        info = dev["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["learning"]) == (1, 8472, False)
        assert info["local"] == n.ip and dev["mtu"] == 1450
        assert dev["address"] == backends.vtep_mac(n)
        addrs = [(a["local"], a["prefixlen"]) for a in
                 ip_json(ns, "addr", "show", "flannel.1")[0]["addr_info"] if a["family"] == "inet"]
        assert addrs == [(n.pod_cidr.split("/")[0], 32)]
        routes = pod_routes(ns)
        neigh = {e["dst"]: e for e in ip_json(ns, "neigh", "show", "dev", "flannel.1")}
        fdb = {e["mac"]: e.get("dst") for e in json.loads(subprocess.run(
            ["ip", "netns", "exec", ns, "bridge", "-j", "fdb", "show", "dev", "flannel.1"],
            capture_output=True, text=True, check=True).stdout)}
        for o in nodes:
            if o is n:
                continue
            vtep = o.pod_cidr.split("/")[0]
            r = routes[o.pod_cidr]
            assert (r["gateway"], r["dev"], "onlink" in r.get("flags", [])) == (
                vtep, "flannel.1", True), r
            assert neigh[vtep]["lladdr"] == backends.vtep_mac(o)
            assert "PERMANENT" in neigh[vtep]["state"]
            assert fdb[backends.vtep_mac(o)] == o.ip


def test_bgp_sessions_and_routes(lab_cluster_factory) -> None:
    c = lab_cluster_factory(make_conf("bgp"))
    nodes = c.config.nodes
    assert len(bird_pids(c)) == 3  # one BIRD per node
    for n in nodes:
        out = c.birdc(n.name, "show protocols")
        sessions = [ln for ln in out.splitlines() if ln.startswith("Mesh_")]
        assert len(sessions) == 2 and all("Established" in s for s in sessions), out
        routes = pod_routes(naming.node_netns(n.name))
        for o in nodes:
            if o is not n:
                r = routes[o.pod_cidr]
                assert (r["gateway"], r["dev"], r["protocol"]) == (o.ip, "eth0", "bird"), r
        assert n.pod_cidr not in routes  # its own range is announced, not installed
    shown = c.birdc(nodes[1].name, "show route")
    assert nodes[2].pod_cidr in shown and "blackhole" in shown


def test_bgp_route_reflector(lab_cluster_factory) -> None:
    c = lab_cluster_factory(make_conf("bgp", workers=3, bgp_peering="route-reflector"))
    cp = c.config.nodes[0]
    rr = c.birdc(cp.name, "show protocols")
    assert rr.count("Established") == 3
    for w in c.config.nodes[1:]:
        out = c.birdc(w.name, "show protocols")
        assert [ln.split()[0] for ln in out.splitlines() if "BGP" in ln] == [
            f"Node_{cp.ip.replace('.', '_')}"]
    names = [n.name for n in c.nodes()]
    c.apply([pod("x", names[1]), pod("y", names[2]), pod("z", names[3])])
    assert all_pairs(c) == []  # routes reflected through the control plane


@pytest.mark.parametrize("cni", config.CNI_BACKENDS)
def test_node_joins_and_leaves(lab_cluster_factory, cni: str) -> None:
    c = lab_cluster_factory(make_conf(cni))
    _, w1, w2 = (n.name for n in c.nodes())
    c.apply([pod("a", w1), pod("b", w2)])
    new = c.add_node()
    assert new.name == f"{c.name}-worker3" and new.ip == "172.18.0.5"
    assert new.pod_cidr == "10.244.3.0/24"
    c.apply([pod("n", new.name)])
    assert all_pairs(c) == []
    for n in c.nodes():
        if n.name != new.name:
            assert new.pod_cidr in pod_routes(n.netns), n.name
    if cni == "bgp":
        assert len(bird_pids(c)) == 4

    msgs = c.remove_node(w1)
    assert 'pod "a" deleted' in msgs and f'node "{w1}" deleted' in msgs
    assert naming.node_netns(w1) not in kernel.list_netns()
    for n in c.nodes():
        routes = pod_routes(n.netns)
        assert "10.244.1.0/24" not in routes, (n.name, routes)  # withdrawn everywhere
        if cni == "vxlan":
            neigh = [e["dst"] for e in ip_json(n.netns, "neigh", "show", "dev", "flannel.1")]
            assert "10.244.1.0" not in neigh
    if cni == "bgp":
        assert len(bird_pids(c)) == 3
        for n in c.nodes():
            assert "Mesh_172_18_0_3" not in c.birdc(n.name, "show protocols")
    assert [p.name for p in c.pods()] == ["b", "n"]
    assert all_pairs(c) == []
    # the freed IP and pod CIDR are reused by the next node to join
    again = c.add_node()
    assert (again.ip, again.pod_cidr) == ("172.18.0.3", "10.244.1.0/24")
    assert again.name == w1  # kind's first free name: <cluster>-worker again


def test_remove_node_keeps_deployment_replicas(lab_cluster_factory) -> None:
    c = lab_cluster_factory(make_conf("vxlan"))
    c.apply("labs/manifests/web.yaml")
    before = {p.name for p in c.pods()}
    c.remove_node(f"{c.name}-worker")
    after = c.pods()
    assert {p.name for p in after} == before  # the same six replicas…
    assert {p.node for p in after} == {f"{c.name}-worker2"}  # …all on the node that is left
    assert all_pairs(c) == []


def test_last_control_plane_cannot_go(lab_cluster_factory) -> None:
    c = lab_cluster_factory(make_conf("host-gw"))
    with pytest.raises(Exception, match="last control-plane"):
        c.remove_node(f"{c.name}-control-plane")
    assert len(c.nodes()) == 3


def test_down_stops_bird(lab_cluster_factory, state_dir) -> None:
    c = lab_cluster_factory(make_conf("bgp"))
    assert len(bird_pids(c)) == 3
    sock_dir = c._socket_dir
    c.down()
    assert bird_pids(c) == []
    assert not sock_dir.exists()
    assert not list(state_dir.glob("**/bird"))
