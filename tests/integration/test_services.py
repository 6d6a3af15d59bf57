"""Services on a real kernel, one behavioural suite run in both kube-proxy modes.

Each mode gets one cluster for the whole module (1 control-plane + 2 workers, VXLAN); every
test applies its own Services and pods and deletes them again, so the tests do not depend on
each other's leftovers. Everything is measured with real connections: which pod answered
(`/hostname`), which client address it saw (`/clientip`), and what the kernel's rules and
conntrack table hold.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from lab_kit import config, kubeproxy, naming
from lab_kit.cluster import Cluster
from lab_kit.errors import ConfigError
from lab_kit.pytest_plugin import unique_name

pytestmark = pytest.mark.root

IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
MODES = ("iptables", "nftables")


def pod(name: str, node: str | None = None, labels: dict[str, str] | None = None,
        port_name: str = "http", http: int = 8080) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": "agnhost", "image": IMAGE,
        "args": ["netexec", f"--http-port={http}", "--udp-port=8081"],
        "ports": [{"containerPort": http, "name": port_name},
                  {"containerPort": 8081, "protocol": "UDP", "name": "udp"}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {"app": name}}, "spec": spec}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": pod(name)["spec"]}}}


def service(name: str, selector: dict[str, str] | None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    if selector is not None:
        s["selector"] = selector
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": s}


@pytest.fixture(scope="module", params=MODES)
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    conf = dataclasses.replace(config.default_config(unique_name("s"), workers=2),
                               kube_proxy_mode=request.param)
    c = Cluster.up(conf, root=tmp_path_factory.mktemp("svc_state"))
    try:
        c.apply([pod("client", node=c.nodes()[1].name, labels={"app": "client"})])
        yield c
    finally:
        c.down()


@pytest.fixture
def objs(cluster: Cluster) -> Iterator[list[dict[str, Any]]]:
    """Objects a test applies; deleted again after the test."""
    made: list[dict[str, Any]] = []
    yield made
    if made:
        cluster.delete(made)


def apply(c: Cluster, made: list[dict[str, Any]], *docs: dict[str, Any]) -> None:
    c.apply(list(docs))
    made += [d for d in docs if d not in made]


def vip(c: Cluster, name: str) -> str:
    return c.service(name)["spec"]["clusterIP"]


def workers(c: Cluster) -> list[str]:
    return [n.name for n in c.nodes() if n.role == "worker"]


def rules(c: Cluster, node: str) -> str:
    """The node's kube-proxy rules as the kernel lists them."""
    n = c.node(node)
    if c.config.kube_proxy_mode == "nftables":
        return n.sh("nft list table ip kube-proxy")
    return n.sh("iptables-save")


def hits(c: Cluster, src: str, ip: str, n: int, port: int = 80, protocol: str = "TCP"
         ) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = c.probe(src, ip, port, protocol=protocol)
        out[r.reply if r.ok else f"FAIL {r.error}"] += 1
    return out


def client_ip(c: Cluster, src: str, ip: str, port: int = 80, timeout: float = 1.0) -> str | None:
    r = c.probe(src, ip, port, path="/clientip", timeout=timeout)
    return r.reply.rsplit(":", 1)[0] if r.ok else None


# --- ClusterIP --------------------------------------------------------------------------------

def test_spread_over_endpoints_is_uniform(cluster, objs):
    apply(cluster, objs, deployment("spread", 3), service("spread", {"app": "spread"}))
    names = {p.name for p in cluster.pods() if p.name.startswith("spread-")}
    counts = hits(cluster, "client", vip(cluster, "spread"), 300)
    assert set(counts) == names, counts
    # each endpoint expects 100 of 300 (binomial sd 8.2): 60..140 is about 5 sd either side
    assert all(60 <= v <= 140 for v in counts.values()), counts


def test_client_ip_is_the_pod_ip_and_hairpin_is_masqueraded(cluster, objs):
    apply(cluster, objs, pod("solo", node=workers(cluster)[0]),
          service("solo", {"app": "solo"}))
    ip = vip(cluster, "solo")
    client = cluster.pod("client")
    assert client_ip(cluster, "client", ip) == client.ip
    # the pod reaching itself through its own Service: KUBE-SEP's `-s <ep> -j KUBE-MARK-MASQ`
    solo = cluster.pod("solo")
    seen = client_ip(cluster, "solo", ip)
    assert seen is not None, "hairpin connection failed"
    assert seen != solo.ip and seen.startswith("10.244."), seen


def test_session_affinity_sticks(cluster, objs):
    apply(cluster, objs, deployment("sticky", 3),
          service("sticky", {"app": "sticky"}, sessionAffinity="ClientIP"))
    ip = vip(cluster, "sticky")
    counts = hits(cluster, "client", ip, 40)
    assert len(counts) == 1 and next(iter(counts)).startswith("sticky-"), counts
    chain_word = "recent" if cluster.config.kube_proxy_mode == "iptables" else "affinity-"
    assert chain_word in rules(cluster, workers(cluster)[1])


def test_no_endpoints_rejects_at_once(cluster, objs):
    apply(cluster, objs, service("nobody", {"app": "does-not-exist"}, type="NodePort"))
    assert cluster.endpointslices("nobody")[0]["endpoints"] == []
    # the filter table's "has no endpoints" REJECT: refused, not a timeout
    port = cluster.service("nobody")["spec"]["ports"][0]["nodePort"]
    r = cluster.probe("external", cluster.nodes()[0].ip, port, timeout=2)
    assert not r.ok and "refused" in r.error.lower() and r.ms < 500, r
    # from a pod the ClusterIP fails at once too. (The lab's nodes have no default route, so
    # routing answers "network unreachable" before the FORWARD chain's REJECT is reached; a
    # kind node would route it, and REJECT would answer "connection refused".)
    r = cluster.probe("client", vip(cluster, "nobody"), 80, timeout=2)
    assert not r.ok and r.ms < 500 and "timed out" not in r.error, r


def test_headless_and_external_name_make_no_rules(cluster, objs):
    apply(cluster, objs, pod("hl"), service("hl", {"app": "hl"}, clusterIP="None"),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extname"},
           "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert cluster.service("hl")["spec"]["clusterIP"] == "None"
    slices = cluster.endpointslices("hl")
    assert [e["addresses"][0] for s in slices for e in s["endpoints"]] == [cluster.pod("hl").ip]
    assert cluster.endpointslices("extname") == []
    for node in (n.name for n in cluster.nodes()):
        text = rules(cluster, node)
        assert "default/hl" not in text and "default/extname" not in text


def test_named_target_port_resolves_per_pod(cluster, objs):
    apply(cluster, objs, pod("np-a", labels={"app": "named"}, http=8080),
          pod("np-b", labels={"app": "named"}, http=9090),
          service("named", {"app": "named"}))
    ports = sorted(p["port"] for s in cluster.endpointslices("named") for p in s["ports"])
    assert ports == [8080, 9090]
    counts = hits(cluster, "client", vip(cluster, "named"), 30)
    assert set(counts) == {"np-a", "np-b"}, counts


def test_endpoints_follow_scale_with_no_failed_request(cluster, objs):
    svc = service("scale", {"app": "scale"})
    apply(cluster, objs, deployment("scale", 2), svc)
    ip = vip(cluster, "scale")
    for replicas in (5, 1, 3):
        cluster.apply([deployment("scale", replicas), svc])
        live = {p.name for p in cluster.pods() if p.name.startswith("scale-")}
        assert len(live) == replicas
        counts = hits(cluster, "client", ip, 12 * replicas)
        assert set(counts) <= live, f"requests went to removed pods or failed: {counts}"
        assert set(counts) == live, counts
        eps = {e["addresses"][0] for s in cluster.endpointslices("scale") for e in s["endpoints"]}
        assert eps == {cluster.pod(n).ip for n in live}
        text = rules(cluster, workers(cluster)[0])
        assert all(f"{cluster.pod(n).ip}:8080" in text for n in live)


def test_label_change_moves_a_pod_out_of_the_service(cluster, objs):
    a, b = pod("lbl-a", labels={"app": "lbl"}), pod("lbl-b", labels={"app": "lbl"})
    apply(cluster, objs, a, b, service("lbl", {"app": "lbl"}))
    ip = vip(cluster, "lbl")
    assert set(hits(cluster, "client", ip, 20)) == {"lbl-a", "lbl-b"}
    b2 = pod("lbl-b", labels={"app": "other"})
    cluster.apply([b2])
    objs[objs.index(b)] = b2
    assert set(hits(cluster, "client", ip, 20)) == {"lbl-a"}


def test_udp_service_and_stale_conntrack_is_flushed(cluster, objs):
    svc = service("dnsish", {"app": "dnsish"})
    svc["spec"]["ports"] = [{"name": "udp", "port": 53, "protocol": "UDP", "targetPort": "udp"}]
    backend = pod("dnsish", node=workers(cluster)[0], labels={"app": "dnsish"})
    apply(cluster, objs, backend, svc)
    ip = vip(cluster, "dnsish")
    r = cluster.probe("client", ip, 53, protocol="UDP")
    assert r.ok and r.reply == "dnsish", r
    assert cluster.conntrack(dst=ip, protocol="UDP"), "no NAT entry"
    cluster.delete([objs.pop(objs.index(backend))])
    assert not cluster.conntrack(dst=ip, protocol="UDP"), \
        "the UDP flow to the deleted endpoint is still in conntrack"


# --- NodePort, externalTrafficPolicy, LoadBalancer --------------------------------------------

def test_nodeport_from_external_is_snated_with_cluster_policy(cluster, objs):
    w1, w2 = workers(cluster)
    apply(cluster, objs, pod("npc", node=w1, labels={"app": "npc"}),
          service("npc", {"app": "npc"}, type="NodePort"))
    port = cluster.service("npc")["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    for node in cluster.nodes():  # every node answers, including those without the pod
        seen = client_ip(cluster, "external", node.ip, port)
        assert seen is not None, f"NodePort {port} on {node.name} did not answer"
        assert seen != config.EXTERNAL_IP, f"via {node.name}: client IP not masqueraded"


def test_local_policy_keeps_client_ip_and_drops_without_local_endpoint(cluster, objs):
    w1, w2 = workers(cluster)
    apply(cluster, objs, pod("npl", node=w1, labels={"app": "npl"}),
          service("npl", {"app": "npl"}, type="NodePort", externalTrafficPolicy="Local"))
    port = cluster.service("npl")["spec"]["ports"][0]["nodePort"]
    ips = {n.name: n.ip for n in cluster.nodes()}
    assert client_ip(cluster, "external", ips[w1], port) == config.EXTERNAL_IP
    r = cluster.probe("external", ips[w2], port, timeout=0.5)
    assert not r.ok and "timed out" in r.error, f"{w2} has no local endpoint: must drop; {r}"
    # the node itself is not "external": its own connection is short-circuited to every
    # endpoint (masqueraded, so the reply comes back through it)
    assert cluster.probe(w2, ips[w2], port).reply == "npl"


def test_load_balancer_ip_from_external(cluster, objs):
    w1, _ = workers(cluster)
    apply(cluster, objs, pod("lb", node=w1, labels={"app": "lb"}),
          service("lb", {"app": "lb"}, type="LoadBalancer"),
          service("lbl", {"app": "lb"}, type="LoadBalancer", externalTrafficPolicy="Local"))
    lb = cluster.service("lb")["status"]["loadBalancer"]["ingress"][0]["ip"]
    lbl = cluster.service("lbl")["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert lb != lbl
    routes = cluster.external.sh("ip route")
    assert lb in routes and lbl in routes
    for _ in range(5):
        assert cluster.probe("external", lb, 80).reply == "lb"
        assert client_ip(cluster, "external", lbl) == config.EXTERNAL_IP
    # Local: only the node with the endpoint is a next hop
    w1_ip = next(n.ip for n in cluster.nodes() if n.name == w1)
    local_route = [ln for ln in cluster.external.sh(f"ip route show {lbl}").splitlines() if ln]
    assert local_route and all(w1_ip in ln for ln in local_route if "via" in ln), local_route
    cluster.delete([objs.pop(), objs.pop()])
    assert lb not in cluster.external.sh("ip route")


# --- views, bad input -------------------------------------------------------------------------

def test_packet_walk_and_conntrack_show_the_dnat(cluster, objs):
    apply(cluster, objs, pod("walk", node=workers(cluster)[0]),
          service("walk", {"app": "walk"}))
    ip, ep = vip(cluster, "walk"), cluster.pod("walk").ip
    walk = cluster.packet_walk("client", ip, 80)
    assert any(f"dnat to {ep}:8080" in s.rule for s in walk), str(walk)
    if cluster.config.kube_proxy_mode == "iptables":
        sp = kubeproxy.ServicePort("default", "walk", "http", "TCP", 80, ip)
        assert kubeproxy.svc_chain(sp) in walk.chains()
        assert all(s.packets for s in walk if s.rule and "dnat" in s.rule)
    else:
        assert any(c.startswith("service-") for c in walk.chains())
    flows = cluster.conntrack(dst=ip)
    assert any(f.reply_src == ep and f.dnat == f"{ip}:80 -> {ep}:8080" for f in flows), flows


def test_bad_service_changes_nothing(cluster, objs):
    apply(cluster, objs, pod("bad"), service("taken", {"app": "bad"}, type="NodePort"))
    port = cluster.service("taken")["spec"]["ports"][0]["nodePort"]
    node = workers(cluster)[0]
    before_rules, before_state = rules(cluster, node), cluster.get_services(None)
    bad = [service("good-looking", {"app": "bad"}),
           service("dup", {"app": "bad"}, type="NodePort",
                   ports=[{"port": 80, "targetPort": 8080, "nodePort": port}])]
    with pytest.raises(ConfigError) as e:
        cluster.apply(bad)
    assert "Service/default/dup" in str(e.value) and "spec.ports[0].nodePort" in str(e.value)
    assert "already allocated" in str(e.value)
    with pytest.raises(ConfigError) as e:
        cluster.apply([service("far", {"app": "bad"}, clusterIP="10.200.0.5")])
    assert "not in the valid range" in str(e.value) and "spec.clusterIPs" in str(e.value)
    assert rules(cluster, node) == before_rules
    assert cluster.get_services(None) == before_state


def test_cli_get_services_and_slices(cluster, objs):
    apply(cluster, objs, pod("cli"), service("cli", {"app": "cli"}, type="NodePort"))
    env = dict(os.environ, LAB_KIT_STATE_DIR=str(cluster.root))
    out = subprocess.run([sys.executable, "-m", "lab_kit.cli", "get", "svc,endpointslices",
                          "--name", cluster.name], capture_output=True, text=True, env=env,
                         check=True).stdout
    svc_line = next(ln for ln in out.splitlines() if ln.startswith("cli "))
    port = cluster.service("cli")["spec"]["ports"][0]["nodePort"]
    assert svc_line.split()[1:5] == ["NodePort", vip(cluster, "cli"), "<none>",
                                     f"80:{port}/TCP"]
    assert any(ln.startswith("cli-") and cluster.pod("cli").ip in ln for ln in out.splitlines())
    pods = subprocess.run([sys.executable, "-m", "lab_kit.cli", "get", "pods", "-o", "yaml",
                           "--name", cluster.name], capture_output=True, text=True, env=env,
                          check=True).stdout
    assert {"name": "cli", "ip": cluster.pod("cli").ip}.items() <= next(
        p for p in yaml.safe_load_all(pods) if p["name"] == "cli").items()
    out = subprocess.run([sys.executable, "-m", "lab_kit.cli", "delete", "svc", "cli",
                          "--name", cluster.name], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.strip() == 'service "cli" deleted'
    assert "default/cli" not in cluster.state["services"]
    assert "default/cli:" not in rules(cluster, workers(cluster)[0])


def test_rules_are_reconciled_not_appended(cluster, objs):
    """Re-applying the same objects leaves the rules byte-for-byte the same; deleting a
    Service removes its chains."""
    apply(cluster, objs, pod("rec"), service("rec", {"app": "rec"}))
    node = workers(cluster)[0]
    first = rules(cluster, node)
    cluster.apply(objs)
    cluster.apply(objs)
    assert _without_dates(rules(cluster, node)) == _without_dates(first)
    cluster.delete([objs.pop()])
    text = rules(cluster, node)
    assert "default/rec" not in text
    # after four syncs, each hook still enters kube-proxy's rules exactly once
    if cluster.config.kube_proxy_mode == "iptables":
        lines = text.splitlines()
        for chain, target in (("PREROUTING", "KUBE-SERVICES"), ("OUTPUT", "KUBE-SERVICES"),
                              ("POSTROUTING", "KUBE-POSTROUTING"), ("FORWARD", "KUBE-FORWARD")):
            jumps = [ln for ln in lines if ln.startswith(f"-A {chain} ")
                     and ln.endswith(f"-j {target}")]
            assert len(jumps) == (2 if chain == "OUTPUT" else 1), (chain, jumps)
    else:
        assert text.count("jump services") == 2, text  # nat-prerouting and nat-output


def _without_dates(text: str) -> str:
    """iptables-save's `# Generated on …` lines left out."""
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))


def test_node_join_gets_the_rules(cluster, objs):
    apply(cluster, objs, pod("join"), service("join", {"app": "join"}, type="NodePort"))
    port = cluster.service("join")["spec"]["ports"][0]["nodePort"]
    info = cluster.add_node()
    try:
        assert client_ip(cluster, "external", info.ip, port) is not None
        assert "default/join" in rules(cluster, info.name)
    finally:
        cluster.remove_node(info.name)
    assert naming.node_netns(info.name) not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout
