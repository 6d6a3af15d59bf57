"""A real cluster: pods wired by the CNI plugins, host-gw routing, probes, re-attach, scaling."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import lab_kit
from lab_kit import config, kernel, naming
from lab_kit.cluster import Cluster
from lab_kit.errors import NotRunningError
from lab_kit.pytest_plugin import unique_name

pytestmark = pytest.mark.root

REPO = str(Path(lab_kit.__file__).resolve().parents[1])


def netexec_deployment(name: str = "web", replicas: int = 6, http: int = 8080, udp: int = 8081,
                       labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                         "name": "agnhost",
                         "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                         "args": ["netexec", f"--http-port={http}", f"--udp-port={udp}"]}]}}}}


def pod_manifest(name: str, node: str | None = None, port: int = 8080,
                 labels: dict[str, str] | None = None, ns: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agnhost", "image": "agnhost",
                                            "ports": [{"containerPort": port}]}]}
    if node:
        spec["nodeName"] = node
    meta: dict[str, Any] = {"name": name, "labels": labels or {"app": name}}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def lab_pod_netns(c: Cluster) -> set[str]:
    return {n for n in kernel.list_netns() if n.startswith(f"{naming.PREFIX}{c.name}.")}


def ip_json(netns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out or "[]")


def inet(addr_json: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(a["local"], a["prefixlen"]) for link in addr_json for a in link["addr_info"]
            if a["family"] == "inet"]


def cni0_ports(node_netns: str) -> list[dict[str, Any]]:
    return [link for link in ip_json(node_netns, "link", "show", "master", "cni0")]


# --- traffic -------------------------------------------------------------------------------

def test_every_pod_reaches_every_pod_over_tcp_and_udp(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    assert c.apply([netexec_deployment(replicas=6)]) == ["deployment.apps/web created"]
    pods = c.pods()
    assert Counter(p.node for p in pods) == {f"{c.name}-worker": 3, f"{c.name}-worker2": 3}

    failures, pairs = [], Counter()
    for a in pods:
        for b in pods:
            pairs["same node" if a.node == b.node else "across nodes"] += 1
            tcp = c.probe(a.key, b.key, 8080)
            udp = c.probe(a.key, b.key, 8081, "UDP")
            who = c.probe(a.key, b.key, 8080, path="/clientip")
            if not (tcp.ok and tcp.reply == b.name):
                failures.append(str(tcp))
            if not (udp.ok and udp.reply == b.name):
                failures.append(str(udp))
            # no NAT between pods: the target sees the source pod's own IP
            if not (who.ok and who.reply.rsplit(":", 1)[0] == a.ip):
                failures.append(f"{who} (expected {a.ip})")
    assert not failures, "\n".join(failures)
    assert pairs == {"same node": 18, "across nodes": 18}


def test_nodes_reach_pods_and_the_external_host_has_no_route_to_them(
        lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    c.apply([netexec_deployment(replicas=2)])
    pods = c.pods()
    for n in c.nodes():  # the control plane too: host-gw routes reach every node's pods
        for p in pods:
            r = c.probe(n.name, p.key, 8080)
            assert r.ok and r.reply == p.name, str(r)
    # `external` sits on the underlay only: it knows no route to the pod network
    routes = ip_json(c.external.netns, "route", "show", "table", "all")
    pod_net = ipaddress.ip_network(c.config.pod_subnet)
    for r in routes:
        if r["dst"] not in ("default", "local", "broadcast") and "/" in r["dst"]:
            assert not ipaddress.ip_network(r["dst"]).overlaps(pod_net), r
    assert not [r for r in routes if r["dst"] == "default"]
    for p in pods:
        r = c.probe("external", p.key, 8080, timeout=0.5)
        assert not r.ok
        assert "unreachable" in r.error.lower(), str(r)
    # the underlay itself works: external reaches a node
    ping = c.external.sh(f"ping -c1 -W1 {c.nodes()[1].ip}", check=False)
    assert " 0% packet loss" in ping


def test_containers_of_one_pod_share_its_netns(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    duo = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "duo", "namespace": "shop", "labels": {"app": "duo"}},
           "spec": {"containers": [
               {"name": "web", "image": "agnhost", "args": ["netexec", "--http-port=8080"]},
               {"name": "sidecar", "image": "agnhost",
                "ports": [{"containerPort": 9090}, {"containerPort": 9091, "protocol": "UDP"}]},
           ]}}
    assert c.apply([ns, duo]) == ["namespace/shop created", "pod/duo created"]
    p = c.pod("duo", namespace="shop")
    assert p.netns == f"lk-{c.name}.shop.duo"
    assert p.netns in lab_pod_netns(c)
    for port in (8080, 9090):
        r = c.probe(p.node, "shop/duo", port)
        assert r.ok and r.reply == "duo", str(r)
        assert r.ip == p.ip
    u = c.probe(p.node, "shop/duo", 9091, "UDP")
    assert u.ok and u.reply == "duo", str(u)
    listening = p.sh("ss -Hltn")
    assert "0.0.0.0:8080" in listening and "0.0.0.0:9090" in listening
    assert "0.0.0.0:9091" in p.sh("ss -Hlun")
    # one container reaches the other over localhost
    body = p.sh("exec 3<>/dev/tcp/127.0.0.1/9090; "
                "printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")
    assert body.splitlines()[0] == "HTTP/1.1 200 OK"
    assert body.splitlines()[-1] == "duo"
    # deleting the namespace deletes its pods, in the kernel too
    assert c.delete([ns]) == ['namespace "shop" deleted']
    assert c.pods() == []
    assert lab_pod_netns(c) == set()
    assert cni0_ports(naming.node_netns(p.node)) == []


def test_pod_ips_and_routes_match_the_kernel(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    cp = f"{c.name}-control-plane"
    c.apply([netexec_deployment(replicas=4), pod_manifest("pinned", node=cp)])
    table = c.get_pods()
    pods = table.pods
    assert len(pods) == 5
    assert [row[4] for row in table] == [p.ip for p in pods]  # the IP column
    assert len({p.ip for p in pods}) == 5
    nodes = {n.name: n for n in c.nodes()}
    assert c.pod("pinned").node == cp
    for p in pods:
        cidr = ipaddress.ip_network(nodes[p.node].pod_cidr)
        gateway = str(cidr.network_address + 1)
        assert ipaddress.ip_address(p.ip) in cidr and p.ip != gateway
        assert p.netns == naming.pod_netns(c.name, p.namespace, p.name)
        # the address in the pod's netns is the one the lab reports
        assert inet(json.loads(c.pod(p.key).sh("ip -j addr show eth0"))) == [(p.ip, 24)]
        assert inet(ip_json(p.netns, "addr", "show", "eth0")) == [(p.ip, 24)]
        # the default route goes via the node's cni0 (the bridge plugin's isGateway)
        (default,) = ip_json(p.netns, "route", "show", "default")
        assert (default["gateway"], default["dev"]) == (gateway, "eth0")
        assert (gateway, 24) in inet(ip_json(nodes[p.node].netns, "addr", "show", "cni0"))
        # the loopback plugin brought lo up
        (lo,) = ip_json(p.netns, "link", "show", "lo")
        assert "UP" in lo["flags"]


def test_host_gw_routes_on_every_node(lab_cluster_factory) -> None:
    conf = config.default_config(unique_name())
    c = lab_cluster_factory(dataclasses.replace(conf, cni="host-gw"))
    nodes = c.nodes()
    assert [n.netns for n in nodes] == [f"lk-{n.name}" for n in nodes]
    for n in nodes:
        routes = {r["dst"]: r for r in ip_json(n.netns, "route", "show")}
        for other in nodes:
            if other.name == n.name:
                assert other.pod_cidr not in routes  # no cni0 yet, and never via eth0
                continue
            r = routes[other.pod_cidr]
            assert (r["gateway"], r["dev"]) == (other.ip, "eth0"), r
        assert inet(ip_json(n.netns, "addr", "show", "eth0")) == [(n.ip, 16)]
        fwd = c.node(n.name).sh("sysctl -n net.ipv4.ip_forward").strip()
        assert fwd == "1"


# --- the cluster outlives the process ---------------------------------------------------------

ATTACH_SCRIPT = textwrap.dedent("""
    import json, sys
    from lab_kit.cluster import Cluster
    c = Cluster.attach(sys.argv[1], root=sys.argv[2])
    if len(sys.argv) > 3:  # change the cluster from here
        print(json.dumps(c.apply(json.loads(sys.argv[3]))))
        sys.exit()
    pods = c.pods()
    print(json.dumps({
        "pods": [[p.key, p.ip, p.node, p.netns] for p in pods],
        "probes": [c.probe(a.key, b.key, 8080).reply for a in pods for b in pods],
        "udp": [c.probe(a.key, b.key, 8081, "UDP").reply for a in pods for b in pods],
    }))
""")


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_attach_from_a_fresh_process(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    c.apply([netexec_deployment(replicas=3)])
    pods = c.pods()
    done = run_python(ATTACH_SCRIPT, c.name, str(c.root))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["pods"] == [[p.key, p.ip, p.node, p.netns] for p in pods]
    assert seen["probes"] == [b.name for _ in pods for b in pods]
    assert seen["udp"] == [b.name for _ in pods for b in pods]


def test_attach_to_a_missing_cluster(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    with pytest.raises(NotRunningError, match=c.name):
        Cluster.attach("nosuchcluster", root=c.root)
    assert Cluster.list(c.root) == [c.name]


def test_changes_by_another_process_are_seen(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    c.apply([pod_manifest("first")])
    assert [p.name for p in c.pods()] == ["first"]
    done = run_python(ATTACH_SCRIPT, c.name, str(c.root), json.dumps([pod_manifest("second")]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["pod/second created"]
    assert [p.name for p in c.pods()] == ["first", "second"]


def test_journal_records_cni_add_in_the_node_netns(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    c.apply([netexec_deployment(replicas=2)])
    nodes = {n.name: n for n in c.nodes()}
    entries = c.journal()
    assert entries, "the journal is empty"
    adds = [e for e in entries if e.env and e.env.get("CNI_COMMAND") == "ADD"]
    for p in c.pods():
        mine = [e for e in adds if e.env["CNI_NETNS"] == f"/run/netns/{p.netns}"]
        assert sorted((Path(e.argv[0]).name, e.env["CNI_IFNAME"]) for e in mine) == [
            ("bridge", "eth0"), ("loopback", "lo")]
        for e in mine:
            assert e.netns == f"lk-{p.node}"  # plugins run in the node's netns, like a runtime
            assert e.rc == 0
            assert len(e.env["CNI_CONTAINERID"]) == 64
        (bridge,) = [e for e in mine if e.argv[0].endswith("/bridge")]
        conf = json.loads(bridge.stdin)
        assert conf["bridge"] == "cni0"
        assert conf["ipam"]["ranges"] == [[{"subnet": nodes[p.node].pod_cidr}]]
        assert bridge.command().startswith(f"nsenter --net=/run/netns/lk-{p.node} env ")
        # the pod's netns was made by a recorded command too
        assert any(e.argv[:2] == ["ip", "-batch"] and f"netns add {p.netns}" in (e.stdin or "")
                   for e in entries)
    node_ns = f"lk-{c.name}-worker"
    assert {e.netns for e in c.journal(netns=node_ns)} == {node_ns}
    assert len(c.journal(last=3)) == 3


# --- reconcile -------------------------------------------------------------------------------

def test_apply_twice_is_idempotent_and_labels_update_in_place(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    docs = [netexec_deployment(replicas=2), pod_manifest("solo", labels={"v": "1"})]
    assert c.apply(docs) == ["deployment.apps/web created", "pod/solo created"]
    before = {p.key: (p.ip, kernel.netns_inode(p.netns)) for p in c.pods()}
    n_journal = len(c.journal())
    assert c.apply(docs) == ["deployment.apps/web unchanged", "pod/solo unchanged"]
    assert {p.key: (p.ip, kernel.netns_inode(p.netns)) for p in c.pods()} == before
    assert len(c.journal()) == n_journal  # nothing ran in the kernel
    assert c.apply([pod_manifest("solo", labels={"v": "2"})]) == ["pod/solo configured"]
    assert c.pod("solo").info.labels == {"v": "2"}
    assert {p.key: (p.ip, kernel.netns_inode(p.netns)) for p in c.pods()} == before
    assert json.loads(c.store.state_file.read_text())["pods"]["default/solo"]["spec"][
        "labels"] == {"v": "2"}


def test_scale_6_2_4_follows_in_the_kernel(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    workers = [n for n in c.nodes() if n.role == "worker"]
    previous: dict[str, str] = {}
    for replicas, verb in ((6, "created"), (2, "configured"), (4, "configured")):
        assert c.apply([netexec_deployment(replicas=replicas)]) == [f"deployment.apps/web {verb}"]
        pods = c.pods()
        assert len(pods) == replicas
        assert lab_pod_netns(c) == {p.netns for p in pods}
        per_node = Counter(p.node for p in pods)
        for w in workers:  # one veth on cni0 per pod on that node
            assert len(cni0_ports(w.netns)) == per_node[w.name], w.name
        now = {p.name: p.ip for p in pods}
        # pods that survive a scale keep their name and IP
        kept = set(now) & set(previous)
        assert kept == (set(now) if replicas < len(previous) else set(previous))
        assert all(now[k] == previous[k] for k in kept)
        for p in pods:
            r = c.probe(pods[0].key, p.key, 8080)
            assert r.ok and r.reply == p.name, str(r)
        previous = now


def test_delete_pod_removes_its_netns_veth_and_ip(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    node = f"{c.name}-worker"
    c.apply([pod_manifest("a", node=node), pod_manifest("b", node=node)])
    a, b = c.pod("a"), c.pod("b")
    node_ns = naming.node_netns(node)
    (eth0,) = ip_json(a.netns, "link", "show", "eth0")
    peer = eth0["link_index"]  # the veth's other end, on the node
    host_side = [link for link in cni0_ports(node_ns) if link["ifindex"] == peer]
    assert len(host_side) == 1 and host_side[0]["ifname"].startswith("veth")
    ipam = c.store.dir / "cni" / node / "ipam" / "cbr0"
    assert (ipam / a.ip).exists()  # host-local's reservation

    assert c.delete(pod="a") == ['pod "a" deleted']
    assert a.netns not in kernel.list_netns()
    assert peer not in {link["ifindex"] for link in ip_json(node_ns, "link")}
    assert not (ipam / a.ip).exists()
    assert [p.name for p in c.pods()] == ["b"]
    r = c.probe(node, "b", 8080)
    assert r.ok and r.reply == "b"
    assert not c.probe("b", a.ip, 8080, timeout=0.5).ok

    assert c.delete([pod_manifest("b", node=node)]) == ['pod "b" deleted']
    assert lab_pod_netns(c) == set()
    assert cni0_ports(node_ns) == []
    assert b.netns not in kernel.list_netns()


def test_up_with_a_deep_state_dir(lab_cluster_factory, tmp_path: Path) -> None:
    # the node servers' unix control sockets must not live under the state root: a socket
    # path may not exceed 107 bytes, and pytest's tmp_path alone is close to that
    root = tmp_path / ("deep" * 12) / "lab_state"
    root.mkdir(parents=True)
    assert len(str(root)) > 100
    c = lab_cluster_factory(root=root)
    c.apply([pod_manifest("deep")])
    r = c.probe(c.pod("deep").node, "deep", 8080)
    assert r.ok and r.reply == "deep"
