"""The only layer with side effects on the kernel.

Every command goes through :class:`Runner`, which runs an argv list (never a shell string) in a
named netns and records `(netns, argv)` in the lab's journal, so a learner can print the journal
and re-type any of it by hand. Reads of live state use ``record=False``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_kit.errors import CommandError, LabError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> str:
    return str(NETNS_DIR / netns)


def in_netns_argv(argv: Sequence[str], netns: str | None) -> list[str]:
    """argv run inside `netns`'s network namespace only (`nsenter --net=… --`); the mount
    namespace stays the host's. None: argv unchanged (the root namespace)."""
    return list(argv) if netns is None else ["nsenter", f"--net={netns_path(netns)}", "--",
                                             *argv]


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    netns: str | None
    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class JournalEntry:
    t: float
    netns: str | None
    argv: list[str]
    rc: int
    source: str = "lab_kit"
    stdin: str | None = None
    env: dict[str, str] | None = None

    def command(self) -> str:
        """The command as a learner would type it in a root shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (self.env or {}).items())
        cmd = shlex.join(self.argv)
        if self.argv[:2] == ["ip", "-batch"] and self.stdin:
            lines = [ln for ln in self.stdin.splitlines() if ln.strip()]
            cmd = "\n".join(f"ip {ln}" for ln in lines)
            if self.netns:
                return "\n".join(f"ip netns exec {self.netns} {ln}" for ln in cmd.splitlines())
            return cmd
        if env:
            cmd = f"{env} {cmd}"
        if self.netns:
            cmd = f"ip netns exec {self.netns} {cmd}" if not env else \
                f"nsenter --net={netns_path(self.netns)} env {cmd}"
        if self.stdin is not None:  # a heredoc keeps it re-typeable
            cmd += f" <<'EOF'\n{self.stdin.rstrip()}\nEOF"
        return cmd

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "netns": self.netns, "argv": self.argv, "rc": self.rc,
                "source": self.source, "stdin": self.stdin, "env": self.env}


class Journal:
    """Append-only JSON-lines file of every kernel command (and Mininet call) the lab made."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mem: list[JournalEntry] = []

    def add(self, entry: JournalEntry) -> None:
        with self._lock:
            if self.path is None:
                self._mem.append(entry)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(entry.to_dict()) + "\n")

    def entries(self) -> list[JournalEntry]:
        if self.path is None:
            return list(self._mem)
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            try:
                d = json.loads(ln)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            out.append(JournalEntry(**d))
        return out


class Runner:
    """Runs argv lists in a netns, records them, raises :class:`CommandError` on failure."""

    def __init__(self, journal: Journal | None = None, source: str = "lab_kit") -> None:
        self.journal = journal or Journal(None)
        self.source = source

    def run(self, argv: Sequence[str], netns: str | None = None, *, input: str | None = None,
            env: dict[str, str] | None = None, check: bool = True, record: bool = True,
            timeout: float = 60, source: str | None = None) -> Completed:
        argv = [str(a) for a in argv]
        full = in_netns_argv(argv, netns)
        penv = None
        if env:
            penv = dict(os.environ)
            penv.update(env)
        try:
            p = subprocess.run(full, input=input, capture_output=True, text=True, env=penv,
                               timeout=timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except FileNotFoundError:
            rc, out, err = 127, "", f"{argv[0]}: command not found"
        except subprocess.TimeoutExpired:
            rc, out, err = 124, "", f"timed out after {timeout:g} s"
        if record:
            self.journal.add(JournalEntry(t=time.time(), netns=netns, argv=argv, rc=rc,
                                          source=source or self.source, stdin=input, env=env))
        if check and rc != 0:
            raise CommandError(netns, argv, rc, err, out)
        return Completed(argv, netns, rc, out, err)

    def json(self, argv: Sequence[str], netns: str | None = None) -> list[dict[str, Any]]:
        """A read of live state (`ip -j …`, `bridge -j …`), not journaled: the parsed JSON list,
        or [] when the command fails or prints nothing (a device that does not exist)."""
        done = self.run(argv, netns, check=False, record=False)
        if done.rc != 0 or not done.stdout.strip():
            return []
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            return []

    def batch(self, lines: Sequence[str], netns: str | None, *, check: bool = True,
              force: bool = False, source: str | None = None) -> Completed:
        """Many `ip` commands in one exec: `ip -batch -` (each line is journaled on its own)."""
        if not lines:
            return Completed([], netns, 0, "", "")
        argv = ["ip", "-batch", "-"] if not force else ["ip", "-force", "-batch", "-"]
        return self.run(argv, netns, input="\n".join(lines) + "\n", check=check, source=source)

    def note(self, what: list[str], netns: str | None = None, source: str = "mininet") -> None:
        """Journal an action performed by a library (Mininet) rather than by an exec."""
        self.journal.add(JournalEntry(t=time.time(), netns=netns, argv=what, rc=0,
                                      source=source))


# --- netns -----------------------------------------------------------------------------------

def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def netns_inode(netns: str) -> int | None:
    try:
        return os.stat(netns_path(netns)).st_ino
    except OSError:
        return None


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextmanager
def in_netns(netns: str) -> Iterator[None]:
    """Switch the *calling thread* into `netns` for the duration of the block.

    Sockets created inside stay in that netns for their whole life, so callers create the
    socket inside and use it outside. Only this thread is affected.
    """
    try:
        target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LabError(f"network namespace `{netns}` does not exist") from None
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)


def socket_in(netns: str | None, family: int = socket.AF_INET,
              type: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in `netns` (None: the caller's own)."""
    if netns is None:
        return socket.socket(family, type)
    with in_netns(netns):
        return socket.socket(family, type)


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of `inodes` (found through /proc)."""
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            ino = os.stat(f"/proc/{d}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes:
            out.append(int(d))
    return out


def neighbour_limit() -> int | None:
    """The kernel's hard cap on ARP entries (`net.ipv4.neigh.default.gc_thresh3`), or None.

    It is global: every network namespace shares it, and it cannot be set per netns. Each pod
    needs about two entries (its gateway in the pod, the pod on the node's bridge), so with the
    default 1024 a cluster of ~500 pods starts losing ARP entries and connections time out.
    lab_kit never changes it: it is the host's setting.
    """
    try:
        return int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    except (OSError, ValueError):
        return None

