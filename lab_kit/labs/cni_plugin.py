"""Checks of `labs/06-write-a-cni-plugin.ipynb`: the learner writes a CNI plugin in Python.

The lab's cluster `cniplugin` (labs/clusters/cniplugin.yaml) wires the pods of `cniplugin-worker`
with the reference `bridge` plugin and those of `cniplugin-worker2` with the learner's plugin,
`~/lab_kit-work/my-cni` (the node's `cniPlugin`). That file is a small launcher
(:func:`install_launcher`) running the four parts the learner writes with `%%writefile` into
`~/lab_kit-work/my-cni.d/`: the protocol, ADD, DEL and CHECK.

Most checks run cases of the conformance suite (:mod:`lab_kit.cni_conformance`) against the
plugin, in scratch namespaces; `pods` sends real traffic between the lab's two pods, one wired
by each plugin; `conformance` runs the whole suite, including its own small cluster.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lab_kit import naming
from lab_kit.checks import Context, Lab, Verdict, failed, passed
from lab_kit.cni_conformance import (
    CASES,
    CaseResult,
    ConformanceReport,
    explain_unreachable,
    pod_manifest,
    run_conformance,
)
from lab_kit.errors import LabError
from lab_kit.labs import is_netns, peer_netns, state_words

__all__ = ["LAB", "install_launcher", "parts_dir", "pod_manifest"]

LAB = Lab("06-write-a-cni-plugin", "Write a CNI plugin", "cniplugin")

BRIDGE_NODE = "cniplugin-worker"  # pods wired by the reference `bridge` plugin
PLUGIN_NODE = "cniplugin-worker2"  # pods wired by the learner's plugin
PODS = {"by-bridge": BRIDGE_NODE, "by-my-cni": PLUGIN_NODE}
PORT = 8080
CONFORMANCE_NAME = "cniconf"  # the conformance suite's namespaces and cluster
PARTS = {1: "1-protocol.py", 2: "2-add.py", 3: "3-del.py", 4: "4-check.py"}
# each check's conformance cases, and the part of the plugin they test
GROUPS: dict[str, tuple[str, ...]] = {
    "version": ("version",),
    "errors": ("error-unknown-command", "error-bad-config", "error-missing-env"),
    "add": ("add-result", "add-kernel", "add-existing"),
    "del": ("del-twice", "del-unknown", "del-netns-gone"),
    "check": ("check-good", "check-detects"),
}
PART_OF_GROUP = {"version": 1, "errors": 1, "add": 2, "del": 3, "check": 4}
PART_OF_CASE = {case: PART_OF_GROUP[g] for g, cases in GROUPS.items() for case in cases} | {
    "cross-node": 2}  # pods on another node: what ADD made

LAUNCHER = '''#!/usr/bin/env python3
"""my-cni: the CNI plugin you write in lab 06 (labs/06-write-a-cni-plugin.ipynb).

The runtime executes this file. It runs the parts your %%writefile cells wrote, my-cni.d/*.py in
name order, as one Python program (they share their names), then calls main(). A traceback names
the part and the line.
"""
import json
import pathlib
import sys

PARTS = pathlib.Path(__file__).resolve().parent / "my-cni.d"
program = {"__name__": "my_cni"}
for part in sorted(PARTS.glob("*.py")):
    exec(compile(part.read_text(), str(part), "exec"), program)
if "main" not in program:
    print(json.dumps({"cniVersion": "1.0.0", "code": 100,
                      "msg": f"no main() in {PARTS}: run the notebook's %%writefile cells"}))
    sys.exit(1)
sys.exit(program["main"]())
'''


def parts_dir(plugin: str | Path) -> Path:
    """Where the launcher at `plugin` finds the parts: `my-cni.d/` next to it."""
    return Path(plugin).expanduser().parent / "my-cni.d"


def install_launcher(plugin: str | Path) -> Path:
    """Write the launcher to `plugin` (`~` allowed), executable, and make its parts directory.

    Returns the plugin's path. The parts are left alone: they are the learner's work.
    """
    path = Path(plugin).expanduser()
    parts_dir(path).mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != LAUNCHER:
        path.write_text(LAUNCHER)
    os.chmod(path, 0o755)
    return path


def plugin_path(ctx: Context) -> Path:
    """The plugin the lab's cluster runs on `cniplugin-worker2` (its `cniPlugin`)."""
    conf = ctx.cluster.config
    return Path(conf.plugin_for(conf.node(PLUGIN_NODE))).expanduser()


def _where(case: CaseResult) -> str:
    """The part (and notebook cell) to fix for a failing case: ADD's when ADD kept the case
    from running at all."""
    n = PART_OF_CASE[case.blocked_by or case.name]
    crashed = re.search(r"\bat ([1-4])-(?:protocol|add|del|check)\.py:", case.message)
    if crashed:  # a traceback names the part that raised
        n = int(crashed.group(1))
    return f"part {n} (the cell `%%writefile $PARTS/{PARTS[n]}`)"


def _conformance(ctx: Context,
                 cases: tuple[str, ...] | None = None) -> ConformanceReport | Verdict:
    """The suite's report on the lab's plugin (all cases, or `cases`), or why it cannot run."""
    plugin = plugin_path(ctx)
    try:
        return run_conformance(plugin, cases=cases, name=CONFORMANCE_NAME)
    except LabError as e:
        return failed(f"the plugin cannot run: {e}",
                      hint="run the notebook's first cell again: it installs the launcher at "
                           f"{plugin}", expected=f"an executable {plugin}", actual=str(e))


def _suite(ctx: Context, check: str) -> Verdict:
    """Check `check`: its conformance cases (GROUPS) against the lab's plugin."""
    report = _conformance(ctx, GROUPS[check])
    if isinstance(report, Verdict):
        return report
    if report.passed:
        return passed("; ".join(c.message for c in report.cases))
    c = report.failed[0]
    n = len(report.failed) - 1
    more = f" (and {n} more case{'s' if n > 1 else ''} of this check)" if n else ""
    return failed(f"{c.title}: {c.message}{more}", hint=f"{c.hint} — in {_where(c)}",
                  expected=c.expected, actual=c.actual)


def _suite_check(check: str, title: str) -> None:
    LAB.check(check, title)(lambda ctx: _suite(ctx, check))


# registered in the notebook's order: LAB.run() runs them so
_suite_check("version", "VERSION: the plugin says which spec versions it speaks")
_suite_check("errors", "Errors: an unknown command, a bad config, a missing variable")
_suite_check("add", "ADD wires a pod: the result, the kernel, and no second eth0")


@LAB.check("pods", "by-my-cni (your plugin) and by-bridge (bridge) talk across nodes")
def check_pods(ctx: Context) -> Verdict:
    from lab_kit.cluster import probe_socket

    name = ctx.cluster.name
    ips: dict[str, str] = {}
    nets: dict[str, str] = {}
    for pod, node in PODS.items():
        ns = naming.pod_netns(name, "default", pod)
        nets[pod] = ns
        if not is_netns(ctx, ns):
            how = f'c.apply([pod_manifest("{pod}", "{node}")])'
            extra = ("; if c.apply raised an error, it came from your plugin's ADD: "
                     "LAB.run(\"add\") tests ADD on its own") if pod == "by-my-cni" else ""
            return failed(f"pod {pod} does not exist: no network namespace `{ns}`",
                          hint=f"apply it: {how}{extra}", expected=ns, actual="missing")
        eth0 = ctx.link(ns, "eth0")
        addrs = ctx.ipv4s(eth0)
        if not addrs:
            return failed(f"pod {pod} has no eth0 with an address",
                          hint="the plugin's ADD must create eth0 in CNI_NETNS and give it "
                               "the address IPAM returned (LAB.run(\"add\") checks ADD)",
                          expected="eth0 with an address", actual=state_words(eth0))
        where = peer_netns(ctx, ns, eth0)
        if where != naming.node_netns(node):
            return failed(f"pod {pod}'s eth0 is wired to `{where}`, not to node {node}",
                          hint=f"delete the pod (c.delete(pod=\"{pod}\")) and apply it again",
                          expected=naming.node_netns(node), actual=str(where))
        ips[pod] = addrs[0].split("/")[0]
    done = []
    for src, dst in (("by-my-cni", "by-bridge"), ("by-bridge", "by-my-cni")):
        r = probe_socket(src, nets[src], dst, ips[dst], PORT, "TCP", "/hostname", 2.0)
        if not r.ok or r.reply.strip() != dst:
            got = r.error if not r.ok else repr(r.reply)
            return failed(f"{src} could not fetch http://{ips[dst]}:{PORT}/hostname: {got}",
                          hint=explain_unreachable(nets["by-my-cni"],
                                                   naming.node_netns(PLUGIN_NODE)),
                          expected=f"HTTP 200 with body '{dst}'", actual=got)
        done.append(f"{src} -> {dst} in {r.ms:.1f} ms")
    return passed(f"by-my-cni ({ips['by-my-cni']}, your plugin, {PLUGIN_NODE}) and by-bridge "
                  f"({ips['by-bridge']}, bridge, {BRIDGE_NODE}) fetched each other's "
                  f"/hostname: {', '.join(done)}")


_suite_check("del", "DEL undoes ADD, releases the address, and may run twice")
_suite_check("check", "CHECK passes on a good pod and fails on a broken one")


@LAB.check("conformance", "The whole conformance suite passes", points=2)
def check_conformance(ctx: Context) -> Verdict:
    report = _conformance(ctx)
    if isinstance(report, Verdict):
        return report
    if report.passed:
        return passed(f"all {len(report.cases)} cases pass ({report.seconds:.1f} s): VERSION, "
                      "errors, ADD, DEL, CHECK, and TCP both ways between a pod your plugin "
                      "wired and one bridge wired")
    first = report.failed[0]
    names = ", ".join(c.name for c in report.failed)
    return failed(f"{len(report.failed)} of {len(report.cases)} cases fail: {names}",
                  hint=f"start with {first.name}, in {_where(first)}: {first.message} — "
                       f"{first.hint}. run_conformance(PLUGIN) shows every case",
                  expected=f"{len(CASES)} cases pass", actual=f"{len(report.failed)} fail")
