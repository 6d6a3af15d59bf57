"""Real tcpdump in node and pod namespaces while real traffic flows; the pcap decoded."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lab_kit import config
from lab_kit.capture import Capture, capture
from lab_kit.cluster import Cluster
from lab_kit.errors import LabError
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root


def cluster_config(cni: str) -> config.ClusterConfig:
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": unique_name("cap"),
        "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
        "networking": {"cni": cni}})


def pod(name: str, node: str, port: int = 8080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{
                "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.45",
                "ports": [{"containerPort": port}]}]}}


def two_pods(c: Cluster) -> tuple[Any, Any]:
    c.apply([pod("a", f"{c.name}-worker"), pod("b", f"{c.name}-worker2")])
    return c.pod("a").info, c.pod("b").info


def no_tcpdump_left(cap: Capture) -> bool:
    return processes_with(str(cap.pcap)) == []


def assert_http_exchange(cap: Capture, a: Any, b: Any, level: int) -> None:
    """The handshake, the request and the answer between pods a and b, seen at `level`
    (0: plain packets, 1: inside a VXLAN tunnel)."""
    def tcp(flags: str, src: str, dst: str) -> list:
        return [p for p in cap.filter(layer="TCP", flags=flags)
                if (ip := p.layer("IPv4", -1)) and (ip["src"], ip["dst"]) == (src, dst)
                and ip.level == level]
    [syn] = tcp("S", a.ip, b.ip)
    [synack] = tcp("S.", b.ip, a.ip)
    assert syn.layer("TCP", -1)["dport"] == 8080
    assert synack.layer("TCP", -1)["sport"] == 8080
    assert synack.layer("TCP", -1)["ack"] == syn.layer("TCP", -1)["seq"] + 1
    requests = [p for p in cap if p.payload.startswith(b"GET /hostname HTTP/1.0")]
    answers = [p for p in cap if p.payload.startswith(b"HTTP/1.1 200")]
    assert len(requests) == 1 and len(answers) == 1, cap.summary()
    assert requests[0].layer("IPv4", -1)["src"] == a.ip
    assert answers[0].layer("IPv4", -1)["src"] == b.ip
    assert answers[0].payload.endswith(b"\r\n\r\nb")  # agnhost answers with its pod name
    assert cap.index(syn) < cap.index(synack) < cap.index(requests[0]) < cap.index(answers[0])


def test_capture_on_a_node_and_in_a_pod(lab_cluster_factory) -> None:
    c = lab_cluster_factory(cluster_config("host-gw"))
    a, b = two_pods(c)
    node_b = f"{c.name}-worker2"

    t0 = time.monotonic()
    on_node = capture(c, node_b, interface="eth0", filter="tcp port 8080",
                      during=lambda: c.probe("a", "b"))
    took = time.monotonic() - t0
    assert on_node.result.ok and on_node.result.reply == "b"
    assert took < 3, f"a capture around one probe took {took:.2f} s"
    assert all(p.linktype == "Ethernet" and not p.encapsulated for p in on_node)
    # host-gw: the underlay carries the pods' own IP packets, no tunnel
    for p in on_node:
        assert {p.layer("IPv4")["src"], p.layer("IPv4")["dst"]} == {a.ip, b.ip}
    assert_http_exchange(on_node, a, b, level=0)
    assert on_node.stats["captured"] == len(on_node)
    assert on_node.stats["dropped by kernel"] == 0
    assert on_node.pcap.parent == c.store.dir / "captures" and on_node.pcap.stat().st_size > 0
    assert on_node.command[:3] == ["tcpdump", "-w", str(on_node.pcap)]
    assert on_node.command[-3:] == ["-i", "eth0", "tcp port 8080"]
    assert no_tcpdump_left(on_node)

    in_pod = capture(c, "b", during=lambda: c.probe("a", "b"))  # -i any: cooked headers
    assert in_pod.result.ok
    tcp = in_pod.with_layer("TCP")
    assert all(p.linktype == "Linux cooked v2" and p.interface == "eth0" for p in tcp)
    assert {p.direction for p in tcp} == {"In", "Out"}
    assert_http_exchange(tcp, a, b, level=0)
    assert in_pod.where == "default/b" and in_pod.netns == b.netns
    assert "eth0" in in_pod.tcpdump_text()  # tcpdump run in the pod's netns names it right
    assert no_tcpdump_left(in_pod)

    # the journal holds both commands, re-typeable, as the learner's
    journal = str(c.journal())
    assert [e.source for e in c.journal() if e.argv[0] == "tcpdump"] == ["you", "you"]
    assert (f"ip netns exec lk-{node_b} tcpdump -w {on_node.pcap} -U --immediate-mode"
            in journal)
    assert on_node.shell_command in journal and in_pod.shell_command in journal
    assert "'tcp port 8080'" in on_node.shell_command

    c.down()
    assert not on_node.pcap.exists() and not in_pod.pcap.exists()


def test_count_seconds_and_clear_errors(lab_cluster_factory) -> None:
    c = lab_cluster_factory(cluster_config("host-gw"))
    a, b = two_pods(c)
    node_a = c.node(f"{c.name}-worker")

    # -c: tcpdump stops by itself after 2 packets, though the ping makes 6 (3 requests, 3
    # replies)
    cap = capture(c, node_a, filter="icmp", count=2,
                  during=lambda: node_a.sh(f"ping -c 3 -i 0.2 {b.ip}"))
    assert [p.layer("ICMP")["type_name"] for p in cap] == ["echo-request", "echo-reply"]
    assert cap[0].layer("IPv4")["dst"] == b.ip and cap[0].interface == "eth0"
    assert "-c" in cap.command and no_tcpdump_left(cap)

    # no `during`: a timed capture; as a lab check runs it, journaled as lab_kit's
    t0 = time.monotonic()
    quiet = capture(c, "external", filter="tcp port 9", seconds=0.3, source="lab_kit")
    assert len(quiet) == 0 and 0.3 <= time.monotonic() - t0 < 3
    assert quiet.summary().startswith("(no packets)")
    assert c.journal(last=1)[0].argv == quiet.command
    assert c.journal(last=1)[0].source == "lab_kit"

    with pytest.raises(LabError, match="no node, pod or `external` of that name.*nodes: "):
        capture(c, "nosuchthing")
    with pytest.raises(LabError, match=r"no interface `flannel.1` in `default/a`.*eth0"):
        capture(c, "a", interface="flannel.1")
    with pytest.raises(LabError, match="tcpdump rejected the capture filter 'tcp port'"):
        capture(c, "a", filter="tcp port")
    failed = c.journal(last=1)[0]
    assert failed.argv[-1] == "tcp port" and failed.rc != 0
    assert processes_with(str(c.store.dir / "captures")) == []

    # `during` raising: tcpdump is stopped all the same
    with pytest.raises(ZeroDivisionError):
        capture(c, "a", during=lambda: 1 / 0)
    assert processes_with(str(c.store.dir / "captures")) == []


def test_vxlan_on_the_underlay(lab_cluster_factory) -> None:
    c = lab_cluster_factory(cluster_config("vxlan"))
    a, b = two_pods(c)
    node_ips = {n.ip for n in c.nodes() if n.name in (a.node, b.node)}
    assert all(ip.startswith("172.18.0.") for ip in node_ips)

    cap = capture(c, b.node, interface="eth0", filter="udp port 8472",
                  during=lambda: c.probe("a", "b"))
    assert cap.result.ok and len(cap) >= 8
    for p in cap:
        assert [ly.name for ly in p.layers[:5]] == ["Ethernet", "IPv4", "UDP", "VXLAN",
                                                     "Ethernet"], p.summary()
        outer, inner = p.layer("IPv4"), p.layer("IPv4", -1)
        assert {outer["src"], outer["dst"]} == node_ips
        assert p.layer("UDP")["dport"] == 8472
        assert p.layer("VXLAN")["vni"] == 1
        assert inner.level == 1 and {inner["src"], inner["dst"]} == {a.ip, b.ip}
        assert p.overhead() == 50
    assert_http_exchange(cap, a, b, level=1)
    # a → b goes from a's node to b's node
    [syn] = cap.filter(layer="TCP", flags="S")
    assert syn.layer("IPv4")["src"] == c.node(a.node).ip
    assert syn.layer("IPv4")["dst"] == c.node(b.node).ip
    assert syn.layer("TCP")["mss"] == 1410  # pod MTU 1450 = 1500 - 50
    assert "encapsulation overhead: 50 bytes" in cap.layers(cap.index(syn))
    assert "outer headers (underlay)" in cap._repr_html_()
    assert "instance 1" in cap.tcpdump_text()
    assert no_tcpdump_left(cap)

    # -i any on the node: the same packet on eth0 (encapsulated), then on flannel.1 (not)
    every = capture(c, b.node, filter="udp port 8472 or tcp port 8080",
                    during=lambda: c.probe("a", "b"))
    syns = every.filter(layer="TCP", flags="S")
    assert [(p.interface, p.encapsulated) for p in syns][:2] == [("eth0", True),
                                                                  ("flannel.1", False)]
    assert "cni0" in {p.interface for p in syns}
    assert every.stats["dropped by kernel"] == 0
