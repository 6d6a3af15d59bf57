"""Checks of `labs/08-nodeport-loadbalancer.ipynb`: traffic from outside the cluster.

The lab's cluster `nodeport` (labs/clusters/nodeport.yaml: a control plane and two workers,
host-gw routes, kube-proxy in iptables mode) has one backend, `web-1`, pinned to
nodeport-worker (labs/manifests/nodeport-web.yaml). The client is the `external` host on the
underlay. The notebook, in order:

- exercise `nodeport`: the learner writes the Service `web` (type NodePort, port 80 -> 8080,
  nodePort 30080); check `nodeport` reads kube-proxy's rules on every node (KUBE-NODEPORTS ->
  KUBE-EXT -> … -> DNAT) and opens real connections from the external host to every node;
- exercise `source-ip`: which source address web-1 sees for a connection that enters through
  nodeport-worker2 (no local pod) and through nodeport-worker (web-1's own node); check
  `source-ip` asks each node's routing table which address MASQUERADE picks (`ip route get`)
  and, while the Service still masquerades, measures it with agnhost's `/clientip`;
- exercise `local`: `externalTrafficPolicy: Local`; check `local` reads the KUBE-EXT / KUBE-SVL
  chains and the filter rule "has no local endpoints", then probes every node from outside:
  the client's own address on nodes with a web pod, silence (a DROP) on the others;
- exercise `loadbalancer`: `web` becomes type LoadBalancer and a second backend runs on
  nodeport-worker2; check `loadbalancer` compares the external host's route to the
  load-balancer IP (ECMP next hops, like MetalLB in BGP mode) with the nodes that have a local
  endpoint in kube-proxy's rules, and probes the IP and each node's NodePort;
- exercise `shop`: a manifest the API refuses (a nodePort already taken, a loadBalancerIP
  outside the pool); check `shop` reads the Service's rules and route and probes it.

Every check reads the live kernel: `iptables-save` in each node's netns, `ip -j route` on the
nodes and the external host, pod addresses on their eth0, and real TCP connections. Node and
pod *names* come from the cluster; addresses and rules from the kernel.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lab_kit import kernel, kubeproxy, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import is_netns, norm_answer, underlay_ip

if TYPE_CHECKING:
    import graphviz

    from lab_kit.cluster import Cluster, ProbeResult

__all__ = ["LAB", "SvcRules", "TrafficMap", "service_rules", "traffic_map"]

LAB = Lab("08-nodeport-loadbalancer", "NodePort, LoadBalancer and the client's source IP",
          "nodeport")

CP, W1, W2 = "nodeport-control-plane", "nodeport-worker", "nodeport-worker2"
SHELLS = {CP: "CP", W1: "W1", W2: "W2"}  # the notebook's names for c.node(...)
SERVICE, PORT, TARGET_PORT, NODE_PORT = "web", 80, 8080, 30080
FIRST = "web-1"  # on nodeport-worker (setup); exercise 4 adds web-2 on nodeport-worker2
SHOP, SHOP_POD, SHOP_IP = "shop", "shop-1", "172.18.255.210"
SETUP = 'c.apply("manifests/nodeport-web.yaml")'
SECOND_APPLY = 'c.apply("manifests/nodeport-web-2.yaml")'
DROP_TIMEOUT = 0.5  # a probe that must go unanswered waits this long (s)
WEB_SPEC = ("a Service `web`: type NodePort, selector {app: web}, ports [{port: 80, "
            "targetPort: 8080, nodePort: 30080}]")


# --- reading kube-proxy's rules ------------------------------------------------------------------

Rule = kubeproxy.IptRule
Chains = dict[str, list[Rule]]


def addr_of(netns: str, dev: str) -> str | None:
    """The first IPv4 address (no prefix) of `dev` in `netns`, from the kernel."""
    for link in Context.ip_json(netns, "-4", "addr", "show", "dev", dev):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                return str(a["local"])
    return None


def route_src(netns: str, ip: str) -> tuple[str | None, str | None]:
    """(source address, device) of `netns`'s route to `ip`: `ip route get` names the address
    a packet to `ip` leaves with, which is the one MASQUERADE picks."""
    got = Context.ip_json(netns, "route", "get", ip)
    return ((got[0].get("prefsrc"), got[0].get("dev")) if got else (None, None))


def read_chains(netns: str, table: str) -> Chains:
    """Every rule of one table in `netns`, by chain (`iptables-save -t TABLE`, not journaled)."""
    res = kernel.Runner().run(["iptables-save", "-t", table], netns, check=False, record=False)
    return kubeproxy.parse_iptables_rules(res.stdout).get(table, {})


def _names(svc: str, namespace: str = "default") -> re.Pattern[str]:
    """Matches the service port name kube-proxy writes in comments: `default/web` or
    `default/web:http`, as a whole word (not `default/web-cluster`)."""
    return re.compile(rf"(^|\s){re.escape(namespace)}/{re.escape(svc)}(:[a-z0-9-]+)?(\s|$)")


def _about(rule: Rule, pat: re.Pattern[str]) -> bool:
    return bool(pat.search(rule.comment))


@dataclass(frozen=True)
class SvcRules:
    """What one node's kube-proxy rules say about one Service (iptables mode)."""
    node: str
    netns: str
    ip: str | None  # the node's underlay address (eth0)
    node_ports: tuple[tuple[int, str], ...] = ()  # (nodePort, the KUBE-EXT chain it jumps to)
    ext: tuple[Rule, ...] = ()  # the rules of that KUBE-EXT chain
    cluster_target: str | None = None  # where KUBE-SERVICES sends the ClusterIP (SVC or SVL)
    lb: tuple[tuple[str, int], ...] = ()  # (load-balancer IP, port) in KUBE-SERVICES
    endpoints: tuple[str, ...] = ()  # ip:port of every KUBE-SEP chain's DNAT
    local: tuple[str, ...] = ()  # ip:port in the KUBE-SVL chain (this node's endpoints)
    drops: tuple[Rule, ...] = ()  # filter: "… has no local endpoints" -j DROP
    rejects: tuple[Rule, ...] = ()  # filter: "… has no endpoints" -j REJECT

    @property
    def exists(self) -> bool:
        return bool(self.cluster_target or self.node_ports or self.rejects or self.drops)

    @property
    def node_port(self) -> int | None:
        if self.node_ports:
            return self.node_ports[0][0]
        for r in self.rejects + self.drops:
            if "LOCAL" in r.args and r.dport is not None:
                return r.dport
        return None

    @property
    def policy(self) -> str | None:
        """externalTrafficPolicy as the KUBE-EXT chain implements it (None: no such chain)."""
        if any(r.target == "KUBE-MARK-MASQ" and r.comment.startswith("masquerade traffic for")
               for r in self.ext):
            return "Cluster"
        if any(r.comment.startswith("pod traffic for") for r in self.ext):
            return "Local"
        return None

    @property
    def ext_chain(self) -> str | None:
        return self.node_ports[0][1] if self.node_ports else None

    @property
    def ext_to_local(self) -> bool:
        """KUBE-EXT ends with the jump to KUBE-SVL (only when there are local endpoints)."""
        return any((r.target or "").startswith("KUBE-SVL-") for r in self.ext)

    def drops_port(self, port: int) -> bool:
        return any(r.target == "DROP" and r.dport == port and "LOCAL" in r.args
                   for r in self.drops)

    def lb_ips(self) -> list[str]:
        return [ip for ip, _ in self.lb]


def service_rules(node: str, netns: str, nat: Chains, filt: Chains, svc: str) -> SvcRules:
    """Pick the rules about Service `svc` out of one node's nat and filter tables."""
    pat = _names(svc)
    node_ports = tuple((r.dport, r.target) for r in nat.get("KUBE-NODEPORTS", [])
                       if _about(r, pat) and r.dport is not None)
    ext = tuple(nat.get(node_ports[0][1], [])) if node_ports else ()
    if not ext:
        for r in nat.get("KUBE-SERVICES", []):
            if _about(r, pat) and (r.target or "").startswith("KUBE-EXT-"):
                ext = tuple(nat.get(r.target, []))
                break
    cluster_target = next((r.target for r in nat.get("KUBE-SERVICES", [])
                           if _about(r, pat) and r.comment.endswith("cluster IP")), None)
    lb = tuple((r.dst, r.dport or 0) for r in nat.get("KUBE-SERVICES", [])
               if _about(r, pat) and r.comment.endswith("loadbalancer IP") and r.dst)
    endpoints: list[str] = []
    local: list[str] = []
    for chain, rules in nat.items():
        for r in rules:
            if not _about(r, pat):
                continue
            if chain.startswith("KUBE-SEP-") and r.target == "DNAT":
                to = r.opt("--to-destination")
                if to and to not in endpoints:
                    endpoints.append(to)
            elif chain.startswith("KUBE-SVL-") and " -> " in r.comment:
                local.append(r.comment.split(" -> ", 1)[1])
    filt_rules = filt.get("KUBE-EXTERNAL-SERVICES", []) + filt.get("KUBE-SERVICES", [])
    drops = tuple(r for r in filt_rules if _about(r, pat)
                  and r.comment.endswith("has no local endpoints"))
    rejects = tuple(r for r in filt_rules if _about(r, pat)
                    and r.comment.endswith("has no endpoints"))
    return SvcRules(node, netns, underlay_ip(netns), node_ports, ext, cluster_target, lb,
                    tuple(endpoints), tuple(local), drops, rejects)


@dataclass(frozen=True)
class PodView:
    name: str
    node: str
    netns: str
    ip: str | None  # eth0's address, from the kernel
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """The evidence of one check: every node's tables, the pods, the external host."""
    nodes: dict[str, tuple[str, Chains, Chains]]  # name -> (netns, nat, filter)
    pods: dict[str, PodView]  # by name
    ext_ns: str
    ext_ip: str | None
    cache: dict[str, dict[str, SvcRules]] = field(default_factory=dict)

    def svc(self, name: str) -> dict[str, SvcRules]:
        """Service `name`'s rules on every node, by node name."""
        if name not in self.cache:
            self.cache[name] = {n: service_rules(n, ns, nat, filt, name)
                                for n, (ns, nat, filt) in self.nodes.items()}
        return self.cache[name]

    def pod_by_ip(self, ip: str) -> PodView | None:
        return next((p for p in self.pods.values() if p.ip == ip), None)

    def node_ip(self, node: str) -> str | None:
        return underlay_ip(self.nodes[node][0]) if node in self.nodes else None

    def who(self, ip: str) -> str:
        """What address `ip` is in this cluster, in words."""
        if ip == self.ext_ip:
            return "the external client's own address"
        for n, (ns, _nat, _filt) in self.nodes.items():
            if underlay_ip(ns) == ip:
                return f"{n}'s underlay address (eth0)"
            if addr_of(ns, "cni0") == ip:
                return f"{n}'s cni0 bridge address (its pods' gateway)"
        pod = self.pod_by_ip(ip)
        if pod is not None:
            return f"pod {pod.name}'s own address"
        return "not an address of this cluster's nodes, pods or external host"


def gather(ctx: Context) -> World:
    cluster = ctx.cluster
    name = cluster.name  # attach first: a check on a stopped cluster says so
    nodes = {}
    for n in cluster.nodes():
        nodes[n.name] = (n.netns, read_chains(n.netns, "nat"), read_chains(n.netns, "filter"))
    pods = {}
    for p in cluster.pods():
        ip = addr_of(p.netns, "eth0") if is_netns(ctx, p.netns) else None
        pods[p.name] = PodView(p.name, p.node, p.netns, ip, dict(p.labels))
    ext_ns = naming.external_netns(name)
    return World(nodes, pods, ext_ns, underlay_ip(ext_ns))


# --- probes from the external host ---------------------------------------------------------------

def probe(w: World, ip: str, port: int, path: str = "/hostname",
          timeout: float = 1.0) -> ProbeResult:
    """A real HTTP GET from the external host (one retry when it fails fast or times out)."""
    from lab_kit.cluster import probe_socket
    r = probe_socket("external", w.ext_ns, ip, ip, port, "TCP", path, timeout)
    if not r.ok and timeout >= 1.0:
        r = probe_socket("external", w.ext_ns, ip, ip, port, "TCP", path, timeout)
    return r


def probe_many(w: World, jobs: Iterable[tuple[str, int, str, float]]) -> list[ProbeResult]:
    """Several probes at once (the ones expected to time out then cost one timeout in all)."""
    todo = list(jobs)
    if not todo:
        return []
    with ThreadPoolExecutor(max_workers=len(todo)) as ex:
        return list(ex.map(lambda j: probe(w, *j), todo))


def host_of(reply: str) -> str:
    """`10.244.1.1:41234` (what /clientip answers) -> `10.244.1.1`."""
    return reply.strip().rsplit(":", 1)[0]


# --- the Service as a whole ----------------------------------------------------------------------

def _node_shell(node: str) -> str:
    return SHELLS.get(node, f'c.node("{node}")')


def _nodeport_problem(w: World, svc: str = SERVICE, port: int = NODE_PORT,
                      first: bool = True) -> Verdict | None:
    """What keeps Service `svc` from being a NodePort Service on `port` with web's endpoints,
    from the rules alone; None when kube-proxy's rules are as they should be."""
    rules = w.svc(svc)
    later = "" if first else "finish exercise `nodeport` first: "
    if not any(r.exists for r in rules.values()):
        other = sorted({r.comment for ns, nat, _f in w.nodes.values()
                        for r in nat.get("KUBE-NODEPORTS", []) if r.dport == port})
        if other:
            return failed(f"port {port} belongs to `{other[0]}`, not to a Service `{svc}`",
                          hint=f"{later}name the Service `{svc}` (metadata.name), and delete "
                               f"the other one with c.delete(...)",
                          expected=f"KUBE-NODEPORTS rule `default/{svc}` --dport {port}",
                          actual=f"`{other[0]}` --dport {port}")
        return failed(f"kube-proxy has no rule for a Service `default/{svc}` on any node: "
                      "there is no such Service yet",
                      hint=f"{later}c.apply(...) {WEB_SPEC} (the exercise cell has a template)",
                      expected=f"a NodePort Service `{svc}`", actual="no Service")
    ports = [r.node_port for r in rules.values() if r.node_port is not None]
    any_rules = next(iter(rules.values()))
    if not ports:
        return failed(f"`{svc}` is a ClusterIP Service: it has a `cluster IP` rule in "
                      "KUBE-SERVICES but nothing in KUBE-NODEPORTS, so no node opens a port "
                      "for it",
                      hint=f"{later}set `type: NodePort` and `nodePort: {port}` in its port, "
                           "then c.apply(...) it again",
                      expected=f"KUBE-NODEPORTS --dport {port}", actual="no NodePort rule")
    have = max(set(ports), key=ports.count)
    missing = [n for n, r in rules.items() if r.node_port != have]
    if missing:
        return failed(f"{', '.join(missing)} has no KUBE-NODEPORTS rule for `{svc}`'s port "
                      f"{have}, the other nodes do: a rule was changed or deleted by hand",
                      hint="re-apply the Service: kube-proxy rewrites its chains on every node "
                           "at each sync",
                      expected=f"--dport {have} on every node", actual="missing")
    if have != port:
        return failed(f"`{svc}`'s nodePort is {have}, not {port}",
                      hint=f"set `nodePort: {port}` in the Service's port and apply it "
                           "again (without it the API server picks a free port, and keeps it "
                           "on later applies)",
                      expected=f"--dport {port}", actual=f"--dport {have}")
    if any_rules.rejects and not any_rules.endpoints:
        labels = next((p.labels for p in w.pods.values() if p.name == FIRST), {})
        shown = ", ".join(f"{k}: {v}" for k, v in labels.items()) or "app: web"
        return failed(f"`{svc}` has no endpoints: kube-proxy's filter rule `default/{svc} has "
                      "no endpoints` REJECTs every connection. Its selector matches no pod",
                      hint=f"{FIRST} is labelled {{{shown}}}: the selector must match that "
                           "label; c.get_endpointslices() shows the endpoints",
                      expected="endpoints (KUBE-SEP chains)", actual="has no endpoints (REJECT)")
    return None


def _endpoint_problem(w: World, svc: str = SERVICE, target: int = TARGET_PORT) -> Verdict | None:
    rules = next(iter(w.svc(svc).values()))
    wrong = [e for e in rules.endpoints if not e.endswith(f":{target}")]
    if wrong:
        ip, port = wrong[0].rsplit(":", 1)
        pod = w.pod_by_ip(ip)
        name = pod.name if pod else ip
        return failed(f"`{svc}`'s KUBE-SEP chain DNATs to {wrong[0]}: {name}'s port {port}, "
                      f"where nothing listens; the pods listen on {target}",
                      hint=f"set `targetPort: {target}` (the port the pod listens on; `port` is "
                           "the Service's own port on its ClusterIP)",
                      expected=f"DNAT --to-destination …:{target}", actual=f"DNAT to {wrong[0]}")
    return None


def _answering(rules: dict[str, SvcRules]) -> list[str]:
    """The nodes that should answer on the NodePort: all with Cluster, those with a local
    endpoint with Local."""
    return [n for n, r in rules.items() if r.policy == "Cluster" or r.local]


def _backend_names(w: World, rules: SvcRules) -> dict[str, str]:
    """{pod name: ip:port} of the Service's endpoints."""
    out = {}
    for e in rules.endpoints:
        pod = w.pod_by_ip(e.rsplit(":", 1)[0])
        out[pod.name if pod else e] = e
    return out


def _walk_hint(ip: str | None, port: int) -> str:
    return (f'c.packet_walk("external", "{ip}", {port}) lists the rules the SYN passes on each '
            "node and where it stops")


# --- exercise 1: a NodePort Service ----------------------------------------------------------

@LAB.check("nodeport", "From outside, port 30080 on the nodes leads to web's pods")
def check_nodeport(ctx: Context) -> Verdict:
    w = gather(ctx)
    if w.pods.get(FIRST) is None or w.pods[FIRST].ip is None:
        return failed(f"pod {FIRST} is not running",
                      hint=f"run the notebook's setup cells: they apply it ({SETUP})",
                      expected=f"{FIRST} with an address", actual="missing")
    problem = _nodeport_problem(w) or _endpoint_problem(w)
    if problem is not None:
        return problem
    rules = w.svc(SERVICE)
    backends = _backend_names(w, next(iter(rules.values())))
    nodes = _answering(rules)
    if not nodes:
        return failed("no node would answer on the NodePort: externalTrafficPolicy is Local "
                      "and no node has a local endpoint",
                      hint=f"is {FIRST} running? ({SETUP})", expected="a node with a web pod",
                      actual="none")
    results = probe_many(w, [(str(rules[n].ip), NODE_PORT, "/hostname", 1.0) for n in nodes])
    seen = []
    for n, r in zip(nodes, results, strict=True):
        if not r.ok or r.reply.strip() not in backends:
            got = r.error or f"answered {r.reply!r}"
            return failed(f"the rules look right, but a connection from the external host to "
                          f"{n} ({rules[n].ip}:{NODE_PORT}) fails: {got}",
                          hint=_walk_hint(rules[n].ip, NODE_PORT),
                          expected=f"HTTP 200 from one of {', '.join(backends)}", actual=got)
        seen.append(f"{rules[n].ip} → {r.reply.strip()}")
    chain = rules[nodes[0]].ext_chain
    return passed(f"every node's KUBE-NODEPORTS sends tcp dport {NODE_PORT} to {chain}; from the "
                  f"external host: {', '.join(seen)}")


# --- exercise 2: which source address does web-1 see? ---------------------------------------------

def _ip_answer(value: Any) -> tuple[str, str | None]:
    """(the answer as an address, a problem or None); `ip:port` (what /clientip prints) and a
    /prefix are accepted."""
    text = norm_answer(value)
    if not text:
        return text, "empty"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", text):
        text = text.rsplit(":", 1)[0]
    try:
        return str(ipaddress.ip_interface(text).ip), None
    except ValueError:
        return text, "not an IPv4 address"


@LAB.check("source-ip", "You found the source address web-1 sees through each node")
def check_source_ip(ctx: Context) -> Verdict:
    w = gather(ctx)
    web1 = w.pods.get(FIRST)
    if web1 is None or web1.ip is None:
        return failed(f"pod {FIRST} is not running", hint=f"run the setup cells ({SETUP})",
                      expected=f"{FIRST} with an address", actual="missing")
    rules = w.svc(SERVICE)
    one_backend = [e.rsplit(":", 1)[0] for e in next(iter(rules.values())).endpoints] == [
        web1.ip]
    for key, node in (("seen_via_worker2", W2), ("seen_via_worker", W1)):
        ns, _nat, _filt = w.nodes[node]
        node_ip = w.node_ip(node)
        truth, dev = route_src(ns, web1.ip)
        how = f'{_node_shell(node)}.sh("ip route get {web1.ip}") → dev {dev} src {truth}'
        if rules[node].policy == "Cluster" and one_backend:
            r = probe(w, str(node_ip), NODE_PORT, "/clientip")
            if r.ok:
                truth = host_of(r.reply)
        if truth is None:
            return failed(f"{node} has no route to {FIRST} ({web1.ip})",
                          hint="re-create the cluster: run the notebook from its first cell",
                          expected=f"a route to {web1.ip}", actual="none")
        got, problem = _ip_answer(ctx.get(key))
        measure = f'c.probe("external", {"W2_IP" if node == W2 else "W1_IP"}, 30080, ' \
                  'path="/clientip")'
        if problem == "empty":
            return failed(f"`{key}` is empty",
                          hint=f"predict it, then measure it: {measure} (web-1 answers with the "
                               "ip:port it saw)",
                          expected="an IPv4 address", actual="(nothing)")
        if problem:
            return failed(f"`{key}` = {got!r} is {problem}",
                          hint=f'write it like {key} = "{node_ip}"', expected="an IPv4 address",
                          actual=got)
        if got == truth:
            continue
        who = w.who(got)
        if got == w.ext_ip:
            why = ("with externalTrafficPolicy: Cluster, KUBE-EXT sends every connection from "
                   "outside through KUBE-MARK-MASQ, and KUBE-POSTROUTING masquerades it: the "
                   "client's address is gone")
        elif node == W1 and got == node_ip:
            why = (f"{node} does masquerade, but towards {FIRST} the packet leaves through cni0, "
                   "not eth0: MASQUERADE takes the address of the interface the packet leaves "
                   f"by ({how})")
        elif node == W2 and got == w.node_ip(W1):
            why = (f"that is the address of {W1}, where {FIRST} runs; but the connection was "
                   f"masqueraded on {node}, the node it entered, before it was forwarded")
        elif got == web1.ip:
            why = f"that is {FIRST} itself, the receiver, not the sender"
        else:
            why = f"{got} is {who}"
        return failed(f"`{key}` = {got}: {why}",
                      hint=f"measure it: {measure}; the routing table says which address "
                           f"MASQUERADE picks: {_node_shell(node)}.sh(\"ip route get "
                           f"{web1.ip}\")",
                      expected=f"the source address {FIRST} sees via {node}",
                      actual=f"{got} ({who})")
    w2_src = _ip_answer(ctx.get("seen_via_worker2"))[0]
    w1_src = _ip_answer(ctx.get("seen_via_worker"))[0]
    return passed(f"via {W2}, {FIRST} sees {w2_src} ({w.who(w2_src)}): the node masquerades "
                  f"the connection out of eth0 towards {W1}. Via {W1}, it sees {w1_src} "
                  f"({w.who(w1_src)}): masqueraded too, out of cni0. Either way the reply "
                  "must come back through the node that rewrote the packet")


# --- exercise 3: externalTrafficPolicy: Local ----------------------------------------------------




def _policy_problem(w: World, rules: dict[str, SvcRules], step: str) -> Verdict | None:
    """web must have externalTrafficPolicy: Local in its KUBE-EXT chain."""
    policy = {r.policy for r in rules.values()}
    if policy == {"Local"}:
        return None
    sample = next(iter(rules.values()))
    itp = next((r for r in rules.values()
                if r.cluster_target and r.cluster_target.startswith("KUBE-SVL-")), None)
    if itp is not None:
        return failed("`web` has internalTrafficPolicy: Local (KUBE-SERVICES on "
                      f"{itp.node} sends the cluster IP to {itp.cluster_target}), but the "
                      f"traffic from outside still goes through {itp.ext_chain} → "
                      "KUBE-MARK-MASQ",
                      hint="internalTrafficPolicy is about connections from pods to the "
                           "ClusterIP; connections from outside follow "
                           "`externalTrafficPolicy: Local`",
                      expected="externalTrafficPolicy: Local (KUBE-EXT → KUBE-SVL)",
                      actual="internalTrafficPolicy: Local")
    if step == "local":
        return failed(f"`web` still has externalTrafficPolicy: Cluster: {sample.ext_chain} "
                      "starts with `-j KUBE-MARK-MASQ` on every node",
                      hint="add `externalTrafficPolicy: Local` to web's spec (next to "
                           "`type`) and c.apply(...) it again",
                      expected=f"{sample.ext_chain} → KUBE-SVL-… (no masquerade)",
                      actual=f"{sample.ext_chain} → KUBE-MARK-MASQ")
    return failed(f"`web`'s externalTrafficPolicy is back to Cluster ({sample.ext_chain} → "
                  "KUBE-MARK-MASQ): `apply` replaces the whole spec, and a field your manifest "
                  "leaves out gets its default, Cluster",
                  hint="keep `externalTrafficPolicy: Local` (and nodePort: 30080) in the "
                       "manifest when you change the type",
                  expected="externalTrafficPolicy: Local", actual="Cluster")


@LAB.check("local", "externalTrafficPolicy: Local: web sees the real client, nodes without a "
                    "web pod drop")
def check_local(ctx: Context) -> Verdict:
    w = gather(ctx)
    problem = (_nodeport_problem(w, first=False) or _endpoint_problem(w)
               or _policy_problem(w, w.svc(SERVICE), "local"))
    if problem is not None:
        return problem
    rules = w.svc(SERVICE)
    with_pod = [n for n, r in rules.items() if r.local]
    without = [n for n, r in rules.items() if not r.local]
    if not with_pod:
        return failed("no node has a local endpoint of web: with Local, every node drops",
                      hint=f"is {FIRST} running? ({SETUP})", expected="a node with a web pod",
                      actual="none")
    for n in with_pod:
        if not rules[n].ext_to_local:
            return failed(f"{n} has a web pod but its {rules[n].ext_chain} does not jump to "
                          "KUBE-SVL-…", hint="re-apply the Service so kube-proxy resyncs",
                          expected="-j KUBE-SVL-…", actual="missing")
    for n in without:
        if not rules[n].drops_port(NODE_PORT):
            return failed(f"{n} has no web pod, but no filter rule `default/web has no local "
                          f"endpoints` drops port {NODE_PORT} there",
                          hint=f'look: {_node_shell(n)}.sh("iptables-save -t filter"); '
                               "re-apply the Service so kube-proxy resyncs",
                          expected="-j DROP in KUBE-EXTERNAL-SERVICES", actual="missing")
    jobs = [(str(rules[n].ip), NODE_PORT, "/clientip", 1.0) for n in with_pod]
    jobs += [(str(rules[n].ip), NODE_PORT, "/clientip", DROP_TIMEOUT) for n in without]
    results = probe_many(w, jobs)
    kept = []
    for n, r in zip(with_pod, results[:len(with_pod)], strict=True):
        if not r.ok:
            return failed(f"{n} has a web pod, but the external host's connection to "
                          f"{rules[n].ip}:{NODE_PORT} fails: {r.error}",
                          hint=_walk_hint(rules[n].ip, NODE_PORT),
                          expected="HTTP 200", actual=r.error)
        if host_of(r.reply) != w.ext_ip:
            return failed(f"via {n} the pod still sees {host_of(r.reply)} "
                          f"({w.who(host_of(r.reply))}), not the client {w.ext_ip}",
                          hint=f"c.conntrack(\"{n}\", port={NODE_PORT}) shows the SNAT",
                          expected=w.ext_ip, actual=host_of(r.reply))
        kept.append(f"{n} → {r.reply.strip()}")
    for n, r in zip(without, results[len(with_pod):], strict=True):
        if r.ok:
            return failed(f"{n} has no web pod and should drop, but it answered: "
                          f"{r.reply.strip()!r}",
                          hint=f'{_node_shell(n)}.sh("iptables-save -t filter") should show '
                               "the DROP rule", expected="no answer", actual=r.reply.strip())
    quiet = (f"; {', '.join(without)} (no web pod) dropped the SYN: the probes timed out "
             f"after {DROP_TIMEOUT:g} s" if without else "")
    return passed(f"the pod sees the real client: {', '.join(kept)}{quiet}")


# --- exercise 4: type LoadBalancer ----------------------------------------------------------------

def lb_nexthops(w: World, ip: str) -> list[str] | None:
    """The next hops of the external host's route to `ip` (None: no route of its own)."""
    routes = Context.ip_json(w.ext_ns, "route", "show", f"{ip}/32")
    if not routes:
        return None
    r = routes[0]
    hops = [h["gateway"] for h in r.get("nexthops", []) if h.get("gateway")] or (
        [r["gateway"]] if r.get("gateway") else [])
    return sorted(hops, key=ipaddress.IPv4Address)


@LAB.check("loadbalancer", "web is a LoadBalancer: its IP is routed only to the nodes with a "
                           "web pod")
def check_loadbalancer(ctx: Context) -> Verdict:
    w = gather(ctx)
    problem = _nodeport_problem(w, first=False) or _endpoint_problem(w)
    if problem is not None:
        return problem
    rules = w.svc(SERVICE)
    sample = next(iter(rules.values()))
    ips = sample.lb_ips()
    if not ips:
        return failed("`web` has no load-balancer IP: no `loadbalancer IP` rule in "
                      "KUBE-SERVICES, it is still type NodePort",
                      hint="apply web again with `type: LoadBalancer`, keeping "
                           "`externalTrafficPolicy: Local` and `nodePort: 30080`",
                      expected="type LoadBalancer with an EXTERNAL-IP", actual="no LB IP")
    lb_ip = ips[0]
    problem = _policy_problem(w, rules, "loadbalancer")
    if problem is not None:
        return problem
    with_pod = [n for n, r in rules.items() if r.local]
    if W2 not in with_pod:
        return failed(f"{W2} has no local endpoint of web: only {', '.join(with_pod) or 'none'} "
                      f"can take clients, so the load balancer sends everything there",
                      hint=f"run a second backend on {W2}: {SECOND_APPLY}",
                      expected=f"web pods on {W1} and {W2}",
                      actual=f"on {', '.join(with_pod) or 'no node'}")
    want = sorted((str(rules[n].ip) for n in with_pod), key=ipaddress.IPv4Address)
    have = lb_nexthops(w, lb_ip)
    if have != want:
        ip_node = {str(r.ip): n for n, r in rules.items()}
        extra = [ip_node.get(h, h) for h in (have or []) if h not in want]
        why = (f": {', '.join(extra)} would get clients it drops" if extra else "")
        return failed(f"the external host routes {lb_ip} via {', '.join(have or []) or 'nothing'}"
                      f", not via exactly the nodes with a web pod ({', '.join(want)}){why}",
                      hint="the lab's load-balancer controller rewrites this route at every "
                           "apply: did you change it by hand? Apply web again "
                           '(c.external.sh("ip route") shows it)',
                      expected=f"{lb_ip} nexthop via " + " nexthop via ".join(want),
                      actual=f"via {', '.join(have or []) or 'no route'}")
    pods_on = {n: {p.name for e in rules[n].local
                   if (p := w.pod_by_ip(e.rsplit(":", 1)[0])) is not None} for n in with_pod}
    jobs = [(lb_ip, PORT, "/clientip", 1.0)] + [(str(rules[n].ip), NODE_PORT, "/hostname", 1.0)
                                                for n in with_pod]
    results = probe_many(w, jobs)
    r = results[0]
    if not r.ok or host_of(r.reply) != w.ext_ip:
        got = r.error or f"the pod saw {r.reply.strip()}"
        return failed(f"a connection from the external host to {lb_ip}:{PORT} does not reach "
                      f"web with the client's own address: {got}",
                      hint=_walk_hint(lb_ip, PORT), expected=f"{w.ext_ip}:…", actual=got)
    for n, res in zip(with_pod, results[1:], strict=True):
        if not res.ok or res.reply.strip() not in pods_on[n]:
            got = res.error or f"answered {res.reply.strip()!r}"
            mine = " or ".join(sorted(pods_on[n]))
            return failed(f"via {n}'s NodePort the answer should come from its own pod {mine} "
                          f"(Local never forwards to another node): {got}",
                          hint=_walk_hint(rules[n].ip, NODE_PORT), expected=mine, actual=got)
    others = [n for n in rules if n not in with_pod]
    return passed(f"EXTERNAL-IP {lb_ip}: the external host routes it via "
                  f"{' and '.join(want)} (ECMP), the nodes with a web pod"
                  + (f"; {', '.join(others)} is no next hop" if others else "")
                  + f"; through {lb_ip}:{PORT} the pod sees the client {r.reply.strip()}")


# --- exercise 5: fix the shop ----------------------------------------------------------------

@LAB.check("shop", "shop answers at 172.18.255.210, and web keeps its nodePort 30080")
def check_shop(ctx: Context) -> Verdict:
    w = gather(ctx)
    shop = w.svc(SHOP)
    sample = next(iter(shop.values()))
    if not sample.exists:
        return failed("there is no Service `shop`: c.apply refused the manifest, so nothing of "
                      "it was created",
                      hint="read the error message: it names the field. Change that field in "
                           "SHOP (a list of dicts), c.apply(SHOP) again, and repeat until it "
                           "goes through",
                      expected="Service shop", actual="none")
    web = next(iter(w.svc(SERVICE).values()))
    if not web.exists:
        return failed(f"there is no Service `web` on nodePort {NODE_PORT}: exercises 1 to 4 "
                      "build it, and its clients use that port (deleting web to free the port "
                      "for shop is not the fix)",
                      hint="apply web as in exercise `loadbalancer`, and give shop another "
                           "nodePort, or none",
                      expected=f"web on {NODE_PORT}", actual="no Service web")
    if web.node_port != NODE_PORT:
        return failed(f"web's nodePort is now {web.node_port}: its clients still use "
                      f"{NODE_PORT}. Moving web is not the fix",
                      hint=f"give web nodePort: {NODE_PORT} back, and give shop another "
                           "nodePort (or none: the API server picks a free one)",
                      expected=f"web on {NODE_PORT}", actual=f"web on {web.node_port}")
    if w.pods.get(SHOP_POD) is None or w.pods[SHOP_POD].ip is None:
        return failed(f"pod {SHOP_POD} is not running: keep the Pod in the list you apply",
                      hint="c.apply(SHOP) with both documents", expected=SHOP_POD,
                      actual="missing")
    ips = sample.lb_ips()
    if not ips:
        return failed("shop has no load-balancer IP: it must stay type LoadBalancer",
                      hint='SHOP[1]["spec"]["type"] = "LoadBalancer"',
                      expected=SHOP_IP, actual="no EXTERNAL-IP")
    if ips[0] != SHOP_IP:
        return failed(f"shop got {ips[0]} from the pool, but the DNS record shop.example points "
                      f"at {SHOP_IP}",
                      hint=f'ask for that address: SHOP[1]["spec"]["loadBalancerIP"] = '
                           f'"{SHOP_IP}" (it is inside the pool 172.18.255.200-250)',
                      expected=SHOP_IP, actual=ips[0])
    if not lb_nexthops(w, SHOP_IP):
        return failed(f"the external host has no route to {SHOP_IP}",
                      hint="apply shop again; the load-balancer controller adds the route when "
                           "the Service has ready endpoints",
                      expected=f"a route to {SHOP_IP}", actual="none")
    np = sample.node_port
    node = next((n for n in _answering(shop)), None)
    jobs = [(SHOP_IP, PORT, "/hostname", 1.0)]
    if np is not None and node is not None:
        jobs.append((str(shop[node].ip), np, "/hostname", 1.0))
    results = probe_many(w, jobs)
    for (ip, port, _p, _t), r in zip(jobs, results, strict=True):
        if not r.ok or r.reply.strip() != SHOP_POD:
            got = r.error or f"answered {r.reply.strip()!r}"
            return failed(f"a connection from the external host to {ip}:{port} does not reach "
                          f"{SHOP_POD}: {got}", hint=_walk_hint(ip, port),
                          expected=SHOP_POD, actual=got)
    return passed(f"shop answers at {SHOP_IP}:{PORT} and on nodePort {np}; web keeps "
                  f"{NODE_PORT}. The API server refused the clash before anything changed")


# --- a picture of the paths in from outside, from the live rules and routes -----------------------

@dataclass(frozen=True)
class NodePath:
    node: str
    ip: str
    verdict: str  # "forward", "drop", "none" (no rule for the Service)
    to: tuple[tuple[str, str, str], ...]  # (pod, ip:port, what the pod sees as source)


@dataclass(repr=False)
class TrafficMap:
    """How a connection from the external host reaches one Service's pods, through each node:
    what kube-proxy's rules on that node do with it and which source address the pod sees.
    Draws itself in a notebook; `print()` gives the same as text."""
    service: str
    ext_ip: str
    node_port: int | None
    port: int | None  # the Service's own port (what clients use on the LB IP)
    policy: str | None
    lb: list[tuple[str, list[str]]]  # (LB IP, next hops on the external host)
    nodes: list[NodePath]

    def __str__(self) -> str:
        head = (f"Service {self.service}: nodePort {self.node_port}, externalTrafficPolicy "
                f"{self.policy}") if self.node_port else f"Service {self.service}: no NodePort"
        lines = [head]
        for ip, hops in self.lb:
            lines.append(f"  external {self.ext_ip} → LB IP {ip}:{self.port}: next hops "
                         f"{', '.join(hops) or '(no route)'}")
        for n in self.nodes:
            if n.verdict == "drop":
                lines.append(f"  {n.node} ({n.ip}): DROP (no local endpoint)")
            elif n.verdict == "none":
                lines.append(f"  {n.node} ({n.ip}): no rule")
            for pod, ep, src in n.to:
                lines.append(f"  {n.node} ({n.ip}) → {pod} {ep}, the pod sees {src}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<TrafficMap {self.service}: {len(self.nodes)} nodes, {len(self.lb)} LB IPs>"

    def digraph(self) -> graphviz.Digraph:
        import graphviz

        e = html.escape
        g = graphviz.Digraph("traffic", graph_attr={
            "rankdir": "TB", "fontname": "Helvetica", "nodesep": "0.35", "ranksep": "0.5",
            "label": f"Service {self.service} from outside, read from the live kernel "
                     f"(externalTrafficPolicy {self.policy or '-'})",
            "labelloc": "t", "fontsize": "11"},
            node_attr={"shape": "plain", "fontname": "Helvetica"},
            edge_attr={"fontname": "Helvetica", "fontsize": "9"})
        g.node("ext", f'<<TABLE BORDER="1" CELLBORDER="0" BGCOLOR="#eeeeee" CELLPADDING="4">'
                      f"<TR><TD><B>external client</B> {e(self.ext_ip)}</TD></TR></TABLE>>")
        pods: dict[str, str] = {}
        forward = ("DNAT to its own pods only" if self.policy == "Local"
                   else "DNAT to any pod + masquerade")
        ranked = g.subgraph(name="nodes", graph_attr={"rank": "same"})
        with ranked as row:
            for n in self.nodes:
                colour, bg, note = {
                    "forward": ("#1a7f37", "#f6f8fa", forward),
                    "drop": ("#cf222e", "#ffebe9", "DROP: no local endpoint"),
                    "none": ("#8c959f", "#f6f8fa", "no rule for this Service")}[n.verdict]
                row.node(f"n_{n.node}", f'<<TABLE BORDER="2" COLOR="{colour}" CELLBORDER="0" '
                                        f'BGCOLOR="{bg}" CELLPADDING="3"><TR><TD><B>{e(n.node)}'
                                        f"</B> {e(n.ip)}</TD></TR><TR><TD>"
                                        f'<FONT POINT-SIZE="9" COLOR="{colour}">{e(note)}'
                                        "</FONT></TD></TR></TABLE>>")
        for ip, hops in self.lb:
            gid = f"lb_{ip}"
            g.node(gid, f'<<TABLE BORDER="1" CELLBORDER="0" BGCOLOR="#fff8e6" CELLPADDING="4">'
                        f"<TR><TD><B>LB IP {e(ip)}</B></TD></TR><TR><TD>"
                        f'<FONT POINT-SIZE="9">route on external: {len(hops)} next hop(s)'
                        "</FONT></TD></TR></TABLE>>")
            g.edge("ext", gid, penwidth="2", label=f":{self.port}" if self.port else "")
            for n in self.nodes:
                if n.ip in hops:
                    g.edge(gid, f"n_{n.node}", color="#0550ae", penwidth="2",
                           label="ECMP next hop" if len(hops) > 1 else "next hop")
        for n in self.nodes:
            if self.node_port:
                g.edge("ext", f"n_{n.node}", style="dashed", color="#8c959f",
                       label=f":{self.node_port}")
            for pod, ep, src in n.to:
                if pod not in pods:
                    pods[pod] = ep
                    g.node(f"p_{pod}", f'<<TABLE BORDER="1" CELLBORDER="0" BGCOLOR="#e8f0fe" '
                                       f'CELLPADDING="4"><TR><TD><B>{e(pod)}</B> {e(ep)}</TD>'
                                       "</TR></TABLE>>")
                kept = src == self.ext_ip
                g.edge(f"n_{n.node}", f"p_{pod}", color="#1a7f37" if kept else "#bc4c00",
                       label=f"sees {src}" + (" (the client)" if kept else " (SNAT)"))
        return g

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        try:
            return self.digraph()._repr_mimebundle_(include, exclude)
        except Exception:  # no Graphviz: the text is still the whole story
            return {"text/plain": str(self)}


def traffic_map(c: Cluster, service: str = SERVICE) -> TrafficMap:
    """What a new connection from the external host to `service` meets on each node, from the
    live kube-proxy rules, routing tables and the external host's routes."""
    ext_ns = naming.external_netns(c.name)
    nodes = {n.name: (n.netns, read_chains(n.netns, "nat"), read_chains(n.netns, "filter"))
             for n in c.nodes()}
    pods = {p.name: PodView(p.name, p.node, p.netns, addr_of(p.netns, "eth0"), dict(p.labels))
            for p in c.pods()}
    w = World(nodes, pods, ext_ns, underlay_ip(ext_ns))
    rules = w.svc(service)
    sample = next(iter(rules.values()))
    paths = []
    for n, r in rules.items():
        if not r.exists or r.node_port is None:
            paths.append(NodePath(n, str(r.ip), "none", ()))
            continue
        eps = r.local if r.policy == "Local" else r.endpoints
        if not eps:
            paths.append(NodePath(n, str(r.ip), "drop" if r.drops else "none", ()))
            continue
        to = []
        for ep in eps:
            ip = ep.rsplit(":", 1)[0]
            pod = w.pod_by_ip(ip)
            if r.policy == "Local":
                src = str(w.ext_ip)
            else:
                src = str(route_src(r.netns, ip)[0])
            to.append((pod.name if pod else ip, ep, src))
        paths.append(NodePath(n, str(r.ip), "forward", tuple(to)))
    lb = [(ip, lb_nexthops(w, ip) or []) for ip in sample.lb_ips()]
    port = sample.lb[0][1] if sample.lb else None
    return TrafficMap(service, str(w.ext_ip), sample.node_port, port, sample.policy, lb, paths)
