"""Leave nothing behind: `down` after SIGKILL (mid-`up` too), learners' processes, rollback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import lab_kit
from lab_kit import config, kernel, naming
from lab_kit.cluster import Cluster, sweep
from lab_kit.errors import LabError, NotRunningError
from lab_kit.kernel import Runner
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root

REPO = str(Path(lab_kit.__file__).resolve().parents[1])


def pod_manifest(name: str, node: str | None = None, port: int = 8080) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agnhost", "image": "agnhost",
                                            "ports": [{"containerPort": port}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
              "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{
                                        "name": "agnhost", "image": "agnhost",
                                        "args": ["netexec", "--http-port=8080",
                                                 "--udp-port=8081"]}]}}}}


def owned_netns(name: str) -> list[str]:
    return [n for n in kernel.list_netns() if naming.owns_netns(name, n)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def server_pids(name: str) -> list[int]:
    """The cluster's test servers: `lab_kit.agnhost` processes in one of its node netns."""
    nodes = [n for n in owned_netns(name) if "." not in n]
    inodes = {i for i in (kernel.netns_inode(n) for n in nodes) if i is not None}
    servers = set(processes_with("lab_kit.agnhost"))
    return sorted(p for p in kernel.pids_in_netns(inodes) if p in servers) if inodes else []


def pids_in(netns: str) -> list[int]:
    ino = kernel.netns_inode(netns)
    assert ino is not None, netns
    return kernel.pids_in_netns({ino})


def lab_mounts(name: str) -> list[str]:
    return [ln for ln in Path("/proc/self/mounts").read_text().splitlines()
            if f"/run/netns/lk-{name}" in ln]


def assert_all_gone(name: str, root: Path) -> None:
    assert owned_netns(name) == []
    assert lab_mounts(name) == []
    sockets = Cluster(name, root)._socket_dir  # the test servers' control sockets
    assert processes_with(f"--control {sockets}/") == []  # the per-node test servers
    assert not sockets.exists()
    deadline = time.monotonic() + 3  # Mininet's host shells exit on their pty's hangup
    while processes_with(f"mininet:{name}-") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(f"mininet:{name}-") == []
    assert not (root / name).exists()


# --- SIGKILL -------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, sys
    import lab_kit.cluster as lc
    name, root, where = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), 9)

    if where == "mininet-start":  # inside Mininet, before any netns has a name
        import mininet.net
        mininet.net.Mininet.start = lambda self: die()
    elif where == "after-underlay":  # `up` half done: underlay built, nodes not configured
        real = lc._build_underlay
        def build(runner, conf):
            real(runner, conf)
            die()
        lc._build_underlay = build
    c = lc.Cluster.up(name=name, root=root)
    c.apply(json.loads(sys.argv[4]))
    print(json.dumps([p.netns for p in c.pods()]))
    die()
""")


def run_child(name: str, root: Path, where: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", CHILD, name, str(root), where,
                           json.dumps([DEPLOYMENT])], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("where", ["after-apply", "after-underlay", "mininet-start"])
def test_down_after_sigkill(state_dir: Path, where: str) -> None:
    name = unique_name()
    try:
        done = run_child(name, state_dir, where)
        assert done.returncode == -9, done.stderr
        state = json.loads((state_dir / name / "state.json").read_text())
        left = owned_netns(name)
        if where == "after-apply":
            assert state["status"] == "running"
            pod_netns = json.loads(done.stdout)
            assert len(pod_netns) == 4 and set(pod_netns) <= set(left)
            # the detached per-node servers outlived their parent
            assert len(server_pids(name)) == 3
        elif where == "after-underlay":
            assert state["status"] == "creating"
            assert sorted(left) == sorted([f"lk-{name}-control-plane", f"lk-{name}-worker",
                                           f"lk-{name}-worker2", f"lk-{name}-external",
                                           f"lk-{name}-underlay"])
        else:  # killed before any netns got its name: Mininet's shells die with their pty
            assert state["status"] == "creating"
            assert left == []
        if where != "mininet-start":
            assert lab_mounts(name)
        servers = server_pids(name)
        Cluster(name, state_dir).down()
        assert_all_gone(name, state_dir)
        assert not [p for p in servers if alive(p)]
    finally:
        Cluster(name, state_dir).down()


def test_up_again_after_a_crash_that_lost_the_state_dir(state_dir: Path,
                                                       lab_cluster_factory) -> None:
    name = unique_name()
    try:
        assert run_child(name, state_dir, "after-apply").returncode == -9
        shutil.rmtree(state_dir / name)  # the state is gone, the kernel objects are not
        assert owned_netns(name)
        c = lab_cluster_factory(name=name)  # up sweeps what carries the cluster's prefix
        assert c.pods() == []
        assert sorted(owned_netns(name)) == sorted(
            [n.netns for n in c.nodes()] + [f"lk-{name}-external", f"lk-{name}-underlay"])
        assert len(server_pids(name)) == 3
        c.apply([pod_manifest("fresh")])
        r = c.probe(c.pod("fresh").node, "fresh", 8080)
        assert r.ok and r.reply == "fresh"
    finally:
        Cluster(name, state_dir).down()


def test_sweep_finds_a_crashed_cluster_by_name_alone(state_dir: Path) -> None:
    name = unique_name()
    try:
        assert run_child(name, state_dir, "after-apply").returncode == -9
        shutil.rmtree(state_dir / name)
        servers = server_pids(name)
        assert len(servers) == 3
        sweep(name, Runner())
        assert owned_netns(name) == []
        assert lab_mounts(name) == []
        assert not [p for p in servers if alive(p)]
    finally:
        Cluster(name, state_dir).down()  # also removes the control-socket dir


def test_sweep_of_a_crashed_cluster_leaves_no_files(state_dir: Path) -> None:
    name = unique_name()
    sockets = Cluster(name, state_dir)._socket_dir
    try:
        assert run_child(name, state_dir, "after-apply").returncode == -9
        assert sockets.is_dir()
        shutil.rmtree(state_dir / name)  # what `lab-kit down --all` does after sweep_all
        sweep(name, Runner())
        assert not sockets.exists()
    finally:
        Cluster(name, state_dir).down()


# --- processes a learner starts ------------------------------------------------------------------

def test_down_kills_processes_started_in_the_lab_namespaces(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    worker = f"{c.name}-worker"
    c.apply([pod_manifest("solo", node=worker)])
    pod = c.pod("solo")
    detach = "</dev/null >/dev/null 2>&1 &"
    pod.sh(f"setsid socat TCP-LISTEN:9999,fork,reuseaddr - {detach}")
    c.node(worker).sh(f"setsid sleep 600 {detach}")
    c.external.sh(f"setsid sleep 600 {detach}")
    deadline = time.monotonic() + 5
    while "0.0.0.0:9999" not in pod.sh("ss -Hltn") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "0.0.0.0:9999" in pod.sh("ss -Hltn")
    learner = [p for ns in (pod.netns, f"lk-{worker}", c.external.netns) for p in pids_in(ns)
               if Path(f"/proc/{p}/comm").read_text().strip() in ("socat", "sleep")]
    assert len(learner) == 3
    c.down()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in learner) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in learner if alive(p)]
    assert_all_gone(c.name, c.root)


def test_down_twice_and_after_down(lab_cluster_factory) -> None:
    c = lab_cluster_factory()
    c.apply([pod_manifest("a")])
    c.down()
    assert_all_gone(c.name, c.root)
    c.down()  # missing is fine
    assert_all_gone(c.name, c.root)
    with pytest.raises(NotRunningError):
        Cluster.attach(c.name, root=c.root)
    with pytest.raises(NotRunningError):
        c.pods()
    assert c.name not in Cluster.list(c.root)


def test_context_manager_downs_on_exception(state_dir: Path) -> None:
    name = unique_name()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with Cluster.up(name=name, root=state_dir) as c:
                c.apply([pod_manifest("a")])
                assert len(owned_netns(name)) == 6
                raise RuntimeError("boom")
        assert_all_gone(name, state_dir)
        with Cluster.up(name=name, root=state_dir) as c:
            assert owned_netns(name)
        assert_all_gone(name, state_dir)
    finally:
        sweep(name, Runner())


# --- rollback ----------------------------------------------------------------------------------

def test_failed_up_removes_what_it_made(state_dir: Path, monkeypatch) -> None:
    name = unique_name()
    real = Cluster._setup_node
    seen: list[str] = []

    def setup_node(self, conf, n):
        seen.append(n.name)
        if n.role == "worker" and n.name.endswith("worker2"):
            raise LabError("injected failure")
        return real(self, conf, n)

    monkeypatch.setattr(Cluster, "_setup_node", setup_node)
    try:
        with pytest.raises(LabError, match="injected"):
            Cluster.up(name=name, root=state_dir)
        assert len(seen) == 3
        assert_all_gone(name, state_dir)
    finally:
        sweep(name, Runner())


FAILING_BRIDGE = """#!/bin/sh
# the real bridge plugin, except that ADD fails for any pod whose name ends in "bad"
case "$CNI_NETNS" in
*bad) if [ "$CNI_COMMAND" = ADD ]; then
        echo '{"cniVersion": "1.0.0", "code": 999, "msg": "injected failure"}'
        exit 1
      fi ;;
esac
exec /usr/lib/cni/bridge
"""


def test_up_and_down_leak_no_child_or_open_file_in_the_caller(lab_cluster_factory) -> None:
    # a notebook kernel lives for hours: the test servers must be daemons, not abandoned
    # children, and Mininet's shells and ptys must be closed, or every cluster leaves
    # ResourceWarnings (and, until reaped, zombies) behind in the learner's kernel
    import gc
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = lab_cluster_factory()
        c.apply([pod_manifest("a")])
        c.down()
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
    children = [d for d in os.listdir("/proc") if d.isdigit() and _ppid(int(d)) == os.getpid()]
    assert children == []


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def failing_plugin_cluster(factory: Any, tmp_path: Path, workers: int) -> Cluster:
    """A cluster whose CNI plugin fails ADD for pods named `*bad`."""
    plugin = tmp_path / "bridge-or-fail"
    plugin.write_text(FAILING_BRIDGE)
    plugin.chmod(0o755)
    conf = config.parse_config({"kind": "Cluster", "apiVersion": config.KIND_API_VERSION,
                                "name": unique_name(),
                                "nodes": [{"role": "control-plane"}]
                                + [{"role": "worker"}] * workers,
                                "networking": {"cniPlugin": str(plugin)}})
    return factory(conf)


def test_failed_apply_rolls_back_every_pod_of_that_apply(lab_cluster_factory,
                                                        tmp_path: Path) -> None:
    c = failing_plugin_cluster(lab_cluster_factory, tmp_path, workers=1)
    worker = f"{c.name}-worker"
    c.apply([pod_manifest("keep", node=worker)])
    keep_ip = c.pod("keep").ip
    state_before = c.store.state_file.read_text()
    docs = [pod_manifest("one", node=worker), pod_manifest("two", node=worker),
            pod_manifest("zbad", node=worker)]
    with pytest.raises(LabError, match="injected failure"):
        c.apply(docs)
    assert c.store.state_file.read_text() == state_before
    assert [p.name for p in c.pods()] == ["keep"]
    assert [p.name for p in Cluster.attach(c.name, root=c.root).pods()] == ["keep"]
    assert sorted(n for n in owned_netns(c.name) if "." in n) == [f"lk-{c.name}.default.keep"]
    node_links = json.loads(subprocess.run(
        ["ip", "-n", f"lk-{worker}", "-j", "link", "show", "master", "cni0"],
        capture_output=True, text=True, check=True).stdout)
    assert len(node_links) == 1  # only keep's veth
    ipam = c.store.dir / "cni" / worker / "ipam" / "cbr0"
    assert sorted(p.name for p in ipam.iterdir() if p.name[0].isdigit()) == [keep_ip]
    # and the cluster still works
    c.apply([pod_manifest("one", node=worker)])
    r = c.probe("keep", "one", 8080)
    assert r.ok and r.reply == "one"


def test_failure_on_one_node_rolls_back_the_pods_other_nodes_made(lab_cluster_factory,
                                                                    tmp_path: Path) -> None:
    # node threads run in parallel: the pods a healthy node made must be undone too, and the
    # objects of the failed apply (here a Namespace) must not be recorded
    c = failing_plugin_cluster(lab_cluster_factory, tmp_path, workers=2)
    w1, w2 = f"{c.name}-worker", f"{c.name}-worker2"
    c.apply([pod_manifest("keep", node=w1)])
    state_before = c.store.state_file.read_text()
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "extra"}},
            pod_manifest("one", node=w1), pod_manifest("two", node=w1),
            pod_manifest("zbad", node=w2)]
    with pytest.raises(LabError, match="injected failure"):
        c.apply(docs)
    assert c.store.state_file.read_text() == state_before
    assert sorted(n for n in owned_netns(c.name) if "." in n) == [f"lk-{c.name}.default.keep"]
    for node, veths in ((w1, 1), (w2, 0)):
        links = json.loads(subprocess.run(
            ["ip", "-n", f"lk-{node}", "-j", "link", "show", "type", "veth"],
            capture_output=True, text=True, check=True).stdout)
        pod_veths = [ln["ifname"] for ln in links if ln["ifname"] != "eth0"]  # eth0: underlay
        assert len(pod_veths) == veths, (node, pod_veths)


# --- the host itself ---------------------------------------------------------------------------

# Debian 12's kernel defaults; Mininet's fixLimits() raises (or, for tcp_rmem/tcp_wmem,
# overwrites) these in the host's root namespace the first time a process builds a network.
HOST_SYSCTLS = {"net.ipv4.tcp_rmem": "4096 131072 6291456",
                "net.core.netdev_max_backlog": "1000",
                "net.ipv4.neigh.default.gc_thresh3": "1024"}


def _sysctl(key: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / key.replace(".", "/")
    if value is not None:
        path.write_text(value)
    return " ".join(path.read_text().split())


def test_up_leaves_the_hosts_sysctls_alone(state_dir: Path) -> None:
    name = unique_name()
    saved = {k: _sysctl(k) for k in HOST_SYSCTLS}
    try:
        for k, v in HOST_SYSCTLS.items():
            _sysctl(k, v)
        script = ("import sys\nfrom lab_kit.cluster import Cluster\n"
                  "Cluster.up(name=sys.argv[1], root=sys.argv[2]).down()\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        done = subprocess.run([sys.executable, "-c", script, name, str(state_dir)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        after = {k: _sysctl(k) for k in HOST_SYSCTLS}
    finally:
        for k, v in saved.items():
            _sysctl(k, v)
        sweep(name, Runner())
    assert after == HOST_SYSCTLS
