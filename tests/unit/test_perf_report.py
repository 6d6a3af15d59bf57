"""perf: parsing real iperf3 JSON and ping output, the comparison table and its chart.

The samples below were captured from real runs between two lab pods on different nodes
(host-gw, iperf3 3.12, iputils ping 20221126). Of the iperf3 reports only the parts
parse_iperf3 reads (the protocol in `start.test_start`, the totals in `end`) are kept, with the
version and duration for context and every value unchanged; the per-interval and per-stream
figures, CPU use and timestamps were cut.
"""

from __future__ import annotations

import math

import matplotlib
import pytest
from matplotlib.figure import Figure

from lab_kit import perf
from lab_kit.errors import LabError

matplotlib.use("Agg")  # headless, as in CI (perf imports pyplot only when it draws)

# `iperf3 -c 10.244.2.2 -p 5301 -t 1 -J` from pod client (10.244.1.2) to pod remote
IPERF3_TCP = """{
 "start": {
  "version": "iperf 3.12",
  "test_start": {
   "protocol": "TCP",
   "duration": 1
  }
 },
 "end": {
  "sum_sent": {
   "start": 0,
   "end": 1.000783,
   "seconds": 1.000783,
   "bytes": 1450835968,
   "bits_per_second": 11597606817.861614,
   "retransmits": 787,
   "sender": true
  },
  "sum_received": {
   "start": 0,
   "end": 1.000899,
   "seconds": 1.000899,
   "bytes": 1450835216,
   "bits_per_second": 11596256693.232784,
   "sender": true
  }
 }
}
"""

# the same with `-u -b 0`
IPERF3_UDP = """{
 "start": {
  "version": "iperf 3.12",
  "test_start": {
   "protocol": "UDP",
   "duration": 1
  }
 },
 "end": {
  "sum": {
   "start": 0,
   "end": 1.000163,
   "seconds": 1.000163,
   "bytes": 129769760,
   "bits_per_second": 1038094756.2198704,
   "jitter_ms": 0.00894525097323109,
   "lost_packets": 899,
   "packets": 89620,
   "lost_percent": 1.0031243026110244,
   "sender": true
  },
  "sum_sent": {
   "start": 0,
   "end": 1.000061,
   "seconds": 1.000061,
   "bytes": 129769760,
   "bits_per_second": 1038094756.2198704,
   "jitter_ms": 0,
   "lost_packets": 0,
   "packets": 89620,
   "lost_percent": 0,
   "sender": true
  },
  "sum_received": {
   "start": 0,
   "end": 1.000163,
   "seconds": 1.000163,
   "bytes": 128468008,
   "bits_per_second": 1027576569.01925,
   "jitter_ms": 0.00894525097323109,
   "lost_packets": 899,
   "packets": 89620,
   "lost_percent": 1.0031243026110244,
   "sender": false
  }
 }
}
"""

# `iperf3 -c 10.244.2.2 -p 5399 -t 1 -J --connect-timeout 1000` with no server on 5399 (exit 1)
IPERF3_REFUSED = """{
 "start": {
  "connected": [],
  "version": "iperf 3.12",
  "system_info": "Linux vm 6.18.44-fc-v595 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
 },
 "intervals": [],
 "end": {},
 "error": "unable to connect to server: Connection refused"
}
"""

# `ping -n -q -c 20 -i 0.01 -W 1 10.244.2.2`
PING_OK = """PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.

--- 10.244.2.2 ping statistics ---
20 packets transmitted, 20 received, 0% packet loss, time 301ms
rtt min/avg/max/mdev = 0.086/0.106/0.135/0.013 ms
"""

# `ping -n -q -c 3 -i 0.01 -W 1 10.244.9.9`: no such pod, the node answers "unreachable" (exit 1)
PING_LOST = """PING 10.244.9.9 (10.244.9.9) 56(84) bytes of data.

--- 10.244.9.9 ping statistics ---
3 packets transmitted, 0 received, +2 errors, 100% packet loss, time 30ms

"""

# /proc/net/tcp and tcp6 in pod remote's netns: agnhost on 8080 (IPv4), `iperf3 -s` on 5201 (::)
PROC_NET_TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode\n"
    "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0"
    " 3050595 1 00000000372b1492 100 0 0 10 0\n"
)
PROC_NET_TCP6 = (
    "  sl  local_address                         remote_address                        st"
    " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A"
    " 00000000:00000000 00:00000000 00000000     0        0 3049414 1 0000000078450d9d 100 0 0"
    " 10 0\n"
)


# --- parsing -------------------------------------------------------------------------------

def test_iperf3_tcp_report() -> None:
    got = perf.parse_iperf3(IPERF3_TCP)
    assert got["sent_bps"] == pytest.approx(11597606817.861614)
    assert got["received_bps"] == pytest.approx(11596256693.232784)
    assert got["seconds"] == pytest.approx(1.000899)
    assert got["retransmits"] == 787
    assert got["lost_percent"] is None and got["jitter_ms"] is None


def test_iperf3_udp_report() -> None:
    got = perf.parse_iperf3(IPERF3_UDP)
    assert got["sent_bps"] == pytest.approx(1038094756.2198704)
    assert got["received_bps"] == pytest.approx(1027576569.01925)
    assert got["lost_percent"] == pytest.approx(1.0031243026110244)
    assert got["jitter_ms"] == pytest.approx(0.00894525097323109)
    assert got["retransmits"] is None


def test_iperf3_error_is_reported_in_its_own_words() -> None:
    with pytest.raises(LabError, match="unable to connect to server: Connection refused"):
        perf.parse_iperf3(IPERF3_REFUSED)


@pytest.mark.parametrize("text", ["", "iperf3: error - unable to connect", "[]",
                                  '{"start": {}, "end": {}}'])
def test_iperf3_without_a_report(text: str) -> None:
    with pytest.raises(LabError, match="iperf3"):
        perf.parse_iperf3(text)


def test_ping_summary() -> None:
    got = perf.parse_ping(PING_OK)
    assert (got["transmitted"], got["received"], got["loss_percent"]) == (20, 20, 0.0)
    assert (got["min_ms"], got["avg_ms"], got["max_ms"], got["mdev_ms"]) == (
        0.086, 0.106, 0.135, 0.013)


def test_ping_without_replies_has_no_rtt() -> None:
    got = perf.parse_ping(PING_LOST)
    assert (got["transmitted"], got["received"], got["loss_percent"]) == (3, 0, 100.0)
    assert got["avg_ms"] is None
    lat = perf.Latency("a", "b", "10.244.9.9", **got)
    assert not lat and "0/3 replies (100% loss)" in str(lat)


def test_ping_output_without_statistics() -> None:
    with pytest.raises(LabError, match="no statistics"):
        perf.parse_ping("ping: connect: Network is unreachable\n")


def test_listening_ports_from_proc() -> None:
    assert perf.parse_proc_net_ports(PROC_NET_TCP) == {8080}
    assert perf.parse_proc_net_ports(PROC_NET_TCP6) == {5201}
    # a connected socket (state 01) is not listening; for UDP every bound port counts
    established = PROC_NET_TCP.replace(" 0A ", " 01 ")
    assert perf.parse_proc_net_ports(established) == set()
    assert perf.parse_proc_net_ports(established, listening_only=False) == {8080}
    assert perf.parse_proc_net_sockets(PROC_NET_TCP6) == [(5201, 3049414)]


# --- results and the comparison ---------------------------------------------------------------

def throughput(gbps: float, retransmits: int = 0) -> perf.Throughput:
    return perf.Throughput("default/client", "default/remote", "10.244.2.2", 5201, "TCP", 2.0,
                           gbps * 1e9, gbps * 1e9, retransmits)


def latency(avg: float) -> perf.Latency:
    return perf.Latency("default/client", "default/remote", "10.244.2.2", 20, 20, 0.0,
                        avg / 2, avg, avg * 2, avg / 10)


def comparison() -> perf.Comparison:
    rows = [perf.Row("same-node", "host-gw", 1500, throughput(14.2, 1372), latency(0.082)),
            perf.Row("host-gw", "host-gw", 1500, throughput(12.6, 398), latency(0.096)),
            perf.Row("vxlan", "vxlan", 1450, throughput(10.2, 461), latency(0.117)),
            perf.Row("bgp", "bgp", 1500, throughput(13.5, 270), latency(0.103))]
    return perf.Comparison(rows, seconds=2.0, pings=20)


def test_results_print_like_the_tools() -> None:
    tp = perf.Throughput("default/client", "default/remote", "10.244.2.2", 5201, "TCP",
                         **perf.parse_iperf3(IPERF3_TCP))
    assert tp.gbps == pytest.approx(11.596, abs=1e-3)
    assert str(tp) == ("iperf3 TCP default/client -> default/remote (10.244.2.2:5201): "
                       "11.60 Gbit/s received, 11.60 Gbit/s sent, 787 retransmits in 1.0 s")
    udp = perf.Throughput("a", "b", "10.244.2.2", 5201, "UDP", **perf.parse_iperf3(IPERF3_UDP))
    assert "1% lost, jitter 0.009 ms" in str(udp)
    lat = perf.Latency("default/client", "default/remote", "10.244.2.2",
                       **perf.parse_ping(PING_OK))
    assert str(lat).endswith("rtt min/avg/max/mdev = 0.086/0.106/0.135/0.013 ms")
    assert lat.to_dict()["avg_ms"] == 0.106 and tp.to_dict()["retransmits"] == 787
    assert "<pre>" in tp._repr_html_() and "&gt;" in lat._repr_html_()


def test_comparison_table() -> None:
    text = str(comparison())
    lines = text.splitlines()
    assert lines[0] == "pod → pod, iperf3 TCP for 2 s per path; ping x20"
    assert lines[1].split()[:2] == ["PATH", "NODES"]
    assert [ln.split("  ")[0] for ln in lines[2:]] == ["same node", "host-gw", "VXLAN", "BGP"]
    vxlan = lines[4].split()
    assert vxlan == ["VXLAN", "two", "nodes", "vxlan", "1450", "10.20", "0.117", "0.012", "461"]


def test_comparison_html() -> None:
    doc = comparison()._repr_html_()
    assert doc.count("<tr>") == 5 and "<th>Gbit/s</th>" in doc
    assert "<td>VXLAN</td>" in doc and "pod → pod" in doc


def test_comparison_to_dict() -> None:
    d = comparison().to_dict()
    assert [r["label"] for r in d["rows"]] == ["same node", "host-gw", "VXLAN", "BGP"]
    assert d["rows"][2]["mtu"] == 1450 and d["rows"][2]["gbps"] == pytest.approx(10.2)


def test_chart_has_two_bar_charts_with_labelled_values() -> None:
    fig = comparison().chart()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    tp_ax, rtt_ax = fig.axes
    for ax in fig.axes:
        assert len(ax.patches) == 4
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "same node", "host-gw", "VXLAN", "BGP"]
    assert [round(p.get_height(), 1) for p in tp_ax.patches] == [14.2, 12.6, 10.2, 13.5]
    assert [round(p.get_height(), 3) for p in rtt_ax.patches] == [0.082, 0.096, 0.117, 0.103]
    # the value is written on each bar
    assert [t.get_text() for t in tp_ax.texts] == ["14.2", "12.6", "10.2", "13.5"]
    assert [t.get_text() for t in rtt_ax.texts] == ["0.082", "0.096", "0.117", "0.103"]
    assert "Gbit/s" in tp_ax.get_ylabel() and rtt_ax.get_ylabel() == "ms"
    title = fig._suptitle.get_text()
    assert "VXLAN pays encapsulation and a 1450-byte MTU" in title
    assert "\n" not in title


def test_chart_renders_headless(tmp_path) -> None:
    path = tmp_path / "chart.png"
    comparison().chart().savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explanation_follows_the_rows() -> None:
    cmp = comparison()
    assert cmp.explanation() == ("same node: just the bridge; host-gw/BGP: a plain route; "
                                 "VXLAN pays encapsulation and a 1450-byte MTU")
    only_hostgw = perf.Comparison(cmp.rows[:2])
    assert only_hostgw.explanation() == "same node: just the bridge; host-gw: a plain route"
    fig = only_hostgw.chart()
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]


def test_row_without_replies_draws_no_rtt() -> None:
    lost = perf.Latency("a", "b", "10.244.2.2", **perf.parse_ping(PING_LOST))
    row = perf.Row("vxlan", "vxlan", 1450, throughput(1.0), lost)
    assert math.isnan(row.rtt_ms)
    assert row.cells()[5:7] == ["nan", "-"]


# --- input checks (before any kernel object is made) -------------------------------------------

def test_cluster_names() -> None:
    assert perf.cluster_name("perf", "host-gw") == "perfhostgw"
    assert perf.cluster_name("t1", "bgp") == "t1bgp"
    with pytest.raises(LabError, match="shorter name_prefix"):
        perf.cluster_name("averyverylongpre", "vxlan")
    with pytest.raises(LabError, match="lowercase"):
        perf.cluster_name("Perf", "vxlan")


@pytest.mark.parametrize("backends, match", [
    ((), "at least one backend"),
    (("host-gw", "flannel"), "unknown CNI backend 'flannel'"),
    (("vxlan", "vxlan"), "listed twice"),
])
def test_compare_backends_rejects_bad_input(backends, match) -> None:
    with pytest.raises(LabError, match=match):
        perf.compare_backends(backends, progress=None)


def test_compare_backends_checks_every_name_first() -> None:
    with pytest.raises(LabError, match="name_prefix"):
        perf.compare_backends(("bgp", "host-gw"), name_prefix="abcdefghijk", progress=None)


def test_perf_pods_are_pinned() -> None:
    pods = perf.perf_pods("lab-worker", "lab-worker2")
    assert [(p["metadata"]["name"], p["spec"]["nodeName"]) for p in pods] == [
        ("client", "lab-worker"), ("local", "lab-worker"), ("remote", "lab-worker2")]
    assert all(p["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}] for p in pods)


def test_bad_protocol_and_count_are_refused_without_a_cluster() -> None:
    with pytest.raises(LabError, match="use TCP or UDP"):
        perf.throughput(None, "a", "b", protocol="SCTP")  # type: ignore[arg-type]
    with pytest.raises(LabError, match="at least 1"):
        perf.latency(None, "a", "b", count=0)  # type: ignore[arg-type]
