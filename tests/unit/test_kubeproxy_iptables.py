"""kube-proxy's iptables mode, rendered from known inputs and compared with upstream's text.

The expected lines are the ones kube-proxy's own unit tests (TestOverallIPTablesRules) expect
for the same Services, with the same addresses: pod CIDR 10.0.0.0/8, service CIDR
172.30.0.0/16, node 192.168.0.2.
"""

from __future__ import annotations

from lab_kit.kubeproxy import (
    Endpoint,
    ProxyInput,
    ServicePort,
    parse_iptables_save,
    probability,
    render_iptables,
    sep_chain,
    svc_chain,
)


def sp(ns: str, name: str, ip: str, *eps: Endpoint, **kw) -> ServicePort:
    return ServicePort(ns, name, kw.pop("port_name", "p80"), kw.pop("protocol", "TCP"),
                       kw.pop("port", 80), ip, endpoints=eps, **kw)


def render(*services: ServicePort, node: str = "n1", existing=None) -> list[str]:
    inp = ProxyInput(node, ("192.168.0.2",), "10.0.0.0/8", "172.30.0.0/16", services)
    return render_iptables(inp, existing).splitlines()


def section(lines: list[str], table: str) -> list[str]:
    start = lines.index(f"*{table}")
    return lines[start + 1:lines.index("COMMIT", start)]


def test_chain_names_match_upstream():
    assert svc_chain(sp("ns1", "svc1", "x")) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert sep_chain(sp("ns1", "svc1", "x"), Endpoint("10.180.0.1", 80)) == \
        "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert svc_chain(sp("default", "kubernetes", "x", port_name="https")) == \
        "KUBE-SVC-NPX46M4PTMTKRN6Y"
    assert svc_chain(sp("kube-system", "kube-dns", "x", port_name="dns", protocol="UDP")) == \
        "KUBE-SVC-TCOU7JCQXEZGVUNU"
    # an unnamed port: `ns/svc`, no colon
    assert sp("ns", "web", "x", port_name="").spn == "ns/web"


def test_cluster_ip_rules_are_upstreams():
    nat = section(render(sp("ns1", "svc1", "172.30.0.41", Endpoint("10.180.0.1", 80))), "nat")
    want = [
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
        "-d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O",
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp '
        "-p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" '
        "-j KUBE-SEP-SXIVWICOYRO3J4NJ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 "
        "-j KUBE-MARK-MASQ",
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp "
        "-j DNAT --to-destination 10.180.0.1:80",
    ]
    assert [ln for ln in nat if "ns1/svc1" in ln] == want
    assert nat[-1].startswith('-A KUBE-SERVICES -m comment --comment "kubernetes service '
                              'nodeports; NOTE: this must be the last rule in this chain"')
    for base in ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
                 "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
                 "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000"):
        assert base in nat


def test_statistic_cascade_gives_every_endpoint_one_nth():
    assert [probability(i, 4) for i in range(3)] == ["0.2500000000", "0.3333333333",
                                                       "0.5000000000"]
    eps = [Endpoint(f"10.180.0.{i}", 80) for i in range(1, 5)]
    nat = section(render(sp("ns4", "svc4", "172.30.0.44", *eps)), "nat")
    jumps = [ln for ln in nat if ln.startswith("-A KUBE-SVC-") and "->" in ln]
    assert len(jumps) == 4
    assert [("--probability" in ln) for ln in jumps] == [True, True, True, False]
    assert "--probability 0.2500000000" in jumps[0] and "--probability 0.5000000000" in jumps[2]


def test_two_endpoints_match_upstream_ns4():
    nat = section(render(sp("ns4", "svc4", "172.30.0.44", Endpoint("10.180.0.4", 80),
                            Endpoint("10.180.0.5", 80))), "nat")
    assert ('-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" '
            "-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC"
            ) in nat
    assert ('-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" '
            "-j KUBE-SEP-C6EBXVWJJZMIWKLZ") in nat


def test_session_affinity_uses_recent():
    nat = section(render(sp("ns5", "svc5", "172.30.0.45", Endpoint("10.180.0.3", 80),
                            affinity_seconds=10800)), "nat")
    assert ('-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" '
            "-m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap "
            "-j KUBE-SEP-I77PXRDZVX7PMWMN") in nat
    assert ("-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name "
            "KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination "
            "10.180.0.3:80") in nat
    rcheck = next(i for i, ln in enumerate(nat) if "--rcheck" in ln)
    plain = next(i for i, ln in enumerate(nat) if ln.startswith("-A KUBE-SVC-") and "->" in ln
                 and "recent" not in ln)
    assert rcheck < plain


def test_nodeport_cluster_policy_masquerades_everything():
    nat = section(render(sp("ns3", "svc3", "172.30.0.43", Endpoint("10.180.0.3", 80),
                            node_port=3003)), "nat")
    assert ("-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 "
            "-j KUBE-EXT-X27LE4BHSL4DOUIK") in nat
    assert ('-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for '
            'ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ') in nat
    assert "-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK" in nat


def test_local_policy_with_and_without_a_local_endpoint():
    svc = sp("ns2", "svc2", "172.30.0.42", Endpoint("10.180.0.2", 80, "n1"),
             Endpoint("10.180.0.3", 80, "n2"), node_port=3001, lb_ips=("1.2.3.4",),
             external_local=True)
    here = render(svc, node="n1")
    nat = section(here, "nat")
    assert ('-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 '
            'external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT') in nat
    assert "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT" in nat
    svl = [ln for ln in nat if ln.startswith("-A KUBE-SVL-")]
    assert len(svl) == 1 and "10.180.0.2:80" in svl[0]  # only the local endpoint
    assert not [ln for ln in section(here, "filter") if "has no local endpoints" in ln]

    away = render(svc, node="n3")
    assert "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT" not in section(away, "nat")
    drops = [ln for ln in section(away, "filter") if "has no local endpoints" in ln]
    assert len(drops) == 2 and all(ln.endswith("-j DROP") for ln in drops)
    assert any("-d 1.2.3.4" in ln for ln in drops)
    assert any("--dst-type LOCAL" in ln and "--dport 3001" in ln for ln in drops)
    # the ClusterIP still goes to every endpoint
    assert any("cluster IP" in ln and "-j KUBE-SVC-GNZBNJ2PO5MGZ6GT" in ln
               for ln in section(away, "nat"))


def test_no_endpoints_is_a_filter_reject_and_no_nat_chains():
    lines = render(sp("ns6", "svc6", "172.30.0.46", node_port=3006))
    filt, nat = section(lines, "filter"), section(lines, "nat")
    assert ('-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp '
            "-p tcp -d 172.30.0.46 --dport 80 -j REJECT") in filt
    assert any(ln.startswith("-A KUBE-EXTERNAL-SERVICES") and "--dport 3006" in ln
               and ln.endswith("-j REJECT") for ln in filt)
    assert not [ln for ln in nat if "ns6/svc6" in ln]


def test_internal_local_without_local_endpoint_drops_the_cluster_ip():
    filt = section(render(sp("ns7", "svc7", "172.30.0.47", Endpoint("10.180.0.9", 80, "n2"),
                             internal_local=True)), "filter")
    assert any("has no local endpoints" in ln and "-d 172.30.0.47" in ln
               and ln.endswith("-j DROP") for ln in filt)


def test_headless_services_get_no_rules():
    lines = render(sp("ns", "headless", None, Endpoint("10.180.0.1", 80)))
    assert not [ln for ln in lines if "ns/headless" in ln]


def test_stale_chains_are_flushed_and_deleted_and_jumps_added_once():
    old = parse_iptables_save("\n".join([
        "*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SVC-OLDOLDOLDOLDOLDO - [0:0]",
        ":KUBE-SEP-OLDOLDOLDOLDOLDO - [0:0]", ":MY-OWN-CHAIN - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "COMMIT"]))
    nat = section(render(sp("ns1", "svc1", "172.30.0.41", Endpoint("10.180.0.1", 80)),
                         existing=old), "nat")
    for chain in ("KUBE-SVC-OLDOLDOLDOLDOLDO", "KUBE-SEP-OLDOLDOLDOLDOLDO"):
        assert f":{chain} - [0:0]" in nat and f"-X {chain}" in nat
    assert "-X MY-OWN-CHAIN" not in nat  # not kube-proxy's to delete
    assert not [ln for ln in nat if ln.startswith("-I PREROUTING")]  # already there
    assert [ln for ln in nat if ln.startswith("-I OUTPUT")]  # missing: added
    assert "-X KUBE-SVC-XPGD46QRK7WJZT7O" not in nat
