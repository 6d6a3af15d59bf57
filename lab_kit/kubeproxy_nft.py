"""kube-proxy's nftables mode: one `ip kube-proxy` table, rendered as one `nft -f` script.

This is what upstream kube-proxy (`--proxy-mode=nftables`) programs on every node, and the
script this lab loads into each node's netns on every sync. Read it top to bottom:

**The fixed part** (the same on every node, upstream's `baseRules`):

- sets `cluster-ips` (every ClusterIP) and `nodeport-ips` (the node's own IPs);
- verdict maps, looked up with one hash lookup each instead of a linear walk of rules:
  `service-ips` (`ip . proto . port : goto <chain>` for ClusterIPs and load-balancer IPs),
  `service-nodeports` (`proto . nodePort : goto <chain>`), `no-endpoint-services` and
  `no-endpoint-nodeports` (`: goto reject-chain` or `: drop`), `firewall-ips` (unused here);
- base chains hooked into netfilter: `nat-prerouting` / `nat-output` jump to `services`
  (the DNAT dispatch), `nat-postrouting` jumps to `masquerading` (SNAT of packets carrying the
  0x4000 mark), and the `filter-*` chains reject or drop traffic to services with no endpoints
  and to unused ports of ClusterIPs.

**The per-service part** (chain names from :mod:`lab_kit.kubeproxy`, as upstream computes them):

- `service-<hash>-ns/svc/proto/port` (the "Cluster" policy chain): mark off-cluster sources
  for masquerade, then `numgen random mod N vmap { 0 : goto endpoint-…, … }` — a random number
  picks the endpoint (there is no probability cascade as in iptables mode);
- `local-…`: the same, over this node's endpoints only (externalTrafficPolicy or
  internalTrafficPolicy `Local`);
- `external-…`: what NodePort and load-balancer traffic enters. `Cluster` policy marks it for
  masquerade and goes to `service-…`; `Local` policy short-circuits pod and node traffic to
  `service-…` and sends everything else to `local-…`, keeping the client's source IP;
- `endpoint-…__<ip>/<port>`: hairpin masquerade, then `dnat to <ip>:<port>`;
- `affinity-…` (sessionAffinity ClientIP): one dynamic set per endpoint of client IPs, each
  with a timeout. The service chain sends a client found in a set straight to its endpoint,
  and the endpoint chain refreshes the entry (`update @affinity-… { ip saddr }`).

**Replacing it atomically.** The table is never deleted (that would wipe the affinity sets and
with them every client's stickiness). Instead the script, one kernel transaction, does what
upstream does: `add` every desired chain/set/map (a no-op if it exists) and `flush` it, except
the affinity sets, which are only added so their entries survive; then adds all rules and
elements; then `delete`s the objects a previous sync made that are no longer wanted (given as
:class:`Existing`, read from `nft -j list table ip kube-proxy` with :func:`parse_existing`).
Stale chains are flushed first, so nothing references them when they are deleted (without
that, `delete chain` fails with "Device or resource busy" and the whole transaction is rolled
back). Upstream instead deletes stale chains a sync later, because kernels before 6.2 noticed
late that a flushed map no longer referred to a chain; the lab's kernels are newer.

Chain and set names (`service-ULMVA6XW-ns1/svc1/tcp/p80`) are written bare, as upstream does:
nft's name token allows letters, digits and `/ - _ .`, and nft 1.0.6 rejects a name in double
quotes as a syntax error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lab_kit.kubeproxy import (
    MASQ_MARK,
    Endpoint,
    ProxyInput,
    ServicePort,
    local_endpoints,
    nft_affinity_set,
    nft_endpoint_chain,
    nft_external_chain,
    nft_local_chain,
    nft_service_chain,
)

FAMILY = "ip"
TABLE = "kube-proxy"
_T = f"{FAMILY} {TABLE}"

REJECT_CHAIN = "reject-chain"
MARK_MASQ_CHAIN = "mark-for-masquerade"

# Sets and maps of the fixed part, in upstream's order: name -> declaration body.
BASE_SETS: dict[str, str] = {
    "cluster-ips": 'type ipv4_addr ; comment "Active ClusterIPs" ;',
    "nodeport-ips": 'type ipv4_addr ; comment "IPs that accept NodePort traffic" ;',
}
BASE_MAPS: dict[str, str] = {
    "firewall-ips": "type ipv4_addr . inet_proto . inet_service : verdict ; "
                    'comment "destinations that are subject to LoadBalancerSourceRanges" ;',
    "no-endpoint-nodeports": "type inet_proto . inet_service : verdict ; "
                             'comment "vmap to drop or reject packets to service nodeports '
                             'with no endpoints" ;',
    "no-endpoint-services": "type ipv4_addr . inet_proto . inet_service : verdict ; "
                            'comment "vmap to drop or reject packets to services with no '
                            'endpoints" ;',
    "service-ips": "type ipv4_addr . inet_proto . inet_service : verdict ; "
                   'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ;',
    "service-nodeports": 'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;',
}
# Chains of the fixed part: name -> declaration body ("" for a regular chain).
BASE_CHAINS: dict[str, str] = {
    "cluster-ips-check": "",
    "filter-prerouting-pre-dnat": "type filter hook prerouting priority -110 ;",
    "filter-output-pre-dnat": "type filter hook output priority -110 ;",
    "filter-forward": "type filter hook forward priority 0 ;",
    "filter-input": "type filter hook input priority 0 ;",
    "filter-output": "type filter hook output priority 0 ;",
    "firewall-check": "",
    MARK_MASQ_CHAIN: "",
    "masquerading": "",
    "nat-output": "type nat hook output priority -100 ;",
    "nat-postrouting": "type nat hook postrouting priority 100 ;",
    "nat-prerouting": "type nat hook prerouting priority -100 ;",
    "nodeport-endpoints-check": "",
    REJECT_CHAIN: 'comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ;',
    "services": "",
    "service-endpoints-check": "",
}


def _base_rules(service_cidr: str) -> list[tuple[str, str]]:
    """(chain, rule) of the fixed part, in upstream's order (order matters within a chain)."""
    return [
        ("cluster-ips-check",
         'ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"'),
        ("cluster-ips-check",
         f'ip daddr {{ {service_cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"'),
        ("filter-prerouting-pre-dnat", "ct state new jump firewall-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-input", "ct state new jump nodeport-endpoints-check"),
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-output-pre-dnat", "ct state new jump firewall-check"),
        ("filter-output", "ct state new jump cluster-ips-check"),
        ("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips"),
        (MARK_MASQ_CHAIN, f"mark set mark or {MASQ_MARK}"),
        ("masquerading", f"mark and {MASQ_MARK} == 0 return"),
        ("masquerading", f"mark set mark xor {MASQ_MARK}"),
        ("masquerading", "masquerade fully-random"),
        ("nat-output", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("nat-prerouting", "jump services"),
        ("nodeport-endpoints-check",
         "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
        (REJECT_CHAIN, "reject"),
        ("services", "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
        ("service-endpoints-check",
         "ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    ]


# --- what already exists in the kernel ---------------------------------------------------------

@dataclass(frozen=True)
class Existing:
    """Names of the chains, sets and maps the `ip kube-proxy` table holds right now."""
    chains: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    maps: frozenset[str] = frozenset()


def parse_existing(nft_json: Mapping[str, Any]) -> Existing:
    """Read `nft -j list table ip kube-proxy` (or `list ruleset`): the objects of our table.

    nft's JSON is `{"nftables": [{"metainfo": …}, {"table": …}, {"chain": {"family": "ip",
    "table": "kube-proxy", "name": …}}, {"set": …}, {"map": …}, {"rule": …}, …]}`; maps are
    "map" objects, not sets with a flag. Objects of any other table are ignored.
    """
    found: dict[str, set[str]] = {"chain": set(), "set": set(), "map": set()}
    for item in nft_json.get("nftables", []):
        for kind, names in found.items():
            obj = item.get(kind)
            if (isinstance(obj, Mapping) and obj.get("family") == FAMILY
                    and obj.get("table") == TABLE and "name" in obj):
                names.add(str(obj["name"]))
    return Existing(chains=frozenset(found["chain"]), sets=frozenset(found["set"]),
                    maps=frozenset(found["map"]))


# --- the per-service plan ----------------------------------------------------------------------

@dataclass
class _Plan:
    """Everything the services add, in the order it is written out."""
    chains: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # name -> rules
    affinity_sets: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> seconds
    elements: list[str] = dataclasses.field(default_factory=list)
    cluster_ips: set[str] = dataclasses.field(default_factory=set)

    def rule(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(rule)

    def element(self, name: str, body: str) -> None:
        self.elements.append(f"add element {_T} {name} {{ {body} }}")


def _numgen(endpoints: Iterable[Endpoint], sp: ServicePort) -> str:
    eps = list(endpoints)
    vmap = " , ".join(f"{i} : goto {nft_endpoint_chain(sp, ep)}" for i, ep in enumerate(eps))
    return f"numgen random mod {len(eps)} vmap {{ {vmap} }}"


def _policy_chain_rules(plan: _Plan, sp: ServicePort, chain: str,
                        endpoints: tuple[Endpoint, ...]) -> None:
    """Affinity lookups, then the random choice among `endpoints` (upstream's
    writeServiceToEndpointRules)."""
    if sp.affinity_seconds is not None:
        for ep in endpoints:
            plan.rule(chain, f"ip saddr @{nft_affinity_set(sp, ep)} "
                             f"goto {nft_endpoint_chain(sp, ep)}")
    plan.rule(chain, _numgen(endpoints, sp))


def _plan_service(plan: _Plan, inp: ProxyInput, sp: ServicePort) -> None:
    """One ServicePort's chains, sets and map elements (upstream's syncProxyRules loop body)."""
    assert sp.cluster_ip is not None
    proto, spn = sp.proto, sp.spn
    key = f"{proto} . {sp.port}"

    ready = tuple(e for e in sp.endpoints if e.ready)
    has_endpoints = bool(ready)
    # A policy applies only where it can: ETP only to externally reachable ports.
    ext_local = sp.external_local and sp.external
    uses_cluster = not sp.internal_local or sp.external  # ETP=Local short-circuits need it
    uses_local = sp.internal_local or ext_local
    cluster_eps = ready if uses_cluster else ()
    local_eps = (local_endpoints(dataclasses.replace(sp, endpoints=ready), inp.node)
                 if uses_local else ())
    reachable = cluster_eps if uses_cluster else local_eps  # local ones are among cluster_eps

    service, local, external = (nft_service_chain(sp), nft_local_chain(sp),
                                nft_external_chain(sp))
    internal_chain = local if sp.internal_local else service
    has_internal = has_endpoints and (not sp.internal_local or bool(local_eps))
    external_policy = local if ext_local else service
    has_external = has_endpoints and (not ext_local or bool(local_eps))
    uses_external_chain = has_endpoints and sp.external

    # Where there are no usable endpoints: reject if there are none anywhere (the client gets
    # "connection refused" at once), drop if there are some, just none on this node.
    no_endpoint_verdict = f"goto {REJECT_CHAIN}" if not has_endpoints else "drop"

    # Chains first (so every rule below lands in the order its chain is created).
    if cluster_eps:
        plan.chains.setdefault(service, [])
    if local_eps:
        plan.chains.setdefault(local, [])
    if uses_external_chain:
        plan.chains.setdefault(external, [])
    for ep in reachable:
        plan.chains.setdefault(nft_endpoint_chain(sp, ep), [])
        if sp.affinity_seconds is not None:
            plan.affinity_sets[nft_affinity_set(sp, ep)] = sp.affinity_seconds

    # ClusterIP traffic: masquerade what does not come from a pod (the local-traffic detector).
    if has_internal:
        plan.rule(internal_chain, f"ip daddr {sp.cluster_ip} ip saddr != {inp.cluster_cidr} "
                                  f"jump {MARK_MASQ_CHAIN}")
    if cluster_eps:
        _policy_chain_rules(plan, sp, service, cluster_eps)
    if local_eps:
        _policy_chain_rules(plan, sp, local, local_eps)

    if uses_external_chain:
        if not ext_local:
            plan.rule(external, f"jump {MARK_MASQ_CHAIN}")
        else:
            plan.rule(external, f'ip saddr {inp.cluster_cidr} goto {service} '
                                'comment "short-circuit pod traffic"')
            plan.rule(external, f'fib saddr type local jump {MARK_MASQ_CHAIN} '
                                'comment "masquerade local traffic"')
            plan.rule(external, f'fib saddr type local goto {service} '
                                'comment "short-circuit local traffic"')
        if has_external:
            plan.rule(external, f"goto {external_policy}")

    for ep in reachable:
        chain = nft_endpoint_chain(sp, ep)
        plan.rule(chain, f"ip saddr {ep.ip} jump {MARK_MASQ_CHAIN}")  # hairpin
        if sp.affinity_seconds is not None:
            plan.rule(chain, f"update @{nft_affinity_set(sp, ep)} {{ ip saddr }}")
        plan.rule(chain, f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")

    # Map elements: where each destination goes.
    if sp.cluster_ip not in plan.cluster_ips:
        plan.cluster_ips.add(sp.cluster_ip)
        plan.element("cluster-ips", sp.cluster_ip)
    if has_internal:
        plan.element("service-ips", f"{sp.cluster_ip} . {key} : goto {internal_chain}")
    else:
        plan.element("no-endpoint-services",
                     f'{sp.cluster_ip} . {key} comment "{spn}" : {no_endpoint_verdict}')
    for lb_ip in sp.lb_ips:
        if has_endpoints:
            plan.element("service-ips", f"{lb_ip} . {key} : goto {external}")
        if not has_external:
            plan.element("no-endpoint-services",
                         f'{lb_ip} . {key} comment "{spn}" : {no_endpoint_verdict}')
    if sp.node_port is not None:
        if has_endpoints:
            plan.element("service-nodeports", f"{proto} . {sp.node_port} : goto {external}")
        if not has_external:
            plan.element("no-endpoint-nodeports",
                         f'{proto} . {sp.node_port} comment "{spn}" : {no_endpoint_verdict}')


def _sorted_services(inp: ProxyInput) -> list[ServicePort]:
    live = [sp for sp in inp.services if sp.cluster_ip is not None]
    return sorted(live, key=lambda sp: (sp.spn, sp.proto))


# --- the script --------------------------------------------------------------------------------

def render_nftables(inp: ProxyInput, existing: Existing | None = None) -> str:
    """The whole `nft -f` script that brings `ip kube-proxy` to the state `inp` describes.

    One transaction, idempotent, never deleting the table. `existing` names what the table
    holds now; whatever of it is no longer wanted is flushed and deleted at the end.
    """
    plan = _Plan()
    for sp in _sorted_services(inp):
        _plan_service(plan, inp, sp)
    existing = existing or Existing()

    out: list[str] = [f'add table {_T} {{ comment "rules for kube-proxy" ; }}']

    # 1. Declare-and-empty every object we want (add is a no-op if it exists).
    for name, body in BASE_SETS.items():
        out += [f"add set {_T} {name} {{ {body} }}", f"flush set {_T} {name}"]
    for name, body in BASE_MAPS.items():
        out += [f"add map {_T} {name} {{ {body} }}", f"flush map {_T} {name}"]
    for name, body in BASE_CHAINS.items():
        out.append(f"add chain {_T} {name}" + (f" {{ {body} }}" if body else ""))
        out.append(f"flush chain {_T} {name}")
    for name, seconds in plan.affinity_sets.items():  # never flushed: the entries must survive
        out.append(f"add set {_T} {name} "
                   f"{{ type ipv4_addr ; flags dynamic,timeout ; timeout {seconds}s ; }}")
    for name in plan.chains:
        out += [f"add chain {_T} {name}", f"flush chain {_T} {name}"]

    # 2. Empty the stale objects, so no rule or map element refers to them any more.
    stale_chains = sorted(existing.chains - BASE_CHAINS.keys() - plan.chains.keys())
    stale_sets = sorted(existing.sets - BASE_SETS.keys() - plan.affinity_sets.keys())
    stale_maps = sorted(existing.maps - BASE_MAPS.keys())
    out += [f"flush chain {_T} {name}" for name in stale_chains]
    out += [f"flush map {_T} {name}" for name in stale_maps]

    # 3. The rules and elements.
    out += [f"add rule {_T} {chain} {rule}" for chain, rule in _base_rules(inp.service_cidr)]
    out += [f"add element {_T} nodeport-ips {{ {ip} }}" for ip in inp.node_ips]
    for chain, rules in plan.chains.items():
        out += [f"add rule {_T} {chain} {rule}" for rule in rules]
    out += plan.elements

    # 4. Delete what is no longer wanted.
    out += [f"delete chain {_T} {name}" for name in stale_chains]
    out += [f"delete set {_T} {name}" for name in stale_sets]
    out += [f"delete map {_T} {name}" for name in stale_maps]
    return "\n".join(out) + "\n"
