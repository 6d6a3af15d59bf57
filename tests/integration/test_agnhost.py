"""The per-node test server: it lives in the node's netns, survives being killed, serves on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from lab_kit import kernel, naming
from lab_kit.cluster import Cluster

pytestmark = pytest.mark.root


def pod(name: str, node: str, port: int = 8080) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{
                "name": "agnhost", "image": "agnhost",
                "args": ["netexec", f"--http-port={port}", f"--udp-port={port + 1}"]}]}}


def server_pid(c: Cluster, node: str) -> int:
    """The node's server, found like a learner would: /proc cmdline + its network namespace."""
    ino = kernel.netns_inode(naming.node_netns(node))
    found = []
    for pid in kernel.pids_in_netns({ino} if ino else set()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "lab_kit.agnhost" in cmd:
            found.append(pid)
    assert len(found) == 1, found
    return found[0]


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            return
        if state == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def answers(c: Cluster, src: str, dst: str, port: int = 8080) -> bool:
    tcp = c.probe(src, dst, port)
    udp = c.probe(src, dst, port + 1, "UDP")
    return tcp.ok and tcp.reply == dst and udp.ok and udp.reply == dst


def test_one_server_per_node_in_the_node_netns(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    root_ino = os.stat("/proc/self/ns/net").st_ino
    pids = {n.name: server_pid(c, n.name) for n in c.nodes()}
    assert len(set(pids.values())) == 3
    for node, pid in pids.items():
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert ino == kernel.netns_inode(naming.node_netns(node)) != root_ino
        assert os.getsid(pid) == pid  # detached: its own session, outlives the creator


def test_killed_server_is_restarted_by_the_next_apply(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    worker = f"{c.name}-worker"
    c.apply([pod("a", worker), pod("b", f"{c.name}-worker2")])
    assert answers(c, "b", "a")
    old = server_pid(c, worker)
    kill9(old)
    assert not c.probe("b", "a", 8080).ok  # nothing listens in a's netns any more
    assert answers(c, "a", "b")  # the other node's server is untouched

    assert c.apply([pod("c", worker)]) == ["pod/c created"]
    new = server_pid(c, worker)
    assert new != old
    for dst in ("a", "c"):  # the restarted server serves every pod of its node again
        assert answers(c, "b", dst), dst


def test_killed_server_is_restarted_by_reapplying_the_same_manifest(
        lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    worker = f"{c.name}-worker"
    docs = [pod("a", worker), pod("b", f"{c.name}-worker2")]
    c.apply(docs)
    kill9(server_pid(c, worker))
    assert c.apply(docs) == ["pod/a unchanged", "pod/b unchanged"]
    assert answers(c, "b", "a")


def test_server_keeps_serving_other_pods_when_one_is_deleted(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    worker = f"{c.name}-worker"
    c.apply([pod("a", worker), pod("b", worker), pod("c", worker),
             pod("x", f"{c.name}-worker2")])
    pid = server_pid(c, worker)
    ip_b = c.pod("b").ip
    for dst in ("a", "b", "c"):
        assert answers(c, "x", dst)
    assert c.delete(pod="b") == ['pod "b" deleted']
    assert server_pid(c, worker) == pid
    for dst in ("a", "c"):
        assert answers(c, "x", dst), dst
    assert not c.probe("x", ip_b, 8080, timeout=0.5).ok
    # same port in three pods of one node: each socket lives in its own pod's netns
    assert {c.probe(worker, d, 8080).reply for d in ("a", "c")} == {"a", "c"}
