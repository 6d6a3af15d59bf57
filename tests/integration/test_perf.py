"""perf on real pods: iperf3 and ping between netns, no server left behind, backend comparison."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from lab_kit import kernel, naming, perf
from lab_kit.cluster import Cluster
from lab_kit.errors import LabError
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root


def perf_cluster(factory, cni: str = "host-gw") -> Cluster:
    name = unique_name("p")
    c = factory(perf.perf_config(name, cni))
    c.apply(perf.perf_pods(f"{name}-worker", f"{name}-worker2"))
    return c


def no_iperf3() -> None:
    assert processes_with("iperf3") == [], "an iperf3 process was left behind"


def lab_netns(prefix: str) -> list[str]:
    return [n for n in kernel.list_netns() if n.startswith(f"{naming.PREFIX}{prefix}")]


def test_throughput_and_latency_between_pods(lab_cluster_factory) -> None:
    c = perf_cluster(lab_cluster_factory)
    cross = perf.throughput(c, "client", "remote", seconds=1)
    no_iperf3()
    assert cross.gbps > 0.1 and cross.sent_bps > 0
    assert cross.retransmits is not None and cross.retransmits >= 0
    assert (cross.src, cross.dst, cross.ip, cross.port) == (
        "default/client", "default/remote", c.pod("remote").ip, 5201)
    same = perf.throughput(c, "client", "local", seconds=1)
    no_iperf3()
    assert same.gbps > 0.1 and same.ip == c.pod("local").ip
    lat = perf.latency(c, "client", "remote", count=10)
    assert lat.ok and (lat.transmitted, lat.received, lat.loss_percent) == (10, 10, 0.0)
    assert 0 < lat.min_ms <= lat.avg_ms <= lat.max_ms < 50
    # the commands are in the journal, re-typeable
    journal = str(c.journal())
    assert f"ip netns exec {c.pod('remote').netns} iperf3 -s -1 -p 5201" in journal
    assert f"iperf3 -c {cross.ip} -p 5201 -t 1 -J" in journal
    assert f"ping -n -q -c 10 -i 0.01 -W 1 {cross.ip}" in journal


def test_udp_throughput(lab_cluster_factory) -> None:
    c = perf_cluster(lab_cluster_factory)
    udp = perf.throughput(c, "client", "remote", seconds=1, protocol="udp")
    no_iperf3()
    assert udp.protocol == "UDP" and udp.gbps > 0.01
    assert udp.retransmits is None and 0 <= udp.lost_percent <= 100


def test_port_moves_past_a_busy_one(lab_cluster_factory) -> None:
    c = perf_cluster(lab_cluster_factory)
    s = kernel.socket_in(c.pod("remote").netns, socket.AF_INET, socket.SOCK_STREAM)
    with s:  # a learner's own server on iperf3's default port
        s.bind(("0.0.0.0", perf.IPERF3_PORT))
        s.listen()
        tp = perf.throughput(c, "client", "remote", seconds=1)
    assert tp.port == perf.IPERF3_PORT + 1 and tp.gbps > 0
    no_iperf3()


def test_busy_port_is_refused(lab_cluster_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    c = perf_cluster(lab_cluster_factory)
    # 8080 is the pod's own agnhost port: iperf3 could not bind it
    t0 = time.monotonic()
    with pytest.raises(LabError, match="port 8080 is already in use in `default/remote`"):
        perf.throughput(c, "client", "remote", port=8080)
    assert time.monotonic() - t0 < 1
    no_iperf3()
    # taken between the check and the server's start: the server fails, and is told apart from
    # the pod's own listener on the same port (/proc/<pid>/net shows the whole netns)
    monkeypatch.setattr(perf, "_busy_ports", lambda _ns: set())
    t0 = time.monotonic()
    with pytest.raises(LabError, match="exited before listening on port 8080: .*in use"):
        perf.throughput(c, "client", "remote", port=8080, timeout=3)
    assert time.monotonic() - t0 < 2
    no_iperf3()


def test_no_route_gives_clear_errors_and_leaves_nothing(lab_cluster_factory) -> None:
    c = perf_cluster(lab_cluster_factory)
    worker, worker2 = c.config.node(f"{c.name}-worker"), c.config.node(f"{c.name}-worker2")
    assert perf.wait_for_pod_routes(c, timeout=1) < 1
    c.runner.run(["ip", "route", "del", worker2.pod_cidr], naming.node_netns(worker.name))
    with pytest.raises(LabError, match=f"{worker.name} → {worker2.name} "
                                       rf"\({worker2.pod_cidr}\)"):
        perf.wait_for_pod_routes(c, [worker.name, worker2.name], timeout=0.2)
    with pytest.raises(LabError, match="no node 'nope'"):
        perf.wait_for_pod_routes(c, ["nope"])
    t0 = time.monotonic()
    with pytest.raises(LabError, match="failed: iperf3: .*check that `default/client` reaches"):
        perf.throughput(c, "client", "remote", seconds=1, timeout=1)
    assert time.monotonic() - t0 < 6
    no_iperf3()
    with pytest.raises(LabError, match="no ping reply"):
        perf.latency(c, "client", "remote", count=3)
    assert not perf.latency(c, "client", "remote", count=3, check=False)


def test_compare_host_gw(state_dir: Path) -> None:
    prefix = unique_name("p")[:7]
    lines: list[str] = []
    cmp = perf.compare_backends(("host-gw",), seconds=0.5, progress=lines.append,
                                name_prefix=prefix, root=state_dir)
    assert [r.label for r in cmp.rows] == ["same node", "host-gw"]
    assert all(r.gbps > 0.1 and 0 < r.rtt_ms < 50 and r.mtu == 1500 for r in cmp.rows)
    assert lab_netns(prefix) == [] and Cluster.list(state_dir) == []
    no_iperf3()
    assert any("creating cluster" in ln for ln in lines)
    assert any("same node client → local: iperf3" in ln for ln in lines)
    assert lines[-1].startswith(f"[host-gw] cluster `{prefix}hostgw` removed")
    assert set(cmp.timings["host-gw"]) == {"up", "pods", "ready", "measure", "down"}
    assert [len(ax.patches) for ax in cmp.chart().axes] == [2, 2]
    assert "host-gw" in str(cmp)


def test_compare_removes_the_cluster_on_error(state_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = unique_name("p")[:7]

    def broken(*_a, **_k):
        assert lab_netns(prefix), "the cluster should exist while measuring"
        raise LabError("measurement broke")

    monkeypatch.setattr(perf, "throughput", broken)
    with pytest.raises(LabError, match="measurement broke"):
        perf.compare_backends(("host-gw",), progress=None, name_prefix=prefix, root=state_dir)
    assert lab_netns(prefix) == [] and Cluster.list(state_dir) == []


def test_compare_vxlan_and_bgp(state_dir: Path) -> None:
    prefix = unique_name("p")[:7]
    cmp = perf.compare_backends(("vxlan", "bgp"), seconds=1, progress=None, name_prefix=prefix,
                                root=state_dir, same_node=False)
    assert [(r.label, r.mtu) for r in cmp.rows] == [("VXLAN", 1450), ("BGP", 1500)]
    assert all(r.gbps > 0.1 and r.latency.loss_percent == 0 for r in cmp.rows)
    assert lab_netns(prefix) == []
    no_iperf3()
