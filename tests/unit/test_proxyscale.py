"""proxyscale and lab 09's pure parts: sizes, manifests, reading kube-proxy's rules from real
`iptables-save` and `nft -j` output, percentiles, the results table and chart (no root).

IPTABLES_SAVE is `iptables-save -t nat` (iptables v1.8.9, nf_tables) of a netns loaded with the
lab's kube-proxy rules for two Services (`svc-00000`, `svc-00001`, port `http` 80 → 8080) with
three endpoints each; only the two header/footer comment lines were cut. NFT_TABLE rebuilds
`nft -j list table ip kube-proxy` (nft 1.0.6) of the same two Services with two endpoints each:
every object in the kernel's order, with its real name and handle, keeping the keys the parsers
read (`expr` of the rules and the elements of the other maps are left out).
"""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib
import pytest
from matplotlib.figure import Figure

from lab_kit import kernel, kubeproxy, model, proxyscale
from lab_kit.errors import LabError
from lab_kit.labs import proxy_scale

matplotlib.use("Agg")

IPTABLES_SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SEP-6Z3QAT6GAQJ7BJYI - [0:0]
:KUBE-SEP-AVWCLMWNGR4REZQG - [0:0]
:KUBE-SEP-G4TXKT724CIEHCY2 - [0:0]
:KUBE-SEP-LAEGPK7MR5F6Y724 - [0:0]
:KUBE-SEP-NLCQYYEOOULVPKKP - [0:0]
:KUBE-SEP-VLK3G5UTDYR2T6RW - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-PBEFCLNCI3FWSPYF - [0:0]
:KUBE-SVC-SIZ3W6L56HLVWPUR - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" \
-j MASQUERADE --random-fully
-A KUBE-SEP-6Z3QAT6GAQJ7BJYI -s 10.244.1.4/32 -m comment --comment "default/svc-00001:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-6Z3QAT6GAQJ7BJYI -p tcp -m comment --comment "default/svc-00001:http" -m tcp \
-j DNAT --to-destination 10.244.1.4:8080
-A KUBE-SEP-AVWCLMWNGR4REZQG -s 10.244.1.4/32 -m comment --comment "default/svc-00000:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-AVWCLMWNGR4REZQG -p tcp -m comment --comment "default/svc-00000:http" -m tcp \
-j DNAT --to-destination 10.244.1.4:8080
-A KUBE-SEP-G4TXKT724CIEHCY2 -s 10.244.1.2/32 -m comment --comment "default/svc-00001:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-G4TXKT724CIEHCY2 -p tcp -m comment --comment "default/svc-00001:http" -m tcp \
-j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-LAEGPK7MR5F6Y724 -s 10.244.1.3/32 -m comment --comment "default/svc-00001:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-LAEGPK7MR5F6Y724 -p tcp -m comment --comment "default/svc-00001:http" -m tcp \
-j DNAT --to-destination 10.244.1.3:8080
-A KUBE-SEP-NLCQYYEOOULVPKKP -s 10.244.1.3/32 -m comment --comment "default/svc-00000:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-NLCQYYEOOULVPKKP -p tcp -m comment --comment "default/svc-00000:http" -m tcp \
-j DNAT --to-destination 10.244.1.3:8080
-A KUBE-SEP-VLK3G5UTDYR2T6RW -s 10.244.1.2/32 -m comment --comment "default/svc-00000:http" \
-j KUBE-MARK-MASQ
-A KUBE-SEP-VLK3G5UTDYR2T6RW -p tcp -m comment --comment "default/svc-00000:http" -m tcp \
-j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SERVICES -d 10.96.1.1/32 -p tcp -m comment --comment "default/svc-00000:http cluster IP" \
-m tcp --dport 80 -j KUBE-SVC-PBEFCLNCI3FWSPYF
-A KUBE-SERVICES -d 10.96.1.2/32 -p tcp -m comment --comment "default/svc-00001:http cluster IP" \
-m tcp --dport 80 -j KUBE-SVC-SIZ3W6L56HLVWPUR
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last \
rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-PBEFCLNCI3FWSPYF ! -s 10.244.0.0/16 -d 10.96.1.1/32 -p tcp -m comment --comment \
"default/svc-00000:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-PBEFCLNCI3FWSPYF -m comment --comment "default/svc-00000:http -> 10.244.1.2:8080" \
-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-VLK3G5UTDYR2T6RW
-A KUBE-SVC-PBEFCLNCI3FWSPYF -m comment --comment "default/svc-00000:http -> 10.244.1.3:8080" \
-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-NLCQYYEOOULVPKKP
-A KUBE-SVC-PBEFCLNCI3FWSPYF -m comment --comment "default/svc-00000:http -> 10.244.1.4:8080" \
-j KUBE-SEP-AVWCLMWNGR4REZQG
-A KUBE-SVC-SIZ3W6L56HLVWPUR ! -s 10.244.0.0/16 -d 10.96.1.2/32 -p tcp -m comment --comment \
"default/svc-00001:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-SIZ3W6L56HLVWPUR -m comment --comment "default/svc-00001:http -> 10.244.1.2:8080" \
-m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-G4TXKT724CIEHCY2
-A KUBE-SVC-SIZ3W6L56HLVWPUR -m comment --comment "default/svc-00001:http -> 10.244.1.3:8080" \
-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-LAEGPK7MR5F6Y724
-A KUBE-SVC-SIZ3W6L56HLVWPUR -m comment --comment "default/svc-00001:http -> 10.244.1.4:8080" \
-j KUBE-SEP-6Z3QAT6GAQJ7BJYI
COMMIT
"""

S0 = "service-YCMZ66QZ-default/svc-00000/tcp/http"
S1 = "service-ERQZW7GH-default/svc-00001/tcp/http"
E0 = ["endpoint-YQ3HI4DV-default/svc-00000/tcp/http__10.244.1.2/8080",
      "endpoint-BXSNPDDI-default/svc-00000/tcp/http__10.244.1.3/8080"]
E1 = ["endpoint-OTDJE44D-default/svc-00001/tcp/http__10.244.1.2/8080",
      "endpoint-I37SBIDV-default/svc-00001/tcp/http__10.244.1.3/8080"]
BASE_CHAINS = ["cluster-ips-check", "filter-prerouting-pre-dnat", "filter-output-pre-dnat",
               "filter-forward", "filter-input", "filter-output", "firewall-check",
               "mark-for-masquerade", "masquerading", "nat-output", "nat-postrouting",
               "nat-prerouting", "nodeport-endpoints-check", "reject-chain", "services",
               "service-endpoints-check"]
# the chain of each rule, in the kernel's order (handles 30 … 66, with gaps for the elements)
RULE_CHAINS = (["cluster-ips-check"] * 2 + ["filter-prerouting-pre-dnat", "filter-output-pre-dnat"]
               + ["filter-forward"] * 2 + ["filter-input"] * 2 + ["filter-output"] * 2
               + ["firewall-check", "mark-for-masquerade"] + ["masquerading"] * 3
               + ["nat-output", "nat-postrouting", "nat-prerouting", "nodeport-endpoints-check",
                  "reject-chain", "services", "services", "service-endpoints-check"]
               + [S0, S0, E0[0], E0[0], E0[1], E0[1], S1, S1, E1[0], E1[0], E1[1], E1[1]])


def nft_table() -> dict[str, Any]:
    def obj(kind: str, name: str, handle: int, **more: Any) -> dict[str, Any]:
        key = "chain" if kind == "rule" else "name"
        return {kind: {"family": "ip", "table": "kube-proxy", key: name, "handle": handle,
                       **more}}
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                      "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}]
    items += [obj("set", n, h) for n, h in (("cluster-ips", 2), ("nodeport-ips", 3))]
    for n, h in (("firewall-ips", 4), ("no-endpoint-nodeports", 5), ("no-endpoint-services", 7),
                 ("service-nodeports", 8)):
        items.append(obj("map", n, h))
    items.insert(5, obj("map", "service-ips", 6, type=["ipv4_addr", "inet_proto", "inet_service"],
                        comment="ClusterIP, ExternalIP and LoadBalancer IP traffic", map="verdict",
                        elem=[[{"concat": ["10.96.1.1", "tcp", 80]}, {"goto": {"target": S0}}],
                              [{"concat": ["10.96.1.2", "tcp", 80]}, {"goto": {"target": S1}}]]))
    items += [obj("chain", n, 8 + i) for i, n in enumerate(BASE_CHAINS + [S0, *E0, S1, *E1], 1)]
    items += [obj("rule", c, 30 + i) for i, c in enumerate(RULE_CHAINS)]
    return {"nftables": items}


# --- sizes and manifests ----------------------------------------------------------------------

def test_sizes_and_the_cap() -> None:
    assert proxyscale.scale_sizes(environ={}) == proxyscale.SIZES
    assert proxyscale.SIZES[0] == 10 and proxyscale.SIZES[-1] == 5000
    assert proxyscale.scale_sizes(cap=500) == (10, 50, 100, 500)
    assert proxyscale.scale_sizes(cap=300) == (10, 50, 100, 300)  # the cap becomes a size
    assert proxyscale.scale_sizes(cap=5) == (5,)
    assert proxyscale.scale_sizes((100, 10, 10, 0), cap=10_000) == (10, 100)
    assert proxyscale.scale_sizes(environ={proxyscale.MAX_ENV: "1,000"})[-1] == 1000
    assert proxyscale.scale_max({proxyscale.MAX_ENV: " "}) is None
    for bad in ("many", "0", "-5"):
        with pytest.raises(LabError, match="LAB_KIT_SCALE_MAX"):
            proxyscale.scale_sizes(environ={proxyscale.MAX_ENV: bad})


def test_cap_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(proxyscale.MAX_ENV, "500")
    assert proxyscale.scale_sizes()[-1] == 500
    monkeypatch.delenv(proxyscale.MAX_ENV)
    assert proxyscale.MAX_ENV not in os.environ
    assert proxyscale.scale_sizes() == proxyscale.SIZES


def test_service_names_sort_in_creation_order() -> None:
    names = [proxyscale.service_name(i) for i in (0, 9, 10, 99, 4999, 5000)]
    assert names == sorted(names) and names[0] == "svc-00000" and names[-1] == "svc-05000"
    assert [proxyscale.service_index(n) for n in names] == [0, 9, 10, 99, 4999, 5000]
    assert proxyscale.service_index("web") is None
    assert proxyscale.service_index("svc-1") is None


def test_manifests_are_valid_kubernetes_objects() -> None:
    objs = model.load_manifests(proxyscale.manifests(2, 5))
    assert [o.name for o, _ in objs] == ["svc-00002", "svc-00003", "svc-00004"]
    assert [o.name for o, _ in model.load_manifests(proxyscale.manifests(2))] == [
        "svc-00000", "svc-00001"]
    assert proxyscale.manifests(3, 3) == []
    svc = proxyscale.manifests(1)[0]
    assert svc["spec"]["selector"] == proxyscale.BACKEND_LABELS
    assert svc["spec"]["ports"][0]["port"] == 80
    docs = proxyscale.workload("scaleipt-worker")
    kinds = [(o.__class__.__name__, o.name) for o, _ in model.load_manifests(docs)]
    assert kinds == [("Deployment", "backend"), ("Pod", "client")]
    assert docs[0]["spec"]["replicas"] == 3
    assert docs[0]["spec"]["template"]["spec"]["nodeName"] == "scaleipt-worker"
    assert docs[1]["spec"]["nodeName"] == "scaleipt-worker"
    assert "nodeName" not in proxyscale.workload()[1]["spec"]


# --- reading iptables-save --------------------------------------------------------------------

def test_iptables_counts() -> None:
    rules, dispatch, chains = proxyscale.parse_iptables_counts(IPTABLES_SAVE)
    assert rules == IPTABLES_SAVE.count("\n-A ") and rules == 30
    assert dispatch == 3  # two Services and the NodePort rule
    assert chains == 17


def test_kube_services_in_kernel_order() -> None:
    rules = proxyscale.kube_services(IPTABLES_SAVE)
    assert [(r.position, r.service, r.cluster_ip, r.port, r.target) for r in rules] == [
        (1, "default/svc-00000", "10.96.1.1", 80, "KUBE-SVC-PBEFCLNCI3FWSPYF"),
        (2, "default/svc-00001", "10.96.1.2", 80, "KUBE-SVC-SIZ3W6L56HLVWPUR"),
        (3, "", "", None, "KUBE-NODEPORTS")]
    assert rules[0].comment == "default/svc-00000:http cluster IP"
    assert proxyscale.kube_services("*filter\n-A KUBE-SERVICES -j REJECT\nCOMMIT\n") == []


def test_rules_and_endpoints_per_service() -> None:
    assert proxyscale.iptables_rules_by_service(IPTABLES_SAVE) == {
        "default/svc-00000": 11, "default/svc-00001": 11}
    assert proxyscale.iptables_endpoints_by_service(IPTABLES_SAVE) == {
        "default/svc-00000": 3, "default/svc-00001": 3}


def test_the_parsers_read_the_renderer_too() -> None:
    """`iptables-restore` input (the renderer's option order) parses like iptables-save's."""
    eps = tuple(kubeproxy.Endpoint(f"10.244.1.{i}", 8080, "w") for i in (2, 3, 4))
    sps = tuple(kubeproxy.ServicePort("default", proxyscale.service_name(i), "http", "TCP", 80,
                                      f"10.96.1.{i + 1}", endpoints=eps) for i in range(4))
    text = kubeproxy.render_iptables(kubeproxy.ProxyInput("w", ("172.18.0.3",), "10.244.0.0/16",
                                                          "10.96.0.0/16", sps))
    rules = proxyscale.kube_services(text)
    assert [r.service for r in rules] == [f"default/svc-0000{i}" for i in range(4)] + [""]
    assert rules[3].cluster_ip == "10.96.1.4" and rules[3].port == 80
    assert set(proxyscale.iptables_rules_by_service(text).values()) == {11}
    assert set(proxyscale.iptables_endpoints_by_service(text).values()) == {3}


# --- reading nft -j ---------------------------------------------------------------------------

def test_nft_counts_and_elements() -> None:
    table = nft_table()
    assert proxyscale.parse_nft_counts(table) == (len(RULE_CHAINS), 2, 22)
    elements = proxyscale.map_elements(table)
    assert [(e.ip, e.proto, e.port, e.verdict, e.target) for e in elements] == [
        ("10.96.1.1", "tcp", 80, "goto", S0), ("10.96.1.2", "tcp", 80, "goto", S1)]
    assert elements[0].text() == f"10.96.1.1 . tcp . 80 : goto {S0}"
    assert proxyscale.map_elements(table, "service-nodeports") == []
    assert proxyscale.parse_nft_counts({}) == (0, 0, 0)
    # a verdict without a chain, as in no-endpoint-services
    odd = {"nftables": [{"map": {"name": "service-ips", "elem": [
        [{"concat": ["10.96.0.5", "udp", 53]}, {"drop": None}], "garbage"]}}]}
    assert [e.text() for e in proxyscale.map_elements(odd)] == ["10.96.0.5 . udp . 53 : drop"]


def test_nft_rules_and_endpoints_per_service() -> None:
    assert proxyscale.chain_service(S0) == ("service", "default/svc-00000")
    assert proxyscale.chain_service(E1[0]) == ("endpoint", "default/svc-00001")
    assert proxyscale.chain_service("services") is None
    assert proxyscale.chain_service("KUBE-SVC-PBEFCLNCI3FWSPYF") is None
    table = nft_table()
    # 2 endpoints here: 2 rules in the service chain, 2 in each endpoint chain
    assert proxyscale.nft_rules_by_service(table) == {"default/svc-00000": 6,
                                                      "default/svc-00001": 6}
    assert proxyscale.nft_endpoints_by_service(table) == {"default/svc-00000": 2,
                                                          "default/svc-00001": 2}


# --- latency numbers --------------------------------------------------------------------------

def test_percentile_and_latency() -> None:
    assert proxyscale.percentile([], 99) != proxyscale.percentile([], 99)  # NaN
    values = list(range(1, 101))
    assert proxyscale.percentile(values, 99) == 99
    assert proxyscale.percentile(values, 100) == 100
    assert proxyscale.percentile([5.0], 99) == 5.0
    lat = proxyscale.Latency("10.96.1.1:80", (30.0, 31.0, 33.0, 200.0))
    assert lat.median_us == 32.0 and lat.p99_us == 200.0
    assert "4 connections to 10.96.1.1:80: median 32 µs" in str(lat)
    assert math.isnan(proxyscale.Latency("x", ()).median_us)


# --- results ----------------------------------------------------------------------------------

def _point(mode: str, n: int, sync: float, first: float, last: float) -> proxyscale.Point:
    return proxyscale.Point(
        mode, "scaleipt" if mode == "iptables" else "scalenft", n,
        proxyscale.SyncTiming(sync, sync / 4, sync / 2, 3),
        proxyscale.RuleCount(mode, "w", 11 * n + 20, n + (mode == "iptables"), 4 * n + 20),
        proxyscale.Latency("10.96.9.9:80", (last,) * 5), proxyscale.Latency("10.96.1.1:80",
                                                                            (first,) * 5))


def results() -> proxyscale.ScaleResults:
    return proxyscale.ScaleResults([
        _point("iptables", 10, 0.05, 32, 32), _point("nftables", 10, 0.04, 31, 31),
        _point("iptables", 1000, 2.0, 33, 60), _point("nftables", 1000, 1.0, 31, 30),
        _point("iptables", 5000, 100.0, 35, 180)])


def test_results_table_and_ratios() -> None:
    r = results()
    assert r.modes() == ["iptables", "nftables"]
    assert [p.services for p in r.series("iptables")] == [10, 1000, 5000]
    assert r.largest_common() == 1000
    ratios = r.ratios()
    assert ratios == {"services": 1000, "sync": 2.0, "connect": 2.0}
    assert r.ratios(10)["sync"] == pytest.approx(1.25)
    with pytest.raises(KeyError, match="no point for nftables at 5000"):
        r.ratios(5000)
    assert r.at("iptables", 5000).walk_us == 145
    table = r.table()
    assert table.headers[:2] == ["MODE", "SERVICES"] and len(table) == 5
    assert table[1][:5] == ["iptables mode", "1,000", "11,020", "1,001", "2.00"]
    assert str(r).startswith("MODE") and repr(r) == str(r) and "service-ips" in str(r)
    assert "<table>" in r._repr_html_()
    d = r.to_dict()["points"][0]
    assert d["mode"] == "iptables" and d["connect_median_us"] == 32 and d["sync_s"] == 0.05
    with pytest.raises(KeyError):
        proxyscale.ScaleResults().ratios()


def test_chart_has_two_log_panels() -> None:
    fig = results().chart()
    assert isinstance(fig, Figure)
    sync, conn = fig.axes
    assert sync.get_xscale() == "log" and sync.get_yscale() == "log"
    assert conn.get_xscale() == "log"
    assert len(sync.get_lines()) == 2 and len(conn.get_lines()) == 4  # last + first per mode
    labels = [t.get_text() for t in conn.get_legend().get_texts()]
    assert "iptables mode: last Service" in labels and "nftables mode: first Service" in labels


# --- the timed runner -------------------------------------------------------------------------

def test_timed_runner_times_and_keeps_the_journal() -> None:
    inner = kernel.Runner()
    timed = proxyscale.TimedRunner(inner, timeout=5)
    assert timed.journal is inner.journal
    done = timed.run(["sleep", "0.2"], timeout=0.05)  # the minimum timeout wins
    assert done.rc == 0
    what, netns, dt = timed.durations[0]
    assert (what, netns) == ("sleep", None) and dt >= 0.2
    assert inner.journal.entries()[-1].argv == ["sleep", "0.2"]
    timed.durations += [("iptables-save", "lk-a", 0.1), ("iptables-restore", "lk-a", 0.5),
                        ("iptables-restore", "lk-b", 0.7), ("nft-load", None, 9.0)]
    assert sorted(timed.per_node({"iptables-restore"})) == [0.5, 0.7]
    assert timed.per_node(proxyscale.READ_CMDS) == [0.1]


def test_timed_runner_names_the_nft_commands() -> None:
    timed = proxyscale.TimedRunner(kernel.Runner())
    timed.run(["nft", "-f", "/nonexistent"], check=False)
    timed.run(["nft", "-j", "list", "table", "ip", "nothing"], check=False)
    assert [w for w, _, _ in timed.durations] == ["nft-load", "nft-list"]


# --- lab 09's pure helpers --------------------------------------------------------------------

def test_lab_answers_and_words() -> None:
    as_int = proxy_scale._int_answer
    assert [as_int(v) for v in (11, "11", " 1,000 ", 8.0, "8.02", "8.5", "x", None)] == [
        11, 11, 1000, 8, 8, None, None, None]
    assert proxy_scale._verdict_text(f" goto {S0} ") == S0
    assert proxy_scale._verdict_text(S0) == S0
    for why in ("iptables walks the list rule by rule", "linear scan vs hash map",
                "nft does one lookup in a verdict map", "O(n) vs O(1)"):
        low = why.lower()  # the check lowercases the answer first
        assert proxy_scale.LINEAR_WORDS.search(low) or proxy_scale.LOOKUP_WORDS.search(low), why
    assert not proxy_scale.LINEAR_WORDS.search("because nftables is newer")
    assert not proxy_scale.LOOKUP_WORDS.search("because nftables is newer")


def test_lab_side_reads_services_from_the_rules() -> None:
    ipt = proxy_scale.Side(None, "iptables", "w", "lk-w", "lk-c", IPTABLES_SAVE, {})  # type: ignore[arg-type]
    assert ipt.services() == ["default/svc-00000", "default/svc-00001"]
    assert ipt.last() == "default/svc-00001"
    nft = proxy_scale.Side(None, "nftables", "w", "lk-w", "lk-c", "", nft_table())  # type: ignore[arg-type]
    assert nft.services() == ["default/svc-00000", "default/svc-00001"]
    assert nft.last() == "default/svc-00001"
    empty = proxy_scale.Side(None, "nftables", "w", "lk-w", "lk-c", "", {})  # type: ignore[arg-type]
    assert empty.last() is None


def test_lab_constants_match_the_configs() -> None:
    import yaml

    from lab_kit.labs import get_lab
    lab = get_lab("09-iptables-vs-nftables")
    assert lab is proxy_scale.LAB and set(lab.checks) == {
        "scaled", "rules-per-service", "first-packet", "grows", "hand-element"}
    assert not lab.checks["scaled"].exercise
    root = os.path.join(os.path.dirname(__file__), "..", "..", "labs")
    ipt = yaml.safe_load(open(os.path.join(root, "clusters", "scale-iptables.yaml")))
    nft = yaml.safe_load(open(os.path.join(root, proxy_scale.NFT_CONFIG)))
    assert ipt["name"] == lab.cluster_name == proxy_scale.IPT_CLUSTER
    assert nft["name"] == proxy_scale.NFT_CLUSTER
    assert ipt["networking"]["kubeProxyMode"] == "iptables"
    assert nft["networking"]["kubeProxyMode"] == "nftables"
    assert {k: v for k, v in ipt.items() if k not in ("name", "networking")} == {
        k: v for k, v in nft.items() if k not in ("name", "networking")}
    assert ipt["networking"]["cni"] == nft["networking"]["cni"]
