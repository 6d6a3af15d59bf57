"""NetworkPolicy (networking.k8s.io/v1): the objects, a pure policy engine, and the filter rules.

Three layers, each usable on its own:

- **parse** (`parse_policy`): a manifest's `spec` -> a frozen `NetworkPolicy`, validated as the API
  server does (`ValidateNetworkPolicySpec`) and defaulted as it does (`policyTypes`, protocol TCP).
  Every error names the field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
- **engine** (`Engine`): the expected truth table from the objects alone — which pod may open a
  connection to which pod (or IP) on which port. It knows nothing of rules or kernels; the lab
  shows its answer beside the matrix real probes measure.
- **rules** (`node_rules` -> `render_iptables` / `render_nft`): what one node's netns needs to
  enforce the policies of the pods on that node, in Calico's chain layout (`cali-FORWARD`,
  `cali-from-wl-dispatch`, `cali-fw-<veth>` for a pod's egress, `cali-to-wl-dispatch`,
  `cali-tw-<veth>` for its ingress, `cali-pi-`/`cali-po-` per policy) and its accept mark 0x10000.

Semantics, as upstream defines them:

- A pod is *isolated* for ingress (egress) when at least one policy in its namespace selects it
  and lists `Ingress` (`Egress`) in `policyTypes`. A non-isolated direction allows everything.
- An isolated direction allows exactly the union of the rules of the policies that isolate it.
  A connection needs both: egress allowed at the source pod, ingress allowed at the destination.
- `policyTypes` absent: `[Ingress]`, plus `Egress` when the policy has egress rules.
- A rule with no `from`/`to` matches every peer; with no `ports`, every port and protocol.
  `ingress: []` (or absent) under `Ingress` allows nothing.
- A peer with `podSelector` alone means pods of the policy's namespace; `namespaceSelector` alone,
  every pod of the matching namespaces; both in one peer, pods matching both (AND); two peers are
  alternatives (OR). `ipBlock` matches addresses (pod IPs too), minus its `except` ranges.
- A named port is looked up on the destination pod (name and protocol); a destination that is not
  a pod has no named ports.
- A pod talking to itself is always allowed: the packets never leave its network namespace (the
  upstream e2e suite's `AllowLoopback`).
- Replies of an allowed connection always pass (conntrack `ESTABLISHED`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab_kit import naming
from lab_kit.fields import FieldParser

if TYPE_CHECKING:
    from lab_kit.kernel import Runner

PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
ACCEPT_MARK = 0x10000  # Felix's IptablesMarkAccept: disjoint from kube-proxy's 0x4000
CHAIN_PREFIX = "cali-"
NFT_TABLE = "calico"
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


# --- the objects ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # a pod without the key matches NotIn, as upstream
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """A metav1.LabelSelector. The empty selector (`{}`) matches everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def __str__(self) -> str:
        """kubectl's rendering: `a=b,c in (d,e)`; `<none>` for the empty selector."""
        parts = [(k, f"{k}={v}") for k, v in self.match_labels]
        for r in self.match_expressions:
            vals = ",".join(sorted(r.values))
            parts.append((r.key, {"In": f"{r.key} in ({vals})",
                                  "NotIn": f"{r.key} notin ({vals})", "Exists": r.key,
                                  "DoesNotExist": f"!{r.key}"}[r.operator]))
        # kubectl sorts the requirements by key (labels.Selector.String)
        return ",".join(text for _, text in sorted(parts, key=lambda kv: kv[0])) or "<none>"


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()

    def contains(self, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        if a not in ipaddress.ip_network(self.cidr, strict=False):
            return False
        return not any(a in ipaddress.ip_network(e, strict=False) for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of `protocol`; str: a named port
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule. Empty `peers`: every peer; empty `ports`: every port."""
    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict, compare=False)  # as given, defaulted

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == "Ingress" else self.egress


# --- parsing and validation (the API server's rules) -----------------------------------------

class _Parser(FieldParser):
    def selector(self, d: Any, fld: str) -> LabelSelector:
        d = self.mapping(d, fld)
        unknown = set(d) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise self.fail(f"unknown field {sorted(unknown)[0]!r} in a label selector", fld,
                            "a selector has matchLabels and/or matchExpressions")
        labels = []
        for k, v in self.mapping(d.get("matchLabels"), f"{fld}.matchLabels").items():
            k, v = str(k), "" if v is None else str(v)
            self.label_key(k, f"{fld}.matchLabels")
            if not _LABEL_VALUE_RE.match(v):
                raise self.fail(f"{v!r} is not a valid label value (at most 63 characters: "
                                "letters, digits, '-', '_', '.')", f"{fld}.matchLabels.{k}")
            labels.append((k, v))
        exprs = []
        for i, e in enumerate(self.listing(d.get("matchExpressions"),
                                           f"{fld}.matchExpressions")):
            efld = f"{fld}.matchExpressions[{i}]"
            e = self.mapping(e, efld)
            key, op = str(e.get("key", "")), e.get("operator")
            self.label_key(key, f"{efld}.key")
            vals = [str(v) for v in self.listing(e.get("values"), f"{efld}.values")]
            if op not in OPERATORS:
                raise self.fail(f"{op!r} is not a valid selector operator", f"{efld}.operator",
                                f"use one of {', '.join(OPERATORS)}")
            if op in ("In", "NotIn") and not vals:
                raise self.fail(f"must be specified when `operator` is '{op}'",
                                f"{efld}.values")
            if op in ("Exists", "DoesNotExist") and vals:
                raise self.fail(f"may not be specified when `operator` is '{op}'",
                                f"{efld}.values")
            for j, v in enumerate(vals):
                if not _LABEL_VALUE_RE.match(v):
                    raise self.fail(f"{v!r} is not a valid label value", f"{efld}.values[{j}]")
            exprs.append(Requirement(key, op, tuple(vals)))
        return LabelSelector(tuple(sorted(labels)), tuple(exprs))

    def label_key(self, k: str, fld: str) -> None:
        prefix, slash, name = k.rpartition("/")
        if not _LABEL_NAME_RE.match(name) or (
                slash and (len(prefix) > 253 or not naming.DNS_SUBDOMAIN_RE.match(prefix))):
            raise self.fail(f"{k!r} is not a valid label key ([prefix/]name, name at most 63 "
                            "characters)", fld)

    def cidr(self, v: Any, fld: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if not isinstance(v, str) or "/" not in v:
            raise self.fail(f"{v!r} must be a valid CIDR value, (e.g. 10.9.8.0/24 or "
                            "2001:db8::/64)", fld)
        try:
            return ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise self.fail(f"{v!r} must be a valid CIDR value, (e.g. 10.9.8.0/24 or "
                            "2001:db8::/64)", fld) from None

    def peer(self, d: Any, fld: str) -> Peer:
        d = self.mapping(d, fld)
        given = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if d.get(k) is not None]
        if not given:
            raise self.fail("must specify a peer", fld,
                            "give podSelector, namespaceSelector (or both), or ipBlock")
        if "ipBlock" in given and len(given) > 1:
            raise self.fail("may not specify both ipBlock and another peer", fld,
                            "put the ipBlock in a peer of its own")
        if "ipBlock" in given:
            b = self.mapping(d["ipBlock"], f"{fld}.ipBlock")
            if not b.get("cidr"):
                raise self.fail("Required value", f"{fld}.ipBlock.cidr")
            net = self.cidr(b["cidr"], f"{fld}.ipBlock.cidr")
            excepts = []
            for i, e in enumerate(self.listing(b.get("except"), f"{fld}.ipBlock.except")):
                efld = f"{fld}.ipBlock.except[{i}]"
                sub = self.cidr(e, efld)
                if (sub.version != net.version or sub.network_address not in net
                        or sub.prefixlen <= net.prefixlen):
                    raise self.fail(f"{e!r} must be a strict subset of `cidr` ({b['cidr']})",
                                    efld)
                excepts.append(sub)
            merged = tuple(str(n) for n in ipaddress.collapse_addresses(excepts))
            return Peer(ip_block=IPBlock(str(net), merged))
        return Peer(
            pod_selector=None if d.get("podSelector") is None
            else self.selector(d["podSelector"], f"{fld}.podSelector"),
            namespace_selector=None if d.get("namespaceSelector") is None
            else self.selector(d["namespaceSelector"], f"{fld}.namespaceSelector"))

    def port(self, d: Any, fld: str) -> PolicyPort:
        d = self.mapping(d, fld)
        proto = d.get("protocol", "TCP")
        if proto not in PROTOCOLS:
            raise self.fail(f"Unsupported value: {proto!r}", f"{fld}.protocol",
                            f"supported values: {', '.join(PROTOCOLS)}")
        port, end = d.get("port"), d.get("endPort")
        if port is None:
            if end is not None:
                raise self.fail("may not be specified when `port` is not specified",
                                f"{fld}.endPort")
            return PolicyPort(proto)
        if isinstance(port, bool) or not isinstance(port, int | str):
            raise self.fail(f"{port!r} must be a port number or a port name", f"{fld}.port")
        if isinstance(port, str) and port.isdigit():
            raise self.fail(f"{port!r} is a string: a numeric port is written without quotes",
                            f"{fld}.port", "write `port: 80`, not `port: \"80\"`")
        if isinstance(port, int):
            if not 1 <= port <= 65535:
                raise self.fail(f"{port} must be between 1 and 65535, inclusive", f"{fld}.port")
            if end is not None:
                if isinstance(end, bool) or not isinstance(end, int):
                    raise self.fail(f"{end!r} must be a port number", f"{fld}.endPort")
                if end < port:
                    raise self.fail(f"{end} must be greater than or equal to `port` ({port})",
                                    f"{fld}.endPort")
                if end > 65535:
                    raise self.fail(f"{end} must be between 1 and 65535, inclusive",
                                    f"{fld}.endPort")
            return PolicyPort(proto, port, end)
        if end is not None:
            raise self.fail("may not be specified when `port` is non-numeric", f"{fld}.endPort")
        if not naming.IANA_SVC_NAME_RE.match(port):
            raise self.fail(f"{port!r} is not a valid port name (at most 15 lowercase letters, "
                            "digits and '-', with at least one letter)", f"{fld}.port")
        return PolicyPort(proto, port)

    def rules(self, lst: Any, fld: str, peers_key: str) -> tuple[Rule, ...]:
        out = []
        for i, r in enumerate(self.listing(lst, fld)):
            rfld = f"{fld}[{i}]"
            r = self.mapping(r, rfld)
            other = "from" if peers_key == "to" else "to"
            if other in r:
                raise self.fail(f"`{other}` belongs to {'ingress' if other == 'from' else 'egress'}"
                                f" rules; an {fld.rsplit('.', 1)[-1]} rule has `{peers_key}`",
                                f"{rfld}.{other}")
            peers = tuple(self.peer(p, f"{rfld}.{peers_key}[{j}]")
                          for j, p in enumerate(self.listing(r.get(peers_key),
                                                             f"{rfld}.{peers_key}")))
            ports = tuple(self.port(p, f"{rfld}.ports[{j}]")
                          for j, p in enumerate(self.listing(r.get("ports"), f"{rfld}.ports")))
            out.append(Rule(peers, ports))
        return tuple(out)


def parse_policy(namespace: str, name: str, labels: Mapping[str, str], spec: Any, *,
                 file: str = "<object>") -> NetworkPolicy:
    """A NetworkPolicy from its `spec`, validated and defaulted as the API server does."""
    p = _Parser(file, f"NetworkPolicy/{namespace}/{name}")
    spec = p.mapping(spec, "spec")
    if "podSelector" not in spec:
        raise p.fail("Required value: a policy must say which pods it selects",
                     "spec.podSelector", "`podSelector: {}` selects every pod of the namespace")
    selector = p.selector(spec.get("podSelector"), "spec.podSelector")
    ingress = p.rules(spec.get("ingress"), "spec.ingress", "from")
    egress = p.rules(spec.get("egress"), "spec.egress", "to")
    types = p.listing(spec.get("policyTypes"), "spec.policyTypes")
    if len(types) > 2:
        raise p.fail("may not specify more than two policyTypes", "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in POLICY_TYPES:
            raise p.fail(f"Unsupported value: {t!r}", f"spec.policyTypes[{i}]",
                         "supported values: Ingress, Egress")
    if not types:  # the API server's defaulting (SetDefaults_NetworkPolicy)
        types = ["Ingress"] + (["Egress"] if egress else [])
    defaulted = dict(spec, policyTypes=list(types))
    return NetworkPolicy(namespace=namespace, name=name, pod_selector=selector,
                         policy_types=tuple(dict.fromkeys(types)), ingress=ingress,
                         egress=egress, labels=dict(labels), spec=defaulted)


def policy_to_json(p: NetworkPolicy) -> dict[str, Any]:
    return {"namespace": p.namespace, "name": p.name, "labels": p.labels, "spec": p.spec}


def policy_from_json(d: Mapping[str, Any]) -> NetworkPolicy:
    return parse_policy(d["namespace"], d["name"], d.get("labels") or {}, d["spec"],
                        file="<state>")


# --- the engine: the expected truth table from the objects alone ------------------------------

@dataclass(frozen=True)
class PodRef:
    """What the engine and the rules need of a pod."""
    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str]
    ports: tuple[tuple[str, str, int], ...] = ()  # (name, protocol, containerPort), named only
    node: str = ""
    iface: str = ""  # host side of the pod's veth (names its chains)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        for n, proto, port in self.ports:
            if n == name and proto == protocol:
                return port
        return None


@dataclass(frozen=True)
class Verdict:
    """The engine's answer for one connection. `reason` says why in one line (for a blocked
    one, the side that blocks it); `egress` and `ingress` say what each side's policies say
    ("" for a side not asked: the source or destination is not a pod, or egress blocked)."""
    allowed: bool
    reason: str
    egress: str = ""
    ingress: str = ""

    def side(self, side: str) -> str:
        """What the policies of `side` ("egress" or "ingress") say about this connection."""
        return self.egress if side == "egress" else self.ingress

    def __bool__(self) -> bool:
        return self.allowed


Target = PodRef | str  # a pod, or a bare IP address (outside the cluster, a node)


class Engine:
    """Answers "may SRC connect to DST on PORT/PROTOCOL?" from the objects alone."""

    def __init__(self, policies: Iterable[NetworkPolicy], pods: Iterable[PodRef],
                 namespaces: Mapping[str, Mapping[str, str]]) -> None:
        self.policies = sorted(policies, key=lambda p: p.key)
        self.pods = list(pods)
        self.by_ip = {p.ip: p for p in self.pods}
        self.namespaces = {n: _ns_labels(n, labels) for n, labels in namespaces.items()}

    def selecting(self, pod: PodRef, direction: str) -> list[NetworkPolicy]:
        """The policies that isolate `pod` in `direction` ("Ingress" or "Egress")."""
        return [p for p in self.policies if p.namespace == pod.namespace
                and direction in p.policy_types and p.pod_selector.matches(pod.labels)]

    def peer_matches(self, policy: NetworkPolicy, peer: Peer, other: Target) -> bool:
        if peer.ip_block is not None:
            return peer.ip_block.contains(other.ip if isinstance(other, PodRef) else other)
        if not isinstance(other, PodRef):
            return False
        if peer.namespace_selector is None:
            if other.namespace != policy.namespace:
                return False
        elif not peer.namespace_selector.matches(self.namespaces.get(other.namespace)
                                                 or _ns_labels(other.namespace, {})):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(other.labels)

    @staticmethod
    def port_matches(rule: Rule, dst: Target, port: int, protocol: str) -> bool:
        if not rule.ports:
            return True
        for pp in rule.ports:
            if pp.protocol != protocol:
                continue
            if pp.port is None:
                return True
            if isinstance(pp.port, int):
                if pp.port <= port <= (pp.end_port or pp.port):
                    return True
            elif isinstance(dst, PodRef) and dst.named_port(pp.port, protocol) == port:
                return True
        return False

    def _direction(self, pod: PodRef, other: Target, dst: Target, port: int, protocol: str,
                   direction: str) -> Verdict:
        isolating = self.selecting(pod, direction)
        side = "ingress" if direction == "Ingress" else "egress"
        if not isolating:
            return Verdict(True, f"{pod.key} is not isolated for {side}")
        for pol in isolating:
            for i, rule in enumerate(pol.rules(direction)):
                if (not rule.peers or any(self.peer_matches(pol, pr, other) for pr in rule.peers)
                        ) and self.port_matches(rule, dst, port, protocol):
                    return Verdict(True, f"{side} of {pod.key} allowed by {pol.key} "
                                         f"{side} rule {i}")
        names = ", ".join(p.key for p in isolating)
        return Verdict(False, f"{pod.key} is isolated for {side} by {names} and no rule "
                              f"allows it")

    def verdict(self, src: Target, dst: Target, port: int, protocol: str = "TCP") -> Verdict:
        src, dst = self._resolve(src), self._resolve(dst)
        if isinstance(src, PodRef) and isinstance(dst, PodRef) and src.key == dst.key:
            return Verdict(True, "a pod talking to itself never leaves its network namespace")
        eg = (self._direction(src, dst, dst, port, protocol, "Egress")
              if isinstance(src, PodRef) else Verdict(True, "the source is not a pod"))
        if not eg:
            return Verdict(False, eg.reason, egress=eg.reason)
        ing = (self._direction(dst, src, dst, port, protocol, "Ingress")
               if isinstance(dst, PodRef) else Verdict(True, "the destination is not a pod"))
        if not ing:
            return Verdict(False, ing.reason, egress=eg.reason, ingress=ing.reason)
        return Verdict(True, f"{eg.reason}; {ing.reason}", egress=eg.reason, ingress=ing.reason)

    def allowed(self, src: Target, dst: Target, port: int, protocol: str = "TCP") -> bool:
        return self.verdict(src, dst, port, protocol).allowed

    def matrix(self, pods: Iterable[str] | None = None, port: int = 80, protocol: str = "TCP"
               ) -> dict[str, dict[str, bool]]:
        """The expected truth table `{from: {to: allowed}}` over `pods` (keys `ns/name`)."""
        keys = list(pods) if pods is not None else [p.key for p in self.pods]
        by_key = {p.key: p for p in self.pods}
        return {a: {b: self.allowed(by_key[a], by_key[b], port, protocol) for b in keys}
                for a in keys}

    def _resolve(self, t: Target) -> Target:
        if isinstance(t, PodRef):
            return t
        return self.by_ip.get(t, t)


def _ns_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A namespace's labels, with the one the API server always sets."""
    return {**labels, "kubernetes.io/metadata.name": name}


# --- rules for one node: a small intermediate form, then iptables or nft text -----------------

@dataclass(frozen=True)
class Match:
    """One allow rule of a policy chain: traffic from/to `peer` (a CIDR; None: anywhere),
    minus `excepts`, to `local` (the local pod, for named ports of ingress rules), on
    `protocol`/`ports` (None: any)."""
    peer: str | None = None
    excepts: tuple[str, ...] = ()
    local: str | None = None
    protocol: str | None = None
    ports: tuple[int, int] | None = None
    comment: str = ""


@dataclass(frozen=True)
class PolicyChain:
    name: str
    direction: str  # Ingress / Egress
    policy: str  # ns/name
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class PodChain:
    name: str
    direction: str
    pod: str  # ns/name
    ip: str
    policies: tuple[str, ...]  # policy chain names, in order


@dataclass(frozen=True)
class NodeRules:
    node: str
    pod_chains: tuple[PodChain, ...] = ()
    policy_chains: tuple[PolicyChain, ...] = ()

    @property
    def chains(self) -> list[str]:
        base = [f"{CHAIN_PREFIX}FORWARD", f"{CHAIN_PREFIX}from-wl-dispatch",
                f"{CHAIN_PREFIX}to-wl-dispatch"]
        return base + [c.name for c in self.pod_chains] + [c.name for c in self.policy_chains] \
            + [except_chain(c.name, i) for c in self.policy_chains
               for i, m in enumerate(c.matches) if m.excepts]


def pod_chain(direction: str, pod: PodRef) -> str:
    """`cali-tw-<veth>` (to workload: its ingress) / `cali-fw-<veth>` (from: its egress)."""
    tag = "tw" if direction == "Ingress" else "fw"
    iface = pod.iface or "p" + naming.safe_encode(pod.key, 11)
    return f"{CHAIN_PREFIX}{tag}-{iface}"[:28]


def policy_chain(direction: str, policy: NetworkPolicy) -> str:
    tag = "pi" if direction == "Ingress" else "po"
    return f"{CHAIN_PREFIX}{tag}-{naming.safe_encode(policy.key, 16)}"


def except_chain(chain: str, index: int) -> str:
    """The helper chain of an `ipBlock` with `except` (iptables matches one CIDR per rule)."""
    return f"{CHAIN_PREFIX}px-{naming.safe_encode(f'{chain}/{index}', 16)}"


def node_rules(engine: Engine, node: str) -> NodeRules:
    """What `node` needs: a chain per isolated local pod and direction, and a chain per policy
    that selects a local pod, its rules expanded to addresses and ports."""
    local = sorted((p for p in engine.pods if p.node == node), key=lambda p: p.key)
    pod_chains: list[PodChain] = []
    selected: dict[tuple[str, str], list[PodRef]] = {}
    policies = {p.key: p for p in engine.policies}
    for direction in POLICY_TYPES:
        for pod in local:
            isolating = engine.selecting(pod, direction)
            if not isolating:
                continue
            for pol in isolating:
                selected.setdefault((direction, pol.key), []).append(pod)
            pod_chains.append(PodChain(pod_chain(direction, pod), direction, pod.key, pod.ip,
                                       tuple(policy_chain(direction, p) for p in isolating)))
    chains = [PolicyChain(policy_chain(d, policies[k]), d, k,
                          tuple(_matches(engine, policies[k], d, pods)))
              for (d, k), pods in sorted(selected.items())]
    return NodeRules(node, tuple(pod_chains), tuple(chains))


def _matches(engine: Engine, pol: NetworkPolicy, direction: str, local: list[PodRef]
             ) -> list[Match]:
    out: list[Match] = []
    for i, rule in enumerate(pol.rules(direction)):
        note = f"{pol.key} {direction.lower()} rule {i}"
        # the peers, as (cidr, excepts); None: anywhere
        peers: list[tuple[str | None, tuple[str, ...], PodRef | None]] = []
        if not rule.peers:
            peers.append((None, (), None))
        for pr in rule.peers:
            if pr.ip_block is not None:
                peers.append((pr.ip_block.cidr, pr.ip_block.excepts, None))
            else:
                peers += [(f"{p.ip}/32", (), p) for p in engine.pods
                          if engine.peer_matches(pol, pr, p)]
        peers = list({(c, e): (c, e, p) for c, e, p in peers}.values())
        ports: list[PolicyPort | None] = list(rule.ports) or [None]
        for cidr, excepts, peer_pod in peers:
            for pp in ports:
                if pp is None or pp.port is None:
                    out.append(Match(cidr, excepts, None, pp.protocol if pp else None, None,
                                     note))
                elif isinstance(pp.port, int):
                    out.append(Match(cidr, excepts, None, pp.protocol,
                                     (pp.port, pp.end_port or pp.port), note))
                elif direction == "Ingress":  # named: looked up on each local destination pod
                    for pod in local:
                        n = pod.named_port(pp.port, pp.protocol)
                        if n is not None:
                            out.append(Match(cidr, excepts, f"{pod.ip}/32", pp.protocol,
                                             (n, n), f"{note} ({pp.port} of {pod.key})"))
                else:  # named, egress: looked up on every destination pod of this peer
                    dsts = [peer_pod] if peer_pod is not None else [
                        p for p in engine.pods if cidr is None
                        or IPBlock(cidr, excepts).contains(p.ip)]
                    for d in dsts:
                        n = d.named_port(pp.port, pp.protocol)
                        if n is not None:
                            out.append(Match(f"{d.ip}/32", (), None, pp.protocol, (n, n),
                                             f"{note} ({pp.port} of {d.key})"))
    return list(dict.fromkeys(out))


def _q(s: str) -> str:
    return '"' + s.replace('"', "'")[:250] + '"'


def render_iptables(rules: NodeRules, existing: Iterable[str] = (),
                    forward: str = "absent") -> str:
    """`iptables-restore --noflush` input: every `cali-` chain rewritten, stale ones deleted,
    and the jump from FORWARD made the first rule (before kube-proxy's KUBE-FORWARD, which
    accepts marked packets). `existing`: the `cali-` chains the filter table has now;
    `forward`: where FORWARD's jump to `cali-FORWARD` is now: "first", "present" or "absent"."""
    want = rules.chains
    out = ["*filter"] + [f":{c} - [0:0]" for c in want]
    fwd, frm, to = want[0], want[1], want[2]
    jump = f'-m comment --comment "cali:NetworkPolicy" -j {fwd}'
    if forward != "first":
        if forward == "present":
            out.append(f"-D FORWARD {jump}")
        out.append(f"-I FORWARD 1 {jump}")
    out += [f'-A {fwd} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment '
            f'"replies of allowed connections" -j ACCEPT',
            f"-A {fwd} -j {frm}", f"-A {fwd} -j {to}"]
    mark = f"0x{ACCEPT_MARK:x}/0x{ACCEPT_MARK:x}"
    for pc in rules.pod_chains:
        addr = "-s" if pc.direction == "Egress" else "-d"
        out.append(f"-A {frm if pc.direction == 'Egress' else to} {addr} {pc.ip}/32 "
                   f"-m comment --comment {_q(pc.pod)} -j {pc.name}")
        out.append(f"-A {pc.name} -j MARK --set-xmark 0x0/0x{ACCEPT_MARK:x}")
        for chain in pc.policies:
            out.append(f"-A {pc.name} -j {chain}")
            out.append(f"-A {pc.name} -m mark --mark {mark} -j RETURN")
        side = "ingress" if pc.direction == "Ingress" else "egress"
        out.append(f"-A {pc.name} -m comment --comment "
                   f"{_q(f'{pc.pod}: no NetworkPolicy allows this {side}')} -j DROP")
    for ch in rules.policy_chains:
        peer_flag = "-s" if ch.direction == "Ingress" else "-d"
        for i, m in enumerate(ch.matches):
            parts = [f"-A {ch.name}"]
            if m.peer:
                parts.append(f"{peer_flag} {m.peer}")
            if m.local:
                parts.append(f"-d {m.local}")
            if m.protocol:
                proto = m.protocol.lower()
                parts.append(f"-p {proto}")
                if m.ports:
                    lo, hi = m.ports
                    parts.append(f"-m {proto} --dport {lo}" + (f":{hi}" if hi != lo else ""))
            parts.append(f"-m comment --comment {_q(m.comment)}")
            if m.excepts:
                sub = except_chain(ch.name, i)
                out.append(" ".join(parts + [f"-j {sub}"]))
                out += [f"-A {sub} {peer_flag} {e} -j RETURN" for e in m.excepts]
                out.append(f"-A {sub} -j MARK --set-xmark {mark}")
            else:
                out.append(" ".join(parts + [f"-j MARK --set-xmark {mark}"]))
    stale = sorted(c for c in existing if c.startswith(CHAIN_PREFIX) and c not in set(want))
    # a stale chain still holds rules: declaring it flushes it, so the delete can succeed
    # (iptables-nft refuses to delete a non-empty chain: EBUSY)
    out[1:1] = [f":{c} - [0:0]" for c in stale]
    out += [f"-X {c}" for c in stale]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def render_iptables_removal(existing: Iterable[str], jump: bool = True) -> str:
    """Input that removes every `cali-` chain and the jump to them (no policy is left)."""
    ours = sorted(c for c in existing if c.startswith(CHAIN_PREFIX))
    fwd = f"{CHAIN_PREFIX}FORWARD"
    out = ["*filter"] + [f":{c} - [0:0]" for c in ours]
    if jump:
        out.append(f'-D FORWARD -m comment --comment "cali:NetworkPolicy" -j {fwd}')
    out += [f"-X {c}" for c in ours]
    return "\n".join(out + ["COMMIT"]) + "\n"


def render_nft(rules: NodeRules) -> str:
    """An `nft -f` script that replaces table `ip calico` atomically: the same chains as the
    iptables form, with nft's native except (`ip saddr != { … }`) instead of helper chains."""
    want = rules.chains
    fwd, frm, to = want[0], want[1], want[2]
    t = f"ip {NFT_TABLE}"
    out = [f"table {t} {{}}", f"delete table {t}", f"table {t} {{"]
    body: dict[str, list[str]] = {
        fwd: ["type filter hook forward priority filter; policy accept;",
              'ct state established,related accept comment "replies of allowed connections"',
              f"jump {frm}", f"jump {to}"],
        frm: [], to: []}
    for pc in rules.pod_chains:
        addr = "saddr" if pc.direction == "Egress" else "daddr"
        body[frm if pc.direction == "Egress" else to].append(
            f"ip {addr} {pc.ip} jump {pc.name} comment {_q(pc.pod)}")
        lines = [f"meta mark set mark and 0x{0xffffffff ^ ACCEPT_MARK:08x}"]
        for chain in pc.policies:
            lines += [f"jump {chain}", f"meta mark & 0x{ACCEPT_MARK:x} == 0x{ACCEPT_MARK:x} return"]
        side = "ingress" if pc.direction == "Ingress" else "egress"
        lines.append(f"drop comment {_q(f'{pc.pod}: no NetworkPolicy allows this {side}')}")
        body[pc.name] = lines
    for ch in rules.policy_chains:
        peer = "saddr" if ch.direction == "Ingress" else "daddr"
        lines = []
        for m in ch.matches:
            parts = []
            if m.peer:
                parts.append(f"ip {peer} {m.peer}")
            if m.excepts:
                parts.append(f"ip {peer} != {{ {', '.join(m.excepts)} }}")
            if m.local:
                parts.append(f"ip daddr {m.local}")
            if m.protocol:
                parts.append(f"meta l4proto {m.protocol.lower()}")
                if m.ports:
                    lo, hi = m.ports
                    parts.append(f"th dport {lo}" + (f"-{hi}" if hi != lo else ""))
            parts.append(f"meta mark set mark or 0x{ACCEPT_MARK:x} comment {_q(m.comment)}")
            lines.append(" ".join(parts))
        body[ch.name] = lines
    for name, lines in body.items():
        out.append(f"  chain {name} {{")
        out += [f"    {ln}" for ln in lines]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_nft_removal() -> str:
    t = f"ip {NFT_TABLE}"
    return f"table {t} {{}}\ndelete table {t}\n"


# --- applying (the only side effects) ----------------------------------------------------------

SYNC_TIMEOUT_S = 60.0


def _forward_jump(runner: Runner, netns: str) -> str:
    """Where FORWARD jumps to `cali-FORWARD`: "first", "present" (not first) or "absent"."""
    lines = [ln for ln in runner.run(["iptables", "-S", "FORWARD"], netns, check=False,
                                     record=False, timeout=SYNC_TIMEOUT_S).stdout.splitlines()
             if ln.startswith("-A FORWARD")]
    ours = [i for i, ln in enumerate(lines) if ln.endswith(f"-j {CHAIN_PREFIX}FORWARD")]
    return "absent" if not ours else "first" if ours == [0] else "present"


def sync_node(runner: Runner, mode: str, rules: NodeRules | None, netns: str, rules_dir: Path
              ) -> None:
    """Write one node's whole policy state in one atomic load (`rules` None: remove it all).

    iptables mode: `iptables-restore --noflush` of the `cali-` chains of the filter table;
    nftables mode: table `ip calico` replaced in one `nft -f` transaction. The loaded text is
    kept in `rules_dir/<node>.netpol.<mode>` so a learner can read exactly what was loaded.
    """
    rules_dir.mkdir(parents=True, exist_ok=True)
    node = netns.removeprefix(naming.PREFIX)
    if mode == "nftables":
        if rules is None:
            listed = runner.run(["nft", "list", "table", "ip", NFT_TABLE], netns, check=False,
                                record=False)
            if listed.rc != 0:
                return  # nothing of ours is there
            text = render_nft_removal()
        else:
            text = render_nft(rules)
        path = rules_dir / f"{node}.netpol.nft"
        path.write_text(text)
        runner.run(["nft", "-f", str(path)], netns, source="network-policy",
                   timeout=SYNC_TIMEOUT_S)
        return
    existing: list[str] = []
    listed = runner.run(["nft", "-j", "list", "chains", "ip"], netns, check=False, record=False,
                        timeout=SYNC_TIMEOUT_S)
    if listed.rc == 0 and listed.stdout.strip():
        existing = [c["chain"]["name"] for c in json.loads(listed.stdout).get("nftables", [])
                    if "chain" in c and c["chain"].get("table") == "filter"
                    and c["chain"]["name"].startswith(CHAIN_PREFIX)]
    if rules is None:
        if not existing:
            return
        text = render_iptables_removal(existing, _forward_jump(runner, netns) != "absent")
    else:
        text = render_iptables(rules, existing, _forward_jump(runner, netns))
    path = rules_dir / f"{node}.netpol.iptables"
    path.write_text(text)
    runner.run(["iptables-restore", "--noflush", str(path)], netns, source="network-policy",
               timeout=SYNC_TIMEOUT_S)
