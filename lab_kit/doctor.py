"""Check that this machine can run the lab, and say how to fix what is missing.

``run_checks()`` returns one :class:`DoctorItem` per thing the lab needs: root, the kernel
features (probed for real inside a throwaway network namespace made with ``unshare --net``),
br_netfilter, the command-line tools, the CNI reference plugins and Mininet's Python module.
Every failing item carries ONE line saying how to fix it. A check never raises: a missing
program, an error or a timeout is a failed item.

The kernel probes create a veth pair, a bridge, a VXLAN device and an nf_tables table inside a
namespace that exists only while ``unshare`` runs, so nothing is left in the host's own network
namespace. (The kernel may autoload the matching modules, as any first use of them would.)

Each missing thing yields exactly one failing item: when a probe cannot run because a program it
needs is missing (``unshare``, ``ip``, ``nft``) or because no namespace can be made, the probe is
not listed separately and the failing item that blocks it says which probes it held back.

Usage::

    python -m lab_kit.doctor          # text report; exit status 1 if anything failed

    from lab_kit.doctor import run_checks, report_html
    report_html(run_checks())         # an HTML table, for a notebook cell
"""

from __future__ import annotations

import html
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BINARIES",
    "CNI_DIRS",
    "CNI_PLUGINS",
    "DoctorItem",
    "RunResult",
    "main",
    "main_text",
    "report_html",
    "run_checks",
    "find_program",
    "run_command",
]

TIMEOUT_S = 5.0
SETUP_HINT = "run sudo scripts/setup.sh"

# Command -> the Debian package that provides it.
BINARIES: tuple[tuple[str, str], ...] = (
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("tcpdump", "tcpdump"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("dig", "dnsutils"),
    ("nsenter", "util-linux"),
    ("socat", "socat"),
    ("iperf3", "iperf3"),
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("dnsmasq", "dnsmasq-base"),
    ("dnsperf", "dnsperf"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("openssl", "openssl"),
    ("dot", "graphviz"),
    ("brctl", "bridge-utils"),
    ("ifconfig", "net-tools"),
    ("mnexec", "mininet"),
)

CNI_PLUGINS: tuple[str, ...] = ("bridge", "host-local", "loopback", "portmap")
CNI_DIRS: tuple[str, ...] = ("/usr/lib/cni", "/opt/cni/bin")

# Kernel feature -> (command run inside `unshare --net`, the program it needs, one-line fix).
KERNEL_PROBES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "veth",
        ("ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1"),
        "ip",
        "modprobe veth (needs a kernel with CONFIG_VETH, e.g. the Vagrant VM's)",
    ),
    (
        "bridge",
        ("ip", "link", "add", "b0", "type", "bridge"),
        "ip",
        "modprobe bridge (needs a kernel with CONFIG_BRIDGE, e.g. the Vagrant VM's)",
    ),
    (
        "vxlan",
        ("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "lo"),
        "ip",
        "modprobe vxlan (needs a kernel with CONFIG_VXLAN, e.g. the Vagrant VM's)",
    ),
    (
        "nf_tables",
        ("nft", "add", "table", "inet", "lk_doctor"),
        "nft",
        "modprobe nf_tables (needs a kernel with CONFIG_NF_TABLES, e.g. the Vagrant VM's)",
    ),
)

# Extra places to look for programs: a non-root user's PATH on Debian has no sbin directories.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


@dataclass(frozen=True)
class DoctorItem:
    """One check: ``fix`` is a single line, empty when ``ok``."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class RunResult:
    """What running a command gave. ``returncode`` is None when it could not run or timed out."""

    returncode: int | None
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Which = Callable[[str], str | None]
Runner = Callable[[Sequence[str], float], RunResult]


def find_program(name: str) -> str | None:
    """``shutil.which``, falling back to the sbin directories that a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def run_command(argv: Sequence[str], timeout: float = TIMEOUT_S) -> RunResult:
    """Run ``argv`` with no shell, no stdin, output captured; never raises."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(None, f"timed out after {timeout:g} s")
    except OSError as exc:  # not found, not executable, ...
        return RunResult(None, f"could not run {argv[0]}: {exc.strerror or exc}")
    return RunResult(proc.returncode, (proc.stdout or "").strip())


def _first_line(text: str, default: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return default


def _apt_fix(package: str) -> str:
    return f"apt-get install {package} (or {SETUP_HINT})"


def run_checks(
    *,
    which: Which | None = None,
    run: Runner | None = None,
    geteuid: Callable[[], int] | None = None,
    path_exists: Callable[[str], bool] | None = None,
    import_module: Callable[[str], object] | None = None,
    cni_dirs: Sequence[str] = CNI_DIRS,
    timeout: float = TIMEOUT_S,
) -> list[DoctorItem]:
    """Run every check and return the items in a stable order.

    The keyword arguments replace the real system for tests; by default the real ``which``,
    ``subprocess``, ``os.geteuid``, ``os.path.exists`` and ``importlib.import_module`` are used.
    """
    which_ = which or find_program
    run_ = run or run_command
    geteuid_ = geteuid or os.geteuid
    exists_ = path_exists or os.path.exists
    import_ = import_module or importlib.import_module

    items: list[DoctorItem] = []

    def guarded(name: str, check: Callable[[], list[DoctorItem]]) -> None:
        try:
            items.extend(check())
        except Exception as exc:  # a check must never take the doctor down
            items.append(DoctorItem(name, False, f"check crashed: {exc!r}", SETUP_HINT))

    is_root = False
    try:
        is_root = geteuid_() == 0
    except Exception:  # pragma: no cover - os.geteuid exists on Linux
        pass

    # Which programs exist decides which probes can run; the binary items say what was held back.
    found: dict[str, str | None] = {}
    for binary, _pkg in BINARIES:
        try:
            found[binary] = which_(binary)
        except Exception:
            found[binary] = None

    blocked_by: dict[str, list[str]] = {}  # program -> kernel probes it held back
    for feature, _argv, needs, _fix in KERNEL_PROBES:
        if found.get(needs) is None:
            blocked_by.setdefault(needs, []).append(feature)

    # 1. root
    if is_root:
        items.append(DoctorItem("root", True, "running as root"))
    else:
        items.append(
            DoctorItem(
                "root",
                False,
                f"running as uid {_safe_uid(geteuid_)}; kernel probes skipped",
                "run with sudo",
            )
        )

    # 2. kernel features, in a throwaway network namespace
    if is_root:
        guarded("kernel", lambda: _kernel_items(which_, run_, found, timeout))

    # 3. br_netfilter
    guarded("br_netfilter", lambda: [_br_netfilter_item(is_root, which_, run_, exists_, timeout)])

    # 4. programs
    for binary, pkg in BINARIES:
        path = found[binary]
        if path:
            items.append(DoctorItem(binary, True, path))
            continue
        detail = "not found on PATH"
        held = blocked_by.get(binary)
        if held and is_root:
            detail += f" (so these kernel probes did not run: {', '.join(held)})"
        items.append(DoctorItem(binary, False, detail, _apt_fix(pkg)))

    # 5. CNI reference plugins
    for plugin in CNI_PLUGINS:
        guarded(f"CNI {plugin}", lambda p=plugin: [_cni_item(p, cni_dirs, exists_)])

    # 6. Mininet's Python module
    guarded("python: mininet", lambda: [_mininet_item(import_)])

    return items


def _safe_uid(geteuid: Callable[[], int]) -> str:
    try:
        return str(geteuid())
    except Exception:  # pragma: no cover
        return "?"


def _kernel_items(
    which_: Which, run_: Runner, found: dict[str, str | None], timeout: float
) -> list[DoctorItem]:
    unshare = which_("unshare")
    if unshare is None:
        return [
            DoctorItem(
                "kernel: netns",
                False,
                "unshare not found, so no kernel feature could be probed",
                _apt_fix("util-linux"),
            )
        ]
    res = run_([unshare, "--net", "true"], timeout)
    if not res.ok:
        return [
            DoctorItem(
                "kernel: netns",
                False,
                "cannot create a network namespace ("
                + _first_line(res.output, f"exit status {res.returncode}")
                + "), so no other kernel feature was probed",
                "run as root on a Linux kernel with CONFIG_NET_NS (in a container: --privileged)",
            )
        ]
    items = [DoctorItem("kernel: netns", True, "unshare --net works")]
    for feature, argv, needs, fix in KERNEL_PROBES:
        prog = found.get(needs)
        if prog is None:
            continue  # the failing item for the missing program names this probe
        res = run_([unshare, "--net", prog, *argv[1:]], timeout)
        name = f"kernel: {feature}"
        if res.ok:
            items.append(DoctorItem(name, True, "created in a throwaway namespace"))
        else:
            why = _first_line(res.output, f"exit status {res.returncode}")
            items.append(DoctorItem(name, False, why, fix))
    return items


def _br_netfilter_item(
    is_root: bool, which_: Which, run_: Runner, exists_: Callable[[str], bool], timeout: float
) -> DoctorItem:
    name = "kernel: br_netfilter"
    fix = "modprobe br_netfilter (package kmod)"
    if exists_("/proc/sys/net/bridge"):
        return DoctorItem(name, True, "/proc/sys/net/bridge exists")
    if not is_root:
        return DoctorItem(name, False, "/proc/sys/net/bridge is missing", fix)
    modprobe = which_("modprobe")
    if modprobe is None:
        return DoctorItem(name, False, "not loaded, and modprobe is not installed", fix)
    res = run_([modprobe, "br_netfilter"], timeout)
    if res.ok and exists_("/proc/sys/net/bridge"):
        return DoctorItem(name, True, "loaded now with modprobe br_netfilter")
    why = _first_line(res.output, "module did not appear")
    return DoctorItem(name, False, f"not loaded and modprobe failed: {why}", fix)


def _cni_item(plugin: str, cni_dirs: Sequence[str], exists_: Callable[[str], bool]) -> DoctorItem:
    for d in cni_dirs:
        path = str(Path(d) / plugin)
        if exists_(path):
            return DoctorItem(f"CNI {plugin}", True, path)
    return DoctorItem(
        f"CNI {plugin}",
        False,
        f"not in {' or '.join(cni_dirs)}",
        _apt_fix("containernetworking-plugins"),
    )


def _mininet_item(import_: Callable[[str], object]) -> DoctorItem:
    name = "python: mininet"
    try:
        mod = import_("mininet.net")
    except Exception as exc:  # ImportError, or anything its import raises
        return DoctorItem(
            name,
            False,
            f"cannot import mininet with {sys.executable} ({type(exc).__name__}: {exc})",
            "apt-get install mininet, and create the venv with /usr/bin/python3 -m venv "
            f"--system-site-packages (or {SETUP_HINT})",
        )
    version = getattr(mod, "VERSION", "")
    return DoctorItem(name, True, f"mininet {version}".strip())


def main_text(items: Sequence[DoctorItem]) -> str:
    """Render the items as ``✔ name — detail`` / ``✘ name — detail; fix: ...`` plus a summary."""
    lines = []
    for it in items:
        if it.ok:
            lines.append(f"✔ {it.name} — {it.detail}")
        else:
            lines.append(f"✘ {it.name} — {it.detail}; fix: {it.fix or SETUP_HINT}")
    failed = sum(1 for it in items if not it.ok)
    if failed == 0:
        lines.append(f"All {len(items)} checks passed: this machine can run the lab.")
    else:
        lines.append(
            f"{failed} of {len(items)} checks failed: apply the fixes above "
            f"(or {SETUP_HINT}), then run the doctor again."
        )
    return "\n".join(lines)


def report_html(items: Sequence[DoctorItem]) -> str:
    """A small HTML table of the items, for a notebook cell (``IPython.display.HTML``)."""
    rows = []
    for it in items:
        mark = "✔" if it.ok else "✘"
        color = "#1a7f37" if it.ok else "#cf222e"
        rows.append(
            "<tr>"
            f'<td style="color:{color}">{mark}</td>'
            f"<td>{html.escape(it.name)}</td>"
            f"<td>{html.escape(it.detail)}</td>"
            f"<td>{html.escape('' if it.ok else (it.fix or SETUP_HINT))}</td>"
            "</tr>"
        )
    failed = sum(1 for it in items if not it.ok)
    summary = (
        f"All {len(items)} checks passed."
        if failed == 0
        else f"{failed} of {len(items)} checks failed."
    )
    return (
        '<table class="lab-kit-doctor">'
        "<thead><tr><th></th><th>check</th><th>detail</th><th>fix</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody>"
        f'<tfoot><tr><td colspan="4">{html.escape(summary)}</td></tr></tfoot>'
        "</table>"
    )


def main() -> int:
    """Print the text report; return 0 when every check passed, else 1."""
    items = run_checks()
    print(main_text(items))
    return 0 if all(it.ok for it in items) else 1


if __name__ == "__main__":
    sys.exit(main())
