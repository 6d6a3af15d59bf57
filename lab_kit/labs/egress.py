"""Checks of `labs/14-egress-snat.ipynb`: pod traffic leaving the cluster, and the address it
leaves with.

The lab's cluster `egress` (labs/clusters/egress.yaml: a control plane and two workers, host-gw,
kube-proxy in iptables mode) runs `labs/manifests/egress-apps.yaml`: namespace `billing` with
three invoice pods, one per node, and namespace `shop` with `frontend` (on egress-worker) and
`api` (on egress-worker2). `serve_internet(c, extra=[LEDGER_IP])` starts the web server of the
lab's "internet" on the external host, which logs the address each request arrived from. In
order, the learner:

1. reads that log and the node's conntrack table and says which source address the payment
   provider saw for frontend's request (`seen-as`); the check sends the request again and
   compares the answer with what the server logged and with frontend's node's address;
2. writes the ip-masq-agent ConfigMap (kube-system/ip-masq-agent) so the on-premises ledger
   (172.18.0.130, which `connect_ledger(c)` gives routes to the pod network) sees billing's pod
   addresses while the provider still sees node addresses, and pod-to-pod traffic between nodes
   keeps its addresses (`non-masquerade`); the check sends all three kinds of request and reads
   the source each server saw;
3. builds an egress gateway by hand (`egress-gateway`): every billing pod's traffic to the
   internet (172.18.0.96/27) leaves through egress-worker2 with the fixed source 172.18.0.200,
   with policy routing on the other nodes and SNAT on the gateway, while shop's traffic still
   leaves through its own node. The check sends a request from every pod of both namespaces and
   reads the source the server logged; its hints read the pods' nodes' routing decision
   (`ip route get … from POD iif cni0`), the gateway's addresses and its conntrack table.

Every verdict comes from requests the check itself sends and from the source address the
server on the external host logged for them; rules and routes are read only to word hints.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import norm_answer
from lab_kit.labs.internet import (
    OTHER_IP,
    PROVIDER_IP,
    WEB_PORT,
    client_seen,
    internet_log,
    is_serving,
    serve_internet,
)

if TYPE_CHECKING:
    from lab_kit.cluster import Cluster

__all__ = ["EGRESS_IP", "EGRESS_NODE", "INTERNET", "LAB", "LEDGER_IP", "OTHER_IP", "PROVIDER_IP",
           "connect_ledger", "internet_log", "request_from", "serve_internet"]

LAB = Lab("14-egress-snat", "Egress: SNAT, ip-masq-agent and an egress gateway", "egress")

APPS_MANIFEST = "manifests/egress-apps.yaml"
BILLING = ("billing/invoice-a", "billing/invoice-b", "billing/invoice-c")
FRONTEND, API = "shop/frontend", "shop/api"
SHOP = (FRONTEND, API)
LEDGER_IP = "172.18.0.130"  # the on-premises ledger: a third address of the external host
INTERNET = "172.18.0.96/27"  # the lab's internet: the external host's addresses .96-.127
EGRESS_NODE = "egress-worker2"
EGRESS_IP = "172.18.0.200"
SETUP_HINT = f'run the notebook\'s setup cells: c.apply("{APPS_MANIFEST}") and serve_internet(c)'


# --- helpers for the notebook ---------------------------------------------------------------------

def connect_ledger(c: Cluster) -> str:
    """The data centre's side of the ledger: the external host (where the ledger listens on
    172.18.0.130) learns a route to each node's pod CIDR via that node, as a router peering with
    the cluster over BGP would; without them a reply to a pod address has nowhere to go. Serves
    the ledger too. Running it again changes nothing."""
    serve_internet(c, extra=[LEDGER_IP])
    routes = []
    for n in c.nodes():
        c.external.sh(f"ip route replace {n.pod_cidr} via {n.ip} dev eth0")
        routes.append(f"{n.pod_cidr} via {n.ip}")
    return "the external host routes " + ", ".join(routes)


def request_from(c: Cluster, pod: str, ip: str, port: int = WEB_PORT,
                 timeout: float = 2.0) -> tuple[bool, str]:
    """One HTTP request from `pod` to `ip:port` (a server of the lab's internet), marked so
    its line in the server's log is found again: (answered, the source address the server
    logged; '' when it logged none)."""
    tag = f"{pod}@{time.monotonic_ns()}"
    r = c.probe(pod, ip, port, path=f"/hostname?client={tag}", timeout=timeout)
    return r.ok, client_seen(c, f"client={tag}") if r.ok else ""


def pod_to_pod_source(c: Cluster, src: str, dst: str) -> str:
    """The source address `dst`'s server saw for a request from `src` (agnhost's /clientip
    answers `address:port`)."""
    r = c.probe(src, c.pod(dst).ip, 80, path="/clientip", timeout=2.0)
    return r.reply.rsplit(":", 1)[0].strip() if r.ok else ""


# --- evidence ---------------------------------------------------------------------------------

def _missing(ctx: Context, keys: Iterable[str]) -> Verdict | None:
    have = {p.key for p in ctx.cluster.pods()}
    gone = [k for k in keys if k not in have]
    if gone:
        return failed(f"pods {', '.join(gone)} are missing", hint=SETUP_HINT,
                      expected="the pods of egress-apps.yaml", actual="missing: " + ", ".join(gone))
    if not is_serving(ctx.cluster):
        return failed("the web server on the external host is not running", hint=SETUP_HINT,
                      expected=f"a server on {PROVIDER_IP}:{WEB_PORT}", actual="none")
    return None


def _node_of(c: Cluster, pod: str) -> Any:
    name = c.pod(pod).node
    return next(n for n in c.nodes() if n.name == name)


def _whose(c: Cluster, ip: str) -> str:
    """Whose address `ip` is, in words."""
    if not ip:
        return "(no request arrived)"
    for n in c.nodes():
        if n.ip == ip:
            return f"{ip} (node {n.name}'s address)"
    for p in c.pods(include_system=True):
        if p.ip == ip:
            return f"{ip} (pod {p.key}'s own address)"
    if ip == EGRESS_IP:
        return f"{ip} (the egress IP)"
    return ip


# --- 1. seen-as ----------------------------------------------------------------------------------

@LAB.check("seen-as", "SEEN_AS: the source address the payment provider saw for frontend")
def check_seen_as(ctx: Context) -> Verdict:
    c = ctx.cluster
    if (missing := _missing(ctx, [FRONTEND])) is not None:
        return missing
    answer = norm_answer(ctx.get("SEEN_AS"))
    node = _node_of(c, FRONTEND)
    hint = (f"run the cell that sends frontend's request, then look at the first word of the "
            f"last line of internet_log(c), or at the reply direction of the node's conntrack "
            f"entry: c.node(\"{node.name}\").sh(\"conntrack -L -p tcp --dport {WEB_PORT}\")")
    if not answer:
        return failed("`SEEN_AS` is empty", hint=hint, expected="an IPv4 address",
                      actual="(nothing)")
    try:
        ipaddress.IPv4Address(answer)
    except ValueError:
        return failed(f"`SEEN_AS` = {answer!r} is not an IPv4 address", hint=hint,
                      expected="an address such as 172.18.0.9", actual=repr(answer))
    ok, seen = request_from(c, FRONTEND, PROVIDER_IP)
    if not ok or not seen:
        return failed(f"frontend's request to {PROVIDER_IP}:{WEB_PORT} got no answer now",
                      hint="the path out of the cluster is broken: was a rule changed by hand? "
                           "`lab-kit up --replace` and the setup cells start afresh",
                      expected="an answer", actual="none")
    if answer == seen:
        return passed(f"the provider saw {_whose(c, seen)}: frontend's node masqueraded the "
                      "request (ip-masq-agent's MASQUERADE rule)")
    if answer == c.pod(FRONTEND).ip:
        why = ("that is frontend's own address, which never left the node: the node "
               "rewrote the source on the way out (POSTROUTING → IP-MASQ-AGENT → MASQUERADE)")
    elif answer == node.ip:
        why = "that is frontend's node, but the server saw something else this time"
    else:
        why = f"{answer} is {_whose(c, answer)}"
    return failed(f"SEEN_AS = {answer}, but the provider logged {seen}: {why}", hint=hint,
                  expected=seen, actual=answer)


# --- 2. non-masquerade ------------------------------------------------------------------------

def _masq_hint(c: Cluster) -> str:
    stored = sorted(c.state.get("configmaps") or {})
    if "kube-system/ip-masq-agent" not in stored:
        where = f" (ConfigMaps now: {', '.join(stored)})" if stored else ""
        return ("the agent reads the ConfigMap `ip-masq-agent` in namespace `kube-system`, key "
                f"`config`{where}")
    return ("read the chain the agent wrote on a node: "
            "c.node(\"egress-worker\").sh(\"iptables -t nat -S IP-MASQ-AGENT\")")


@LAB.check("non-masquerade", f"The ledger ({LEDGER_IP}) sees billing's pod addresses; the "
                             "provider still sees node addresses; pods keep theirs between nodes")
def check_non_masquerade(ctx: Context) -> Verdict:
    c = ctx.cluster
    if (missing := _missing(ctx, [*BILLING, *SHOP])) is not None:
        return missing
    if not any(r.get("dst") == c.nodes()[0].pod_cidr for r in ctx.routes(c.external.netns)):
        return failed("the external host has no route to the pod network: the ledger could "
                      "not answer a pod address", hint="run the setup cell connect_ledger(c)",
                      expected="routes to each node's pod CIDR", actual="none")
    pod = "billing/invoice-b"
    pod_ip = c.pod(pod).ip
    ok, ledger = request_from(c, pod, LEDGER_IP)
    if not ok:
        return failed(f"{pod} → the ledger {LEDGER_IP}:{WEB_PORT} got no answer",
                      hint="run connect_ledger(c) again", expected="an answer", actual="none")
    if ledger != pod_ip:
        return failed(f"the ledger saw {pod}'s request from {_whose(c, ledger)}; it must see "
                      f"the pod's own address {pod_ip}",
                      hint=f"{LEDGER_IP} must be in nonMasqueradeCIDRs (as {LEDGER_IP}/32); "
                           + _masq_hint(c), expected=pod_ip, actual=ledger)
    # shop's frontend: billing's own traffic to the internet may go through the egress
    # gateway of exercise 3
    front_node = _node_of(c, FRONTEND)
    ok, provider = request_from(c, FRONTEND, PROVIDER_IP)
    if not ok or provider != front_node.ip:
        return failed(f"the provider saw {FRONTEND}'s request from {_whose(c, provider)}; it "
                      f"must still see the node's address {front_node.ip}",
                      hint=f"nonMasqueradeCIDRs covers more than the ledger: {LEDGER_IP}/32 is "
                           "exactly one address (a /16 or /24 takes the provider along)",
                      expected=front_node.ip, actual=provider or "(no answer)")
    seen = pod_to_pod_source(c, FRONTEND, API)
    want = c.pod(FRONTEND).ip
    if seen != want:
        return failed(f"api saw frontend (another node) as {_whose(c, seen)}: pod-to-pod "
                      "traffic between nodes is masqueraded now",
                      hint="the ConfigMap's list replaces the agent's default: keep the pod "
                           f"network ({c.config.pod_subnet}) in nonMasqueradeCIDRs",
                      expected=want, actual=seen or "(no answer)")
    return passed(f"the ledger saw {pod} as {pod_ip} (the pod), the provider saw {FRONTEND} "
                  f"as {front_node.ip} (its node), api saw frontend as {want}")


# --- 3. egress-gateway ------------------------------------------------------------------------

def _route_via(c: Cluster, pod: str) -> str:
    """The next hop the pod's node picks for the pod's packets to the provider."""
    p = c.pod(pod)
    out = c.node(p.node).sh(f"ip route get {PROVIDER_IP} from {p.ip} iif cni0", check=False)
    words = out.split()
    return words[words.index("via") + 1] if "via" in words else "(direct)"


def _gateway_hint(c: Cluster, pod: str, seen: str) -> str:
    p, node = c.pod(pod), _node_of(c, pod)
    gw = next(n for n in c.nodes() if n.name == EGRESS_NODE)
    if seen == node.ip and node.name != EGRESS_NODE:
        via = _route_via(c, pod)
        if via != gw.ip:
            return (f"{node.name} routes {p.ip}'s packets to the internet via {via}, not via "
                    f"the gateway {gw.ip}: add a policy-routing rule (`ip rule add from {p.ip} "
                    f"to {INTERNET} table 100`) and a route in that table via {gw.ip}")
        return (f"{node.name} routes them to the gateway, but masquerades them first: "
                f"IP-MASQ-AGENT in POSTROUTING rewrites the source before they leave; accept "
                f"them in nat POSTROUTING ahead of it (`iptables -t nat -I POSTROUTING 1 -s "
                f"{p.ip} -d {INTERNET} -j ACCEPT`)")
    if seen == gw.ip and node.name != EGRESS_NODE and _masqueraded_at(c, pod, node.ip):
        return (f"{node.name} sends them to the gateway, but masquerades them first (its "
                f"conntrack shows the reply addressed to {node.ip}); the gateway then sees a "
                f"node's address, which its SNAT rule for {p.ip} does not match, and "
                f"masquerades again. Accept them in {node.name}'s nat POSTROUTING ahead of "
                f"IP-MASQ-AGENT (`iptables -t nat -I POSTROUTING 1 -s {p.ip} -d {INTERNET} "
                "-j ACCEPT`)")
    if seen == gw.ip:
        return (f"the packets reach {EGRESS_NODE}, but it masquerades them with its own "
                f"address: SNAT them to {EGRESS_IP} in nat POSTROUTING ahead of IP-MASQ-AGENT "
                f"(`iptables -t nat -I POSTROUTING 1 -s {p.ip} -d {INTERNET} -j SNAT "
                f"--to-source {EGRESS_IP}`)")
    return f"read the path: ip rule and ip route get on {node.name}, iptables -t nat -S on " \
           f"{EGRESS_NODE}"


def _masqueraded_at(c: Cluster, pod: str, node_ip: str) -> bool:
    """The pod's node translated the pod's last flows to the provider to its own address."""
    p = c.pod(pod)
    out = c.node(p.node).sh(f"conntrack -L -p tcp -s {p.ip} -d {PROVIDER_IP} --dport "
                            f"{WEB_PORT} 2>/dev/null", check=False)
    return f"dst={node_ip} " in out


def _egress_ip_holder(c: Cluster, ctx: Context) -> list[str]:
    out = []
    for n in c.nodes():
        link = ctx.link(n.netns, "eth0")
        if any(a.split("/")[0] == EGRESS_IP for a in ctx.ipv4s(link)):
            out.append(n.name)
    return out


@LAB.check("egress-gateway", f"billing's traffic to the internet leaves through {EGRESS_NODE} "
                             f"as {EGRESS_IP}; shop's leaves through its own node")
def check_egress_gateway(ctx: Context) -> Verdict:
    c = ctx.cluster
    if (missing := _missing(ctx, [*BILLING, *SHOP])) is not None:
        return missing
    holders = _egress_ip_holder(c, ctx)
    if holders != [EGRESS_NODE]:
        return failed(f"{EGRESS_IP} is on the eth0 of {', '.join(holders) or 'no node'}",
                      hint=f"the egress IP belongs on {EGRESS_NODE} alone: it answers ARP for "
                           f"it, so the replies come back there (`ip addr add {EGRESS_IP}/32 "
                           "dev eth0` on that node)",
                      expected=EGRESS_NODE, actual=", ".join(holders) or "none")
    for pod in BILLING:
        ok, seen = request_from(c, pod, PROVIDER_IP)
        if not ok:
            return failed(f"{pod} → {PROVIDER_IP}:{WEB_PORT} got no answer",
                          hint=f"a packet left but its reply never came back: the reply goes "
                               f"to the source the provider saw; is it {EGRESS_IP} on "
                               f"{EGRESS_NODE}, and does {EGRESS_NODE} know the way to "
                               f"{c.pod(pod).ip}? (its conntrack: `conntrack -L -p tcp "
                               f"--dport {WEB_PORT}`)",
                          expected="an answer", actual="none")
        if seen != EGRESS_IP:
            return failed(f"the provider saw {pod} (on {c.pod(pod).node}) as {_whose(c, seen)}",
                          hint=_gateway_hint(c, pod, seen), expected=EGRESS_IP, actual=seen)
    for pod in SHOP:
        ok, seen = request_from(c, pod, PROVIDER_IP)
        node = _node_of(c, pod)
        if not ok or seen != node.ip:
            return failed(f"the provider saw {pod} as {_whose(c, seen)}; shop is not part of "
                          "the egress gateway",
                          hint="select billing's pods only: by each pod's own address "
                               "(`-s POD_IP/32`, `ip rule add from POD_IP`), not the whole pod "
                               "network or a node's pod CIDR",
                          expected=node.ip, actual=seen or "(no answer)")
    return passed(f"every billing pod left as {EGRESS_IP} through {EGRESS_NODE}; shop's pods "
                  "as their own nodes")
