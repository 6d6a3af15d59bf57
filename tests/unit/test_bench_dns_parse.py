"""bench_dns: parsing dnsperf's output, the percentile, and the files given to dnsmasq and dnsperf.

The dnsperf samples are real output of Debian's dnsperf 2.10.0 from `benchmarks/bench_dns.py`
runs on this machine (a lab pod querying a coredns pod and the dnsmasq pod); of the `-v` run
only the first three and the last per-response lines are kept. The sample with lost queries and
mixed response codes is marked as edited where it is.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dns.py"
_spec = importlib.util.spec_from_file_location("bench_dns", _PATH)
assert _spec is not None and _spec.loader is not None
bench_dns = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_dns", bench_dns)
_spec.loader.exec_module(bench_dns)

# dnsperf -s 10.244.0.5 -d queries.txt -l 1 -c 4 -q 20 -t 2   (against dnsmasq)
PLAIN = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 10.244.0.5 -d /tmp/bdx/w/queries.txt -l 1 -c 4 -q 20 -t 2
[Status] Sending queries (to 10.244.0.5:53)
[Status] Started at: Sun Nov 22 00:11:48 2026
[Status] Stopping after 1.000000 seconds
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         61476
  Queries completed:    61476 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 61476 (100.00%)
  Average packet size:  request 52, response 69
  Run time (s):         1.000171
  Queries per second:   61465.489401

  Average Latency (s):  0.000187 (min 0.000019, max 0.001495)
  Latency StdDev (s):   0.000125

"""

# dnsperf ... -l 1 -c 4 -q 20 -t 2 -v   (against a coredns pod), per-response lines trimmed
VERBOSE = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 10.244.0.3 -d /tmp/bdx/w/queries.txt -l 1 -c 4 -q 20 -t 2 -v
[Status] Sending queries (to 10.244.0.3:53)
[Status] Started at: Sun Nov 22 00:11:47 2026
[Status] Stopping after 1.000000 seconds
> NOERROR svc-000.default.svc.cluster.local A 0.000759
> NOERROR svc-001.default.svc.cluster.local A 0.000371
> NOERROR svc-002.default.svc.cluster.local A 0.000523
> NOERROR svc-037.default.svc.cluster.local A 0.000059
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         44012
  Queries completed:    44012 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 44012 (100.00%)
  Average packet size:  request 52, response 69
  Run time (s):         1.000139
  Queries per second:   44005.883182

  Average Latency (s):  0.000173 (min 0.000018, max 0.006234)
  Latency StdDev (s):   0.000240

"""


def test_plain_run() -> None:
    r = bench_dns.parse_dnsperf(PLAIN)
    assert (r.sent, r.completed, r.lost) == (61476, 61476, 0)
    assert r.rcodes == {"NOERROR": 61476}
    assert r.qps == pytest.approx(61465.489401)
    assert r.run_s == pytest.approx(1.000171)
    assert (r.avg_s, r.min_s, r.max_s) == pytest.approx((0.000187, 0.000019, 0.001495))
    assert r.latencies == []
    assert math.isnan(r.p(99))
    assert r.clean


def test_verbose_run_gives_one_latency_per_response() -> None:
    r = bench_dns.parse_dnsperf(VERBOSE)
    assert r.latencies == pytest.approx([0.000759, 0.000371, 0.000523, 0.000059])
    assert r.verbose_rcodes == {"NOERROR": 4}
    assert r.verbose_timeouts == 0
    assert r.p(50) == pytest.approx(0.000371)
    assert r.p(99) == pytest.approx(0.000759)
    assert r.qps == pytest.approx(44005.883182)
    assert r.clean


def test_lost_queries_and_other_rcodes_are_not_clean() -> None:
    # edited from VERBOSE: one query timed out (the "> T" line dnsperf -v prints, and the
    # "[Timeout]" line it prints without -v), and one answer was NXDOMAIN
    text = (VERBOSE
            .replace("> NOERROR svc-037.default.svc.cluster.local A 0.000059",
                     "> NXDOMAIN nope.default.svc.cluster.local A 0.000061\n"
                     "> T svc-038.default.svc.cluster.local A\n"
                     "[Timeout] Query timed out: msg id 17")
            .replace("Queries completed:    44012 (100.00%)",
                     "Queries completed:    44011 (100.00%)")
            .replace("Queries lost:         0 (0.00%)", "Queries lost:         1 (0.00%)")
            .replace("NOERROR 44012 (100.00%)", "NOERROR 44010 (100.00%), NXDOMAIN 1 (0.00%)"))
    r = bench_dns.parse_dnsperf(text)
    assert r.lost == 1
    assert r.rcodes == {"NOERROR": 44010, "NXDOMAIN": 1}
    assert r.verbose_rcodes == {"NOERROR": 3, "NXDOMAIN": 1}
    assert r.verbose_timeouts == 1
    assert len(r.latencies) == 4
    assert not r.clean
    only_nx = bench_dns.parse_dnsperf(PLAIN.replace("NOERROR 61476 (100.00%)",
                                                    "NXDOMAIN 61476 (100.00%)"))
    assert only_nx.lost == 0 and not only_nx.clean


def test_no_statistics_is_an_error() -> None:
    with pytest.raises(ValueError):
        bench_dns.parse_dnsperf("Error: could not open queries.txt\n")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert bench_dns.percentile(values, 99) == 99.0
    assert bench_dns.percentile(values, 50) == 50.0
    assert bench_dns.percentile(values, 100) == 100.0
    assert bench_dns.percentile(values, 0.5) == 1.0
    assert bench_dns.percentile([7.0], 99) == 7.0
    assert bench_dns.percentile([1.0, 2.0], 99) == 2.0
    assert math.isnan(bench_dns.percentile([], 99))
    with pytest.raises(ValueError):
        bench_dns.percentile(values, 0)
    with pytest.raises(ValueError):
        bench_dns.percentile(values, 101)


def test_hosts_and_query_files() -> None:
    recs = {"svc-000.default.svc.cluster.local": ["10.96.12.7"],
            "hl-0.default.svc.cluster.local": ["10.244.1.2", "10.244.2.2"]}
    assert bench_dns.hosts_file(recs) == ("10.244.1.2 hl-0.default.svc.cluster.local\n"
                                          "10.244.2.2 hl-0.default.svc.cluster.local\n"
                                          "10.96.12.7 svc-000.default.svc.cluster.local\n")
    assert bench_dns.query_file(list(recs)) == ("svc-000.default.svc.cluster.local A\n"
                                                "hl-0.default.svc.cluster.local A\n")


def test_dig_answers() -> None:
    out = ("svc-000.default.svc.cluster.local. 30 IN A 10.96.12.7\n"
           "HL-0.default.svc.cluster.local.\t0\tIN\tA\t10.244.1.2\n"
           "hl-0.default.svc.cluster.local.\t0\tIN\tA\t10.244.2.2\n"
           "x.default.svc.cluster.local. 30 IN CNAME y.example.com.\n"
           ";; connection timed out; no servers could be reached\n")
    assert bench_dns.parse_dig_answers(out) == {
        "svc-000.default.svc.cluster.local": {"10.96.12.7"},
        "hl-0.default.svc.cluster.local": {"10.244.1.2", "10.244.2.2"}}
