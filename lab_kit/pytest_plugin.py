"""pytest fixtures for lab_kit (registered as a pytest11 plugin).

- `host_snapshot`: the host's own links, addresses, routes, rules, iptables-save, nft ruleset and
  mounts and a set of host-wide sysctls; `host_snapshot.assert_unchanged()` diffs against now.
- `lab_cluster_factory`: makes clusters with unique names and removes them after the test.
- Every test marked `root` gets an automatic leak check: no lab netns, no lab process and no
  lab mount may survive the test, and the host must look exactly as before.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_kit import kernel, naming


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""


def _strip_counters(text: str) -> str:
    # iptables-save prints packet counters and a timestamp that change with any traffic
    lines = []
    for ln in text.splitlines():
        if ln.startswith("#"):
            continue
        if ln.startswith(":"):
            ln = ln.split(" [", 1)[0]
        lines.append(ln)
    return "\n".join(lines)


class HostSnapshot:
    """What the host's root namespace looks like; lab_kit must never change it."""

    def __init__(self) -> None:
        self.data = self.take()

    @staticmethod
    def take() -> dict[str, str]:
        # sorted: re-creating a pod moves its netns mount to the end of the list
        mounts = "\n".join(sorted(ln for ln in Path("/proc/self/mounts").read_text().splitlines()
                                  if "/run/netns/" in ln and "lk-" in ln))
        return {
            "links": _out(["ip", "-o", "link", "show"]),
            "addresses": _out(["ip", "-o", "addr", "show"]),
            "routes": _out(["ip", "route", "show", "table", "all"]),
            "rules": _out(["ip", "rule", "show"]),
            "iptables": _strip_counters(_out(["iptables-save"])),
            "nft": _out(["nft", "list", "ruleset"]),
            "lab_netns": "\n".join(n for n in kernel.list_netns() if n.startswith(naming.PREFIX)),
            "lab_mounts": mounts,
            "lab_sockets": "\n".join(sorted(str(p) for p in Path("/run/lab_kit-sock").glob("**/*"))
                                     if Path("/run/lab_kit-sock").exists() else ""),
            "lab_processes": "\n".join(_lab_processes()),
            # per-netns config (a pod's resolv.conf): `ip netns del` leaves it behind
            "lab_etc_netns": "\n".join(sorted(
                p.name for p in Path("/etc/netns").glob(naming.PREFIX + "*")))
            if Path("/etc/netns").is_dir() else "",
            "sysctls": "\n".join(f"{k}={_sysctl(k)}" for k in HOST_SYSCTLS),
        }

    def diff(self) -> dict[str, tuple[str, str]]:
        now = self.take()
        return {k: (self.data[k], now[k]) for k in self.data if self.data[k] != now[k]}

    def assert_unchanged(self) -> None:
        d = self.diff()
        assert not d, "the host changed:\n" + "\n".join(
            f"--- {k} before:\n{a}\n+++ {k} after:\n{b}" for k, (a, b) in d.items())


# host-wide settings a network emulator is tempted to change (Mininet's fixLimits does)
HOST_SYSCTLS = (
    "net/core/rmem_max", "net/core/wmem_max", "net/core/netdev_max_backlog",
    "net/ipv4/tcp_rmem", "net/ipv4/tcp_wmem", "net/ipv4/ip_forward",
    "net/ipv4/neigh/default/gc_thresh1", "net/ipv4/neigh/default/gc_thresh2",
    "net/ipv4/neigh/default/gc_thresh3", "net/ipv4/route/max_size", "kernel/pty/max",
    "fs/file-max", "net/bridge/bridge-nf-call-iptables",
)


def _sysctl(key: str) -> str:
    try:
        return Path("/proc/sys", key).read_text().strip()
    except OSError:
        return "(absent)"


def _live_commands() -> dict[int, str]:
    """pid -> command line of every live (non-zombie) process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{d}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out[int(d)] = cmd
    return out


def processes_with(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text`."""
    return [pid for pid, cmd in _live_commands().items() if text in cmd]


def _lab_processes() -> list[str]:
    """The lab's daemons: test servers, and BIRD (its control socket is under the socket dir,
    where the test servers' control sockets are too)."""
    out = []
    for pid, cmd in _live_commands().items():
        if "lab_kit.agnhost" in cmd:
            out.append(f"pid {pid}: python -m lab_kit.agnhost")
        elif "lab_kit.dnsserver" in cmd:
            out.append(f"pid {pid}: python -m lab_kit.dnsserver")
        elif cmd.startswith("dnsmasq ") and "/dns/internet.hosts" in cmd:
            out.append(f"pid {pid}: dnsmasq (the external host's resolver)")
        elif "/run/lab_kit-sock/" in cmd:
            out.append(f"pid {pid}: {cmd.split(' ', 1)[0]}")
    return sorted(out)


def unique_name(prefix: str = "t") -> str:
    return (prefix + uuid.uuid4().hex)[:10]


@pytest.fixture
def host_snapshot() -> HostSnapshot:
    return HostSnapshot()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "lab_state"
    d.mkdir()
    return d


@pytest.fixture
def lab_cluster_factory(state_dir: Path) -> Iterator[Callable[..., Any]]:
    from lab_kit.cluster import Cluster

    made: list[Cluster] = []

    def make(cfg: Any = None, **kw: Any) -> Cluster:
        kw.setdefault("root", state_dir)
        if cfg is None and "name" not in kw:
            kw["name"] = unique_name()
        c = Cluster.up(cfg, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        if c.store.exists() or any(naming.owns_netns(c.name, n) for n in kernel.list_netns()):
            c.down()


@pytest.fixture(autouse=True)
def _lab_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("root") is None:
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("needs root (run `sudo make test`)")
    before = HostSnapshot()
    yield
    before.assert_unchanged()
