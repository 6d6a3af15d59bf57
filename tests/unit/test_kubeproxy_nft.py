"""Golden text for the nftables-mode kube-proxy renderer (pure; no kernel)."""

from __future__ import annotations

import dataclasses

from lab_kit.kubeproxy import Endpoint, ProxyInput, ServicePort
from lab_kit.kubeproxy_nft import Existing, parse_existing, render_nftables

# The addresses of upstream's NewFakeProxier: pod CIDR, service CIDR, node IP.
NODE = ProxyInput("node1", ("192.168.0.2",), "10.0.0.0/8", "172.30.0.0/16")
SVC1 = ServicePort("ns1", "svc1", "p80", "TCP", 80, "172.30.0.41",
                   endpoints=(Endpoint("10.180.0.1", 80),))

# `baseRules` from upstream's pkg/proxy/nftables/proxier_test.go, verbatim.
REFERENCE_BASE_RULES = """\
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"""  # noqa: E501

# The ns1/svc1 lines of upstream's TestOverallNFTablesRules, verbatim.
REFERENCE_SVC1 = """\
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
"""  # noqa: E501

GOLDEN_SVC1 = """\
add table ip kube-proxy { comment "rules for kube-proxy" ; }
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
flush set ip kube-proxy cluster-ips
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
flush set ip kube-proxy nodeport-ips
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
flush map ip kube-proxy firewall-ips
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
flush map ip kube-proxy no-endpoint-nodeports
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
flush map ip kube-proxy no-endpoint-services
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
flush map ip kube-proxy service-ips
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
flush map ip kube-proxy service-nodeports
add chain ip kube-proxy cluster-ips-check
flush chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
flush chain ip kube-proxy filter-prerouting-pre-dnat
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
flush chain ip kube-proxy filter-output-pre-dnat
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
flush chain ip kube-proxy filter-forward
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
flush chain ip kube-proxy filter-input
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
flush chain ip kube-proxy filter-output
add chain ip kube-proxy firewall-check
flush chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
flush chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
flush chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
flush chain ip kube-proxy nat-output
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
flush chain ip kube-proxy nat-postrouting
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
flush chain ip kube-proxy nat-prerouting
add chain ip kube-proxy nodeport-endpoints-check
flush chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
flush chain ip kube-proxy reject-chain
add chain ip kube-proxy services
flush chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
flush chain ip kube-proxy service-endpoints-check
add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80
add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add element ip kube-proxy nodeport-ips { 192.168.0.2 }
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80
add element ip kube-proxy cluster-ips { 172.30.0.41 }
add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
"""  # noqa: E501


def render(*services: ServicePort, existing: Existing | None = None) -> str:
    return render_nftables(dataclasses.replace(NODE, services=services), existing)


def service_lines(*services: ServicePort) -> str:
    """The script minus what it holds with no services at all: what the services add."""
    base = set(render().splitlines())
    return "".join(line + "\n" for line in render(*services).splitlines() if line not in base)


def chain_rules(script: str, chain: str) -> list[str]:
    prefix = f"add rule ip kube-proxy {chain} "
    return [line for line in script.splitlines() if line.startswith(prefix)]


# --- upstream's example --------------------------------------------------------------------------

def test_upstream_example_golden() -> None:
    assert render(SVC1) == GOLDEN_SVC1


def test_upstream_base_and_service_lines_all_present_in_order() -> None:
    out = render(SVC1)
    lines = out.splitlines()
    reference = REFERENCE_BASE_RULES.splitlines() + REFERENCE_SVC1.splitlines()
    assert [line for line in reference if line not in lines] == []
    # Within each chain, the rules come in upstream's order.
    for chain in {line.split()[4] for line in reference if line.startswith("add rule ")}:
        assert chain_rules(out, chain) == chain_rules("\n".join(reference), chain)


def test_empty_cluster_is_exactly_the_base_plus_flushes() -> None:
    lines = render().splitlines()
    assert sorted(line for line in lines if not line.startswith("flush ")) == sorted(
        REFERENCE_BASE_RULES.splitlines())
    declared = {line.split()[4] for line in lines_starting(render(), "add set", "add map",
                                                             "add chain")}
    assert {line.split()[4] for line in lines_starting(render(), "flush ")} == declared


# --- load balancing, affinity --------------------------------------------------------------------

def test_two_endpoints_numgen_mod_2() -> None:
    svc = ServicePort("ns2", "svc2", "p80", "TCP", 80, "172.30.0.42",
                      endpoints=(Endpoint("10.180.0.2", 80), Endpoint("10.180.0.3", 80),
                                 Endpoint("10.180.0.9", 80, ready=False)))
    assert service_lines(svc) == """\
add chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
flush chain ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80
add chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
flush chain ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80
add chain ip kube-proxy endpoint-ILFRA5KT-ns2/svc2/tcp/p80__10.180.0.3/80
flush chain ip kube-proxy endpoint-ILFRA5KT-ns2/svc2/tcp/p80__10.180.0.3/80
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 ip daddr 172.30.0.42 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-42NFTM6N-ns2/svc2/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 , 1 : goto endpoint-ILFRA5KT-ns2/svc2/tcp/p80__10.180.0.3/80 }
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade
add rule ip kube-proxy endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80
add rule ip kube-proxy endpoint-ILFRA5KT-ns2/svc2/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade
add rule ip kube-proxy endpoint-ILFRA5KT-ns2/svc2/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80
add element ip kube-proxy cluster-ips { 172.30.0.42 }
add element ip kube-proxy service-ips { 172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
"""  # noqa: E501


def test_session_affinity() -> None:
    svc = ServicePort("ns3", "svc3", "", "TCP", 80, "172.30.0.43", affinity_seconds=10800,
                      endpoints=(Endpoint("10.180.0.4", 8080), Endpoint("10.180.0.5", 8080)))
    assert service_lines(svc) == """\
add set ip kube-proxy affinity-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add set ip kube-proxy affinity-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
add chain ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/
flush chain ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/
add chain ip kube-proxy endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080
flush chain ip kube-proxy endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080
add chain ip kube-proxy endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080
flush chain ip kube-proxy endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080
add rule ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/ ip daddr 172.30.0.43 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/ ip saddr @affinity-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 goto endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080
add rule ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/ ip saddr @affinity-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 goto endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080
add rule ip kube-proxy service-MUPGITXC-ns3/svc3/tcp/ numgen random mod 2 vmap { 0 : goto endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 , 1 : goto endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 }
add rule ip kube-proxy endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 ip saddr 10.180.0.4 jump mark-for-masquerade
add rule ip kube-proxy endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 update @affinity-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 { ip saddr }
add rule ip kube-proxy endpoint-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080 meta l4proto tcp dnat to 10.180.0.4:8080
add rule ip kube-proxy endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 ip saddr 10.180.0.5 jump mark-for-masquerade
add rule ip kube-proxy endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 update @affinity-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 { ip saddr }
add rule ip kube-proxy endpoint-H2X26MZQ-ns3/svc3/tcp/__10.180.0.5/8080 meta l4proto tcp dnat to 10.180.0.5:8080
add element ip kube-proxy cluster-ips { 172.30.0.43 }
add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-MUPGITXC-ns3/svc3/tcp/ }
"""  # noqa: E501


# --- externalTrafficPolicy / internalTrafficPolicy -----------------------------------------------

SVC4 = ServicePort("ns4", "svc4", "p80", "TCP", 80, "172.30.0.44", node_port=3004,
                   lb_ips=("1.2.3.4",), external_local=True,
                   endpoints=(Endpoint("10.180.0.6", 80, "node1"),
                              Endpoint("10.180.2.1", 80, "node2")))


def test_etp_local_with_a_local_endpoint() -> None:
    assert service_lines(SVC4) == """\
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy local-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy local-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80
flush chain ip kube-proxy endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80
add chain ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80
flush chain ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80 , 1 : goto endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 }
add rule ip kube-proxy local-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80 }
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 ip saddr 10.0.0.0/8 goto service-LAUZTJTB-ns4/svc4/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 fib saddr type local goto service-LAUZTJTB-ns4/svc4/tcp/p80 comment "short-circuit local traffic"
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 goto local-LAUZTJTB-ns4/svc4/tcp/p80
add rule ip kube-proxy endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80 ip saddr 10.180.0.6 jump mark-for-masquerade
add rule ip kube-proxy endpoint-LAUTRNDE-ns4/svc4/tcp/p80__10.180.0.6/80 meta l4proto tcp dnat to 10.180.0.6:80
add rule ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 ip saddr 10.180.2.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 meta l4proto tcp dnat to 10.180.2.1:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-nodeports { tcp . 3004 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
"""  # noqa: E501


def test_etp_local_without_local_endpoints_drops_external_traffic() -> None:
    svc = dataclasses.replace(SVC4, endpoints=(Endpoint("10.180.2.1", 80, "node2"),))
    assert service_lines(svc) == """\
add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
flush chain ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80
add chain ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80
flush chain ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 }
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 ip saddr 10.0.0.0/8 goto service-LAUZTJTB-ns4/svc4/tcp/p80 comment "short-circuit pod traffic"
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 fib saddr type local goto service-LAUZTJTB-ns4/svc4/tcp/p80 comment "short-circuit local traffic"
add rule ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 ip saddr 10.180.2.1 jump mark-for-masquerade
add rule ip kube-proxy endpoint-7N64TK22-ns4/svc4/tcp/p80__10.180.2.1/80 meta l4proto tcp dnat to 10.180.2.1:80
add element ip kube-proxy cluster-ips { 172.30.0.44 }
add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns4/svc4:p80" : drop }
add element ip kube-proxy service-nodeports { tcp . 3004 : goto external-LAUZTJTB-ns4/svc4/tcp/p80 }
add element ip kube-proxy no-endpoint-nodeports { tcp . 3004 comment "ns4/svc4:p80" : drop }
"""  # noqa: E501


def test_etp_cluster_external_chain_masquerades_then_goes_to_service() -> None:
    svc = dataclasses.replace(SVC4, external_local=False)
    out = render(svc)
    assert chain_rules(out, "external-LAUZTJTB-ns4/svc4/tcp/p80") == [
        "add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 jump mark-for-masquerade",
        "add rule ip kube-proxy external-LAUZTJTB-ns4/svc4/tcp/p80 "
        "goto service-LAUZTJTB-ns4/svc4/tcp/p80"]
    assert "local-LAUZTJTB" not in out and "no-endpoint" not in service_lines(svc)


def test_no_endpoints_reject_and_no_chains() -> None:
    svc = ServicePort("ns6", "svc6", "p80", "TCP", 80, "172.30.0.46", node_port=3006,
                      lb_ips=("5.6.7.8",), endpoints=(Endpoint("10.180.0.7", 80, ready=False),))
    assert service_lines(svc) == """\
add element ip kube-proxy cluster-ips { 172.30.0.46 }
add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
add element ip kube-proxy no-endpoint-services { 5.6.7.8 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
add element ip kube-proxy no-endpoint-nodeports { tcp . 3006 comment "ns6/svc6:p80" : goto reject-chain }
"""  # noqa: E501


def test_itp_local_without_local_endpoints_drops_cluster_ip() -> None:
    svc = ServicePort("ns7", "svc7", "p80", "TCP", 80, "172.30.0.47", internal_local=True,
                      endpoints=(Endpoint("10.180.2.2", 80, "node2"),))
    assert service_lines(svc) == """\
add element ip kube-proxy cluster-ips { 172.30.0.47 }
add element ip kube-proxy no-endpoint-services { 172.30.0.47 . tcp . 80 comment "ns7/svc7:p80" : drop }
"""  # noqa: E501


def test_itp_local_sends_cluster_ip_to_the_local_chain() -> None:
    svc = ServicePort("ns8", "svc8", "dns", "UDP", 53, "172.30.0.48", internal_local=True,
                      endpoints=(Endpoint("10.180.0.8", 53, "node1"),
                                 Endpoint("10.180.2.8", 53, "node2")))
    assert service_lines(svc) == """\
add chain ip kube-proxy local-RGZ7CTAF-ns8/svc8/udp/dns
flush chain ip kube-proxy local-RGZ7CTAF-ns8/svc8/udp/dns
add chain ip kube-proxy endpoint-X7IWLXWY-ns8/svc8/udp/dns__10.180.0.8/53
flush chain ip kube-proxy endpoint-X7IWLXWY-ns8/svc8/udp/dns__10.180.0.8/53
add rule ip kube-proxy local-RGZ7CTAF-ns8/svc8/udp/dns ip daddr 172.30.0.48 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
add rule ip kube-proxy local-RGZ7CTAF-ns8/svc8/udp/dns numgen random mod 1 vmap { 0 : goto endpoint-X7IWLXWY-ns8/svc8/udp/dns__10.180.0.8/53 }
add rule ip kube-proxy endpoint-X7IWLXWY-ns8/svc8/udp/dns__10.180.0.8/53 ip saddr 10.180.0.8 jump mark-for-masquerade
add rule ip kube-proxy endpoint-X7IWLXWY-ns8/svc8/udp/dns__10.180.0.8/53 meta l4proto udp dnat to 10.180.0.8:53
add element ip kube-proxy cluster-ips { 172.30.0.48 }
add element ip kube-proxy service-ips { 172.30.0.48 . udp . 53 : goto local-RGZ7CTAF-ns8/svc8/udp/dns }
"""  # noqa: E501


# --- what is skipped, and in which order ---------------------------------------------------------

def test_headless_is_skipped_and_shared_cluster_ip_listed_once() -> None:
    headless = ServicePort("ns9", "headless", "", "TCP", 80, None,
                           endpoints=(Endpoint("10.180.0.9", 80),))
    tcp = ServicePort("kube-system", "dns", "dns-tcp", "TCP", 53, "172.30.0.10",
                      endpoints=(Endpoint("10.180.0.10", 53),))
    udp = dataclasses.replace(tcp, port_name="dns", protocol="UDP")
    out = render(headless, tcp, udp)
    assert "headless" not in out
    assert out.count("add element ip kube-proxy cluster-ips { 172.30.0.10 }") == 1
    elements = lines_starting(out, "add element ip kube-proxy service-ips ")
    assert [e.split(" . ")[1] for e in elements] == ["udp", "tcp"]  # "dns" < "dns-tcp"


def test_output_does_not_depend_on_input_order() -> None:
    svcs = (SVC1, SVC4, dataclasses.replace(SVC1, name="a", cluster_ip="172.30.0.2"))
    assert render(*svcs) == render(*reversed(svcs))
    assert render(*svcs).index("ns1/a/") < render(*svcs).index("ns1/svc1/")


# --- replacing a previous sync -------------------------------------------------------------------

NFT_JSON = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "kube-proxy", "handle": 1,
               "comment": "rules for kube-proxy"}},
    {"set": {"family": "ip", "name": "cluster-ips", "table": "kube-proxy", "type": "ipv4_addr",
             "handle": 2}},
    {"set": {"family": "ip", "name": "affinity-OLD-ns0/gone/tcp/__10.1.1.1/80",
             "table": "kube-proxy", "type": "ipv4_addr", "flags": ["timeout", "dynamic"],
             "timeout": 10800, "handle": 3}},
    {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict", "handle": 4}},
    {"map": {"family": "ip", "name": "old-map", "table": "kube-proxy", "type": "ipv4_addr",
             "map": "verdict", "handle": 5}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 6}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "service-ULMVA6XW-ns1/svc1/tcp/p80",
               "handle": 7}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "service-OLD-ns0/gone/tcp/",
               "handle": 8}},
    {"chain": {"family": "ip", "table": "other", "name": "not-ours", "handle": 1}},
    {"chain": {"family": "ip6", "table": "kube-proxy", "name": "ip6-chain", "handle": 1}},
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 9,
              "expr": []}},
]}


def test_parse_existing() -> None:
    assert parse_existing(NFT_JSON) == Existing(
        chains=frozenset({"services", "service-ULMVA6XW-ns1/svc1/tcp/p80",
                          "service-OLD-ns0/gone/tcp/"}),
        sets=frozenset({"cluster-ips", "affinity-OLD-ns0/gone/tcp/__10.1.1.1/80"}),
        maps=frozenset({"service-ips", "old-map"}))
    assert parse_existing({"nftables": []}) == Existing()


def test_stale_objects_are_flushed_then_deleted_last() -> None:
    out = render(SVC1, existing=parse_existing(NFT_JSON))
    lines = out.splitlines()
    assert lines[-3:] == [
        "delete chain ip kube-proxy service-OLD-ns0/gone/tcp/",
        "delete set ip kube-proxy affinity-OLD-ns0/gone/tcp/__10.1.1.1/80",
        "delete map ip kube-proxy old-map"]
    assert [line for line in lines if line.startswith("delete")] == lines[-3:]
    # Emptied before any rule is added (so nothing refers to them when they go).
    first_rule = next(i for i, line in enumerate(lines) if line.startswith("add rule"))
    assert lines.index("flush chain ip kube-proxy service-OLD-ns0/gone/tcp/") < first_rule
    assert lines.index("flush map ip kube-proxy old-map") < first_rule
    # Nothing that is still wanted is deleted; without `existing` nothing is.
    assert "delete" not in render(SVC1)
    assert render(SVC1, existing=Existing(chains=frozenset({"services"}))) == render(SVC1)


def test_never_deletes_the_table_nor_flushes_affinity_sets() -> None:
    svc = ServicePort("ns3", "svc3", "", "TCP", 80, "172.30.0.43", affinity_seconds=60,
                      endpoints=(Endpoint("10.180.0.4", 8080),))
    out = render(svc, existing=parse_existing(NFT_JSON))
    assert "delete table" not in out and "flush table" not in out
    affinity = "affinity-7NWPAGG7-ns3/svc3/tcp/__10.180.0.4/8080"
    assert f"add set ip kube-proxy {affinity} " \
           "{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }" in out.splitlines()
    assert f"flush set ip kube-proxy {affinity}" not in out
    assert f"delete set ip kube-proxy {affinity}" not in render(
        svc, existing=Existing(sets=frozenset({affinity})))
    # Every object it declares is also emptied, except the affinity sets.
    declared = [line.split()[4] for line in lines_starting(out, "add set", "add map", "add chain")]
    flushed = {line.split()[4] for line in lines_starting(out, "flush ")}
    assert [name for name in declared if name not in flushed] == [affinity]


def lines_starting(text: str, *prefixes: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefixes)]
