"""Patience for the pod -> outside path, with evidence.

About once per full-suite run (never in a module run alone) a pod's new flows to the `external`
host left a node without the ip-masq-agent MASQUERADE: the node's conntrack showed them
[UNREPLIED] with the pod's own address in the reply tuple, and the external host (which has no
route to pods, as it should not) never answered; it lasted 20-30 s. One CI run caught the
node's IP-MASQ-AGENT chain in a state iptables could not list ("incompatible, use 'nft'"); what
wrote it is not known. The cluster now re-creates damaged ip-masq-agent rules after every
kube-proxy sync (`Cluster._ensure_masquerade`). Tests whose subject is something else (DNS
answers, policy verdicts) still wait for the path with `until`, and leave the node's NAT rules
(as iptables and as nft see them), conntrack statistics and entries as a warning, so another
occurrence brings evidence instead of a red run.
"""

from __future__ import annotations

import subprocess
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

from lab_kit import naming

T = TypeVar("T")
PATIENCE_S = 45.0


def report(cluster_name: str, nodes: list[str]) -> str:
    """The kernel state of the pod -> external path on `nodes` and the external host."""
    out = []
    ext = naming.external_netns(cluster_name)
    cmds = [(naming.node_netns(n), c) for n in nodes for c in (
        "iptables-save -c -t nat | grep -E 'POSTROUTING|IP-MASQ|KUBE-POSTROUTING|incompatible'",
        "nft -a list chain ip nat IP-MASQ-AGENT",
        "conntrack -S | head -3", "conntrack -L 2>/dev/null | grep -v 'dport=22 ' | tail -15",
        "ip neigh", "ip route")]
    cmds += [(ext, "ip neigh"), (ext, "ip route"),
             (ext, "nstat -az UdpInErrors UdpNoPorts UdpRcvbufErrors TcpExtListenDrops")]
    for netns, cmd in cmds:
        r = subprocess.run(["ip", "netns", "exec", netns, "bash", "-c", cmd],
                           capture_output=True, text=True)
        out.append(f"--- {netns}: {cmd}\n{r.stdout}{r.stderr}")
    return "\n".join(out)


def until(attempt: Callable[[], T], ok: Callable[[T], bool], what: str, cluster_name: str,
          nodes: list[str], patience: float = PATIENCE_S, every: float = 3.0) -> T:
    """`attempt()` until `ok(result)`, for up to `patience` seconds; the last result either way.
    A first failure is reported (with the path's kernel state) as a warning."""
    result = attempt()
    if ok(result):
        return result
    t0 = time.monotonic()
    evidence = report(cluster_name, nodes)
    while time.monotonic() - t0 < patience:
        time.sleep(every)
        result = attempt()
        if ok(result):
            break
    took = time.monotonic() - t0
    state = "recovered" if ok(result) else "still failing"
    warnings.warn(f"{what}: failed, {state} after {took:.1f} s more\n{evidence}", stacklevel=2)
    return result
