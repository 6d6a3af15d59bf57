"""Checks of `labs/07-clusterip-kube-proxy.ipynb`: a ClusterIP Service and kube-proxy's chains.

The lab's cluster `clusterip` (labs/clusters/clusterip.yaml) runs kube-proxy in iptables mode on
every node. `labs/manifests/clusterip-web.yaml` makes a Deployment `web` (agnhost, container port
`http` = 8080), a Service `web` (port 80 named `http`, `targetPort: http`) and a pod `client` on
clusterip-worker2. In order, the learner:

1. computes the names kube-proxy gives the Service's chains (`chain-names`): `KUBE-SVC-` and
   `KUBE-SEP-` + 16 characters of base32(sha256(...)), exactly as upstream;
2. finds, in the conntrack table of the client's node, the endpoint a long-lived connection
   (client port 40000 -> ClusterIP:80, started by the notebook) was DNATed to (`which-endpoint`);
3. scales `web` to 4 replicas and watches the KUBE-SEP chains follow (`scale`);
4. measures the `statistic --probability` cascade: 100+ connections over every endpoint, and the
   probability of the first rule (`spread`);
5. repairs a broken Service `api` (labs/manifests/clusterip-api.yaml: its `targetPort` names a
   port the api pods do not have, so it has no endpoints and the filter table REJECTs it)
   (`fix-api`);
6. reads what a pod sees when its own Service sends it to itself: the hairpin masquerade
   (`hairpin`).

Every check reads the live kernel: each node's rules (`iptables-save -c`, so the counters too),
the conntrack table of the client's node, pod addresses and listening sockets, and real TCP
connections through the ClusterIP. Only names come from the cluster (pods, which Deployment owns
them, the ClusterIP the "API server" allocated): addresses, chains and endpoints are read from the
kernel.

`chain_diagram(c, "web")` draws a Service's chains from one node's live `iptables-save -c`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, kubeproxy, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import ipv4_of, is_netns, norm_answer

if TYPE_CHECKING:
    import graphviz

    from lab_kit.cluster import Cluster

LAB = Lab("07-clusterip-kube-proxy", "ClusterIP: follow a packet through kube-proxy's chains",
          "clusterip")

NAMESPACE = "default"
SERVICE, API = "web", "api"
PORT_NAME, PROTO, PORT = "http", "tcp", 80
TARGET_PORT = 8080  # web's container port named `http`
CLIENT = "client"
HOLD_PORT = 40000  # the source port of the notebook's long-lived connection
REPLICAS = 4  # exercise `scale`
MIN_CONNECTIONS = 100  # exercise `spread`
SPN = f"{NAMESPACE}/{SERVICE}:{PORT_NAME}"  # upstream's "service port name"
API_SPN = f"{NAMESPACE}/{API}:{PORT_NAME}"
WEB_MANIFEST = "manifests/clusterip-web.yaml"
API_MANIFEST = "manifests/clusterip-api.yaml"


# --- reading iptables-save ------------------------------------------------------------------------

Rule = kubeproxy.IptRule
Tables = kubeproxy.IptTables


def read_tables(netns: str) -> Tables:
    """A node's nat and filter tables with counters (`iptables-save -c`), from the kernel."""
    r = kernel.Runner().run(["iptables-save", "-c"], netns, check=False, record=False)
    return kubeproxy.parse_iptables_rules(r.stdout) if r.rc == 0 else {}


@dataclass(frozen=True)
class EndpointRule:
    """One endpoint of a Service port, as the live rules have it."""
    sep: str  # the KUBE-SEP chain
    ip: str | None  # from the DNAT rule: --to-destination IP:PORT
    port: int | None
    probability: float | None  # the KUBE-SVC rule's --probability; None: no statistic match
    packets: int | None  # the DNAT rule's counter: new connections sent to this endpoint
    hairpin: bool  # the KUBE-SEP chain has `-s <ip> -j KUBE-MARK-MASQ`

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServiceRules:
    """What one node's kube-proxy rules do with connections to `vip:port`."""
    node: str
    vip: str
    port: int
    dispatch: Rule | None  # nat KUBE-SERVICES -d vip --dport port -j KUBE-SVC-…
    masq: Rule | None  # the KUBE-SVC chain's `! -s <cluster CIDR> -j KUBE-MARK-MASQ`
    endpoints: tuple[EndpointRule, ...]
    reject: Rule | None  # filter KUBE-SERVICES … "has no endpoints" -j REJECT
    tables: Tables = field(repr=False, default_factory=dict)

    @property
    def svc(self) -> str | None:
        return self.dispatch.target if self.dispatch else None


def service_rules(tables: Tables, node: str, vip: str, port: int) -> ServiceRules:
    """Follow KUBE-SERVICES -> KUBE-SVC-… -> KUBE-SEP-… for `vip:port` in parsed tables."""
    nat, filt = tables.get("nat", {}), tables.get("filter", {})
    dispatch = next((r for r in nat.get("KUBE-SERVICES", []) if r.dst == vip and r.dport == port
                     and (r.target or "").startswith(("KUBE-SVC-", "KUBE-SVL-"))), None)
    reject = next((r for r in filt.get("KUBE-SERVICES", []) if r.dst == vip
                   and r.dport == port and r.target in ("REJECT", "DROP")), None)
    masq, eps = None, []
    if dispatch is not None:
        for r in nat.get(dispatch.target or "", []):
            if r.target == "KUBE-MARK-MASQ":
                masq = r
            elif (r.target or "").startswith("KUBE-SEP-") and "--rcheck" not in r.args:
                sep = nat.get(r.target or "", [])
                dnat = next((s for s in sep if s.dnat), None)
                ip = port_no = None
                if dnat and dnat.dnat and ":" in dnat.dnat:
                    ip, p = dnat.dnat.rsplit(":", 1)
                    port_no = int(p) if p.isdigit() else None
                hairpin = any(s.target == "KUBE-MARK-MASQ" and s.src == ip for s in sep)
                eps.append(EndpointRule(r.target or "", ip, port_no, r.probability,
                                        dnat.packets if dnat else None, hairpin))
    return ServiceRules(node, vip, port, dispatch, masq, tuple(eps), reject, tables)


# --- names, exactly as kube-proxy computes them ---------------------------------------------------

hash16 = kubeproxy.hash16


def _suffix(answer: str) -> tuple[str, str]:
    """(prefix, rest) of a chain name given as an answer."""
    for prefix in ("KUBE-SVC-", "KUBE-SEP-", "KUBE-SVL-", "KUBE-EXT-"):
        if answer.upper().startswith(prefix):
            return prefix, answer[len(prefix):]
    return "", answer


# --- the cluster's pods and Services, with addresses read from the kernel -------------------------

@dataclass(frozen=True)
class PodView:
    name: str
    node: str
    netns: str
    ip: str | None  # eth0's address, from the kernel
    owner: str | None  # `Deployment/web`, or None for a bare pod


def pod_views(ctx: Context) -> list[PodView]:
    out = []
    for p in ctx.cluster.pods(NAMESPACE):
        ip = ipv4_of(ctx, p.netns, "eth0") if is_netns(ctx, p.netns) else None
        out.append(PodView(p.name, p.node, p.netns, ip, p.owner))
    return out


def _vip(ctx: Context, name: str) -> str | None:
    """The ClusterIP the cluster allocated to Service `name` (None: no such Service)."""
    from lab_kit.errors import LabError
    try:
        ip = ctx.cluster.service(name)["spec"].get("clusterIP")
    except LabError:
        return None
    return ip if ip not in (None, "None") else None


def _nodes(ctx: Context) -> list[tuple[str, str]]:
    return [(n.name, n.netns) for n in ctx.cluster.nodes()]


def _all_rules(ctx: Context, vip: str, port: int = PORT) -> list[ServiceRules]:
    return [service_rules(read_tables(ns), name, vip, port) for name, ns in _nodes(ctx)]


def _client(ctx: Context) -> PodView | None:
    return next((p for p in pod_views(ctx) if p.name == CLIENT and p.ip), None)


def _pod_label(pods: list[PodView], ip: str | None) -> str:
    p = next((p for p in pods if p.ip == ip), None)
    return f"{ip} ({p.name})" if p else f"{ip} (no pod has it)"


def _setup_missing(ctx: Context) -> Verdict | None:
    """The notebook's setup is there: the Service web, its ClusterIP and the client pod."""
    if _vip(ctx, SERVICE) is None:
        return failed(f"there is no Service `{SERVICE}` in the cluster",
                      hint=f'run the notebook\'s setup cells: c.apply("{WEB_MANIFEST}")',
                      expected=f"Service {SERVICE} with a ClusterIP", actual="none")
    if _client(ctx) is None:
        return failed(f"pod `{CLIENT}` is not running",
                      hint=f'run the notebook\'s setup cells: c.apply("{WEB_MANIFEST}")',
                      expected=f"pod {CLIENT} with an address", actual="missing")
    return None


def _same_everywhere(views: list[ServiceRules], what: str) -> Verdict | None:
    """Every node must hold the same endpoints: kube-proxy syncs each node from one API."""
    sets = {v.node: sorted(e.addr for e in v.endpoints) for v in views}
    if len({tuple(s) for s in sets.values()}) > 1:
        have = "; ".join(f"{n}: {', '.join(s) or 'none'}" for n, s in sets.items())
        return failed(f"the nodes disagree about {what}'s endpoints ({have}): a rule edited "
                      "by hand on one node? kube-proxy rewrites every node from the same "
                      "EndpointSlices",
                      hint="change the cluster with c.apply(...), never the rules: the next sync "
                           "(any apply) puts kube-proxy's version back",
                      expected="the same endpoints on every node", actual=have)
    return None


# --- exercise 1: the chain names ------------------------------------------------------------------

def _svc_variants() -> dict[str, str]:
    """Hash suffixes of plausible slips computing the KUBE-SVC name -> what went wrong."""
    return {
        hash16(f"{SPN}TCP"): "you hashed the protocol in capitals: kube-proxy lowercases it, "
                             f"`{SPN}` + `tcp`",
        hash16(f"{NAMESPACE}/{SERVICE}{PROTO}"): f"the port has a name, `{PORT_NAME}`: the "
                                                 f"service port name is `{SPN}`",
        hash16(f"{NAMESPACE}/{SERVICE}:{PORT}{PROTO}"): "a named port is hashed by its NAME "
                                                        f"(`{PORT_NAME}`), not its number",
        hash16(f"{NAMESPACE}/{SERVICE}:{TARGET_PORT}{PROTO}"): "a named port is hashed by its "
                                                               f"NAME (`{PORT_NAME}`)",
        hash16(SPN): f"the protocol is part of the hashed text: `{SPN}` + `tcp`",
        hash16(f"{SERVICE}:{PORT_NAME}{PROTO}"): f"the namespace is part of it: `{SPN}`",
        hash16(f"{SPN}/{PROTO}"): f"nothing goes between port name and protocol: `{SPN}tcp`",
        hash16(f"{SPN}:{PROTO}"): f"nothing goes between port name and protocol: `{SPN}tcp`",
        hash16(f"{SPN} {PROTO}"): f"nothing goes between port name and protocol: `{SPN}tcp`",
        hashlib.sha256(f"{SPN}{PROTO}".encode()).hexdigest()[:16].upper():
            "that is hex: kube-proxy encodes the sha256 digest in base32 (base64.b32encode)",
    }


@LAB.check("chain-names", "You computed the KUBE-SVC and KUBE-SEP chain names of web's port http")
def check_chain_names(ctx: Context) -> Verdict:
    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip = _vip(ctx, SERVICE)
    assert vip
    views = _all_rules(ctx, vip)
    live_svc = {v.svc for v in views}
    if None in live_svc:
        node = next(v.node for v in views if v.svc is None)
        return failed(f"{node}'s nat KUBE-SERVICES has no rule for {vip}:{PORT}: kube-proxy's "
                      "rules are not there",
                      hint=f'apply the manifest again (c.apply("{WEB_MANIFEST}")): every apply '
                           "re-syncs kube-proxy on every node",
                      expected=f"-A KUBE-SERVICES -d {vip}/32 … --dport {PORT} -j KUBE-SVC-…",
                      actual="no such rule")
    svc = sorted(s for s in live_svc if s)[0]
    seps = {e.sep: e for v in views for e in v.endpoints}
    recipe = (f"KUBE-SVC- + the first 16 characters of base32(sha256(\"{SPN}\" + \"tcp\")), "
              "with hashlib.sha256(...).digest() and base64.b32encode(...)")
    answer = norm_answer(ctx.get("svc_chain"))
    if not answer:
        return failed("`svc_chain` is empty",
                      hint=f"compute it: {recipe}; then find it in "
                           "NODE.sh(\"iptables-save -t nat\")",
                      expected="KUBE-SVC-<16 characters>", actual="(empty)")
    problem = _chain_problem(answer, svc, "KUBE-SVC-", _svc_variants(), seps, svc,
                             "svc_chain", recipe)
    if problem:
        return problem
    sep_answer = norm_answer(ctx.get("sep_chain"))
    sep_recipe = (f"KUBE-SEP- + the first 16 characters of base32(sha256(\"{SPN}\" + \"tcp\" + "
                  "\"<pod IP>:<pod port>\"))")
    if not sep_answer:
        return failed(f"`svc_chain` is right ({svc}), but `sep_chain` is empty",
                      hint=f"compute the endpoint chain of one web pod: {sep_recipe}",
                      expected="KUBE-SEP-<16 characters>", actual="(empty)")
    pods = pod_views(ctx)
    variants: dict[str, str] = {hash16(f"{SPN}{PROTO}"): (
        "that is the SERVICE's hash: an endpoint chain's hash also covers the endpoint, "
        f"`{SPN}tcp<pod IP>:<pod port>`")}
    for e in seps.values():
        variants[hash16(f"{SPN}{PROTO}{e.ip}:{PORT}")] = (
            f"the endpoint's port is the pod's port, {e.port} (targetPort `{PORT_NAME}` "
            f"resolved on the pod), not the Service's {PORT}")
        variants[hash16(f"{SPN}{PROTO}{e.ip}:{PORT_NAME}")] = (
            f"the endpoint's port is a number: `{PORT_NAME}` resolved on the pod, {e.port}")
        variants[hash16(f"{SPN}{PROTO}{e.ip}")] = (
            f"the endpoint is `IP:PORT` ({e.ip}:{e.port}…), not the IP alone")
        variants[hash16(f"{SPN}TCP{e.addr}")] = "the protocol is lowercase: `tcp`"
        variants[hash16(f"{SPN}{e.addr}")] = f"the protocol goes between: `{SPN}` + `tcp` + ip:port"
        variants[hash16(f"{SPN}{PROTO}{vip}:{PORT}")] = (
            "that hashes the ClusterIP: an endpoint chain is named after the POD's IP and port")
    if sep_answer in seps:
        e = seps[sep_answer]
        return passed(f"{svc} is the chain of {SPN} on every node (its name depends only on "
                      f"`{SPN}` and `tcp`, never on the ClusterIP), and {sep_answer} DNATs "
                      f"to {_pod_label(pods, e.ip)}:{e.port}")
    problem = _chain_problem(sep_answer, None, "KUBE-SEP-", variants, seps, svc, "sep_chain",
                             sep_recipe)
    assert problem is not None  # with no `want`, every answer has a problem
    return problem


def _chain_problem(answer: str, want: str | None, prefix: str, variants: dict[str, str],
                   seps: dict[str, EndpointRule], svc: str, name: str, recipe: str
                   ) -> Verdict | None:
    """What is wrong with a chain-name answer, or None when it is `want`."""
    if want is not None and answer == want:
        return None
    have_prefix, rest = _suffix(answer)
    expected = f"{prefix}<16 characters>"
    if prefix == "KUBE-SVC-" and answer in seps:
        return failed(f"`{name}` is {answer}, an ENDPOINT chain (it DNATs to "
                      f"{seps[answer].addr}); KUBE-SERVICES jumps to the service chain first",
                      hint=f"the service chain is {recipe}", expected=expected, actual=answer)
    if prefix == "KUBE-SEP-" and answer == svc:
        return failed(f"`{name}` is {answer}, the SERVICE chain; each endpoint has a chain of "
                      "its own, which does the DNAT", hint=recipe, expected=expected,
                      actual=answer)
    if have_prefix and have_prefix != prefix:
        return failed(f"`{name}` starts with {have_prefix}, not {prefix}", hint=recipe,
                      expected=expected, actual=answer)
    good = {want[len(prefix):]} if want else {s[len(prefix):] for s in seps}
    if not have_prefix and rest[:16] in good:
        return failed(f"`{name}` is the right hash without its prefix: a chain name is "
                      f"{prefix} + the hash", hint=recipe, expected=expected, actual=answer)
    if rest.upper() in good and (rest not in good or not answer.startswith(prefix)):
        return failed(f"`{name}` has the right letters in the wrong case: base32 is uppercase, "
                      "and chain names are case-sensitive", hint=recipe, expected=expected,
                      actual=answer)
    if len(rest) > 16 and rest[:16] in good:
        return failed(f"`{name}` is too long: kube-proxy keeps only the first 16 characters of "
                      "the base32 text (iptables allows 28 characters per chain name)",
                      hint=recipe, expected=expected, actual=answer)
    for h, why in variants.items():
        if rest[:16].upper() == h:
            return failed(f"`{name}` is not a chain kube-proxy made: {why}", hint=recipe,
                          expected=expected, actual=answer)
    return failed(f"`{name}` ({answer}) is not a chain in the nodes' nat tables",
                  hint=f"{recipe}; compare with the chains in NODE.sh(\"iptables-save -t nat\")",
                  expected=expected, actual=answer)


# --- exercise 2: which endpoint, from conntrack ---------------------------------------------------

def held_flow(ctx: Context, client: PodView, vip: str) -> Any:
    """The conntrack entry of the notebook's long-lived connection (client:HOLD_PORT ->
    vip:PORT) on the client's node, or None."""
    from lab_kit.svcdebug import parse_conntrack

    ns = naming.node_netns(client.node)
    r = kernel.Runner().run(["conntrack", "-L", "-p", "tcp"], ns, check=False, record=False)
    flows = [f for f in parse_conntrack(r.stdout, client.node)
             if f.src == client.ip and f.sport == HOLD_PORT and f.dst == vip and f.dport == PORT]
    established = [f for f in flows if f.state == "ESTABLISHED"]
    return (established or flows or [None])[0]


def _as_ip(answer: str, pods: list[PodView]) -> str | None:
    """A pod name, `IP` or `IP:PORT` -> the IP it names (None: neither)."""
    by_name = {p.name: p.ip for p in pods}
    name = answer.removeprefix(f"{NAMESPACE}/")  # c.pod(...).name is `default/<name>`
    if name in by_name:
        return by_name[name]
    host = answer.rsplit(":", 1)[0] if answer.count(":") == 1 else answer
    try:
        return str(ipaddress.IPv4Address(host.split("/")[0]))
    except ValueError:
        return None


HOLD_HINT = ("run the cell that starts it again (the `socat … sourceport=40000` command in the "
             "client pod)")


@LAB.check("which-endpoint", "You found the endpoint of the long-lived connection in conntrack")
def check_which_endpoint(ctx: Context) -> Verdict:
    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip, client = _vip(ctx, SERVICE), _client(ctx)
    assert vip and client
    flow = held_flow(ctx, client, vip)
    where = f"c.conntrack(src=\"{CLIENT}\", dst=VIP)"
    if flow is None or flow.state != "ESTABLISHED":
        state = flow.state if flow else "no entry"
        return failed(f"the long-lived connection {client.ip}:{HOLD_PORT} -> {vip}:{PORT} is "
                      f"not open: {client.node}'s conntrack table has {state} for it",
                      hint=HOLD_HINT, expected="an ESTABLISHED entry", actual=state)
    pods = pod_views(ctx)
    answer = norm_answer(ctx.get("endpoint_pod"))
    chosen = flow.reply_src
    chosen_pod = next((p for p in pods if p.ip == chosen), None)
    if chosen_pod is None:
        return failed(f"the long-lived connection still points at {chosen}, but no pod has that "
                      "address any more: its endpoint is gone, and conntrack never moves a "
                      "connection to another one",
                      hint="the connection is dead; " + HOLD_HINT, expected="a live endpoint",
                      actual=chosen)
    if not answer:
        return failed("`endpoint_pod` is empty",
                      hint=f"list the client's flows with {where} and read the entry whose "
                           f"CLIENT port is {HOLD_PORT}: the DNAT column says where it went; "
                           "c.get_pods() names the pod with that address",
                      expected="a pod name (or its IP)", actual="(empty)")
    ip = _as_ip(answer, pods)
    if ip is None:
        return failed(f"`endpoint_pod` ({answer!r}) is neither a pod name nor an IP address",
                      hint="give the pod's name as c.get_pods() prints it, or its IP",
                      expected="a pod name (or its IP)", actual=answer)
    if ip == vip:
        return failed(f"{ip} is the ClusterIP: what the client ASKED for. conntrack's reply "
                      "direction says who really answers",
                      hint=f"in {where}, the DNAT column reads `asked -> endpoint`",
                      expected="the endpoint", actual=answer)
    if ip == client.ip:
        return failed(f"{answer} is the client itself",
                      hint=f"the endpoint is on the right of the DNAT column in {where}",
                      expected="the endpoint", actual=answer)
    if ip != chosen:
        other = next((p for p in pods if p.ip == ip), None)
        what = (f"pod {other.name}, another endpoint of web" if other and other.owner ==
                f"Deployment/{SERVICE}" else f"not an endpoint of web ({_pod_label(pods, ip)})")
        return failed(f"{answer} is {what}: not where THIS connection goes",
                      hint=f"in {where}, take the ESTABLISHED entry from client port "
                           f"{HOLD_PORT}; the TIME_WAIT entries are other, finished "
                           "connections, each balanced on its own",
                      expected=f"the endpoint of {client.ip}:{HOLD_PORT}", actual=answer)
    return passed(f"{client.node}'s conntrack entry for {client.ip}:{HOLD_PORT} -> {vip}:{PORT} "
                  f"says replies come from {chosen}:{flow.reply_sport}, pod {chosen_pod.name}. "
                  "The client's socket only knows the ClusterIP; conntrack rewrites every "
                  "packet of the connection, both ways, without looking at the rules again")


# --- exercise 3: scale ----------------------------------------------------------------------------

def _ratio(p: float | None) -> str:
    if p is None:
        return "always"
    f = Fraction(p).limit_denominator(20)
    return f"{f.numerator}/{f.denominator}"


@LAB.check("scale", f"web runs {REPLICAS} replicas, and every node's KUBE-SVC chain has "
                    f"{REPLICAS} endpoints")
def check_scale(ctx: Context) -> Verdict:
    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip = _vip(ctx, SERVICE)
    assert vip
    pods = pod_views(ctx)
    views = _all_rules(ctx, vip)
    apply_hint = (f"load {WEB_MANIFEST} (yaml.safe_load_all), set the Deployment's "
                  f"spec.replicas to {REPLICAS} and c.apply(...) it")
    disagree = _same_everywhere(views, SERVICE)
    if disagree:
        return disagree
    v = views[0]
    n = len(v.endpoints)
    if v.svc is None or n == 0:
        return failed(f"{v.node} has no KUBE-SVC chain for {vip}:{PORT}: web has no endpoints",
                      hint=apply_hint, expected=f"{REPLICAS} endpoints", actual="none")
    listed = ", ".join(_pod_label(pods, e.ip) for e in v.endpoints)
    if n < REPLICAS:
        return failed(f"{v.svc} still sends connections to {n} endpoints: {listed}",
                      hint=apply_hint, expected=f"{REPLICAS} endpoints", actual=n)
    for e in v.endpoints:
        pod = next((p for p in pods if p.ip == e.ip), None)
        if pod is None:
            return failed(f"{v.svc} DNATs to {e.addr}, which no pod has", hint=apply_hint,
                          expected="endpoints that are web pods", actual=e.addr)
        if pod.owner != f"Deployment/{SERVICE}":
            return failed(f"endpoint {e.addr} is pod {pod.name}, which Deployment {SERVICE} "
                          "does not own: the Service selects it by its label, but the "
                          "exercise is to scale the Deployment",
                          hint=f"delete it (c.delete(pod=\"{pod.name}\")) and {apply_hint}",
                          expected=f"{REPLICAS} pods of Deployment {SERVICE}", actual=pod.name)
    if n > REPLICAS:
        return failed(f"{v.svc} has {n} endpoints ({listed}); the exercise asks for "
                      f"{REPLICAS}", hint=apply_hint, expected=f"{REPLICAS} endpoints", actual=n)
    probs = [e.probability for e in v.endpoints]
    want = [1 / (n - i) for i in range(n - 1)] + [None]
    if any((p is None) != (w is None) or (p is not None and w is not None and abs(p - w) > 1e-3)
           for p, w in zip(probs, want, strict=True)):
        have = ", ".join(_ratio(p) for p in probs)
        return failed(f"the rules of {v.svc} on {v.node} have probabilities {have}: not what "
                      "kube-proxy writes (edited by hand?)",
                      hint="re-apply the manifest: kube-proxy's next sync rewrites the chain",
                      expected=", ".join(_ratio(w) for w in want), actual=have)
    return passed(f"Deployment {SERVICE} has {REPLICAS} pods, the EndpointSlice lists them, and "
                  f"every node's {v.svc} jumps to {REPLICAS} KUBE-SEP chains with "
                  f"probabilities {', '.join(_ratio(p) for p in probs)}")


# --- exercise 4: the statistic cascade ------------------------------------------------------------

def parse_probability(value: Any) -> float | None:
    """0.25, "0.25", "1/4", "25%" -> 0.25; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Fraction):
        return float(value)
    text = norm_answer(value).replace(" ", "")
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


@LAB.check("spread", "Your connections reached every endpoint, and you know rule 1's probability")
def check_spread(ctx: Context) -> Verdict:
    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip, client = _vip(ctx, SERVICE), _client(ctx)
    assert vip and client
    counts = ctx.get("counts")
    loop = ("c.probe(\"client\", VIP, 80) opens one new connection, and its .reply is the "
            "name of the pod that answered: count the names over 200 probes in a dict")
    if not isinstance(counts, dict) or not counts:
        return failed("`counts` is empty" if not counts else
                      f"`counts` is a {type(counts).__name__}, not a dict",
                      hint=loop, expected="{pod name: connections}", actual=repr(counts)[:60])
    pods = pod_views(ctx)
    view = service_rules(read_tables(naming.node_netns(client.node)), client.node, vip, PORT)
    live = {e.ip: e for e in view.endpoints}
    seen: dict[str, int] = {}
    for key, n in counts.items():
        ip = _as_ip(norm_answer(key), pods) if norm_answer(key) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return failed(f"counts[{key!r}] is {n!r}, not a number of connections",
                          hint=loop, expected="whole numbers", actual=repr(n))
        if ip is None or ip not in live:
            what = ("a failed connection (an empty reply)" if not norm_answer(key) else
                    f"not an endpoint of web now ({_pod_label(pods, ip)})" if ip else
                    "neither a pod name nor an IP")
            return failed(f"counts has the key {key!r}: {what}",
                          hint="count the pod names the probes' replies carry (r.reply, from "
                               "agnhost's /hostname), and only successful probes",
                          expected="keys that are endpoints of web",
                          actual=", ".join(map(repr, counts)))
        seen[ip] = seen.get(ip, 0) + n
    total = sum(seen.values())
    if total < MIN_CONNECTIONS:
        return failed(f"only {total} connections: too few to see how they spread",
                      hint=f"make at least {MIN_CONNECTIONS} (the cell suggests 200)",
                      expected=f">= {MIN_CONNECTIONS}", actual=total)
    unseen = [e for ip, e in live.items() if not seen.get(ip)]
    if unseen:
        names = ", ".join(_pod_label(pods, e.ip) for e in unseen)
        return failed(f"no connection of yours reached {names}, but {view.svc} on "
                      f"{client.node} has {len(live)} endpoints now",
                      hint="count again, after the `scale` exercise: every new connection is "
                           "balanced over the endpoints the rules hold at that moment",
                      expected=f"all {len(live)} endpoints", actual=f"{len(seen)} of them")
    share = {ip: n / total for ip, n in seen.items()}
    # 200 connections over 4 endpoints: 50 +- 6 each; these bounds are > 4 sigma away even
    # for 100 connections, so only counts that random choices cannot produce fail
    odd = [ip for ip, s in share.items() if s < 0.25 / len(live) or s > 2.5 / len(live)]
    if odd:
        have = ", ".join(f"{_pod_label(pods, ip)}: {seen[ip]}" for ip in odd)
        return failed(f"{have} of {total} is far from 1/{len(live)}: not what random choices "
                      "look like. Are these fresh connections through the ClusterIP?",
                      hint=loop, expected=f"about {total // len(live)} each", actual=have)
    first = view.endpoints[0].probability
    p = parse_probability(ctx.get("p_first"))
    raw = ctx.get("p_first")
    if p is None:
        return failed("`p_first` is empty" if not norm_answer(raw) else
                      f"`p_first` ({raw!r}) is not a probability",
                      hint=f"read the first `-j KUBE-SEP-…` rule of {view.svc}: its "
                           "`--probability`; a number like 0.5 or \"1/2\"",
                      expected="a number between 0 and 1", actual=repr(raw))
    if first is None:
        return failed(f"{view.svc} has a single endpoint, so its rule has no probability",
                      hint="do the `scale` exercise first", expected=f"{REPLICAS} endpoints",
                      actual=len(live))
    if abs(p - first) < 2e-3:
        spread = ", ".join(f"{seen[e.ip]}" for e in view.endpoints)
        return passed(f"{total} connections, {spread} per endpoint in rule order; rule 1 "
                      f"matches with probability {_ratio(first)}, and the rules after it "
                      "take 1/(n-i) of what is left, so every endpoint gets 1/"
                      f"{len(live)}")
    probs = [e.probability for e in view.endpoints]
    n = len(live)
    if any(q is not None and abs(p - q) < 2e-3 for q in probs):
        i = next(i for i, q in enumerate(probs) if q is not None and abs(p - q) < 2e-3)
        before = "rule 1" if i == 1 else f"rules 1 to {i}"
        why = (f"that is rule {i + 1}'s probability: it applies only to the connections that "
               f"{before} did not take")
    elif abs(p - 1 / (n - 1)) < 2e-3 if n > 1 else False:
        why = (f"1/{n - 1} was rule 1's probability with {n - 1} endpoints; how many are there "
               "now?")
    elif abs(p - 1.0) < 1e-9:
        why = ("only the LAST rule has no `--probability`: it takes whatever gets that far; "
               "rule 1 has one")
    elif 0 < p < 1 and abs(p - 1 / n ** 2) < 2e-3:
        why = "no need to multiply: rule 1 is tried first, for every new connection"
    else:
        why = "not the `--probability` of the first rule"
    return failed(f"`p_first` = {raw!r}: {why}",
                  hint=f"NODE.sh(\"iptables-save -t nat | grep 'A {view.svc}'\"): the first "
                       "rule that jumps to a KUBE-SEP chain",
                  expected=f"the --probability of rule 1 of {view.svc}", actual=repr(raw))


# --- exercise 5: the broken Service ---------------------------------------------------------------

def _listening(netns: str) -> set[int]:
    """TCP ports something listens on in a pod (`ss -ltnH`)."""
    r = kernel.Runner().run(["ss", "-ltnH"], netns, check=False, record=False)
    out = set()
    for line in r.stdout.splitlines():
        words = line.split()
        if len(words) >= 4 and words[3].rsplit(":", 1)[-1].isdigit():
            out.add(int(words[3].rsplit(":", 1)[-1]))
    return out


@LAB.check("fix-api", "Connections to api's ClusterIP reach the api pods")
def check_fix_api(ctx: Context) -> Verdict:
    from lab_kit.cluster import probe_socket

    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip, client = _vip(ctx, API), _client(ctx)
    assert client
    if vip is None:
        return failed(f"there is no Service `{API}`",
                      hint=f"apply the fixed Service; the notebook applied {API_MANIFEST} first",
                      expected=f"Service {API}", actual="none")
    pods = pod_views(ctx)
    api_pods = [p for p in pods if p.owner == f"Deployment/{API}" and p.ip]
    if not api_pods:
        return failed(f"no pod of Deployment `{API}` is running",
                      hint=f'c.apply("{API_MANIFEST}") creates them',
                      expected=f"the {API} pods", actual="none")
    views = sorted(_all_rules(ctx, vip), key=lambda v: v.node != client.node)  # client's first
    port_hint = (f"compare the Service's targetPort (c.service(\"{API}\")) with the port the "
                 f"{API} containers declare in {API_MANIFEST}, then apply the fixed Service")
    for v in views:
        if v.reject is not None:
            return failed(f"{v.node}'s filter table has kube-proxy's REJECT for "
                          f"{vip}:{PORT}, `{v.reject.text}`, which it writes when a Service has "
                          f"no endpoints: c.endpointslices(\"{API}\") lists none, though "
                          f"{len(api_pods)} pods carry the label it selects",
                          hint=port_hint, expected="endpoints, and no REJECT rule",
                          actual=v.reject.comment or "REJECT")
    disagree = _same_everywhere(views, API)
    if disagree:
        return disagree
    v = views[0]
    if v.svc is None or not v.endpoints:
        return failed(f"{v.node} has no rules for {vip}:{PORT} at all", hint=port_hint,
                      expected=f"-A KUBE-SERVICES -d {vip}/32 … -j KUBE-SVC-…", actual="none")
    by_ip = {p.ip: p for p in pods}
    for e in v.endpoints:
        pod = by_ip.get(e.ip)
        if pod is None or pod.owner != f"Deployment/{API}":
            what = f"pod {pod.name}" if pod else "no pod"
            return failed(f"{v.svc} sends connections to {e.addr}, {what}: not an {API} pod. "
                          "The selector chooses the endpoints",
                          hint=f"keep the selector app: {API}; it was right. {port_hint}",
                          expected=f"endpoints that are {API} pods", actual=e.addr)
        ports = _listening(pod.netns)
        if e.port not in ports:
            return failed(f"kube-proxy now DNATs to {e.addr}, but nothing listens on port "
                          f"{e.port} in {pod.name} (it listens on "
                          f"{', '.join(map(str, sorted(ports))) or 'nothing'}): the pod "
                          "itself refuses the connection",
                          hint="targetPort must be the port the containers listen on: its number "
                               "or, better, the NAME they give it; " + port_hint,
                          expected="the api containers' port", actual=e.port)
    missing_pods = [p.name for p in api_pods if p.ip not in {e.ip for e in v.endpoints}]
    if missing_pods:
        return failed(f"{v.svc} has no endpoint for {', '.join(missing_pods)}",
                      hint=port_hint, expected=f"all {len(api_pods)} {API} pods",
                      actual=len(v.endpoints))
    names = {p.name for p in api_pods}
    answered: list[str] = []
    for _ in range(6):
        r = probe_socket(client.name, client.netns, API, vip, PORT, "TCP", "/hostname", 1.5)
        if not r.ok or r.reply.strip() not in names:
            got = r.error or f"answered by {r.reply!r}"
            return failed(f"the rules look right, but a connection from {CLIENT} to "
                          f"{vip}:{PORT} failed: {got}",
                          hint="probe it yourself: c.probe(\"client\", API_VIP, 80)",
                          expected=f"an answer from an {API} pod", actual=got)
        answered.append(r.reply.strip())
    return passed(f"every node sends {vip}:{PORT} through {v.svc} to "
                  f"{', '.join(e.addr for e in v.endpoints)}; 6 of 6 connections from "
                  f"{CLIENT} were answered by {', '.join(sorted(set(answered)))}")


# --- exercise 6: hairpin --------------------------------------------------------------------------

@LAB.check("hairpin", "You know the source address a pod sees when its Service sends it to itself")
def check_hairpin(ctx: Context) -> Verdict:
    missing = _setup_missing(ctx)
    if missing:
        return missing
    vip = _vip(ctx, SERVICE)
    assert vip
    pods = pod_views(ctx)
    web = [p for p in pods if p.owner == f"Deployment/{SERVICE}" and p.ip]
    nodes = {name: ns for name, ns in _nodes(ctx)}
    bridges = {n: ipv4_of(ctx, nodes[n], "cni0") for n in {p.node for p in web}}
    eth0s = {n: ipv4_of(ctx, ns, "eth0") for n, ns in nodes.items()}
    rules = service_rules(read_tables(next(iter(nodes.values()))), next(iter(nodes)), vip, PORT)
    no_hairpin = [e for e in rules.endpoints if not e.hairpin]
    if no_hairpin:
        return failed(f"the chain {no_hairpin[0].sep} has no `-s {no_hairpin[0].ip} -j "
                      "KUBE-MARK-MASQ` rule any more (edited by hand?)",
                      hint=f'c.apply("{WEB_MANIFEST}") re-syncs the rules',
                      expected="-s <endpoint> -j KUBE-MARK-MASQ in every KUBE-SEP chain",
                      actual="missing")
    raw = ctx.get("seen_as")
    answer = norm_answer(raw)
    how = ("call c.probe(ME.name, VIP, 80, path=\"/clientip\") several times: the answers "
           "whose address is not ME's own are the connections that landed on ME itself")
    if not answer:
        return failed("`seen_as` is empty", hint=how, expected="an IP address",
                      actual="(empty)")
    ip = _as_ip(answer, pods)
    if ip is None:
        return failed(f"`seen_as` ({answer!r}) is not an IP address", hint=how,
                      expected="an IP address", actual=answer)
    if ip in bridges.values():
        node = next(n for n, b in bridges.items() if b == ip)
        return passed(f"{ip} is cni0's address on {node}. A pod whose connection comes back to "
                      "itself matches its KUBE-SEP chain's `-s <pod IP> -j KUBE-MARK-MASQ`; "
                      "KUBE-POSTROUTING then masquerades it to the address of the interface it "
                      "leaves by, the bridge. Without it, the server side would answer its own "
                      "IP directly, inside the pod, never through the node's conntrack, and "
                      "the client socket, which waits for the ClusterIP, would reject the "
                      "answer")
    pod = next((p for p in pods if p.ip == ip), None)
    if pod is not None and pod.owner == f"Deployment/{SERVICE}":
        why = (f"{ip} is pod {pod.name}'s own address: what the OTHER endpoints see, since "
               "traffic between pods is not masqueraded. When the connection lands on the "
               "pod that made it, something else happens")
    elif pod is not None:
        why = f"{ip} is pod {pod.name}, which does not take part"
    elif ip == vip:
        why = "that is the ClusterIP: the address the pod asked for, not the source it sees"
    elif ip in eth0s.values():
        node = next(n for n, e in eth0s.items() if e == ip)
        why = (f"{ip} is {node}'s eth0: MASQUERADE takes the address of the interface the "
               "packet LEAVES by, and a packet from a pod back to a pod on the same node never "
               "leaves by eth0")
    elif ip in {b for b in (ipv4_of(ctx, ns, "cni0") for ns in nodes.values()) if b}:
        why = f"{ip} is the bridge of a node where no web pod runs"
    else:
        why = "no interface in the cluster has that address"
    return failed(f"`seen_as` = {answer}: {why}", hint=how,
                  expected="the source address in /clientip's answer", actual=answer)


# --- a picture of a Service's chains, from the live rules -----------------------------------------

def chain_diagram(c: Cluster, service: str = SERVICE, node: str | None = None,
                  namespace: str = NAMESPACE) -> graphviz.Digraph:
    """The chains one node's kube-proxy rules send a Service's connections through, drawn from
    that node's live `iptables-save -c`: KUBE-SERVICES -> KUBE-SVC-… -> KUBE-SEP-… -> DNAT to
    each pod, with each rule's `--probability` and packet counter (new connections: the nat
    table only sees the first packet of each). `node` defaults to the client pod's node."""
    import graphviz as gv

    from lab_kit.viz import C_BRIDGE, C_DOWN, C_MUTED, C_NODE_BG, C_POD, FONT

    if node is None:
        node = next((p.node for p in c.pods(namespace) if p.name == CLIENT), c.nodes()[-1].name)
    svc = c.service(service, namespace)
    vip = svc["spec"]["clusterIP"]
    tables = read_tables(naming.node_netns(node))
    ips = {p.ip: p for p in c.pods()}
    g = gv.Digraph(f"{service}-chains", graph_attr={
        "rankdir": "LR", "fontname": FONT, "label": f"{node}: nat table, Service "
        f"{namespace}/{service} ({vip}), from iptables-save -c", "labelloc": "t",
        "fontsize": "12"}, node_attr={"fontname": FONT, "fontsize": "10", "shape": "box",
                                      "style": "rounded,filled", "fillcolor": C_NODE_BG},
        edge_attr={"fontname": FONT, "fontsize": "9"})

    g.node("hooks", "PREROUTING (from pods)\nOUTPUT (from the node)", fillcolor="white")
    g.node("services", "KUBE-SERVICES")
    g.edge("hooks", "services", label="the FIRST packet of\neach new connection")
    for p in svc["spec"].get("ports", []):
        port = p["port"]
        v = service_rules(tables, node, vip, port)
        if v.reject is not None:
            rid = f"reject{port}"
            g.node(rid, f"filter KUBE-SERVICES:\nREJECT\n“{v.reject.comment}”",
                   fillcolor="#ffebe9", color=C_DOWN, fontcolor=C_DOWN)
            g.edge("services", rid, label=f"{vip}:{port}\n(no nat rule: no endpoints)",
                   style="dashed", color=C_DOWN)
            continue
        if v.svc is None:
            continue
        g.node(v.svc, f"{v.svc}\n“{v.dispatch.comment if v.dispatch else ''}”",
               fillcolor=C_BRIDGE)
        g.edge("services", v.svc, label=f"-d {vip} --dport {port}\n"
                   f"{count_packets(v.dispatch.packets if v.dispatch else None)}")
        if v.masq is not None:
            g.node("masq", "KUBE-MARK-MASQ\n(mark 0x4000: SNAT later)", fillcolor="white",
                   color=C_MUTED, fontcolor=C_MUTED)
            g.edge(v.svc, "masq", label=f"! -s {v.masq.negated('-s')}\n(not from a pod)",
                   style="dashed", color=C_MUTED, fontcolor=C_MUTED)
        for i, e in enumerate(v.endpoints):
            pod = ips.get(e.ip or "")
            rule = (f"rule {i + 1}: p = {e.probability:.4f} ({_ratio(e.probability)})"
                    if e.probability is not None else f"rule {i + 1}: always")
            hairpin = f"-s {e.ip} → KUBE-MARK-MASQ (hairpin)\n" if e.hairpin else ""
            g.node(e.sep, f"{e.sep}\n{hairpin}DNAT → {e.addr}")
            g.edge(v.svc, e.sep, label=f"{rule}\n{count_packets(e.packets)}")
            pid = f"pod-{e.ip}"
            g.node(pid, f"pod {pod.name if pod else '?'}\n{e.addr}\non {pod.node if pod else '?'}",
                   fillcolor=C_POD)
            g.edge(e.sep, pid)
    return g


def count_packets(n: int | None) -> str:
    """A nat rule's packet counter, in words: the nat table sees one packet per connection."""
    return "" if n is None else f"{n} connection{'s' if n != 1 else ''}"


def hold_command(vip: str, port: int = PORT, source_port: int = HOLD_PORT) -> str:
    """The shell command the notebook runs in the client pod: one TCP connection to the
    Service that stays open (an HTTP/1.1 keep-alive request every 10 s), from a fixed source
    port, its answers thrown away. `linger=0`: when socat ends, the connection is reset rather
    than left in TIME_WAIT, so the command can be run again at once with the same port."""
    requests = ("while :; do printf 'GET /hostname HTTP/1.1\\r\\nHost: web\\r\\n\\r\\n'; "
                "sleep 10; done")
    return (f"setsid bash -c \"({requests}) | socat - TCP:{vip}:{port},sourceport={source_port}"
            ",reuseaddr,linger=0 >/dev/null\" >/dev/null 2>&1 </dev/null &")


