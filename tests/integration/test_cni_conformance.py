"""The CNI conformance suite against real plugins, on the real kernel (root).

- the reference solution (tests/cni_plugins/reference_plugin.py) passes every case;
- each broken plugin (tests/cni_plugins/broken_*.py breaks one rule) fails exactly the cases
  that rule is about, with a message naming the mistake;
- plugins that hang or leave daemons behind are cleaned up after, as are leftovers of a crash;
- the lab's runtime really runs a plugin named by path (`~` included) end to end, DELs after a
  failed ADD, and refuses a missing or non-executable plugin at `up` with nothing half-built.

Every run uses a unique name and a state dir under the test's tmp dir; after each test the
suite's netns and state must be gone (and the root leak check covers the host).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab_kit import cli, config, kernel, naming
from lab_kit.cluster import Cluster
from lab_kit.cni_conformance import CASES, ConformanceReport, pod_manifest, run_conformance
from lab_kit.errors import ConfigError, LabError
from lab_kit.pytest_plugin import processes_with, unique_name

pytestmark = pytest.mark.root

PLUGINS = Path(__file__).resolve().parents[1] / "cni_plugins"
REFERENCE = PLUGINS / "reference_plugin.py"
SCRATCH_CASES = [c for c in CASES if c != "cross-node"]


def _owned(name: str) -> list[str]:
    return [n for n in kernel.list_netns() if naming.owns_netns(name, n)]


@pytest.fixture
def conformance(state_dir: Path) -> Iterator[Callable[..., ConformanceReport]]:
    """run_conformance under a unique name; asserts it left no netns and no state behind."""
    names: list[str] = []

    def run(plugin: str | Path, **kw: Any) -> ConformanceReport:
        name = unique_name("cc")
        names.append(name)
        t0 = time.monotonic()
        report = run_conformance(plugin, name=name, root=state_dir, **kw)
        print(f"{Path(plugin).name}: {len(report.cases)} cases in "
              f"{time.monotonic() - t0:.1f} s")
        assert _owned(name) == [], f"the suite left namespaces behind: {_owned(name)}"
        assert not (state_dir / name).exists(), "the suite left its state dir behind"
        return report

    yield run
    for name in names:  # a failed assertion above must not leak into the next test
        Cluster(name, state_dir).down()


def test_reference_plugin_passes_every_case(conformance) -> None:
    report = conformance(REFERENCE)
    assert [c.name for c in report.cases] == list(CASES)
    assert report.passed, report.summary()
    for c in report.cases:
        print(f"  {c.name:22} {c.seconds:.2f} s")
    cross = report.case("cross-node")
    assert "by-plugin ->" in cross.message and "by-bridge ->" in cross.message
    json.dumps(report.to_dict())  # a gradebook can store it


# plugin -> (the cases it must fail, words the first failing case's message has)
BROKEN: dict[str, tuple[set[str], str]] = {
    "broken_version.py": ({"version"}, "when asked about '1.0.0'"),
    "broken_error_codes.py": ({"error-unknown-command", "error-bad-config",
                               "error-missing-env"}, "is code 4"),
    "broken_error_on_stderr.py": ({"error-unknown-command", "error-bad-config",
                                   "error-missing-env", "add-existing", "check-detects"},
                                  "went to stderr"),
    "broken_result_shape.py": ({"add-result"}, "no interfaces"),
    "broken_no_default_route.py": ({"add-kernel", "check-good", "cross-node"},
                                   "no route to 0.0.0.0/0"),
    "broken_add_replaces.py": ({"add-existing"}, "broke the first attachment"),
    "broken_del_not_idempotent.py": ({"del-twice", "del-unknown", "del-netns-gone"},
                                     "second DEL failed"),
    "broken_no_ipam_release.py": ({"del-twice", "del-netns-gone"},
                                  "still reserved by host-local"),
    "broken_check_never_fails.py": ({"check-detects"}, "CHECK exited 0"),
}


@pytest.mark.parametrize("plugin", list(BROKEN))
def test_each_broken_plugin_fails_its_case(plugin: str, conformance) -> None:
    fails, words = BROKEN[plugin]
    report = conformance(PLUGINS / plugin)
    assert {c.name for c in report.failed} == fails, report.summary()
    first = report.failed[0]
    assert words in first.message, first.summary()
    assert first.hint and first.calls, first.summary()
    assert "cross-node" in fails or report.case("cross-node").passed


def test_cross_node_failure_says_why(conformance) -> None:
    report = conformance(PLUGINS / "broken_no_default_route.py", cases=["cross-node"])
    (case,) = report.cases
    assert not case.passed and "unreachable" in case.message.lower(), case.summary()
    assert "no default route" in case.hint


def test_add_failing_blocks_the_cases_that_need_it(conformance) -> None:
    report = conformance(PLUGINS / "broken_add_leaks_on_failure.py",
                         cases=["add-result", "del-twice", "check-good", "cross-node"])
    assert not any(c.passed for c in report.cases)
    assert [c.blocked_by for c in report.cases] == ["", "add-result", "add-result",
                                                   "add-result"]
    assert "injected failure after IPAM" in report.case("del-twice").message


def test_a_hanging_plugin_is_killed_with_its_helpers(conformance) -> None:
    t0 = time.monotonic()
    report = conformance(PLUGINS / "misbehaving_hangs.py", cases=["version", "add-result"],
                         timeout=2)
    assert time.monotonic() - t0 < 15
    assert report.case("version").passed
    add = report.case("add-result")
    assert not add.passed and add.calls[-1].timed_out
    assert "no answer within 2 s" in add.message
    assert processes_with("sleep 3601") == []


def test_daemons_the_plugin_leaves_are_removed(conformance) -> None:
    report = conformance(PLUGINS / "misbehaving_daemon.py", cases=["add-result", "cross-node"])
    assert report.passed, report.summary()
    assert processes_with("sleep 3602") == []


def test_leftovers_of_a_crashed_run_are_removed(state_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # what a run killed half-way leaves: its netns (with a process) and host-local's data
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(state_dir))
    name = unique_name("cc")
    node, pod = naming.node_netns(f"{name}-node"), naming.pod_netns(name, "conformance", "x")

    def crash() -> None:
        for ns in (node, pod):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", node, "setsid", "-f", "sleep", "3603"],
                       check=True)
        (state_dir / name / "conformance-ipam" / "cbr0").mkdir(parents=True)

    try:
        crash()  # `lab-kit down --name` removes it, as it would a cluster's
        assert cli.main(["down", "--name", name]) == 0
        assert _owned(name) == [] and not (state_dir / name).exists()
        assert processes_with("sleep 3603") == []
        crash()  # and the next run removes an earlier run's leftovers before it starts
        report = run_conformance(REFERENCE, name=name, cases=["version"])
        assert report.passed and _owned(name) == [] and not (state_dir / name).exists()
        assert processes_with("sleep 3603") == []
    finally:
        Cluster(name, state_dir).down()


def test_missing_or_not_executable_plugin(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not found: there is no file"):
        run_conformance(tmp_path / "nope", root=tmp_path)
    script = tmp_path / "plugin"
    script.write_text(REFERENCE.read_text())
    script.chmod(0o644)
    with pytest.raises(LabError, match="chmod"):
        run_conformance(script, root=tmp_path)
    with pytest.raises(LabError, match="directory"):
        run_conformance(tmp_path, root=tmp_path)


# --- the lab's runtime with a plugin named in the cluster config ------------------------------

def _conf(name: str, plugin: str) -> config.ClusterConfig:
    return config.parse_config({
        "kind": "Cluster", "apiVersion": config.KIND_API_VERSION, "name": name,
        "nodes": [{"role": "control-plane"}, {"role": "worker"},
                  {"role": "worker", "cniPlugin": plugin}],
        "networking": {"cni": "host-gw"}}, source="test.yaml")


def test_a_plugin_in_the_home_directory_wires_pods(lab_cluster_factory, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the lab's own config names `~/lab_kit-work/my-cni`: `~` is whoever runs the lab
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "plugins").mkdir()
    shutil.copy(REFERENCE, tmp_path / "plugins" / "reference_plugin.py")
    name = unique_name()
    c = lab_cluster_factory(_conf(name, "~/plugins/reference_plugin.py"))
    c.apply([pod_manifest("a", f"{name}-worker2"), pod_manifest("b", f"{name}-worker")])
    assert c.probe("a", "b", 8080).ok and c.probe("b", "a", 8080).ok
    e = next(e for e in c.journal() if e.argv[-1].endswith("reference_plugin.py"))
    assert e.argv[-1] == str(tmp_path / "plugins" / "reference_plugin.py")
    c.delete(pod="a")  # DEL through the plugin releases the address
    ipam = c.store.dir / "cni" / f"{name}-worker2" / "ipam" / "cbr0"
    assert not [p for p in ipam.iterdir() if p.name[0].isdigit()]


def test_the_runtime_dels_after_a_failed_add(lab_cluster_factory) -> None:
    name = unique_name()
    c = lab_cluster_factory(_conf(name, str(PLUGINS / "broken_add_leaks_on_failure.py")))
    with pytest.raises(LabError, match="injected failure after IPAM"):
        c.apply([pod_manifest("a", f"{name}-worker2")])
    # the plugin took an address and failed; the runtime's DEL gave it back
    ipam = c.store.dir / "cni" / f"{name}-worker2" / "ipam" / "cbr0"
    assert not [p for p in ipam.iterdir() if p.name[0].isdigit()]
    assert c.pods() == [] and _owned(name) and not [n for n in _owned(name) if "." in n]


@pytest.mark.parametrize("problem", ["missing", "not-executable", "directory"])
def test_up_refuses_a_bad_plugin_and_builds_nothing(problem: str, tmp_path: Path,
                                                    state_dir: Path) -> None:
    plugin = tmp_path / "my-cni"
    if problem == "not-executable":
        plugin.write_text(REFERENCE.read_text())
        plugin.chmod(0o644)
    elif problem == "directory":
        plugin.mkdir()
    name = unique_name()
    with pytest.raises(ConfigError) as ei:
        Cluster.up(_conf(name, str(plugin)), root=state_dir)
    e = ei.value
    assert e.field == "nodes[2].cniPlugin" and e.file == "test.yaml", str(e)
    words = {"missing": "there is no file", "not-executable": "chmod +x",
             "directory": "is a directory"}[problem]
    assert words in str(e), str(e)
    assert _owned(name) == [] and not (state_dir / name).exists()
