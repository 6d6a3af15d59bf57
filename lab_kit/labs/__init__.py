"""The checks of each lab notebook in `labs/`, one module per notebook.

`LABS` maps a lab id (the notebook's stem) to the module defining its `LAB`; the CLI
(`lab-kit check LAB [CHECK]`) and the tests load labs through it.

The helpers below gather evidence from the live kernel for the checks: whether a netns is really
a network namespace, the two ends of a veth pair, a link's state. They read, never change.
"""

from __future__ import annotations

import importlib
import ipaddress
from typing import TYPE_CHECKING, Any

from lab_kit.checks import Context, Lab, Verdict, failed

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

LABS: dict[str, str] = {
    "00-welcome": "lab_kit.labs.welcome",
    "01-pod-netns": "lab_kit.labs.pod_netns",
    "02-pods-on-one-node": "lab_kit.labs.one_node",
    "03-routing-between-nodes": "lab_kit.labs.host_gw",
    "04-vxlan-overlay": "lab_kit.labs.vxlan",
    "05-bgp-like-calico": "lab_kit.labs.bgp",
    "06-write-a-cni-plugin": "lab_kit.labs.cni_plugin",
    "07-clusterip-kube-proxy": "lab_kit.labs.clusterip",
    "08-nodeport-loadbalancer": "lab_kit.labs.external_traffic",
    "09-iptables-vs-nftables": "lab_kit.labs.proxy_scale",
    "10-cluster-dns": "lab_kit.labs.cluster_dns",
    "11-network-policies": "lab_kit.labs.network_policy",
    "12-ingress": "lab_kit.labs.ingress_routing",
    "13-gateway-api": "lab_kit.labs.gateway_api",
    "14-egress-snat": "lab_kit.labs.egress",
}


def get_lab(lab_id: str) -> Lab:
    """The `LAB` of lab `lab_id` (e.g. `01-pod-netns`)."""
    if lab_id not in LABS:
        raise KeyError(f"no lab {lab_id!r}; labs: {', '.join(LABS)}")
    return importlib.import_module(LABS[lab_id]).LAB


# --- evidence helpers shared by the labs' checks ------------------------------------------------

Link = dict[str, Any]


def is_netns(ctx: Context, netns: str) -> bool:
    """`netns` is a real network namespace, not just a file under /run/netns.

    A failed `ip netns add` can leave an empty placeholder file behind; `ip` cannot enter it.
    """
    return ctx.netns_exists(netns) and bool(ctx.ip_json(netns, "link", "show", "lo"))


def is_up(link: Link | None) -> bool:
    """Administratively up (`ip link set … up`), whatever the far end does."""
    return bool(link) and "UP" in link.get("flags", [])


def kind(link: Link | None) -> str:
    """`veth`, `bridge`, … (`ip -d link` shows it as `linkinfo.info_kind`); '' for none."""
    return ((link or {}).get("linkinfo") or {}).get("info_kind", "")


def has_no_carrier(link: Link | None) -> bool:
    """Up, but the other end of the cable is down (`NO-CARRIER`)."""
    return bool(link) and "NO-CARRIER" in link.get("flags", [])


def links_by_name(ctx: Context, netns: str) -> dict[str, Link]:
    """Every link of `netns` by name, from one `ip -j -d addr show` (one read for many links)."""
    return {ln["ifname"]: ln for ln in ctx.links(netns)}


def nsid_names(ctx: Context, netns: str) -> dict[int, str]:
    """The ids `netns` gives the other namespaces it knows (`ip netns list-id`), by id."""
    from lab_kit.observe import parse_ip_nsids  # late: it adds ~15 ms to importing a lab

    return dict(parse_ip_nsids(ctx.ip_json(netns, "netns", "list-id")))


def peer_netns(ctx: Context, netns: str, link: Link) -> str | None:
    """Name of the namespace holding the other end of veth `link` (in `netns`), if it has one.

    None when the peer is in the same namespace (or the name cannot be resolved).
    """
    nsid = link.get("link_netnsid")
    if nsid is None:
        return None
    return nsid_names(ctx, netns).get(int(nsid))


def are_peers(ctx: Context, ns_a: str, a: Link | None, ns_b: str, b: Link | None) -> bool:
    """`a` (in `ns_a`) and `b` (in `ns_b`) are the two ends of one veth pair.

    Proven by the kernel's own bookkeeping, both ways: each end's `link_index` is the other's
    `ifindex`, and each end's `link_netnsid` names the other's namespace.
    """
    if not a or not b or kind(a) != "veth" or kind(b) != "veth":
        return False
    if a.get("link_index") != b.get("ifindex") or b.get("link_index") != a.get("ifindex"):
        return False
    return peer_netns(ctx, ns_a, a) == ns_b and peer_netns(ctx, ns_b, b) == ns_a


def veth_peer_in(ctx: Context, ns_a: str, a: Link | None, ns_b: str) -> Link | None:
    """The link in `ns_b` that is the other end of veth `a` (in `ns_a`), or None."""
    if not a or a.get("link_index") is None:
        return None
    for b in ctx.links(ns_b):
        if are_peers(ctx, ns_a, a, ns_b, b):
            return b
    return None


def ip_of(link: Link | None) -> str | None:
    """The first IPv4 address (no prefix) on a link already read; None: no link, no address."""
    addrs = Context.ipv4s(link)
    return addrs[0].split("/")[0] if addrs else None


def ipv4_of(ctx: Context, netns: str, ifname: str) -> str | None:
    """The first IPv4 address (no prefix) on `ifname` in `netns`."""
    return ip_of(ctx.link(netns, ifname))


def default_gateway(ctx: Context, netns: str) -> str | None:
    """The gateway of the default route in `netns` (None: no default route, or no gateway)."""
    for r in ctx.routes(netns):
        if r.get("dst") == "default":
            return r.get("gateway")
    return None


def pings(ctx: Context, netns: str, ip: str, tries: int = 3) -> bool:
    """A real ping from `netns` to `ip` answers, within `tries` one-second attempts.

    One lost packet is not a broken network: right after a fix, a neighbour entry may still be
    resolving (or have just failed), and that first packet is dropped.
    """
    return any(ctx.ping(netns, ip, timeout=1) for _ in range(tries))


def state_words(link: Link | None) -> str:
    """A link's flags as `ip link` prints them, for expected/actual lines."""
    if not link:
        return "(no such link)"
    return f"{link.get('ifname')} <{','.join(link.get('flags', []))}>"


def norm_answer(value: Any) -> str:
    """A learner's answer as a stripped string ('' for None and the `…` placeholder)."""
    if value is None:
        return ""
    text = str(value).strip().strip("\"'").strip()
    return "" if text in ("…", "...") else text


def whole_number(value: Any, tolerance: float = 0.0) -> int | None:
    """A learner's answer as a whole number: `3`, `"3"`, `" 4,950 "`, `197.0`, `"1e2"`; a
    decimal within `tolerance` of a whole number counts as that number; else None."""
    text = norm_answer(value).replace(",", "").replace("_", "")
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        return round(f) if abs(f - round(f)) <= tolerance else None


def whole_number_answer(ctx: Context, name: str, hint: str, tolerance: float = 0.0
                        ) -> int | Verdict:
    """The notebook's answer `name` as a whole number, or the failed verdict that says it is
    empty or not a number."""
    raw = ctx.get(name)
    if not norm_answer(raw):
        return failed(f"`{name}` is empty", hint=hint, expected="a whole number",
                      actual="(nothing)")
    value = whole_number(raw, tolerance)
    if value is None:
        return failed(f"`{name}` = {raw!r} is not a whole number", hint=hint,
                      expected="a whole number", actual=repr(raw))
    return value


# --- routes and node addresses (labs 03, 04 and 05) ---------------------------------------------

def underlay_ip(netns: str) -> str | None:
    """A node's address on the underlay: the first IPv4 address of its eth0, from the kernel."""
    links = Context.ip_json(netns, "addr", "show", "dev", "eth0")
    return ip_of(links[0] if links else None)


def node_ips(cluster: Cluster) -> dict[str, str]:
    """{underlay IP: node name} for every node of the cluster, read from each node's eth0."""
    return {ip: n.name for n in cluster.nodes() if (ip := underlay_ip(n.netns))}


def route_text(r: dict[str, Any]) -> str:
    """A route of `ip -j route` as `ip route` prints it (type, via, dev, proto, scope, src)."""
    from lab_kit.observe import parse_ip_route  # late: it adds ~15 ms to importing a lab

    return parse_ip_route([r])[0].text()


def route_net(dst: str) -> ipaddress.IPv4Network | None:
    """The network of a route's `dst` as `ip -j route` prints it (`default`, `10.244.2.0/24`, a
    host address without /32); None if it is none of those."""
    if dst == "default":
        return ipaddress.ip_network("0.0.0.0/0")
    try:
        return ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
    except ValueError:
        return None


def best_route(routes: list[dict[str, Any]], ip: str) -> dict[str, Any] | None:
    """The main-table route the kernel picks for `ip`: the longest prefix containing it
    (whatever its type: a `blackhole` or `unreachable` route matches too)."""
    addr = ipaddress.ip_address(ip)
    cands = [(n.prefixlen, r) for r in routes
             if (n := route_net(r.get("dst", ""))) is not None and addr in n]
    return max(cands, key=lambda c: c[0])[1] if cands else None


def route_get(ctx: Context, netns: str, dst: str, src: str | None = None,
              iif: str | None = None) -> dict[str, Any] | None:
    """The kernel's own decision, `ip -j route get DST [from SRC iif IIF]` (None: no route)."""
    args = ["route", "get", dst] + (["from", src, "iif", iif] if src and iif else [])
    got = ctx.ip_json(netns, *args)
    return got[0] if got else None
