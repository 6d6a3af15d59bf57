"""Seeing what kube-proxy's rules did to a connection, read from the live kernel.

- :func:`conntrack` lists a node's connection-tracking entries (`conntrack -L`), each with its
  NAT mapping: which address the client asked for (a ClusterIP, a NodePort, a load-balancer IP)
  and which endpoint the kernel chose (DNAT), and whose source address was rewritten (SNAT).
- :func:`packet_walk` sends one new connection and records the chains and rules its first
  packet passes on every node, using the kernel's own packet tracer (`meta nftrace set 1` in a
  short-lived table, read back with `nft monitor trace`), then annotates each rule with the
  counters the kernel holds for it now. iptables-mode rules are nftables rules underneath
  (iptables-nft), so one tracer serves both kube-proxy modes.
"""

from __future__ import annotations

import html
import ipaddress
import random
import re
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lab_kit import kernel
from lab_kit.errors import LabError

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

TRACE_TABLE = "lab_kit_trace"


# --- conntrack ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    """One conntrack entry: the original direction and the reply direction."""
    node: str
    protocol: str
    state: str
    src: str
    sport: int
    dst: str
    dport: int
    reply_src: str
    reply_sport: int
    reply_dst: str
    reply_dport: int

    @property
    def dnat(self) -> str | None:
        """`asked -> chosen` when the destination was rewritten (a Service was resolved)."""
        if (self.dst, self.dport) != (self.reply_src, self.reply_sport):
            return f"{self.dst}:{self.dport} -> {self.reply_src}:{self.reply_sport}"
        return None

    @property
    def snat(self) -> str | None:
        """`client -> as seen by the endpoint` when the source was rewritten (masquerade)."""
        if (self.src, self.sport) != (self.reply_dst, self.reply_dport):
            return f"{self.src}:{self.sport} -> {self.reply_dst}:{self.reply_dport}"
        return None

    def row(self) -> list[str]:
        return [self.node, self.protocol, self.state, f"{self.src}:{self.sport}",
                f"{self.dst}:{self.dport}", self.dnat or "-", self.snat or "-"]


_CT_KV = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str, node: str) -> list[Flow]:
    """`conntrack -L` text -> flows (TCP and UDP; the first src/dst group is the original
    direction, the second the reply)."""
    out: list[Flow] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] not in ("tcp", "udp"):
            continue
        state = words[3] if words[0] == "tcp" else ("ASSURED" if "[ASSURED]" in line
                                                    else "UNREPLIED" if "[UNREPLIED]" in line
                                                    else "-")
        kv: dict[str, list[str]] = {}
        for k, v in _CT_KV.findall(line):
            kv.setdefault(k, []).append(v)
        try:
            out.append(Flow(node, words[0].upper(), state, kv["src"][0], int(kv["sport"][0]),
                            kv["dst"][0], int(kv["dport"][0]), kv["src"][1],
                            int(kv["sport"][1]), kv["dst"][1], int(kv["dport"][1])))
        except (KeyError, IndexError, ValueError):
            continue
    return out


class FlowTable(list):
    HEADERS = ["NODE", "PROTO", "STATE", "CLIENT", "ASKED FOR", "DNAT (asked -> endpoint)",
               "SNAT (client -> as seen)"]

    def __str__(self) -> str:
        from lab_kit.cluster import Table
        return str(Table(self.HEADERS, [f.row() for f in self])) if self else "(no entries)"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.HEADERS)
        body = "".join("<tr>" + "".join(f"<td><code>{html.escape(c)}</code></td>"
                                        for c in f.row()) + "</tr>" for f in self)
        return f"<table><tr>{head}</tr>{body}</table>" if self else "<i>no entries</i>"


def conntrack(cluster: Cluster, node: str | None = None, *, src: str | None = None,
              dst: str | None = None, port: int | None = None, protocol: str | None = None,
              nat_only: bool = True) -> FlowTable:
    """Conntrack entries on one node (or every node), filtered by original source/destination
    IP, destination port and protocol; by default only flows whose address was rewritten."""
    nodes = [cluster.node(node)] if node else [cluster.node(n.name) for n in cluster.nodes()]
    flows: list[Flow] = []
    for n in nodes:
        argv = ["conntrack", "-L"]
        if protocol:
            argv += ["-p", protocol.lower()]
        res = cluster.runner.run(argv, n.netns, check=False, record=False)
        flows += parse_conntrack(res.stdout, n.name)
    src_ip = _ip_of(cluster, src)
    dst_ip = _ip_of(cluster, dst)
    return FlowTable(f for f in flows
                     if (src_ip is None or f.src == src_ip)
                     and (dst_ip is None or f.dst == dst_ip)
                     and (port is None or f.dport == port)
                     and (not nat_only or f.dnat or f.snat))


def _ip_of(cluster: Cluster, ref: str | None) -> str | None:
    if ref is None:
        return None
    try:
        ipaddress.IPv4Address(ref)
        return ref
    except ValueError:
        return cluster.endpoint(ref)[2]


# --- the packet walk ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    node: str
    table: str
    chain: str
    rule: str  # as nft prints it; "" for a chain's policy
    verdict: str
    packets: int | None = None  # the rule's counter now (None: the rule has no counter)
    bytes: int | None = None

    def row(self) -> list[str]:
        count = "-" if self.packets is None else f"{self.packets} pkts"
        return [self.node, f"{self.table} {self.chain}", self.rule or "(policy)", self.verdict,
                count]


class Walk(list):
    """The steps of one packet, node by node, in the order the kernel evaluated them."""
    HEADERS = ["NODE", "TABLE CHAIN", "RULE", "VERDICT", "COUNTER"]

    def chains(self) -> list[str]:
        """Chain names in the order first visited."""
        seen: list[str] = []
        for s in self:
            if s.chain not in seen:
                seen.append(s.chain)
        return seen

    def __str__(self) -> str:
        from lab_kit.cluster import Table
        return str(Table(self.HEADERS, [s.row() for s in self])) if self else "(no steps)"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.HEADERS)
        rows = []
        for s in self:
            colour = ' style="background:#e8f5e9"' if "dnat" in s.rule or "DNAT" in s.verdict \
                else ""
            rows.append(f"<tr{colour}>" + "".join(f"<td><code>{html.escape(c)}</code></td>"
                                                  for c in s.row()) + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


_TRACE = re.compile(r"^trace id \S+ (\w+) (\S+) (\S+) (rule|policy) ?(.*)$")
_VERDICT = re.compile(r"\s*\(verdict ([^)]*)\)\s*$")
_COUNTER = re.compile(r"\s*counter packets (\d+) bytes (\d+)")


def _norm(rule: str) -> str:
    return " ".join(_COUNTER.sub("", rule).split())


def parse_trace(text: str, node: str) -> list[Step]:
    """`nft monitor trace` lines -> steps of the first packet (the lab's own trace table left
    out). The walk ends when the packet leaves the postrouting hook: later lines are the
    kernel tracing packets that inherited the mark, not the one sent."""
    steps: list[Step] = []
    in_post = False
    for line in text.splitlines():
        m = _TRACE.match(line.strip())
        if not m:
            continue
        _family, table, chain, kind, rest = m.groups()
        if table == TRACE_TABLE:
            continue
        post = "postrouting" in chain.lower() or chain in ("KUBE-POSTROUTING", "masquerading")
        if in_post and not post:
            break
        in_post = in_post or post
        if kind == "policy":
            steps.append(Step(node, table, chain, "", f"policy {rest.strip()}"))
            continue
        v = _VERDICT.search(rest)
        verdict = v.group(1) if v else ""
        rule = _norm(_VERDICT.sub("", rest))
        steps.append(Step(node, table, chain, rule, verdict))
    return steps


def parse_counters(listing: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """`nft list table …` -> {(table, chain, normalised rule): (packets, bytes)}."""
    out: dict[tuple[str, str, str], tuple[int, int]] = {}
    table = chain = ""
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("table "):
            table = line.split()[2]
        elif line.startswith("chain "):
            chain = line.split()[1]
        elif line and not line.startswith(("type ", "policy", "}", "comment", "set ", "map ",
                                           "elements", "flags", "timeout")):
            m = _COUNTER.search(line)
            if m:
                out[(table, chain, _norm(line))] = (int(m.group(1)), int(m.group(2)))
    return out


def packet_walk(cluster: Cluster, src: str, dst: str, port: int, protocol: str = "TCP",
                settle: float = 0.25) -> tuple[Walk, Any]:
    """Trace the first packet of one new connection from `src` to `dst:port` on every node.

    Returns (walk, probe result). The trace table is removed again, whatever happens.
    """
    protocol = protocol.upper()
    if protocol not in ("TCP", "UDP"):
        raise LabError(f"protocol {protocol!r}: use TCP or UDP")
    src_label, src_ns, src_ip = cluster.endpoint(src)
    dst_ip = _ip_of(cluster, dst)
    assert dst_ip is not None
    proto = protocol.lower()
    # the packet is known by its source address and a source port picked for this walk: both
    # survive the DNAT, so the node that receives it after the first node's DNAT traces it too
    # (a masqueraded packet gets a new source, and is traced only up to the masquerade)
    sport = random.randint(20000, 29999)
    first = "tcp flags & (syn | ack) == syn " if proto == "tcp" else ""
    match = f"ip saddr {src_ip} {proto} sport {sport} {first}"
    script = (f"table ip {TRACE_TABLE} {{\n"
              f"  chain pre {{ type filter hook prerouting priority -350; "
              f"{match}meta nftrace set 1; }}\n"
              f"  chain out {{ type filter hook output priority -350; "
              f"{match}meta nftrace set 1; }}\n}}\n")
    nodes = [(n.name, n.netns) for n in cluster.nodes()]
    runner = cluster.runner
    monitors: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for _name, ns in nodes:
            runner.run(["nft", "-f", "-"], ns, input=script, source="packet walk")
        for name, ns in nodes:
            runner.note(["nft", "monitor", "trace"], ns, source="packet walk")
            monitors.append((name, subprocess.Popen(
                kernel.in_netns_argv(["nft", "monitor", "trace"], ns),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)))
        time.sleep(settle)  # the monitors subscribe to the kernel's trace events
        from lab_kit.cluster import probe_socket
        result = probe_socket(src_label, src_ns, dst, dst_ip, port, protocol, "/hostname", 1.0,
                              sport=sport)
        time.sleep(settle)
    finally:
        outputs = {}
        for name, p in monitors:
            p.terminate()
            try:
                outputs[name] = p.communicate(timeout=5)[0]
            except subprocess.TimeoutExpired:
                p.kill()
                outputs[name] = p.communicate()[0]
        for _name, ns in nodes:
            if kernel.netns_exists(ns):
                runner.run(["nft", "delete", "table", "ip", TRACE_TABLE], ns, check=False,
                           source="packet walk")
    walk = Walk()
    traced = [(name, ns, parse_trace(outputs.get(name, ""), name)) for name, ns in nodes]
    # the node where kube-proxy's DNAT happened saw the packet first; then the others
    traced.sort(key=lambda t: not any("dnat" in s.rule for s in t[2]))
    for _name, ns, steps in traced:
        if not steps:
            continue
        listing = runner.run(["nft", "list", "ruleset"], ns, record=False).stdout
        counters = parse_counters(listing)
        for s in steps:
            c = counters.get((s.table, s.chain, s.rule))
            walk.append(Step(s.node, s.table, s.chain, s.rule, s.verdict,
                             *(c if c else (None, None))))
    return walk, result

