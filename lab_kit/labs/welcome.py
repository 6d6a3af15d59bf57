"""Checks of `labs/00-welcome.ipynb`: a first cluster, a first pod, a first look inside it."""

from __future__ import annotations

import ipaddress

from lab_kit import kernel, naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.labs import default_gateway, ip_of, ipv4_of, is_netns, is_up, norm_answer, pings

LAB = Lab("00-welcome", "Welcome: a cluster made of kernel objects", "welcome")

POD = "hello"
PORT = 8080
APPLY = 'c.apply("manifests/hello.yaml")'


def _no_pod(ns: str, message: str, hint: str) -> Verdict:
    """The pod's netns `ns` is missing: fail, listing the pod namespaces the kernel does have."""
    prefix = naming.cluster_netns_prefixes(LAB.cluster_name)[1]
    found = [n for n in kernel.list_netns() if n.startswith(prefix)]
    return failed(message, hint=hint, expected=ns,
                  actual=", ".join(found) or "no pod namespaces at all")


@LAB.check("nodes-ready", "Every node is a network namespace on the underlay", exercise=False)
def nodes_ready(ctx: Context) -> Verdict:
    nodes = ctx.cluster.nodes()
    for n in nodes:
        if not is_netns(ctx, n.netns):
            return failed(f"node `{n.name}` has no network namespace `{n.netns}`",
                          hint="the cluster is broken: run the cell with Cluster.up(...) again "
                               "(replace=True rebuilds it from scratch)",
                          expected=n.netns, actual="missing")
        eth0 = ctx.link(n.netns, "eth0")
        if not is_up(eth0) or ip_of(eth0) != n.ip:
            return failed(f"node `{n.name}` has no working eth0 with {n.ip}",
                          hint="did a command take it down? `c.node(\"" + n.name + "\").sh(\"ip "
                               "link set eth0 up\")`, or rebuild with the first cell",
                          expected=f"eth0 UP with {n.ip}",
                          actual=", ".join(ctx.ipv4s(eth0)) or "no address / no eth0")
    first, others = nodes[0], nodes[1:]
    silent = [n.name for n in others if not pings(ctx, first.netns, n.ip)]
    if silent:
        return failed(f"`{first.name}` gets no ping answer from {', '.join(silent)}",
                      hint="the underlay is broken: rebuild the cluster with the first cell",
                      expected="every node answers", actual=f"silent: {', '.join(silent)}")
    return passed(f"{len(nodes)} nodes, each its own network namespace with eth0 up; "
                  f"{first.name} pings every other node over the underlay")


@LAB.check("hello-runs", "Pod `hello` runs and answers over HTTP")
def hello_runs(ctx: Context) -> Verdict:
    from lab_kit.cluster import probe_socket

    ns = ctx.cluster.netns_name(POD)
    if not is_netns(ctx, ns):
        return _no_pod(ns, f"there is no pod `{POD}`: its network namespace `{ns}` does not exist",
                       hint=f"apply the manifest: `{APPLY}`, then look with `c.get_pods()`")
    ip = ipv4_of(ctx, ns, "eth0")
    if ip is None:
        return failed(f"pod `{POD}` exists but its eth0 has no IPv4 address",
                      hint="the CNI plugin did not finish: delete the pod with "
                           f"`c.delete(pod=\"{POD}\")` and apply the manifest again",
                      expected="an address from the node's pod CIDR on eth0", actual="none")
    for n in ctx.cluster.nodes():
        r = probe_socket(n.name, n.netns, POD, ip, PORT, "TCP", "/hostname", 2.0)
        if not r.ok or r.reply.strip() != POD:
            got = r.error if not r.ok else repr(r.reply)
            return failed(f"`{n.name}` could not fetch http://{ip}:{PORT}/hostname: {got}",
                          hint="the pod must serve HTTP on 8080: its container needs "
                               "`args: [netexec, --http-port=8080]` and `containerPort: 8080` "
                               "(compare with manifests/hello.yaml); try "
                               f"`c.probe(\"{n.name}\", \"{POD}\", {PORT})`",
                          expected=f"HTTP 200 with body '{POD}'", actual=got)
    return passed(f"pod `{POD}` has {ip}; every node fetched '{POD}' from "
                  f"http://{ip}:{PORT}/hostname")


LOOK = f'c.pod("{POD}").sh("ip -4 -br addr show eth0")'


@LAB.check("hello-ip", "You found the pod's IP address from inside the pod")
def hello_ip(ctx: Context) -> Verdict:
    # evidence: the address on eth0 inside the pod's netns, read from the kernel right now
    ns = ctx.cluster.netns_name(POD)
    if not is_netns(ctx, ns):
        return _no_pod(ns, f"pod `{POD}` does not exist yet, so it has no address to find",
                       hint=f"do the first exercise (`{APPLY}`) before this one")
    addresses = ctx.ipv4s(ctx.link(ns, "eth0"))  # e.g. ["10.244.1.2/24"]
    if not addresses:
        return failed(f"eth0 in pod `{POD}` has no IPv4 address",
                      hint=f"delete the pod (`c.delete(pod=\"{POD}\")`) and apply it again",
                      expected="an address on eth0", actual="none")
    live_ip, prefix = addresses[0].split("/")

    # judgement: your answer against the kernel's
    answer = norm_answer(ctx.get("hello_ip"))
    if answer == live_ip:
        return passed(f"{live_ip} is the IPv4 address on eth0 inside the pod's network namespace")
    return _wrong_ip(ctx, ns, answer, live_ip, prefix)


def _wrong_ip(ctx: Context, ns: str, answer: str, live_ip: str, prefix: str) -> Verdict:
    """A failure whose hint names the likely mistake."""
    if not answer:
        return failed("`hello_ip` is empty",
                      hint=f"run `{LOOK}`, then copy the address (without the /{prefix}) into "
                           'hello_ip = "…"',
                      expected="the IPv4 address on eth0 inside the pod", actual="(nothing)")
    addr = answer.split("/")[0]
    if "/" in answer and addr == live_ip:
        return failed(f"right address, but `{answer}` carries a prefix length",
                      hint=f"the /{prefix} describes the subnet, not the pod: drop it and set "
                           f'hello_ip = "{live_ip}"',
                      expected="an address without /prefix", actual=answer)
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        return failed(f"`{answer}` is not an IPv4 address",
                      hint=f"in the output of `{LOOK}` the address is the third column, "
                           "four numbers separated by dots",
                      expected="something like 10.244.x.y", actual=answer)
    nodes = {n.ip: n.name for n in ctx.cluster.nodes()}
    if addr in nodes:
        return failed(f"{addr} is node `{nodes[addr]}`'s address on the underlay, not the pod's",
                      hint=f"run the command inside the pod, `{LOOK}`: the pod has its own "
                           "eth0 with its own address, from the node's pod CIDR",
                      expected="the pod's own address", actual=f"{addr} (a node)")
    if addr == default_gateway(ctx, ns):
        return failed(f"{addr} is the pod's gateway (the node's cni0 bridge), not the pod",
                      hint=f"look for the `inet` address on eth0 itself: `{LOOK}`",
                      expected="the pod's own address", actual=f"{addr} (the gateway)")
    if addr.startswith("127."):
        return failed(f"{addr} is loopback: every netns has its own 127.0.0.1 on lo",
                      hint=f"the pod's network address is on eth0: `{LOOK}`",
                      expected="the address on eth0", actual=addr)
    return failed(f"{addr} is not the address on eth0 inside pod `{POD}`",
                  hint=f"run `{LOOK}` again and copy the address from its output; it is also in "
                       "the IP column of `c.get_pods()`",
                  expected="the IPv4 address on eth0 in the pod's netns", actual=addr)
