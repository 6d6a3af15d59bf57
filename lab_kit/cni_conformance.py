"""A conformance suite for CNI plugins: does a plugin keep the CNI spec's (1.0) promises?

    from lab_kit.cni_conformance import run_conformance
    report = run_conformance("~/lab_kit-work/my-cni")
    report                        # a table in a notebook; print(report) in a terminal
    report.passed                 # every case passed
    report.case("del-twice")      # one case: passed, message, hint, and the plugin calls it made

The suite plays the container runtime. Most cases run the plugin the way the lab's runtime does
(:func:`lab_kit.cni.invoke`): in a scratch "node" netns, for a fresh pod netns per case, with
CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_PATH in the environment and the
config the `bridge` plugin gets on stdin (cni0, isGateway, mtu, host-local IPAM) — then read the
kernel back to see whether the plugin did what its output claims. The last case, `cross-node`,
brings up a small lab cluster whose one worker wires pods with the plugin and another with the
reference `bridge` plugin, and opens real TCP connections between their pods, both ways.

Everything a run makes is named after `name` (default `cniconf`): the netns are
`lk-<name>-node` and `lk-<name>.conformance.<case>`, the cluster is `<name>`, and host-local's
data lives in the state dir `<state root>/<name>/`. A run removes all of it when it ends, however
the plugin behaved (a hanging plugin is killed with its process group after `timeout` seconds),
and removes the leftovers of an earlier run before it starts; after a crash,
`lab-kit down --name <name>` removes them too.
"""

from __future__ import annotations

import contextlib
import html
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit import cni, kernel, naming, observe
from lab_kit.checks import Context, failed, failure_html, failure_lines, passed
from lab_kit.errors import LabError
from lab_kit.state import state_root

DEFAULT_NAME = "cniconf"
NETWORK = "cbr0"  # the network name the lab's nodes use
SUBNET = "10.244.99.0/24"  # the scratch node's pod range (any /24 would do: it is alone)
BRIDGE = "cni0"
IFNAME = "eth0"
PORT = 8080
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
ASKED_VERSION = cni.CNI_VERSION
# the spec's error codes (0-99 are reserved for it; 100 and up are the plugin's own)
ERROR_CODES = {1: "incompatible CNI version", 2: "unsupported field in the network config",
               3: "container unknown", 4: "invalid necessary environment variables",
               5: "I/O failure", 6: "failed to decode content", 7: "invalid network config",
               11: "try again later"}
CUT = 400  # how much of a plugin's output a message quotes


# --- what a run reports --------------------------------------------------------------------------

@dataclass(frozen=True)
class Invocation:
    """One execution of the plugin: what it was given and what it did."""

    exe: str
    netns: str  # the runtime's netns the plugin ran in
    env: dict[str, str]  # the CNI_* variables it was given
    stdin: str
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")

    def output(self) -> Any:
        """stdout as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.stdout)
        except (json.JSONDecodeError, TypeError):
            return None

    def shell(self) -> str:
        """The call as a root shell would make it (the namespaces are gone after the run)."""
        return kernel.JournalEntry(0.0, self.netns, [self.exe], self.rc, stdin=self.stdin,
                                   env=self.env).command()

    def brief(self) -> str:
        """exit code, stdout and the gist of stderr, cut short."""
        parts = [f"exit {self.rc}" + (" (killed: timed out)" if self.timed_out else "")]
        parts.append(f"stdout {_cut(self.stdout.strip())!r}")
        if self.stderr.strip():
            parts.append(f"stderr {stderr_gist(self.stderr)!r}")
        return ", ".join(parts)

    def gist(self) -> str:
        """What the plugin said about a failure: its error's msg, or the end of its stderr."""
        out = _json_object(self.stdout)
        if out is not None and "msg" in out:
            return f"error {out.get('code')}: {out['msg']}" + (
                f" ({_cut(str(out['details']), 200)})" if out.get("details") else "")
        if self.stderr.strip():
            return stderr_gist(self.stderr)
        return f"stdout {_cut(self.stdout.strip(), 200)!r}" if self.stdout.strip() else "no output"

    def to_dict(self) -> dict[str, Any]:
        return {"exe": self.exe, "netns": self.netns, "env": self.env, "stdin": self.stdin,
                "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr,
                "seconds": round(self.seconds, 4), "timedOut": self.timed_out}


@dataclass(frozen=True)
class CaseResult:
    name: str
    title: str
    passed: bool
    message: str
    hint: str = ""
    expected: str = ""
    actual: str = ""
    seconds: float = 0.0
    calls: tuple[Invocation, ...] = ()
    blocked_by: str = ""  # the case whose failure kept this one from running (add-result)

    def summary(self) -> str:
        lines = [f"[{'PASS' if self.passed else 'FAIL'}] {self.name}: {self.title}  — "
                 f"{self.message}"]
        if not self.passed:
            lines += failure_lines(self.expected, self.actual, self.hint)
            if self.calls:
                last = self.calls[-1]
                lines.append("       last call: " + last.shell().replace("\n", "\n       "))
                lines.append(f"       -> {last.brief()}")
        return "\n".join(lines)

    __str__ = summary

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.name, "title": self.title, "passed": self.passed,
                "message": self.message, "hint": self.hint, "expected": self.expected,
                "actual": self.actual, "seconds": round(self.seconds, 3),
                "blockedBy": self.blocked_by, "calls": [c.to_dict() for c in self.calls]}


@dataclass
class ConformanceReport:
    plugin: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    @property
    def failed(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.passed]

    def case(self, name: str) -> CaseResult:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(f"no case {name!r} in this report; cases: "
                       f"{', '.join(c.name for c in self.cases)}")

    def summary(self) -> str:
        head = (f"CNI conformance of {self.plugin}: {len(self.cases) - len(self.failed)}/"
                f"{len(self.cases)} cases pass ({self.seconds:.1f} s)")
        return "\n".join([head] + [c.summary() for c in self.cases])

    __str__ = summary

    def _repr_html_(self) -> str:
        rows = []
        for c in self.cases:
            colour = "#1a7f37" if c.passed else "#cf222e"
            icon = "✔" if c.passed else "✘"
            extra = ""
            if not c.passed:
                extra += failure_html(c.expected, c.actual, c.hint)
                if c.calls:
                    last = c.calls[-1]
                    extra += ("<details><summary>the plugin's last call</summary><pre>"
                              f"{html.escape(last.shell())}\n\n{html.escape(last.brief())}"
                              "</pre></details>")
            rows.append(f'<tr><td style="color:{colour}">{icon}</td>'
                        f"<td><code>{html.escape(c.name)}</code></td>"
                        f"<td style=\"text-align:left\"><b>{html.escape(c.title)}</b><br>"
                        f"{html.escape(c.message)}{extra}</td></tr>")
        verdict = "all pass" if self.passed else f"{len(self.failed)} fail"
        return (f"<div><b>CNI conformance of <code>{html.escape(self.plugin)}</code></b>: "
                f"{len(self.cases)} cases, {verdict} ({self.seconds:.1f} s)</div>"
                f"<table>{''.join(rows)}</table>")

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "passed": self.passed,
                "seconds": round(self.seconds, 3), "cases": [c.to_dict() for c in self.cases]}


# --- pure judgements (unit-tested): what the plugin printed, against the spec ---------------------

@dataclass(frozen=True)
class Problem:
    message: str
    hint: str = ""


def version_problem(rc: int, stdout: str, asked: str = ASKED_VERSION,
                    stderr: str = "") -> Problem | None:
    """What is wrong with a VERSION answer, or None."""
    how = ('print(json.dumps({"cniVersion": <the cniVersion on stdin>, "supportedVersions": '
           f'[..., "{asked}"]}})) and exit 0')
    if rc != 0:
        said = f": {stderr_gist(stderr)}" if stderr.strip() else ""
        return Problem(f"VERSION exited {rc}{said}",
                       "VERSION needs nothing but CNI_COMMAND (no netns, no container): " + how)
    try:
        out = json.loads(stdout)
    except json.JSONDecodeError:
        return Problem(f"VERSION printed {_cut(stdout)!r}, which is not JSON", how)
    if not isinstance(out, dict):
        return Problem(f"VERSION printed {_cut(stdout)!r}, not a JSON object", how)
    if out.get("cniVersion") != asked:
        return Problem(f"VERSION answered cniVersion {out.get('cniVersion')!r} when asked about "
                       f"{asked!r}", "answer with the cniVersion read from stdin")
    versions = out.get("supportedVersions")
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        return Problem("VERSION has no supportedVersions list of strings", how)
    if asked not in versions:
        return Problem(f"supportedVersions {versions} lacks {asked!r}, the version the lab's "
                       "runtime speaks", f'add "{asked}" to supportedVersions')
    return None


def error_problem(rc: int, stdout: str, stderr: str, code: int | None = None,
                  why: str = "") -> Problem | None:
    """What is wrong with an error answer (non-zero exit, the spec's error JSON on stdout)."""
    shape = ('print(json.dumps({"cniVersion": ..., "code": N, "msg": "...", "details": "..."})) '
             "on stdout and exit non-zero")
    if rc == 0:
        return Problem(f"the plugin exited 0 (success) for {why or 'a call that must fail'}",
                       "a failure must exit non-zero, with the error JSON on stdout")
    try:
        err = json.loads(stdout)
    except json.JSONDecodeError:
        err = None
    if not isinstance(err, dict):
        if _json_object(stderr) is not None:
            return Problem(f"the error JSON went to stderr ({_cut(stderr)!r}); stdout had "
                           f"{_cut(stdout)!r}",
                           "print it on stdout: runtimes read errors from stdout (the reference "
                           "library's skel does); stderr is for logs")
        return Problem(f"stdout is not the spec's error JSON: {_cut(stdout)!r}"
                       + (f" (stderr: {stderr_gist(stderr)!r})" if stderr.strip() else ""), shape)
    missing = [k for k in ("cniVersion", "code", "msg") if k not in err]
    if missing:
        return Problem(f"the error JSON {_cut(stdout)!r} has no {', '.join(missing)}",
                       'an error has "cniVersion" (the config\'s), "code" (a number: the spec\'s '
                       'table, or 100+ for your own), "msg" and optionally "details"')
    if not isinstance(err["code"], int) or isinstance(err["code"], bool):
        return Problem(f"code {err['code']!r} is not a number", shape)
    if not isinstance(err["msg"], str) or not err["msg"].strip():
        return Problem("msg is empty", "say what went wrong in msg")
    if not isinstance(err["cniVersion"], str):
        return Problem(f"cniVersion {err['cniVersion']!r} is not a string", shape)
    if code is not None and err["code"] != code:
        got = ERROR_CODES.get(err["code"], "not one of the spec's codes")
        return Problem(f"code {err['code']} ({got}); {why} is code {code} "
                       f"({ERROR_CODES[code]}) in the spec",
                       f"raise the error with code {code}")
    return None


def result_problems(result: Any, *, netns: str, ifname: str, subnet: str,
                    routes: Iterable[str] = ("0.0.0.0/0",),
                    cni_version: str = ASKED_VERSION) -> list[Problem]:
    """Everything wrong with an ADD result, as the spec shapes it (empty: a good result).

    `netns` is the CNI_NETNS path, `subnet` the IPAM range, `routes` the destinations the IPAM
    config asked for (the result must pass them on).
    """
    out: list[Problem] = []
    shape = ('{"cniVersion", "interfaces": [..., {"name": CNI_IFNAME, "mac", "sandbox": '
             'CNI_NETNS}], "ips": [{"address": "a.b.c.d/nn", "gateway", "interface": <index>}], '
             '"routes": [...]}')
    if not isinstance(result, dict):
        return [Problem(f"the result is {type(result).__name__}, not a JSON object", shape)]
    if result.get("cniVersion") != cni_version:
        out.append(Problem(f"cniVersion is {result.get('cniVersion')!r}; a result carries the "
                           f"config's cniVersion, {cni_version!r}",
                           'copy conf["cniVersion"] into the result'))
    ifaces = result.get("interfaces")
    sandbox: int | None = None
    if not isinstance(ifaces, list) or not ifaces:
        out.append(Problem("the result has no interfaces list",
                           "list what you made: the bridge, the node's veth end, and "
                           f'{{"name": "{ifname}", "mac": ..., "sandbox": CNI_NETNS}}'))
        ifaces = []
    for i, itf in enumerate(ifaces):
        if not isinstance(itf, dict) or not isinstance(itf.get("name"), str):
            out.append(Problem(f"interfaces[{i}] has no name", 'each interface is {"name", ...}'))
            continue
        if itf["name"] == ifname and itf.get("sandbox"):
            if itf["sandbox"] != netns:
                out.append(Problem(f"interfaces[{i}] ({ifname}) has sandbox {itf['sandbox']!r}, "
                                   f"not CNI_NETNS ({netns})", "sandbox is the CNI_NETNS path"))
            elif sandbox is None:
                sandbox = i
    if ifaces and sandbox is None:
        named = [i for i, f in enumerate(ifaces) if isinstance(f, dict) and f.get("name") == ifname]
        out.append(Problem(
            f"interfaces[{named[0]}] ({ifname}) has no sandbox" if named else
            f"no interface named {ifname} (CNI_IFNAME) in the result",
            f'the pod\'s interface is {{"name": "{ifname}", "mac": ..., "sandbox": CNI_NETNS}}'))
    ips = result.get("ips")
    if not isinstance(ips, list) or not ips:
        out.append(Problem("the result has no ips list",
                           'add {"address": "a.b.c.d/nn", "gateway": ..., "interface": <index of '
                           f"{ifname} in interfaces>}} for the address IPAM gave"))
        ips = []
    in_subnet = False
    for i, ip in enumerate(ips):
        if not isinstance(ip, dict):
            out.append(Problem(f"ips[{i}] is not an object", shape))
            continue
        addr = ip.get("address")
        try:
            if not isinstance(addr, str) or "/" not in addr:
                raise ValueError
            iface = ipaddress.ip_interface(addr)
        except ValueError:
            out.append(Problem(f"ips[{i}].address {addr!r} is not an address with its prefix "
                               'length, like "10.244.1.5/24"',
                               "use the address exactly as IPAM returned it"))
            continue
        if iface.version == 4 and iface.ip in ipaddress.ip_network(subnet):
            in_subnet = True
        gw = ip.get("gateway")
        if gw is None:
            out.append(Problem(f"ips[{i}] has no gateway", "pass on IPAM's gateway"))
        else:
            try:
                ipaddress.ip_address(gw)
            except ValueError:
                out.append(Problem(f"ips[{i}].gateway {gw!r} is not an IP address",
                                   "pass on IPAM's gateway"))
        idx = ip.get("interface")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(ifaces):
            out.append(Problem(f"ips[{i}].interface is {idx!r}, not an index into interfaces "
                               f"(0..{len(ifaces) - 1})",
                               f"IPAM's result has no interface index: set it to the index of "
                               f"{ifname} in your interfaces list"))
        elif sandbox is not None and idx != sandbox:
            out.append(Problem(f"ips[{i}].interface is {idx}, which is "
                               f"{ifaces[idx].get('name')!r}, not {ifname} (index {sandbox})",
                               f"the address is on {ifname}: point at its index"))
    if ips and not in_subnet:
        out.append(Problem(f"no IPv4 address of the result is in the IPAM range {subnet}",
                           "take the address from the IPAM plugin (host-local), do not make one"))
    rts = result.get("routes")
    if not isinstance(rts, list):
        out.append(Problem("the result has no routes list", "pass on IPAM's routes"))
        rts = []
    dsts = []
    for i, r in enumerate(rts):
        try:
            dsts.append(str(ipaddress.ip_network(r["dst"])))
        except (TypeError, KeyError, ValueError):
            out.append(Problem(f"routes[{i}] {r!r} has no valid dst", '{"dst": "0.0.0.0/0"}'))
    for want in routes:
        if want not in dsts:
            out.append(Problem(f"the result's routes lack {want}, which the IPAM config asks for",
                               "pass IPAM's routes on in the result (and add them in the pod)"))
    return out


# --- the cases -----------------------------------------------------------------------------------

class _Fail(Exception):
    """A failed case: its verdict, and the case whose failure kept it from running at all."""

    def __init__(self, message: str, hint: str = "", expected: Any = "", actual: Any = "",
                 blocked_by: str = "") -> None:
        super().__init__(message)
        self.verdict = failed(message, hint, expected, actual)
        self.blocked_by = blocked_by

    @classmethod
    def of(cls, p: Problem, **kw: Any) -> _Fail:
        return cls(p.message, p.hint, **kw)


@dataclass(frozen=True)
class _Pod:
    netns: str  # name under /run/netns
    container_id: str

    @property
    def path(self) -> str:
        return kernel.netns_path(self.netns)


CaseFn = Callable[["_Session"], str]


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    fn: CaseFn


CASES: dict[str, Case] = {}


def _case(name: str, title: str) -> Callable[[CaseFn], CaseFn]:
    def deco(fn: CaseFn) -> CaseFn:
        CASES[name] = Case(name, title, fn)
        return fn
    return deco


class _Session:
    """The scratch runtime: one node netns, a pod netns per case, host-local data in the
    state dir; every plugin call is recorded for the case that made it."""

    def __init__(self, exe: str, name: str, root: Path, timeout: float) -> None:
        self.exe = exe
        self.name = name
        self.root = root
        self.timeout = timeout
        self.node = naming.node_netns(f"{name}-node")
        self.data_dir = root / name / "conformance-ipam"
        self.runner = kernel.Runner()  # an in-memory journal: nothing is written anywhere
        self.calls: list[Invocation] = []
        self.pods: list[_Pod] = []
        self.paths = cni.cni_path()
        # what the plugin gets on stdin: the `bridge` plugin's config, with the plugin as `type`
        self.conf = cni.render_bridge_conflist(SUBNET, str(self.data_dir), plugin=exe)[
            "plugins"][0]
        self._made_node = False

    # the scratch node -------------------------------------------------------------------
    def ensure_node(self) -> None:
        if self._made_node:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.runner.run(["ip", "netns", "add", self.node])
        self.runner.run(["ip", "link", "set", "lo", "up"], self.node)
        self._made_node = True

    def new_pod(self, tag: str) -> _Pod:
        self.ensure_node()
        pod = _Pod(naming.pod_netns(self.name, "conformance", tag), uuid.uuid4().hex * 2)
        self.runner.run(["ip", "netns", "add", pod.netns])
        self.pods.append(pod)
        return pod

    def drop_pods(self) -> None:
        """Remove the case's pods (their processes, their netns: every link in them goes)."""
        from lab_kit.cluster import kill_netns_processes
        nets = [p.netns for p in self.pods if kernel.netns_exists(p.netns)]
        kill_netns_processes(nets)
        for n in nets:
            self.runner.run(["ip", "netns", "del", n], check=False)
        self.pods = []

    # calling the plugin -----------------------------------------------------------------
    def call(self, command: str, pod: _Pod | None = None, *, stdin: str | None = None,
             prev_result: dict[str, Any] | None = None, drop: Iterable[str] = ()) -> Invocation:
        """Run the plugin in the scratch node's netns, as the runtime would."""
        self.ensure_node()
        env = {"CNI_COMMAND": command}
        if pod is not None:
            env.update(CNI_CONTAINERID=pod.container_id, CNI_NETNS=pod.path,
                       CNI_IFNAME=IFNAME, CNI_PATH=":".join(self.paths))
        for k in drop:
            env.pop(k, None)
        if stdin is None:
            stdin = json.dumps(cni.request_config(self.conf, NETWORK, prev_result))
        inv = run_plugin(self.exe, self.node, env, stdin, self.timeout)
        self.calls.append(inv)
        return inv

    def wired_pod(self, tag: str) -> tuple[_Pod, dict[str, Any], str, str | None]:
        """A new pod with a good ADD, which the case needs before it can test anything else:
        the pod, the ADD result, and the result's IPv4 address and gateway."""
        pod = self.new_pod(tag)
        inv = self.call("ADD", pod)
        result = inv.output()
        if inv.rc != 0 or not isinstance(result, dict):
            raise _Fail(f"this case needs a working ADD first, and ADD failed (exit {inv.rc}): "
                        f"{inv.gist()}", "make ADD work first: case add-result shows what is "
                        "wrong", expected="ADD exits 0 with a result", actual=inv.brief(),
                        blocked_by="add-result")
        return (pod, result, *_sandbox_ip(result))

    # reading the kernel -----------------------------------------------------------------
    def view(self, netns: str) -> observe.NetnsView:
        return observe.read_netns(netns, role="other", owner=netns)

    def reserved(self, address: str) -> bool:
        """host-local keeps one file per address it handed out: dataDir/<network>/<ip>."""
        return (self.data_dir / NETWORK / address.split("/")[0]).exists()

    @staticmethod
    def pings(netns: str, ip: str, tries: int = 2) -> bool:
        return any(Context.ping(netns, ip) for _ in range(tries))


def run_plugin(exe: str, netns: str, env: dict[str, str], stdin: str,
               timeout: float) -> Invocation:
    """Execute `exe` in `netns` with `env` (on top of this process's environment) and `stdin`.

    It runs in its own process group: when it does not finish within `timeout`, the whole group
    is killed (a plugin may have started helpers such as `ip` or host-local).
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full_env.update(env)
    argv = kernel.in_netns_argv([exe], netns)
    t0 = time.perf_counter()
    timed_out = False
    try:
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, errors="replace", env=full_env,
                             start_new_session=True)
    except OSError as e:
        return Invocation(exe, netns, env, stdin, 127, "", f"cannot execute: {e}",
                          time.perf_counter() - t0)
    try:
        out, err = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        try:
            out, err = p.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # something outside the group holds the pipes
            p.kill()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
            p.wait()
            out, err = "", ""
        err += f"\nno answer within {timeout:g} s: the suite killed the plugin"
    return Invocation(exe, netns, env, stdin, p.returncode, out or "", err or "",
                      time.perf_counter() - t0, timed_out)


# VERSION and errors ---------------------------------------------------------------------------

@_case("version", "VERSION reports the versions the plugin supports")
def _version(s: _Session) -> str:
    inv = s.call("VERSION", stdin=json.dumps({"cniVersion": ASKED_VERSION}))
    p = version_problem(inv.rc, inv.stdout, stderr=inv.stderr)
    if p:
        raise _Fail.of(p, expected=f'{{"cniVersion": "{ASKED_VERSION}", "supportedVersions": '
                                   f'[..., "{ASKED_VERSION}"]}}, exit 0', actual=inv.brief())
    return f"VERSION answers {_cut(inv.stdout.strip())}"


def _expect_error(inv: Invocation, code: int | None, why: str) -> str:
    p = error_problem(inv.rc, inv.stdout, inv.stderr, code, why)
    if p:
        raise _Fail.of(p, expected=f'exit != 0, stdout {{"cniVersion", "code": {code or "N"}, '
                                   '"msg", ...}', actual=inv.brief())
    return f"{why}: exit {inv.rc}, {_cut(inv.stdout.strip(), 200)}"


@_case("error-unknown-command", "An unknown CNI_COMMAND gets the spec's error JSON, code 4")
def _unknown_command(s: _Session) -> str:
    pod = s.new_pod("unknown-command")
    return _expect_error(s.call("FROB", pod), 4, "an unknown CNI_COMMAND (FROB)")


@_case("error-bad-config", "A config that is not JSON gets the spec's error JSON, code 6")
def _bad_config(s: _Session) -> str:
    pod = s.new_pod("bad-config")
    return _expect_error(s.call("ADD", pod, stdin='{"cniVersion": "1.0.0", "name": '),
                         6, "a config on stdin that is not JSON")


@_case("error-missing-env", "ADD without CNI_NETNS gets the spec's error JSON, code 4, naming it")
def _missing_env(s: _Session) -> str:
    pod = s.new_pod("missing-env")
    inv = s.call("ADD", pod, drop=["CNI_NETNS"])
    msg = _expect_error(inv, 4, "ADD without CNI_NETNS")
    err = inv.output()
    if "CNI_NETNS" not in f"{err.get('msg', '')} {err.get('details', '')}":
        raise _Fail(f"the error does not name CNI_NETNS: {_cut(inv.stdout)}",
                    "the spec: code 4's message must name the missing variables",
                    expected="CNI_NETNS in msg or details", actual=inv.brief())
    return msg


# ADD ------------------------------------------------------------------------------------------

@_case("add-result", "ADD prints a result: cniVersion, interfaces (with sandbox), ips, routes")
def _add_result(s: _Session) -> str:
    pod = s.new_pod("add-result")
    inv = s.call("ADD", pod)
    if inv.rc != 0:
        raise _Fail(f"ADD failed (exit {inv.rc}): {inv.gist()}",
                    "ADD must exit 0 and print the result on stdout; the plugin's own error "
                    "(stdout/stderr above) says why it did not",
                    expected="exit 0 with a result", actual=inv.brief())
    result = inv.output()
    if result is None:
        raise _Fail(f"ADD's stdout is not JSON: {_cut(inv.stdout)!r}",
                    "print only the result JSON on stdout (logs go to stderr)",
                    expected="a JSON result", actual=inv.brief())
    problems = result_problems(result, netns=pod.path, ifname=IFNAME, subnet=SUBNET)
    if problems:
        n = len(problems) - 1
        more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
        raise _Fail(problems[0].message + more, problems[0].hint,
                    expected="the spec's result shape", actual=_cut(inv.stdout.strip()))
    ip = result["ips"][0]
    return (f"ADD returned {ip['address']} (gateway {ip['gateway']}) on {IFNAME}, "
            f"{len(result['interfaces'])} interfaces and routes to "
            f"{', '.join(r['dst'] for r in result['routes'])}")


def _sandbox_ip(result: dict[str, Any]) -> tuple[str, str | None]:
    """(address, gateway) of the result's first IPv4 address."""
    for ip in result.get("ips") or []:
        if isinstance(ip, dict) and ":" not in str(ip.get("address", "")):
            return str(ip.get("address")), ip.get("gateway")
    raise _Fail("the ADD result has no IPv4 address to look for in the kernel",
                "see case add-result", expected="ips[0].address", actual=json.dumps(result)[:CUT])


@_case("add-kernel", "After ADD, CNI_IFNAME in the netns is up, on the bridge, with the result's "
                     "address and routes")
def _add_kernel(s: _Session) -> str:
    pod, result, address, gateway = s.wired_pod("add-kernel")
    v = s.view(pod.netns)
    ln = v.link(IFNAME)
    if ln is None:
        raise _Fail(f"there is no {IFNAME} in the pod's netns after ADD",
                    f"create it there: the veth's peer goes into CNI_NETNS named CNI_IFNAME "
                    f"(`ip link add vethX type veth peer name {IFNAME} netns $CNI_NETNS`)",
                    expected=IFNAME, actual=", ".join(x.name for x in v.links) or "no links")
    if address not in ln.addresses:
        raise _Fail(f"{IFNAME} does not have {address}, the address the result reports",
                    f"add it inside the pod: nsenter --net=$CNI_NETNS ip addr add {address} dev "
                    f"{IFNAME}", expected=address, actual=", ".join(ln.addresses) or "none")
    if not ln.admin_up:
        raise _Fail(f"{IFNAME} in the pod is DOWN",
                    f"nsenter --net=$CNI_NETNS ip link set {IFNAME} up", expected="UP",
                    actual=ln.state)
    node = s.view(s.node)
    peer = node.by_index(ln.peer_ifindex) if ln.kind == "veth" and ln.peer_ifindex else None
    if peer is None:
        raise _Fail(f"{IFNAME} is not a veth whose other end is on the node",
                    "cable the pod with a veth pair: one end on the node, the other in the pod",
                    expected="veth", actual=ln.kind or "plain device")
    if peer.master != BRIDGE:
        raise _Fail(f"the node's end of the veth ({peer.name}) is not a port of {BRIDGE}",
                    f"ip link set {peer.name} master {BRIDGE} (the config's `bridge`)",
                    expected=f"master {BRIDGE}", actual=f"master {peer.master or '(none)'}")
    if ln.state != "UP":
        raise _Fail(f"{IFNAME} is up but has no carrier ({ln.state}): the node's end "
                    f"{peer.name} is down", f"ip link set {peer.name} up (on the node)",
                    expected="UP", actual=ln.state)
    for r in result.get("routes") or []:
        dst = str(ipaddress.ip_network(r["dst"]))
        want = "default" if dst == "0.0.0.0/0" else dst
        have = [x for x in v.routes if x.dst in (want, dst)]
        if not have:
            gw = r.get("gw") or gateway
            raise _Fail(f"the pod has no route to {dst}, though the result lists it",
                        f"add the result's routes inside the pod: nsenter --net=$CNI_NETNS "
                        f"ip route add {dst} via {gw} dev {IFNAME}",
                        expected=f"{want} via {gw}",
                        actual="; ".join(x.text() for x in v.routes) or "no routes")
    gw_ip = gateway or ""
    if gw_ip and not s.pings(pod.netns, gw_ip):
        br = node.link(BRIDGE)
        has_gw = br is not None and any(a.split("/")[0] == gw_ip for a in br.addresses)
        raise _Fail(f"the pod cannot ping its gateway {gw_ip}",
                    f"with isGateway the bridge {BRIDGE} carries the gateway address: ip addr add "
                    f"{gw_ip}/<prefix> dev {BRIDGE}; and {BRIDGE} must be up" if not has_gw else
                    f"{BRIDGE} has {gw_ip}: is {BRIDGE} up?",
                    expected=f"a reply from {gw_ip}", actual="no reply")
    return (f"{IFNAME} is UP with {address}, its peer {peer.name} is a port of {BRIDGE}, the "
            f"routes are there and the gateway {gw_ip} answers")


@_case("add-existing", "ADD into a netns that already has CNI_IFNAME fails, and leaves it alone")
def _add_existing(s: _Session) -> str:
    pod, _, address, _ = s.wired_pod("add-existing")
    inv = s.call("ADD", pod)
    p = error_problem(inv.rc, inv.stdout, inv.stderr, None, f"ADD when {IFNAME} already exists")
    if p:
        raise _Fail.of(p, expected="an error (the spec: an existing interface of that name is an "
                                   "error)", actual=inv.brief())
    ln = s.view(pod.netns).link(IFNAME)
    if ln is None or address not in ln.addresses:
        raise _Fail(f"the failed second ADD broke the first attachment: {IFNAME} "
                    + ("is gone" if ln is None else f"no longer has {address}"),
                    f"check for {IFNAME} in CNI_NETNS before changing anything (and before "
                    "asking IPAM for an address)", expected=f"{IFNAME} with {address}",
                    actual=", ".join(ln.addresses) if ln else "missing")
    return f"the second ADD failed with {_cut(inv.stdout.strip(), 160)}; {IFNAME} kept {address}"


# DEL ------------------------------------------------------------------------------------------

def _del_ok(inv: Invocation, what: str,
            hint: str = "DEL must succeed when what it would remove is already gone (the spec: "
                        "plugins MUST accept multiple DELs); skip what is missing") -> None:
    if inv.rc != 0:
        raise _Fail(f"{what} failed (exit {inv.rc}): {inv.gist()}", hint, expected="exit 0",
                    actual=inv.brief())


def _released(s: _Session, address: str, after: str, hint: str) -> None:
    ip = address.split("/")[0]
    if s.reserved(address):
        raise _Fail(f"{ip} is still reserved by host-local after {after}", hint,
                    expected="no reservation", actual=f"{NETWORK}/{ip} in host-local's dataDir")


@_case("del-twice", "DEL removes the interface and releases the address; a second DEL succeeds")
def _del_twice(s: _Session) -> str:
    pod, result, address, _ = s.wired_pod("del-twice")
    eth = s.view(pod.netns).link(IFNAME)
    host = s.view(s.node).by_index(eth.peer_ifindex) if eth and eth.peer_ifindex else None
    _del_ok(s.call("DEL", pod, prev_result=result), "DEL")
    if s.view(pod.netns).link(IFNAME) is not None:
        raise _Fail(f"{IFNAME} is still in the pod's netns after DEL",
                    f"delete it: nsenter --net=$CNI_NETNS ip link del {IFNAME}",
                    expected=f"no {IFNAME}", actual=f"{IFNAME} still there")
    if host is not None and s.view(s.node).link(host.name) is not None:
        raise _Fail(f"the node's end of the veth, {host.name}, is still there after DEL",
                    f"ip link del {host.name}", expected="gone", actual=host.name)
    _released(s, address, "DEL", "delegate DEL to the IPAM plugin too: run host-local with "
              "CNI_COMMAND=DEL and the same config, so it releases the address")
    _del_ok(s.call("DEL", pod, prev_result=result), "the second DEL")
    return f"DEL removed {IFNAME} and released {address}; a second DEL succeeded too"


@_case("del-unknown", "DEL of a container that was never added succeeds")
def _del_unknown(s: _Session) -> str:
    pod = s.new_pod("del-unknown")
    _del_ok(s.call("DEL", pod), "DEL of a container the plugin never saw")
    return "DEL of an unknown container exited 0"


@_case("del-netns-gone", "DEL after the pod's netns is gone succeeds and releases the address")
def _del_netns_gone(s: _Session) -> str:
    pod, result, address, _ = s.wired_pod("del-netns-gone")
    s.runner.run(["ip", "netns", "del", pod.netns])
    _del_ok(s.call("DEL", pod, prev_result=result), "DEL once the netns was gone",
            "CNI_NETNS may name a netns that no longer exists: skip the pod's side and still "
            "release the address (DEL is best effort)")
    _released(s, address, "DEL (the netns was gone)",
              "delegate DEL to the IPAM plugin even when the netns is gone")
    return f"DEL with CNI_NETNS gone exited 0 and released {address}"


# CHECK ----------------------------------------------------------------------------------------

@_case("check-good", "CHECK passes on a good attachment")
def _check_good(s: _Session) -> str:
    pod, result, _, _ = s.wired_pod("check-good")
    inv = s.call("CHECK", pod, prev_result=result)
    if inv.rc != 0:
        raise _Fail(f"CHECK failed right after a good ADD (exit {inv.rc}): {inv.gist()}",
                    "CHECK gets the ADD result as prevResult: compare it with the kernel, and "
                    "delegate CHECK to IPAM; exit 0 with no output when all is there",
                    expected="exit 0", actual=inv.brief())
    return "CHECK with the ADD result as prevResult exited 0"


@_case("check-detects", "CHECK fails when the pod's address is gone")
def _check_detects(s: _Session) -> str:
    pod, result, address, _ = s.wired_pod("check-detects")
    s.runner.run(["ip", "addr", "flush", "dev", IFNAME], pod.netns)
    inv = s.call("CHECK", pod, prev_result=result)
    if inv.rc == 0:
        raise _Fail(f"CHECK exited 0 although {IFNAME} lost {address}",
                    f"compare each prevResult.ips[].address with the addresses of {IFNAME} in "
                    "CNI_NETNS (`ip -j addr show`), and raise an error when one is missing",
                    expected="an error", actual=inv.brief())
    p = error_problem(inv.rc, inv.stdout, inv.stderr, None, "CHECK of a broken attachment")
    if p:
        raise _Fail.of(p, expected="the spec's error JSON", actual=inv.brief())
    return f"with {address} removed, CHECK failed: {_cut(inv.stdout.strip(), 160)}"


# across nodes ---------------------------------------------------------------------------------

def pod_manifest(name: str, node: str, port: int = PORT) -> dict[str, Any]:
    """A test-server pod pinned to `node` (`spec.nodeName`) serving HTTP on `port`."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{
                "name": "agnhost", "image": AGNHOST_IMAGE,
                "args": ["netexec", f"--http-port={port}"],
                "ports": [{"containerPort": port}]}]}}


@_case("cross-node", "Pods wired by the plugin and by `bridge` on another node reach each other "
                     "(TCP, both ways)")
def _cross_node(s: _Session) -> str:
    from lab_kit import config
    from lab_kit.cluster import Cluster

    conf = config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": s.name,
        "nodes": [{"role": "control-plane"}, {"role": "worker"},
                  {"role": "worker", "cniPlugin": s.exe}],
        "networking": {"cni": "host-gw"}})
    by_bridge, by_plugin = f"{s.name}-worker", f"{s.name}-worker2"
    c = Cluster.up(conf, root=s.root, replace=True)
    try:
        try:
            c.apply([pod_manifest("by-bridge", by_bridge), pod_manifest("by-plugin", by_plugin)])
        except LabError as e:
            raise _Fail(f"the lab's runtime could not create a pod with the plugin: {e}",
                        "the runtime ran ADD as in case add-result; fix that case first",
                        expected="pod by-plugin created", actual=str(e)[:CUT],
                        blocked_by="add-result") from None
        done = []
        for src, dst in (("by-plugin", "by-bridge"), ("by-bridge", "by-plugin")):
            r = c.probe(src, dst, PORT, timeout=2.0)
            if not r.ok or r.reply.strip() != dst:
                raise _Fail(f"{src} -> {dst} ({r.ip}:{PORT}) failed: "
                            f"{r.error or repr(r.reply)}", _cross_hint(c, by_plugin),
                            expected=f"HTTP 200 '{dst}'", actual=r.error or repr(r.reply))
            done.append(f"{src} -> {dst} {r.ms:.1f} ms")
        p, b = c.pod("by-plugin"), c.pod("by-bridge")
        return (f"by-plugin ({p.ip} on {by_plugin}, this plugin) and by-bridge ({b.ip} on "
                f"{by_bridge}, bridge) fetched each other's /hostname: {', '.join(done)}")
    finally:
        c.down()


def _cross_hint(c: Any, node: str) -> str:
    try:
        pod = c.pod("by-plugin").netns
    except LabError as e:
        return f"could not look: {e}"
    return explain_unreachable(pod, naming.node_netns(node))


def explain_unreachable(pod_netns: str, node_netns: str) -> str:
    """Why a pod the plugin wired may not reach pods on other nodes, read from the kernel."""
    try:
        v = observe.read_netns(pod_netns, role="pod", owner=pod_netns)
        n = observe.read_netns(node_netns, role="node", owner=node_netns)
    except LabError as e:
        return f"could not look: {e}"
    if not any(r.dst == "default" for r in v.routes):
        return ("the pod has no default route: packets to another node's pods have no way "
                "out. Add the routes IPAM returns (0.0.0.0/0 via the gateway) inside the pod")
    br = n.link(BRIDGE)
    gws = {r.gateway for r in v.routes if r.dst == "default" and r.gateway}
    if br is None or not any(a.split("/")[0] in gws for a in br.addresses):
        return (f"the pod's gateway ({', '.join(sorted(gws)) or 'none'}) is not an address of "
                f"{BRIDGE} on the node: with isGateway the bridge carries it, so the node "
                "answers for it and routes the pod's traffic")
    if br.down:
        return f"{BRIDGE} on the node is down: ip link set {BRIDGE} up"
    return ("the pod's side looks right: compare `ip route` in the pod and on the node with a "
            "pod that bridge wired (case add-kernel checks the same on one node)")


# --- running the suite ---------------------------------------------------------------------------

def run_conformance(plugin: str | Path, *, cases: Iterable[str] | None = None,
                    name: str = DEFAULT_NAME, root: str | Path | None = None,
                    timeout: float = 10.0,
                    progress: Callable[[str], None] | None = None) -> ConformanceReport:
    """Run the conformance cases (all, or the ones named) against CNI plugin `plugin`.

    `plugin` is a path (`~` allowed) or a name in CNI_PATH, like `bridge`. `name` names every
    namespace, the test cluster and the state the run makes (a cluster name: lowercase letters
    and digits). Raises LabError when the plugin cannot be found or executed, or `name` is not
    a valid cluster name; every other problem is a failed case.
    """
    selected = list(CASES) if cases is None else list(cases)
    unknown = [c for c in selected if c not in CASES]
    if unknown:
        raise ValueError(f"unknown conformance case(s) {', '.join(unknown)}; cases: "
                         f"{', '.join(CASES)}")
    if not naming.CLUSTER_NAME_RE.match(name):
        raise LabError(f"name {name!r} must be a cluster name: 1-16 lowercase letters or digits, "
                       "starting with a letter")
    exe = os.path.abspath(cni.find_plugin(str(plugin), cni.cni_path()))
    base = state_root(root)
    say = progress or (lambda _m: None)
    report = ConformanceReport(str(plugin))
    t0 = time.monotonic()
    _remove_all(name, base)  # the leftovers of a run that crashed
    try:
        s = _Session(exe, name, base, timeout)
        for case in (CASES[c] for c in CASES if c in selected):
            if case.name == "cross-node":
                _remove_all(name, base)  # the scratch node goes before the cluster comes
            r = _run_case(s, case)
            report.cases.append(r)
            say(f"{'PASS' if r.passed else 'FAIL'} {r.name}: {r.message}")
    finally:
        _remove_all(name, base)
        report.seconds = time.monotonic() - t0
    return report


def _run_case(s: _Session, case: Case) -> CaseResult:
    s.calls = []
    t0 = time.monotonic()
    blocked = ""
    try:
        v = passed(case.fn(s))
    except _Fail as f:
        v, blocked = f.verdict, f.blocked_by
    except Exception as e:  # a misbehaving plugin must not crash the suite
        v = failed(f"the suite could not run this case: {type(e).__name__}: {e}",
                   "the plugin calls below show what it did")
    finally:
        with contextlib.suppress(LabError, OSError):
            s.drop_pods()
    return CaseResult(case.name, case.title, v.passed, v.message, v.hint, v.expected, v.actual,
                      time.monotonic() - t0, tuple(s.calls), blocked)


def _remove_all(name: str, root: Path) -> None:
    """Every netns, process and file of a run named `name` (what `lab-kit down` does)."""
    from lab_kit.cluster import Cluster
    Cluster(name, root).down()


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return d if isinstance(d, dict) else None


def stderr_gist(stderr: str) -> str:
    """The useful end of a plugin's stderr: a Python traceback's last line and where it was
    raised (`NameError: … (at 2-add.py:17 in cmd_add)`), else the last lines, cut short."""
    text = stderr.strip()
    if "Traceback (most recent call last)" in text:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        where = [m for m in (re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', ln)
                             for ln in lines) if m]
        last = lines[-1].strip()
        if where:
            f, line, fn = where[-1].groups()
            return f"{_cut(last, 300)} (at {os.path.basename(f)}:{line} in {fn})"
        return _cut(last, 300)
    return text if len(text) <= CUT else "…" + text[-CUT:]


def _cut(text: str, n: int = CUT) -> str:
    text = text or ""
    return text if len(text) <= n else text[:n] + "…"
