"""Checks of `labs/09-iptables-vs-nftables.ipynb`: kube-proxy's two modes at scale.

Two clusters, alike but for `networking.kubeProxyMode`: `scaleipt` (iptables mode, the lab's
own cluster) and `scalenft` (nftables mode). In each, a Deployment `backend` (3 replicas) and a
pod `client` run on the first worker, and 10 … 5,000 Services `svc-NNNNN` all select the
backends (:mod:`lab_kit.proxyscale` builds and measures them).

The exercises, and the checks grading them from the live kernel (`iptables-save` and
`nft -j list table ip kube-proxy` on the client's node, and real connections):

- `rules-per-service`: how many rules ONE Service with 3 endpoints costs in each mode;
- `first-packet`: where the first packet of a connection to the last Service finds it: its
  rule's position in nat `KUBE-SERVICES` (iptables), its element's verdict in the `service-ips`
  map (nftables);
- `grows`: which mode's first-packet cost grows with the number of Services, and why;
- `hand-element`: a Service by hand in nftables mode: one map element, `HAND_IP . tcp . 80`,
  on the client's node, and a real connection through it.

`scaled` (a demonstration, not an exercise) confirms that the measurement left the same N
Services × 3 endpoints on every node of both clusters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_kit import naming, proxyscale
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.errors import LabError, NotRunningError
from lab_kit.labs import norm_answer, whole_number, whole_number_answer

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

LAB = Lab("09-iptables-vs-nftables", "iptables vs nftables at scale", "scaleipt")

IPT_CLUSTER = LAB.cluster_name
NFT_CLUSTER = "scalenft"
NFT_CONFIG = "clusters/scale-nftables.yaml"
ANSWER_TOLERANCE = 0.05  # "8.02" counts as 8: a count read off a chart is close enough
HAND_IP = "10.96.0.99"  # in the Service CIDR's static band: never allocated automatically
HAND_PORT = proxyscale.SERVICE_PORT
SETUP_HINT = "run the notebook's setup cells (Cluster.up, proxyscale.prepare) and the measurement"
LINEAR_WORDS = re.compile(
    r"linear|one (rule )?(after|by) (an)?other|one at a time|each rule|every rule|all (the )?"
    r"rules|in order|sequen|list|o\(n\)|walk|travers|scan|rule by rule|position|chain of")
LOOKUP_WORDS = re.compile(r"map|hash|look ?up|o\(1\)|constant|index|dictionar|verdict")


# --- evidence from the live kernel -------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """One cluster as the checks see it: its client's node, and that node's live rules."""
    cluster: Cluster
    mode: str
    node: str
    netns: str
    client_netns: str
    iptables: str  # `iptables-save` on the node ('' in nftables mode)
    nft: dict[str, Any]  # `nft -j list table ip kube-proxy` on the node ({} in iptables mode)

    def services(self) -> list[str]:
        """The Services kube-proxy dispatches on this node (`namespace/name`), in the order a
        first packet meets them (iptables), or sorted (nftables: a map has no order)."""
        if self.mode == "iptables":
            return [r.service for r in proxyscale.kube_services(self.iptables) if r.service]
        found = {owner[1] for e in proxyscale.map_elements(self.nft)
                 if (owner := proxyscale.chain_service(e.target)) and owner[0] == "service"}
        return sorted(found)

    def last(self) -> str | None:
        """The last of the measurement's Services (`default/svc-NNNNN`) on this node."""
        ours = [s for s in self.services()
                if proxyscale.service_index(s.split("/", 1)[1]) is not None]
        return max(ours, key=lambda s: proxyscale.service_index(s.split("/", 1)[1]) or 0) \
            if ours else None


def side(ctx: Context, name: str) -> Side:
    """Read one cluster's client node. Raises NotRunningError if the cluster is not up."""
    from lab_kit.cluster import Cluster
    cluster = ctx.cluster if name == IPT_CLUSTER else Cluster.attach(name)
    mode = proxyscale.mode_of(cluster)
    try:
        client = cluster.pod(proxyscale.CLIENT)
    except LabError:
        raise NotRunningError(f"cluster `{name}` has no pod `{proxyscale.CLIENT}` — "
                              f"{SETUP_HINT}") from None
    netns = naming.node_netns(client.node)
    return Side(cluster, mode, client.node, netns, client.netns,
                proxyscale.read_iptables(netns) if mode == "iptables" else "",
                proxyscale.read_nft(netns) if mode == "nftables" else {})


def _both(ctx: Context) -> tuple[Side, Side] | Verdict:
    """Both clusters' client nodes, or a failed verdict saying what is missing."""
    try:
        ipt, nft = side(ctx, IPT_CLUSTER), side(ctx, NFT_CLUSTER)
    except NotRunningError as e:
        return failed(f"the lab's clusters are not both running: {e}", hint=SETUP_HINT,
                      expected=f"clusters {IPT_CLUSTER} and {NFT_CLUSTER}", actual="missing")
    for s in (ipt, nft):
        if s.last() is None:
            return failed(f"cluster `{s.cluster.name}` has no `{proxyscale.SERVICE_PREFIX}…` "
                          f"Service in {s.node}'s rules yet",
                          hint="run the measurement cell: proxyscale.measure([c, c_nft], SIZES)",
                          expected="Services svc-00000 …", actual="none")
    return ipt, nft


def _int_answer(value: Any) -> int | None:
    return whole_number(value, ANSWER_TOLERANCE)


def _short(service: str) -> str:
    return service.split("/", 1)[1] if "/" in service else service


# --- the demonstration: what the measurement left in the kernel ---------------------------------

def _node_services(mode: str, netns: str) -> tuple[int, set[int]]:
    """(Services, {endpoints per Service}) of the measurement's Services on one node."""
    if mode == "iptables":
        saved = proxyscale.read_iptables(netns)
        names = {r.service for r in proxyscale.kube_services(saved) if r.service}
        eps = proxyscale.iptables_endpoints_by_service(saved)
    else:
        listing = proxyscale.read_nft(netns)
        names = {o[1] for e in proxyscale.map_elements(listing)
                 if (o := proxyscale.chain_service(e.target)) and o[0] == "service"}
        eps = proxyscale.nft_endpoints_by_service(listing)
    ours = {n for n in names if proxyscale.service_index(_short(n)) is not None}
    return len(ours), {eps.get(n, 0) for n in ours}


@LAB.check("scaled", "Every node of both clusters has the same Services, 3 endpoints each",
           exercise=False)
def check_scaled(ctx: Context) -> Verdict:
    both = _both(ctx)
    if isinstance(both, Verdict):
        return both
    counts: dict[str, tuple[int, set[int]]] = {}
    for s in both:
        for n in s.cluster.nodes():
            counts[f"{n.name} ({s.mode})"] = _node_services(s.mode, n.netns)
    sizes = {k: v[0] for k, v in counts.items()}
    if len(set(sizes.values())) != 1:
        have = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        return failed("the nodes do not all have the same Services: a sync failed half-way, or "
                      "the two clusters were grown to different sizes",
                      hint="run the measurement cell again; it grows both clusters to each "
                           "size and syncs every node",
                      expected="the same number on every node", actual=have)
    eps = set().union(*(v[1] for v in counts.values()))
    want = proxyscale.BACKEND_REPLICAS
    if eps != {want}:
        return failed(f"some Services do not have {want} endpoints: {sorted(eps)}",
                      hint="c.get_pods() should list the 3 backend pods as Running; run "
                           "proxyscale.prepare(c) and the measurement again",
                      expected=f"{want} endpoints each", actual=sorted(eps))
    n = next(iter(sizes.values()))
    return passed(f"{n:,} Services × {want} endpoints on each of the {len(counts)} nodes of "
                  f"{IPT_CLUSTER} (iptables) and {NFT_CLUSTER} (nftables)")


# --- exercise 1: what one Service costs -----------------------------------------------------------

@LAB.check("rules-per-service", "You counted the rules ONE Service (3 endpoints) costs in each "
                                "mode")
def check_rules_per_service(ctx: Context) -> Verdict:
    both = _both(ctx)
    if isinstance(both, Verdict):
        return both
    ipt, nft = both
    last_i, last_n = ipt.last(), nft.last()
    assert last_i and last_n
    truth_i = proxyscale.iptables_rules_by_service(ipt.iptables).get(last_i, 0)
    truth_n = proxyscale.nft_rules_by_service(nft.nft).get(last_n, 0)
    eps = proxyscale.nft_endpoints_by_service(nft.nft).get(last_n, 0)
    grep_i = (f"IPT.sh(\"iptables-save | grep '{last_i}:'\") lists what belongs to "
              f"{_short(last_i)}; count its `-A` lines")
    grep_n = (f"NFT.sh(\"nft list table ip kube-proxy | grep -A4 'chain .*{last_n}/'\") shows "
              "its chains; count the rules inside them (not the `chain …` and `}` lines)")
    for name, truth, shell, hint, other in (
            ("ipt_rules_per_service", truth_i, ipt, grep_i, None),
            ("nft_rules_per_service", truth_n, nft, grep_n, truth_i)):
        value = whole_number_answer(ctx, name, hint, ANSWER_TOLERANCE)
        if isinstance(value, Verdict):
            return value
        if value == truth:
            continue
        n_services = len(shell.services())
        if shell.mode == "iptables" and value == truth + 1 + eps:
            why = ("that counts the chain declarations too (`:KUBE-SVC-…` and `:KUBE-SEP-…` "
                   "lines of iptables-save); a rule is an `-A` line")
        elif shell.mode == "nftables" and value == truth + 2:
            why = ("that counts the Service's two map elements (cluster-ips, service-ips) too; "
                   "elements are entries of a set or map, not rules")
        elif shell.mode == "nftables" and value == truth + 1 + eps:
            why = "that counts the `chain …` declarations too; only count the rules inside"
        elif other is not None and value == other:
            why = "that is the iptables count; in nftables mode read table ip kube-proxy"
        elif n_services and value > 3 * truth:
            why = (f"that looks like a total: {shell.node} has {n_services:,} Services; "
                   "divide, or count the rules of one Service only")
        else:
            why = "not what the kernel has"
        return failed(f"`{name}` = {value}: {why}", hint=hint,
                      expected=f"the rules of one Service in {shell.mode} mode", actual=value)
    return passed(f"one Service with {eps} endpoints costs {truth_i} iptables rules (1 in "
                  f"KUBE-SERVICES, {truth_i - 1 - 2 * eps} in its KUBE-SVC chain, {2 * eps} in "
                  f"its {eps} KUBE-SEP chains) and {truth_n} nftables rules plus 2 map "
                  "elements: about the same amount either way, so the number of rules alone "
                  "does not explain the chart")


# --- exercise 2: where the first packet finds its Service ----------------------------------------

def _verdict_text(value: Any) -> str:
    text = norm_answer(value)
    return re.sub(r"^(goto|jump)\s+", "", text.strip()).strip()


@LAB.check("first-packet", "You found the last Service's rule in KUBE-SERVICES and its element "
                           "in service-ips")
def check_first_packet(ctx: Context) -> Verdict:
    both = _both(ctx)
    if isinstance(both, Verdict):
        return both
    ipt, nft = both
    rules = proxyscale.kube_services(ipt.iptables)
    last = ipt.last()
    mine = next(r for r in rules if r.service == last)
    look = (f"IPT.sh(\"iptables -t nat -L KUBE-SERVICES -n --line-numbers | grep "
            f"'{_short(last or '')}:'\")")
    pos = whole_number_answer(ctx, "ipt_position", look, ANSWER_TOLERANCE)
    if isinstance(pos, Verdict):
        return pos
    if pos != mine.position:
        if pos == mine.position + 1:
            why = ("one too many: `iptables -S` prints `-N KUBE-SERVICES` first, and that line "
                   "is not a rule")
        elif pos == mine.position - 1:
            why = "one too few: rules are numbered from 1, as --line-numbers shows"
        elif pos == len(rules):
            why = (f"that is the chain's last rule, {rules[-1].target}: it comes after every "
                   "Service's rule")
        else:
            at = next((r for r in rules if r.position == pos), None)
            why = (f"rule {pos} is {at.comment!r}" if at else
                   f"KUBE-SERVICES has only {len(rules)} rules")
        return failed(f"`ipt_position` = {pos}: {why}", hint=look,
                      expected=f"the position of {_short(last or '')}'s rule on {ipt.node}",
                      actual=pos)
    nlast = nft.last()
    elements = proxyscale.map_elements(nft.nft)
    element = next((e for e in elements if (o := proxyscale.chain_service(e.target))
                    and o == ("service", nlast)), None)
    assert element is not None and nlast
    ip = element.ip
    look_n = f"NFT.sh(\"nft list map ip kube-proxy service-ips | grep '{ip} '\")"
    raw = ctx.get("nft_verdict")
    got = _verdict_text(raw)
    if not got:
        return failed("`nft_verdict` is empty",
                      hint=f"{look_n}: copy what follows the colon", expected="goto service-…",
                      actual="(nothing)")
    if got != element.target:
        owner = proxyscale.chain_service(got)
        if got.startswith("KUBE-"):
            why = "that is an iptables chain; in nftables mode the map points at service-… chains"
        elif owner and owner[0] == "endpoint":
            why = ("that is one endpoint's chain; the map sends the packet to the Service's "
                   "chain, which picks an endpoint at random")
        elif owner and owner[1] != nlast:
            why = f"that is {_short(owner[1])}'s chain, not {_short(nlast)}'s"
        else:
            why = "no element of service-ips says that"
        return failed(f"`nft_verdict` = {got!r}: {why}", hint=look_n,
                      expected=f"goto {element.target}", actual=got)
    return passed(f"in iptables mode the first packet of a new connection to "
                  f"{_short(last or '')} ({mine.cluster_ip}) tries the rules of KUBE-SERVICES "
                  f"one by one: its own is number {mine.position:,}; in nftables mode one "
                  f"lookup of `{ip} . tcp . {element.port}` in service-ips answers "
                  f"`{element.verdict} {element.target}`, among {len(elements):,} elements")


# --- exercise 3: which cost grows with N ----------------------------------------------------------

def _live_walk(ipt: Side, nft: Side) -> str:
    """A quick live measurement for the message: last minus first Service, in each mode."""
    try:
        targets = {}
        for s in (ipt, nft):
            c = s.cluster
            for which, name in (("first", proxyscale.first_service(c)),
                                ("last", proxyscale.last_service(c))):
                targets[f"{s.mode}/{which}"] = (s.client_netns, proxyscale.cluster_ip(c, name),
                                                proxyscale.SERVICE_PORT)
        lat = proxyscale.latencies(targets, count=60, rounds=6, warmup=5)
    except (LabError, OSError):
        return ""
    parts = [f"{m}: last − first Service = "
             f"{lat[m + '/last'].median_us - lat[m + '/first'].median_us:+.0f} µs"
             for m in ("iptables", "nftables")]
    return " (measured just now: " + "; ".join(parts) + ")"


@LAB.check("grows", "You know which mode's first-packet cost grows with the number of Services, "
                    "and why")
def check_grows(ctx: Context) -> Verdict:
    both = _both(ctx)
    if isinstance(both, Verdict):
        return both
    ipt, nft = both
    n = len(ipt.services())
    answer = norm_answer(ctx.get("grows_with_n")).lower()
    hint = ("look at the chart's right panel: which colour climbs as the Services grow? Then "
            "at exercise 2: how many entries does each mode try before it finds the last "
            "Service?")
    if not answer:
        return failed("`grows_with_n` is empty", hint=hint,
                      expected='"iptables", "nftables", "both" or "neither"', actual="(nothing)")
    words = set(re.findall(r"[a-z]+", answer))
    says_ipt = bool(words & {"iptables", "ipt", "iptable"})
    says_nft = bool(words & {"nftables", "nft", "nftable"})
    if "both" in words or (says_ipt and says_nft):
        return failed(f"`grows_with_n` = {answer!r}: the nftables line stays flat",
                      hint="in nftables mode the first packet does ONE lookup in the "
                           "service-ips map, whatever the number of Services",
                      expected="one mode", actual=answer)
    if "neither" in words or "none" in words:
        return failed(f"`grows_with_n` = {answer!r}: one mode's connections to the last "
                      "Service get slower as Services are added", hint=hint,
                      expected="one mode", actual=answer)
    if says_nft:
        return failed(f"`grows_with_n` = {answer!r}: a map lookup costs the same with 10 or "
                      f"{n:,} elements",
                      hint="which mode tries its Services one rule after another? "
                           "(exercise 2: ipt_position)",
                      expected="the mode that walks a list", actual=answer)
    if not says_ipt:
        return failed(f"`grows_with_n` = {answer!r} is not a mode", hint=hint,
                      expected='"iptables" or "nftables"', actual=answer)
    why = norm_answer(ctx.get("why")).lower()
    if not why:
        return failed("`why` is empty",
                      hint="in a few words: how does each mode find the Service of a new "
                           "connection's first packet?",
                      expected="a short explanation", actual="(nothing)")
    if not (LINEAR_WORDS.search(why) or LOOKUP_WORDS.search(why)):
        return failed(f"`why` = {why!r} does not say how the first packet finds its Service",
                      hint="KUBE-SERVICES is a chain the kernel tries rule by rule; service-ips "
                           "is a map. Which one costs more with more entries?",
                      expected="rules tried in order vs one map lookup", actual=why)
    return passed(f"iptables: the first packet tries the rules of KUBE-SERVICES in order, "
                  f"{n:,} of them on {ipt.node} for the last Service; nftables: one hash lookup "
                  f"in service-ips{_live_walk(ipt, nft)}")


# --- exercise 4: a Service by hand, as one map element -------------------------------------------

def _probe_hand(nft: Side) -> tuple[bool, str]:
    from lab_kit.cluster import probe_socket
    error = ""
    for _ in range(2):
        r = probe_socket(proxyscale.CLIENT, nft.client_netns, HAND_IP, HAND_IP, HAND_PORT, "TCP",
                         "/hostname", 1.5)
        if r.ok:
            return True, r.reply.strip()
        error = r.error
    return False, error


@LAB.check("hand-element", f"A connection to {HAND_IP}:{HAND_PORT} works through a map element "
                           "you added by hand")
def check_hand_element(ctx: Context) -> Verdict:
    both = _both(ctx)
    if isinstance(both, Verdict):
        return both
    _ipt, nft = both
    last = nft.last() or ""
    chain = next((e.target for e in proxyscale.map_elements(nft.nft)
                  if proxyscale.chain_service(e.target) == ("service", last)), "service-…")
    cmd = (f"NFT.sh(\"nft add element ip kube-proxy service-ips '{{ {HAND_IP} . tcp . "
           f"{HAND_PORT} : goto {chain} }}'\")")
    taken = [s for s, v in nft.cluster.state.get("services", {}).items()
             if v["spec"].get("clusterIP") == HAND_IP]
    if taken:
        return failed(f"Service {taken[0]} has ClusterIP {HAND_IP}: kube-proxy made that "
                      "element, not you", hint=f"delete that Service, then add the element "
                           f"yourself: {cmd}", expected="an element added by hand",
                      actual=f"Service {taken[0]}")
    elements = [e for e in proxyscale.map_elements(nft.nft) if e.ip == HAND_IP]
    mine = next((e for e in elements if e.proto == "tcp" and e.port == HAND_PORT), None)
    if mine is None:
        if elements:
            e = elements[0]
            return failed(f"service-ips has `{e.text()}`, but a client connects to "
                          f"{HAND_IP} on TCP port {HAND_PORT}: the key must match all three",
                          hint=cmd, expected=f"{HAND_IP} . tcp . {HAND_PORT} : goto service-…",
                          actual=e.text())
        others = [n.name for n in nft.cluster.nodes() if n.name != nft.node and any(
            e.ip == HAND_IP for e in proxyscale.map_elements(proxyscale.read_nft(n.netns)))]
        if others:
            return failed(f"the element is on {', '.join(others)}, but the client's first "
                          f"packet is NATed on ITS node, {nft.node}",
                          hint=f"add it where the client runs: {cmd}",
                          expected=f"the element on {nft.node}", actual=", ".join(others))
        return failed(f"{nft.node}'s service-ips map has no element for {HAND_IP}",
                      hint=cmd, expected=f"{HAND_IP} . tcp . {HAND_PORT} : goto service-…",
                      actual="no element")
    owner = proxyscale.chain_service(mine.target)
    if mine.verdict not in ("goto", "jump") or owner is None:
        return failed(f"the element says `{mine.text()}`: it must send the packet to a "
                      "Service's chain", hint=cmd, expected="goto service-…",
                      actual=mine.text())
    if owner[0] == "endpoint":
        return failed(f"the element goes straight to an endpoint chain ({mine.target}): every "
                      "connection would reach the same backend, with no load balancing",
                      hint=f"point it at the Service's chain, which picks an endpoint at random "
                           f"(numgen): {cmd}",
                      expected="goto service-…", actual=mine.text())
    ok, detail = _probe_hand(nft)
    if not ok:
        return failed(f"the element is there (`{mine.text()}`), but a connection from the "
                      f"client to {HAND_IP}:{HAND_PORT} fails: {detail}",
                      hint=f"is {mine.target} a chain of table ip kube-proxy? "
                           f"NFT.sh(\"nft list chain ip kube-proxy {mine.target}\")",
                      expected="an HTTP answer from a backend", actual=detail)
    return passed(f"{HAND_IP}:{HAND_PORT} reaches {detail} through `{mine.text()}`: one "
                  "element, added in one small transaction, whatever the number of Services. "
                  "(kube-proxy's next full sync will flush the map and drop it: it owns the "
                  "table.)")


__all__ = ["HAND_IP", "HAND_PORT", "IPT_CLUSTER", "LAB", "NFT_CLUSTER", "NFT_CONFIG", "Side",
           "side"]
