"""The cluster's stored state (like etcd): a JSON document in the cluster's state dir.

Layout of `<root>/<cluster>/`:
  state.json     desired and observed objects (atomic replace on every write)
  journal.jsonl  every kernel command the lab ran
  lock           flock'ed by any process changing the cluster
  cni/<node>/    the node's CNI conflist and host-local IPAM data dir
  agnhost/       per-node server control sockets and logs
The default root is /run/lab_kit (a tmpfs: it goes away on reboot, like the kernel objects);
set LAB_KIT_STATE_DIR to move it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab_kit.errors import BusyError

DEFAULT_ROOT = Path("/run/lab_kit")


def state_root(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LAB_KIT_STATE_DIR") or DEFAULT_ROOT)


class Store:
    def __init__(self, root: Path, cluster: str) -> None:
        self.dir = root / cluster
        self.cluster = cluster

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def journal_file(self) -> Path:
        return self.dir / "journal.jsonl"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def lock(self, timeout: float = 120) -> Iterator[None]:
        """Serialise changes across processes (a notebook and a CLI call, say)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BusyError(f"cluster `{self.cluster}` is locked by another "
                                        "lab_kit process; wait for it or run `lab-kit down`"
                                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)


def list_clusters(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())
