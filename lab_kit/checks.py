"""Auto-graded checks: gather evidence from the live kernel, then judge it.

A check is a function `(ctx) -> CheckResult` registered on a :class:`Lab`. It inspects the
kernel (links, addresses, routes…) and probes real traffic; it never reads the lab's config to
decide. Results render three ways: HTML in a notebook, `summary()` in a terminal, `to_dict()`
for a gradebook. Every result is also recorded in the learner's progress file.

    LAB = Lab("01-pod-netns", "A pod is a network namespace", cluster_name="podns")

    @LAB.check("netns", "The pod's netns exists", points=1)
    def _(ctx):
        if ctx.netns_exists(ctx.get("pod_ns")):
            return passed("the namespace is there")
        return failed("no such namespace", hint="run `ip netns add …` first")
"""

from __future__ import annotations

import html
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_kit import kernel


def failure_lines(expected: str, actual: str, hint: str, indent: str = "       ") -> list[str]:
    """The text under a failed check (or conformance case): expected/actual and the hint."""
    lines = []
    if expected or actual:
        lines += [f"{indent}expected: {expected}", f"{indent}actual:   {actual}"]
    if hint:
        lines.append(f"{indent}hint: {hint}")
    return lines


def failure_html(expected: str, actual: str, hint: str) -> str:
    """`failure_lines` as HTML."""
    out = ""
    if expected or actual:
        out += (f"<div><small>expected: <code>{html.escape(expected)}</code>"
                f"<br>actual: <code>{html.escape(actual)}</code></small></div>")
    if hint:
        out += f"<div>💡 {html.escape(hint)}</div>"
    return out


@dataclass(frozen=True)
class CheckResult:
    name: str
    title: str
    passed: bool
    message: str
    hint: str = ""
    expected: str = ""
    actual: str = ""
    points: float = 1.0
    hidden: bool = False
    lab: str = ""

    @property
    def score(self) -> float:
        return self.points if self.passed else 0.0

    def summary(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        lines = [f"[{mark}] {self.title} ({self.score:g}/{self.points:g})  — {self.message}"]
        if not self.passed:
            lines += failure_lines(self.expected, self.actual, self.hint)
        return "\n".join(lines)

    __str__ = summary

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        icon = "✔" if self.passed else "✘"
        body = f"<b>{html.escape(self.title)}</b> — {html.escape(self.message)}"
        extra = "" if self.passed else failure_html(self.expected, self.actual, self.hint)
        return (f'<div style="border-left:4px solid {colour};padding:4px 8px;margin:4px 0">'
                f'<span style="color:{colour}">{icon}</span> {body} '
                f"<small>({self.score:g}/{self.points:g})</small>{extra}</div>")

    def to_dict(self) -> dict[str, Any]:
        return {"lab": self.lab, "check": self.name, "title": self.title,
                "passed": self.passed, "points": self.points, "score": self.score,
                "hidden": self.hidden, "message": self.message, "hint": self.hint,
                "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class Verdict:
    """What a check function returns; the Lab turns it into a CheckResult."""
    passed: bool
    message: str
    hint: str = ""
    expected: str = ""
    actual: str = ""


def passed(message: str) -> Verdict:
    return Verdict(True, message)


def failed(message: str, hint: str = "", expected: Any = "", actual: Any = "") -> Verdict:
    return Verdict(False, message, hint, str(expected), str(actual))


class Results(list):
    """A list of CheckResults with a combined view."""

    @property
    def score(self) -> float:
        return sum(r.score for r in self)

    @property
    def total(self) -> float:
        return sum(r.points for r in self)

    @property
    def all_passed(self) -> bool:
        return all(r.passed for r in self)

    def summary(self) -> str:
        lines = [r.summary() for r in self]
        lines.append(f"score: {self.score:g}/{self.total:g}")
        return "\n".join(lines)

    __str__ = summary

    def _repr_html_(self) -> str:
        return "".join(r._repr_html_() for r in self) + (
            f"<div><b>Score: {self.score:g}/{self.total:g}</b></div>" if len(self) > 1 else "")

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self]


class Context:
    """What a check may look at: the learner's answers and the live kernel."""

    def __init__(self, lab: Lab, answers: dict[str, Any]) -> None:
        self.lab = lab
        self.answers = answers
        self._cluster: Any = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.answers.get(key, default)

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from lab_kit.cluster import Cluster
            self._cluster = Cluster.attach(self.lab.cluster_name)
        return self._cluster

    # evidence helpers -----------------------------------------------------------------
    @staticmethod
    def netns_exists(netns: str | None) -> bool:
        return bool(netns) and kernel.netns_exists(str(netns))

    @staticmethod
    def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
        """`ip -j ARGS` inside `netns` (not journaled); [] if it fails."""
        return kernel.Runner().json(["ip", "-j", *args], netns)

    def links(self, netns: str) -> list[dict[str, Any]]:
        return self.ip_json(netns, "-d", "addr", "show")

    def link(self, netns: str, name: str) -> dict[str, Any] | None:
        for ln in self.links(netns):
            if ln.get("ifname") == name:
                return ln
        return None

    @staticmethod
    def ipv4s(link: dict[str, Any] | None) -> list[str]:
        if not link:
            return []
        return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                if a.get("family") == "inet"]

    def routes(self, netns: str) -> list[dict[str, Any]]:
        return self.ip_json(netns, "route", "show")

    @staticmethod
    def ping(netns: str, ip: str, timeout: float = 1.0) -> bool:
        r = kernel.Runner().run(["ping", "-c", "1", "-W", str(max(1, int(timeout))), "-q", ip],
                                netns, check=False, record=False, timeout=timeout + 2)
        return r.rc == 0

    @staticmethod
    def tcp_connects(netns: str | None, ip: str, port: int, timeout: float = 1.0) -> bool:
        import socket
        try:
            s = kernel.socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
        except Exception:
            return False
        with s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False


CheckFn = Callable[[Context], Verdict]


@dataclass
class Check:
    name: str
    title: str
    fn: CheckFn
    points: float = 1.0
    hidden: bool = False
    exercise: bool = True  # False: a demonstration check that passes without learner work


@dataclass
class Lab:
    lab_id: str
    title: str
    cluster_name: str
    checks: dict[str, Check] = field(default_factory=dict)

    def check(self, name: str, title: str, points: float = 1.0, hidden: bool = False,
              exercise: bool = True) -> Callable[[CheckFn], CheckFn]:
        """Decorator registering a check function."""
        def deco(fn: CheckFn) -> CheckFn:
            self.checks[name] = Check(name, title, fn, points, hidden, exercise)
            return fn
        return deco

    def run(self, name: str | None = None, *, include_hidden: bool = False,
            record: bool = True, **answers: Any) -> Results:
        """Run one check (by name) or all visible ones; record results as progress."""
        if name is not None and name not in self.checks:
            raise KeyError(f"lab {self.lab_id} has no check {name!r}; checks: "
                           f"{', '.join(self.checks)}")
        todo = [self.checks[name]] if name else [
            c for c in self.checks.values() if include_hidden or not c.hidden]
        ctx = Context(self, answers)
        out = Results()
        for c in todo:
            try:
                v = c.fn(ctx)
            except Exception as e:  # a check must never blow up in a learner's face
                v = failed(f"the check could not inspect the lab: {type(e).__name__}: {e}",
                           hint="is the lab's cluster still up? run the setup cell again")
                if os.environ.get("LAB_KIT_DEBUG"):
                    traceback.print_exc()
            out.append(CheckResult(c.name, c.title, v.passed, v.message, v.hint, v.expected,
                                   v.actual, c.points, c.hidden, self.lab_id))
        if record:
            record_progress(out)
        return out

    def widget(self, **answers: Any) -> Any:
        """A "Check my work" button that runs every visible check and shows the results.

        Answers may be given as values or as zero-argument callables (read when clicked).
        """
        import ipywidgets as w
        from IPython.display import HTML, display

        button = w.Button(description="Check my work", button_style="primary", icon="check")
        out = w.Output()

        def click(_: Any) -> None:
            vals = {k: (v() if callable(v) else v) for k, v in answers.items()}
            out.clear_output()
            with out:
                display(HTML(self.run(**vals)._repr_html_()))

        button.on_click(click)
        return w.VBox([button, out])


# --- progress ---------------------------------------------------------------------------

def progress_path() -> Path:
    env = os.environ.get("LAB_KIT_PROGRESS")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "lab_kit" / "progress.json"


def load_progress(path: Path | None = None) -> dict[str, dict[str, Any]]:
    p = path or progress_path()
    try:
        return json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_progress(results: list[CheckResult], path: Path | None = None) -> None:
    p = path or progress_path()
    try:
        data = load_progress(p)
        for r in results:
            entry = data.setdefault(r.lab, {})
            entry[r.name] = {"passed": r.passed, "title": r.title, "points": r.points,
                             "message": r.message, "hint": r.hint, "t": time.time()}
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, p)
    except OSError:
        pass  # progress is a convenience; never fail a check because of it
