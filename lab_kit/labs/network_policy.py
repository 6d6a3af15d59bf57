"""Checks of `labs/11-network-policies.ipynb`: NetworkPolicy, graded by real connections.

The lab's cluster `netpol` (labs/clusters/netpol.yaml: a control plane and two workers, VXLAN,
kube-proxy in iptables mode, cluster DNS) runs the upstream e2e suite's scenario
(labs/manifests/netpol-xyz.yaml: namespaces x, y and z with pods a, b and c, each serving TCP and
UDP on ports 80 and 81) and a small shop (labs/manifests/netpol-shop.yaml: namespace `shop` with
pods `frontend`, `api` and `db`, each serving HTTP on port 80 named `http`, and api's metrics on
9090). In order, the learner:

1. denies every connection into namespace x (`default-deny`); the check measures the TCP/80
   matrix of all twelve pods and the UDP/81 matrix of the x/y/z pods: nothing reaches a pod of x
   but the pod itself, and x's pods still connect out;
2. lets api accept only frontend, on its named port `http`, and db only api (`frontend-api`);
   the check measures the TCP/80 matrix and probes api's metrics port (9090) from every pod;
3. lets frontend open connections only to cluster DNS (the coredns pods, UDP and TCP 53) and
   to api (`egress-dns`); the check digs inside frontend (UDP, TCP, and the external resolver
   directly), curls `http://api.shop/hostname` there, and measures frontend's row of the matrix;
4. makes namespace y accept connections only from pods in y (`namespace-isolation`); the check
   measures both matrices;
5. lets frontend reach the external host's web server, 172.18.0.100:8080, and no other address
   or port outside the cluster, with an `ipBlock` (`ipblock-external`); `serve_internet(c)`
   starts that server (and the same one on a second address, 172.18.0.101, "another site"); the
   check probes both addresses and port 53 from frontend, and other pods' egress.

Every verdict comes from real connections and lookups: the policies themselves are never read
to decide. The policy engine's reason for a cell (`Reachability.verdicts`) only words the hints,
and a cell where the engine and the measurement disagree is reported as such.

Helpers for the notebook: `apply_and_probe` (apply YAML, show the matrix), `why` (the engine's
reason for one pair), `veth_of` (a pod's host-side veth, from the kernel), `pod_rules` (the
filter rules a pod's traffic passes on its node, with counters), `serve_internet`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, naming, netpol
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.errors import LabError
from lab_kit.labs.internet import (
    OTHER_IP,
    PROVIDER_IP,
    WEB_PORT,
    client_seen,
    internet_log,
    serve_internet,
)

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster
    from lab_kit.reachability import Reachability

__all__ = ["LAB", "Cell", "apply_and_probe", "internet_log", "pod_rules", "serve_internet",
           "veth_of", "why"]

LAB = Lab("11-network-policies", "Network policies: who may talk to whom", "netpol")

XYZ_MANIFEST = "manifests/netpol-xyz.yaml"
SHOP_MANIFEST = "manifests/netpol-shop.yaml"
XYZ = ("x", "y", "z")
XYZ_PODS = tuple(f"{ns}/{p}" for ns in XYZ for p in "abc")
SHOP = "shop"
FRONTEND, API, DB = "shop/frontend", "shop/api", "shop/db"
SHOP_PODS = (FRONTEND, API, DB)
ALL_PODS = XYZ_PODS + SHOP_PODS
PORT = 80  # every pod serves HTTP here: the matrix the exercises are graded on
UDP_PORT = 81  # the x/y/z pods serve UDP on 80 and 81
METRICS_PORT = 9090  # api's second port, named `metrics`
DNS_NAME = "api.shop.svc.cluster.local"
SETUP_HINT = (f'run the notebook\'s setup cell: c.apply("{XYZ_MANIFEST}") and '
              f'c.apply("{SHOP_MANIFEST}")')


# --- helpers for the notebook ---------------------------------------------------------------------

def apply_and_probe(c: Cluster, source: Any, port: int = PORT, protocol: str = "TCP",
                    pods: Iterable[str] | None = None) -> Reachability:
    """`c.apply(source)` (YAML text, a file, or dicts), print what kubectl would print, then
    measure the reachability matrix on `port`/`protocol` with real connections and return it
    (a coloured grid in the notebook: rows are the clients, columns the servers)."""
    for line in c.apply(source):
        print(line)
    return c.reachability(port, protocol, pods=list(pods) if pods is not None else None)


def why(c: Cluster, src: str, dst: str, port: int = PORT, protocol: str = "TCP") -> str:
    """The policy engine's answer for one connection, `src` → `dst` (pods as `ns/name`, or an
    IP address outside the cluster), from the objects alone: allowed or not, and which policy
    and rule decide it."""
    engine = c.policy_engine()
    by_key = {p.key: p for p in engine.pods}

    def target(t: str) -> Any:
        if t in by_key:
            return by_key[t]
        if "/" in t:
            raise LabError(f"no pod `{t}`; pods: {', '.join(sorted(by_key))}")
        return t
    v = engine.verdict(target(src), target(dst), port, protocol.upper())
    return f"{'allowed' if v.allowed else 'BLOCKED'}: {v.reason}"


def veth_of(c: Cluster, pod: str) -> str:
    """The host-side end of a pod's veth pair, read from the kernel: the link on the pod's node
    whose index is the peer index of the pod's eth0 (`ip link` shows `eth0@ifN` in the pod)."""
    shell = c.pod(pod)
    eth0 = kernel.Runner().json(["ip", "-j", "link", "show", "eth0"], shell.netns)
    peer = eth0[0].get("link_index") if eth0 else None
    node_ns = naming.node_netns(shell.node)
    for ln in kernel.Runner().json(["ip", "-j", "link", "show"], node_ns):
        if ln.get("ifindex") == peer:
            return str(ln["ifname"])
    raise LabError(f"pod `{pod}` has no veth on node {shell.node}")


def pod_rules(c: Cluster, pod: str, counters: bool = False) -> str:
    """The NetworkPolicy rules one pod's traffic passes on its node, as `iptables -S` prints
    them (with `counters`, as `iptables -L -v -n -x`: packets and bytes per rule): the dispatch
    rules that send it to the pod's chains, `cali-tw-<veth>` (what comes in) and
    `cali-fw-<veth>` (what goes out), and the per-policy chains those jump to. A pod no policy
    isolates has no chain of its own."""
    shell = c.pod(pod)
    node = c.node(shell.node)
    veth = veth_of(c, pod)
    text = node.sh("iptables -S", check=False)
    chains = [f"cali-tw-{veth}", f"cali-fw-{veth}"]
    have = {ln.split()[1] for ln in text.splitlines() if ln.startswith("-N ")}
    mine = [ch for ch in chains if ch in have]
    policy = []
    for ln in text.splitlines():
        words = ln.split()
        if len(words) > 3 and words[0] == "-A" and words[1] in mine and "-j" in words:
            target = words[words.index("-j") + 1]
            if target.startswith(("cali-pi-", "cali-po-")) and target not in policy:
                policy.append(target)
    out = [f"# node {node.name}: pod {shell.name} ({shell.ip}), veth {veth}"]
    dispatch = [ln for ln in text.splitlines()
                if ln.startswith(("-A cali-from-wl-dispatch", "-A cali-to-wl-dispatch"))
                and f"{shell.ip}/32" in ln.split()]
    if not mine:
        out.append(f"# no policy isolates {shell.name}: no chain cali-tw-{veth} or "
                   f"cali-fw-{veth}, every packet passes")
        return "\n".join(out)
    if counters:
        for ch in ["cali-from-wl-dispatch", "cali-to-wl-dispatch", *mine, *policy]:
            table = node.sh(f"iptables -L {ch} -v -n -x", check=False).splitlines()
            if ch.endswith("-dispatch"):  # only the lines that lead to this pod's chains
                table = table[:2] + [ln for ln in table[2:] if any(m in ln for m in mine)]
            out += [ln.rstrip() for ln in table]
        return "\n".join(out) + "\n"
    out += dispatch
    for ch in [*mine, *policy]:
        out += [ln for ln in text.splitlines() if ln.startswith(f"-A {ch} ")]
    return "\n".join(out) + "\n"


# --- evidence: matrices and probes ----------------------------------------------------------------

def _ns(key: str) -> str:
    return key.split("/", 1)[0]


def _missing_pods(ctx: Context, keys: Iterable[str]) -> Verdict | None:
    have = {p.key for p in ctx.cluster.pods()}
    gone = [k for k in keys if k not in have]
    if gone:
        return failed(f"pod {', '.join(gone)} is not running", hint=SETUP_HINT,
                      expected=", ".join(keys), actual="missing: " + ", ".join(gone))
    return None


def _matrix(ctx: Context, port: int = PORT, protocol: str = "TCP",
            pods: Iterable[str] = ALL_PODS) -> Reachability:
    return ctx.cluster.reachability(port, protocol, pods=list(pods))


@dataclass(frozen=True)
class Cell:
    """One ordered pair the check measured, against what the exercise wants."""
    src: str
    dst: str
    port: int
    protocol: str
    want: bool
    got: bool
    verdict: netpol.Verdict | None = None  # the policy engine's, with its reasons
    focus: str = ""  # the side the exercise is about: "ingress", "egress" ("": both)

    @property
    def engine(self) -> bool | None:
        """The engine's expectation (None: not asked)."""
        return None if self.verdict is None else self.verdict.allowed

    def why(self, side: str | None = None) -> str:
        """The engine's reason: for a connection it allows, what the policies of `side` say
        (default: the exercise's focus); for one it blocks, the side that blocks it."""
        if self.verdict is None:
            return ""
        side = self.focus if side is None else side
        if side and self.verdict.allowed:
            return self.verdict.side(side) or self.verdict.reason
        return self.verdict.reason

    @property
    def disagrees(self) -> bool:
        """The measurement differs from the engine's expectation: the rules in the node's
        filter table are not those of the policies (changed by hand?)."""
        return self.engine is not None and self.engine != self.got

    def __str__(self) -> str:
        where = f"{self.dst}:{self.port}" + ("/udp" if self.protocol == "UDP" else "")
        state = "connected" if self.got else "blocked"
        should = "connected" if self.want else "blocked"
        text = f"{self.src} → {where} was {state} but should be {should}"
        if self.disagrees:
            text += (" (and the policy engine expects it "
                     f"{'connected' if self.engine else 'blocked'}: the node's rules differ "
                     "from the policies)")
        elif self.why():
            text += f" ({self.why()})"
        return text


Want = Callable[[str, str], bool | None]


def _wrong(r: Reachability, want: Want, focus: str = "") -> list[Cell]:
    """The measured pairs that differ from `want(src, dst)` (None: this exercise does not
    care), in the matrix's order."""
    out = []
    for a, row in r.measured.items():
        for b, got in row.items():
            w = want(a, b)
            if w is None or w == got:
                continue
            out.append(Cell(a, b, r.port, r.protocol, w, got, r.verdicts.get((a, b)), focus))
    return out


REAPPLY_HINT = ("the filter rules on the nodes differ from the policies (changed by hand?): "
                "apply any policy again, c.apply(...), and the lab rewrites every node's rules")


def _cells(cells: list[Cell], limit: int = 3) -> str:
    text = "; ".join(str(c) for c in cells[:limit])
    if len(cells) > limit:
        text += f"; and {len(cells) - limit} more"
    return text


def _pairs(cells: list[Cell], limit: int = 6) -> str:
    text = ", ".join(f"{c.src} → {c.dst}" for c in cells[:limit])
    return text + (f" and {len(cells) - limit} more" if len(cells) > limit else "")


def _probe(ctx: Context, pairs: list[tuple[str, str]], port: int, protocol: str = "TCP"
           ) -> dict[tuple[str, str], bool]:
    """Real connections `src → dst` (pod keys, or IP addresses as destinations) on one port,
    all at once: TCP an HTTP GET of /hostname answered 2xx, UDP any answer."""
    from lab_kit.cluster import probe_many

    infos = {p.key: p for p in ctx.cluster.pods(include_system=True)}
    jobs = [(infos[a].netns, infos[b].ip if b in infos else b, port) for a, b in pairs]
    got = dict(zip(pairs, probe_many(jobs, protocol), strict=True))
    # a connection out of the cluster that failed is tried once more (a new connection, so a
    # new source port) before it counts as blocked: in full test-suite runs a first packet to
    # the external host has, rarely, been lost, and a 1 s probe ends before TCP's own retry
    # (a blocked one stays blocked)
    again = [pr for pr, ok in got.items() if not ok and pr[1] not in infos]
    if again:
        jobs = [(infos[a].netns, b, port) for a, b in again]
        got.update(zip(again, probe_many(jobs, protocol), strict=True))
    return got


def _in_pod(netns: str, argv: list[str], timeout: float = 10) -> kernel.Completed:
    """argv under `ip netns exec` (the pod's own resolv.conf, as its apps see it); not
    journaled: a check's own probe."""
    return kernel.Runner().run(["ip", "netns", "exec", netns, *argv], None, check=False,
                               record=False, timeout=timeout)


@dataclass(frozen=True)
class Lookup:
    """One `dig` inside a pod."""
    command: str
    status: str  # NOERROR, NXDOMAIN, … ; "TIMEOUT" when no server answered
    answers: tuple[str, ...]

    @property
    def answered(self) -> bool:
        return self.status != "TIMEOUT"


def _dig(netns: str, name: str, server: str | None = None, tcp: bool = False) -> Lookup:
    """`dig` in a pod: its nameserver (from its resolv.conf) or `server`; UDP, or TCP. One try
    of one second: a blocked server costs a second, not fifteen."""
    argv = ["dig", "+tries=1", "+time=1", "+noall", "+comments", "+answer"]
    if tcp:
        argv.append("+tcp")
    if server:
        argv.append(f"@{server}")
    argv.append(name)
    r = _in_pod(netns, argv)
    shown = "dig " + " ".join(a for a in argv[1:] if not a.startswith(("+tries", "+time",
                                                                       "+noall", "+comm",
                                                                       "+answer")))
    status = "TIMEOUT"
    for line in r.stdout.splitlines():
        if "status:" in line:
            status = line.split("status:", 1)[1].split(",", 1)[0].strip()
    answers = tuple(ln.split()[-1] for ln in r.stdout.splitlines()
                    if ln and not ln.startswith(";") and len(ln.split()) >= 5)
    return Lookup(shown, status, answers)


def _pod_ip(ctx: Context, key: str) -> str:
    return ctx.cluster.pod(key).ip


# --- exercise 1: default deny ---------------------------------------------------------------------

def _first_disagreement(cells: list[Cell]) -> Verdict | None:
    """A failed verdict when the measurement contradicts the policy engine itself."""
    odd = [c for c in cells if c.disagrees]
    if not odd:
        return None
    return failed(f"{len(odd)} pairs behave unlike the policies say: {_cells(odd)}",
                  hint=REAPPLY_HINT, expected="the matrix the policy engine computes",
                  actual=_pairs(odd))


def _deny_hint(leaks: list[Cell]) -> str:
    """Why pods of x still accept connections, from the engine's reasons for those cells."""
    open_pods = sorted({c.dst for c in leaks if "not isolated" in c.why("ingress")})
    x_pods = [p for p in XYZ_PODS if _ns(p) == "x"]
    if len(open_pods) == len(x_pods):
        return ("no pod of x is isolated for ingress: write a NetworkPolicy in namespace x "
                "(metadata.namespace: x) with podSelector: {} (every pod of x), policyTypes: "
                "[Ingress] and no ingress rule, then c.apply(...) it")
    if open_pods:
        return (f"{', '.join(open_pods)} accept every pod: no policy selects them. "
                "podSelector: {} selects every pod of the policy's namespace; a label "
                "selector, only the pods carrying those labels")
    rule = next((c.why("ingress") for c in leaks), "")
    return (f"the pods of x are isolated, but a rule lets clients in ({rule}): every ingress "
            "rule allows something, and `- {}` allows everyone. A default deny has no ingress "
            "rule at all")


@LAB.check("default-deny", "No pod reaches a pod of namespace x (but itself); x's pods still "
                           "connect out")
def check_default_deny(ctx: Context) -> Verdict:
    if (missing := _missing_pods(ctx, ALL_PODS)) is not None:
        return missing

    def want(a: str, b: str) -> bool | None:
        if a == b:
            return True  # loopback: the packets never leave the pod
        if _ns(b) == "x":
            return False
        if _ns(a) in XYZ and (_ns(b) == "z" or b == FRONTEND):
            return True  # no exercise restricts these: a default deny must not either
        return None

    tcp = _matrix(ctx)
    bad = _wrong(tcp, want, "ingress")
    if (odd := _first_disagreement(bad)) is not None:
        return odd
    leaks = [c for c in bad if not c.want]
    if leaks:
        return failed(f"{len(leaks)} connections into namespace x still get through: "
                      f"{_cells(leaks)}", hint=_deny_hint(leaks),
                      expected="every pod → x/*: blocked (but a pod to itself)",
                      actual=f"connected: {_pairs(leaks)}")
    over = [replace(c, focus="egress") for c in bad]
    if over:
        return failed(f"the policy blocks more than connections into x: {_cells(over)}",
                      hint="deny ingress only: policyTypes: [Ingress]. A policy whose "
                           "policyTypes lists Egress (or that has egress rules, which add Egress "
                           "to the defaulted policyTypes) isolates the pods' outgoing "
                           "connections too",
                      expected="x/* → z/*, x/* → shop/frontend: connected",
                      actual=f"blocked: {_pairs(over)}")
    udp = _matrix(ctx, UDP_PORT, "UDP", XYZ_PODS)
    leaks = [c for c in _wrong(udp, want, "ingress") if not c.want]
    if leaks:
        return failed(f"TCP is blocked, but UDP still gets into x: {_cells(leaks)}",
                      hint=f"a rule lets UDP in ({leaks[0].why()}): a default deny has no "
                           "ingress rule at all, and so blocks every protocol and port",
                      expected="every pod → x/*:81/udp blocked", actual=_pairs(leaks))
    n_in = sum(1 for a in tcp.measured for b in tcp.measured if _ns(b) == "x" and a != b)
    return passed(f"all {n_in} connections into x were blocked, on TCP 80 and UDP 81 "
                  f"({tcp.seconds + udp.seconds:.1f} s of probes: a blocked SYN is dropped, "
                  "so the client waits for its timeout), and x's pods still reach z and the "
                  "shop: a policy isolates only the directions its policyTypes name")


# --- exercise 2: frontend → api → db --------------------------------------------------------------

def _shop_hint(c: Cell) -> str:
    why = c.why("ingress")
    if not c.want and "not isolated" in why:
        pod = "api" if c.dst == API else "db"
        return (f"{why}: write a policy in namespace shop selecting podSelector {{matchLabels: "
                f"{{app: {pod}}}}} with policyTypes: [Ingress]")
    if c.dst == API and not c.want and _ns(c.src) == SHOP:
        return (f"{why}. api must accept {FRONTEND} only: ONE peer, podSelector: {{matchLabels: "
                "{app: frontend}}. Two peers (two `-` items under `from`) are alternatives "
                "(OR): a namespaceSelector in a peer of its own admits every pod of those "
                "namespaces")
    if c.dst == API and not c.want:
        return (f"{why}: api accepts clients from other namespaces. In a peer, podSelector alone "
                "means pods of the policy's own namespace; a namespaceSelector ({} or a label) "
                "in it, or a peer of its own, admits other namespaces")
    if c.dst == DB and not c.want:
        return (f"{why}: db must accept api only, one peer podSelector {{matchLabels: "
                "{app: api}}")
    if c.dst == API and c.src == FRONTEND:
        return (f"{why}: frontend must still reach api on port http (80). Check the peer's "
                "labels (app: frontend, in namespace shop) and the port: the name `http` (or "
                "80), protocol TCP")
    if c.dst == DB and c.src == API:
        return f"{why}: db must accept api: a rule from podSelector {{matchLabels: {{app: api}}}}"
    return (f"{why}: a policy isolates pods this exercise leaves open. frontend's ingress, and "
            "api's and db's egress, stay open: select app: api and app: db, policyTypes: "
            "[Ingress]")


@LAB.check("frontend-api", "In shop, api accepts only frontend (on its port `http`) and db only "
                           "api")
def check_frontend_api(ctx: Context) -> Verdict:
    if (missing := _missing_pods(ctx, ALL_PODS)) is not None:
        return missing

    def want(a: str, b: str) -> bool | None:
        if a == b:
            return True
        if b == API:
            return a == FRONTEND
        if b == DB:
            return a == API
        if b == FRONTEND and _ns(a) in XYZ:
            return True  # frontend's ingress stays open
        if a in (API, DB) and _ns(b) == "z":
            return True  # api's and db's egress stay open
        return None

    tcp = _matrix(ctx)
    bad = _wrong(tcp, want, "ingress")
    if (odd := _first_disagreement(bad)) is not None:
        return odd
    # what gets in that should not, first (from the shop first: the likeliest mistake)
    bad.sort(key=lambda c: (c.want, c.dst != API, _ns(c.src) != SHOP))
    if bad:
        leaks = [c for c in bad if not c.want]
        what = (f"{len(leaks)} connections into api or db that should be blocked get through"
                if leaks else "a connection the shop needs is blocked")
        return failed(f"{what}: {_cells(bad)}", hint=_shop_hint(bad[0]),
                      expected="→ api: frontend only; → db: api only",
                      actual=_pairs(bad))
    metrics = _probe(ctx, [(a, API) for a in ALL_PODS if a != API], METRICS_PORT)
    open_ = [a for (a, _), ok in metrics.items() if ok]
    if open_:
        return failed(f"{', '.join(open_)} → {API}:{METRICS_PORT} (api's metrics port) "
                      "connected: api's rule allows more than its port http",
                      hint="a rule without `ports` allows every port: add ports: [{port: http}]"
                           " (the name of api's containerPort 80; the rules resolve it on the "
                           "destination pod)",
                      expected=f"→ api:{METRICS_PORT} blocked", actual="connected")
    conn, total = tcp.counts()
    return passed(f"into api: only {FRONTEND}, on port http (80; {METRICS_PORT} is blocked); "
                  f"into db: only {API}; {total - conn} of {total} pairs blocked, every one as "
                  "the policy engine expects")


# --- exercise 3: egress only to DNS (and api) -----------------------------------------------------

DNS_HINT = ("allow DNS to the coredns pods themselves: kube-proxy has already changed "
            "10.96.0.10 into a coredns pod's address (DNAT) when the filter rules see the "
            "packet, so an ipBlock of the Service IP never matches. One peer with both "
            "namespaceSelector {matchLabels: {kubernetes.io/metadata.name: kube-system}} and "
            "podSelector {matchLabels: {k8s-app: kube-dns}}, ports 53 UDP and 53 TCP")


@LAB.check("egress-dns", "frontend connects only to cluster DNS (UDP and TCP 53) and to api")
def check_egress_dns(ctx: Context) -> Verdict:
    if (missing := _missing_pods(ctx, ALL_PODS)) is not None:
        return missing
    c = ctx.cluster
    front = c.pod(FRONTEND)

    def want(a: str, b: str) -> bool | None:
        if a == b:
            return True
        if a == FRONTEND:
            return b == API
        if b == FRONTEND and _ns(a) in XYZ:
            return True  # frontend's ingress stays open
        if a in (API, DB) and _ns(b) == "z":
            return True  # the other shop pods' egress stays open
        return None

    tcp = _matrix(ctx)
    bad = _wrong(tcp, want, "egress")
    if (odd := _first_disagreement(bad)) is not None:
        return odd
    out = [x for x in bad if x.src == FRONTEND and not x.want]
    if out:
        why = out[0].why()
        if "not isolated" in why:
            hint = (f"{why}: write a policy in shop selecting podSelector {{matchLabels: "
                    "{app: frontend}} with policyTypes: [Egress]; then frontend may open only "
                    "the connections its egress rules list")
        else:
            hint = (f"{why}: that rule allows more than api. A rule without `to`, or with "
                    "namespaceSelector {}, reaches every pod; the rule to api needs "
                    "podSelector {matchLabels: {app: api}}")
        return failed(f"frontend still opens connections it should not: {_cells(out)}",
                      hint=hint, expected=f"{FRONTEND} → every pod but api: blocked",
                      actual=f"connected: {_pairs(out)}")
    udp = _dig(front.netns, DNS_NAME)
    if not udp.answered:
        return failed(f"DNS from frontend fails: `{udp.command}` (to {c.dns_ip}, the kube-dns "
                      "Service) got no answer", hint=DNS_HINT,
                      expected=f"{DNS_NAME} → api's ClusterIP", actual="timed out")
    tcp53 = _dig(front.netns, DNS_NAME, tcp=True)
    if not tcp53.answered:
        return failed(f"DNS over UDP works from frontend, over TCP it does not: `{tcp53.command}`"
                      " got no answer", hint="a resolver retries over TCP when an answer is too "
                      "big for one UDP packet (truncated): allow port 53 for both protocols, "
                      "{port: 53, protocol: UDP} and {port: 53, protocol: TCP}",
                      expected="an answer over TCP", actual="timed out")
    ext = _dig(front.netns, "www.example.com", server=PROVIDER_IP)
    if ext.answered:
        return failed(f"frontend asked the external resolver {PROVIDER_IP} directly and got an "
                      f"answer (`{ext.command}`: {ext.status}): its DNS rule allows port 53 to "
                      "any address", hint="give the DNS rule a `to`: the coredns pods (one "
                      "peer: namespaceSelector kube-system AND podSelector k8s-app: kube-dns); "
                      "names outside the cluster still resolve, through coredns",
                      expected=f"{PROVIDER_IP}:53 blocked", actual=ext.status)
    back = sorted((x for x in bad if x.want), key=lambda x: x.dst != API)
    if back:
        first = back[0]
        if first.src == FRONTEND:
            hint = (f"{first.why('egress')}: frontend still needs api (exercise "
                    "frontend-api): add an egress rule to podSelector {matchLabels: "
                    "{app: api}} on port http")
        elif first.dst == FRONTEND:
            hint = (f"{first.why('ingress')}: a policy with egress rules and no policyTypes "
                    "gets policyTypes [Ingress, Egress] from the API server, and isolates "
                    "frontend's ingress too; write policyTypes: [Egress]")
        else:
            hint = (f"{first.why('egress')}: the policy isolates more pods than frontend; "
                    "podSelector {matchLabels: {app: frontend}}, not {}")
        return failed(f"a connection that should stay open is blocked: {_cells(back)}",
                      hint=hint, expected="frontend → api, and the other pods as before",
                      actual=f"blocked: {_pairs(back)}")
    curl = _in_pod(front.netns, ["curl", "-sS", "--max-time", "3", "http://api.shop/hostname"])
    if curl.rc != 0 or curl.stdout.strip() != "api":
        return failed(f"`curl http://api.shop/hostname` in frontend failed (rc {curl.rc}: "
                      f"{(curl.stdout or curl.stderr).strip()[:80]!r})",
                      hint="the name resolves and api's pod answers on 80: is Service api "
                           f'intact? c.service("api", "{SHOP}")',
                      expected="api", actual=curl.stdout.strip()[:80] or curl.rc)
    coredns = ", ".join(p.ip for p in c.dns_pods())
    return passed(f"from frontend, {DNS_NAME} resolves over UDP and TCP ({c.dns_ip}, DNATed to "
                  f"a coredns pod: {coredns}), `curl http://api.shop/hostname` answers "
                  f"{curl.stdout.strip()!r}; every other pod and the external resolver "
                  f"{PROVIDER_IP}:53 are out of reach")


# --- exercise 4: namespace isolation --------------------------------------------------------------

def _isolation_hint(c: Cell) -> str:
    why = c.why("ingress")
    if not c.want and "not isolated" in why:
        return (f"{why}: the policy must select every pod of y: podSelector: {{}} in "
                "namespace y, policyTypes: [Ingress]")
    if not c.want:
        return (f"{why}: that rule admits other namespaces. In a `from` peer, podSelector: {{}} "
                "alone means every pod of the policy's own namespace; a namespaceSelector: {} "
                "(alone or in the peer) means every namespace")
    if _ns(c.src) == "y" and _ns(c.dst) == "y":
        return (f"{why}: pods of y must still reach each other: `from: [{{podSelector: {{}}}}]`."
                " A policy without ingress rules denies everything; a peer with both a "
                "namespaceSelector and a podSelector matches only pods matching BOTH (AND)")
    return (f"{c.why('egress')}: the policy blocks y's outgoing connections too: isolate "
            "ingress only, policyTypes: [Ingress]")


@LAB.check("namespace-isolation", "Namespace y accepts connections only from pods in y")
def check_namespace_isolation(ctx: Context) -> Verdict:
    if (missing := _missing_pods(ctx, ALL_PODS)) is not None:
        return missing

    def want(a: str, b: str) -> bool | None:
        if a == b:
            return True
        if _ns(b) == "y":
            return _ns(a) == "y"
        if _ns(a) == "y" and (_ns(b) == "z" or b == FRONTEND):
            return True  # y's egress stays open
        return None

    tcp = _matrix(ctx)
    bad = sorted(_wrong(tcp, want, "ingress"), key=lambda c: c.want)
    if (odd := _first_disagreement(bad)) is not None:
        return odd
    if bad:
        leaks = [c for c in bad if not c.want]
        what = (f"{len(leaks)} connections into y from other namespaces get through" if leaks
                else "a connection that should stay open is blocked")
        return failed(f"{what}: {_cells(bad)}", hint=_isolation_hint(bad[0]),
                      expected="→ y/*: from y/* only", actual=_pairs(bad))
    udp = _matrix(ctx, UDP_PORT, "UDP", XYZ_PODS)
    bad = sorted(_wrong(udp, want, "ingress"), key=lambda c: c.want)
    if bad:
        return failed(f"on TCP 80 the matrix is right, on UDP 81 it is not: {_cells(bad)}",
                      hint="the rule limits ports or protocols: namespace isolation lets y's "
                           "pods in on every port; leave `ports` out",
                      expected="→ y/*:81/udp from y/* only", actual=_pairs(bad))
    return passed("y's pods accept y's pods only, on TCP 80 and UDP 81; y's pods still reach z "
                  "and the shop (only ingress is isolated)")


# --- exercise 5: ipBlock for the external host ----------------------------------------------------

@LAB.check("ipblock-external", f"frontend reaches {PROVIDER_IP}:{WEB_PORT} outside the cluster, "
                               "and no other address or port there")
def check_ipblock_external(ctx: Context) -> Verdict:
    if (missing := _missing_pods(ctx, ALL_PODS)) is not None:
        return missing
    c = ctx.cluster
    from lab_kit.cluster import probe_many

    # the server itself, probed from a node (a node's own traffic passes no pod's policy)
    node_ns = naming.node_netns(c.pod(FRONTEND).node)
    up = probe_many([(node_ns, PROVIDER_IP, WEB_PORT), (node_ns, OTHER_IP, WEB_PORT)], "TCP")
    if not all(up):
        return failed(f"the web server on the external host does not answer on {PROVIDER_IP}:"
                      f"{WEB_PORT} and {OTHER_IP}:{WEB_PORT}",
                      hint="run the notebook's cell serve_internet(c)",
                      expected="HTTP on both addresses", actual="no answer")
    front = c.probe(FRONTEND, PROVIDER_IP, WEB_PORT, path=f"/hostname?client={FRONTEND}")
    if not front.ok:  # once more, from a new source port, as _probe does for outside addresses
        front = c.probe(FRONTEND, PROVIDER_IP, WEB_PORT, path=f"/hostname?client={FRONTEND}")
    if not front.ok:
        return failed(f"frontend → {PROVIDER_IP}:{WEB_PORT} is blocked ({front.error})",
                      hint=f"add an egress rule for frontend: to: [{{ipBlock: {{cidr: "
                           f"{PROVIDER_IP}/32}}}}], ports: [{{port: {WEB_PORT}, protocol: TCP}}]"
                           " — in a policy that selects app: frontend and whose policyTypes "
                           "lists Egress (the rules of all the policies that select a pod add "
                           "up)", expected="connected", actual="blocked")
    got = _probe(ctx, [(FRONTEND, OTHER_IP), (API, OTHER_IP)], WEB_PORT)
    if got[(FRONTEND, OTHER_IP)]:
        pods_open = _probe(ctx, [(FRONTEND, "z/a")], PORT)[(FRONTEND, "z/a")]
        hint = ("frontend's egress is not isolated at all (exercise egress-dns isolates it): "
                "every address is allowed" if pods_open else
                f"the ipBlock covers more than the external host: {PROVIDER_IP}/32 is exactly "
                f"one address (a /24 is 256 of them, {OTHER_IP} included)")
        return failed(f"frontend → {OTHER_IP}:{WEB_PORT} (another site) connected", hint=hint,
                      expected=f"only {PROVIDER_IP} reachable", actual=f"{OTHER_IP} too")
    if Context.tcp_connects(c.pod(FRONTEND).netns, PROVIDER_IP, 53):
        return failed(f"frontend → {PROVIDER_IP}:53 connected: the rule allows more than port "
                      f"{WEB_PORT}", hint=f"an ipBlock rule without `ports` allows every port: "
                      f"add ports: [{{port: {WEB_PORT}, protocol: TCP}}]",
                      expected=f"{PROVIDER_IP}:{WEB_PORT} only", actual=f"{PROVIDER_IP}:53 too")
    if not got[(API, OTHER_IP)]:
        return failed(f"{API} → {OTHER_IP}:{WEB_PORT} is blocked: the policy isolates more pods "
                      "than frontend", hint="podSelector {matchLabels: {app: frontend}}, not {}",
                      expected="api's egress open", actual="blocked")
    seen = client_seen(c, f"client={FRONTEND}")
    via = (f"; the web server saw the connection come from {seen}, "
           f"{_whose_node(c, seen)}" if seen else "")
    return passed(f"frontend → {PROVIDER_IP}:{WEB_PORT} connects; {OTHER_IP}:{WEB_PORT} and "
                  f"{PROVIDER_IP}:53 are blocked{via}: the node masquerades after the filter "
                  "rules have matched the pod's own address")


def _whose_node(c: Cluster, ip: str) -> str:
    node = next((n.name for n in c.nodes() if n.ip == ip), None)
    return f"the address of node {node}" if node else "not a node's address"
