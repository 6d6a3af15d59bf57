"""The pure parts of the CNI conformance suite and of lab 06 (no root, no kernel objects).

- the judgements: a VERSION answer, an error answer and an ADD result against the spec;
- what a report says (text, HTML, dict) and how a plugin's stderr is summarised;
- the lab's plumbing: the cluster config, the launcher that runs the learner's parts, the
  reference plugin's parts (which the notebook's solution copies);
- the reference plugin's protocol answers, which need no netns: VERSION and the errors;
- the runtime's small rules in lab_kit.cni: `~` in a plugin path, DEL after a failed ADD.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab_kit import cni, config
from lab_kit.cni_conformance import (
    CASES,
    CaseResult,
    ConformanceReport,
    Invocation,
    error_problem,
    result_problems,
    run_conformance,
    stderr_gist,
    version_problem,
)
from lab_kit.errors import CommandError, LabError
from lab_kit.kernel import Completed
from lab_kit.labs import cni_plugin

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "cni_plugins"
REFERENCE = PLUGINS / "reference_plugin.py"
NETNS = "/run/netns/lk-cc.conformance.x"


# --- VERSION ---------------------------------------------------------------------------------

def test_a_good_version_answer() -> None:
    out = json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
    assert version_problem(0, out) is None


@pytest.mark.parametrize(("rc", "stdout", "words"), [
    (1, "", "VERSION exited 1"),
    (0, "1.0.0", "not JSON"),
    (0, "[]", "not a JSON object"),
    (0, '{"cniVersion": "0.4.0", "supportedVersions": ["1.0.0"]}', "when asked about '1.0.0'"),
    (0, '{"cniVersion": "1.0.0"}', "no supportedVersions"),
    (0, '{"cniVersion": "1.0.0", "supportedVersions": "1.0.0"}', "no supportedVersions"),
    (0, '{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0"]}', "lacks '1.0.0'"),
])
def test_version_problems(rc: int, stdout: str, words: str) -> None:
    p = version_problem(rc, stdout)
    assert p is not None and words in p.message, p
    assert p.hint


def test_version_problem_quotes_the_traceback() -> None:
    p = version_problem(1, "", stderr=TRACEBACK)
    assert p and "NameError: name 'x' is not defined (at 1-protocol.py:12 in main)" in p.message


# --- errors ----------------------------------------------------------------------------------

def _err(**kw: Any) -> str:
    d = {"cniVersion": "1.0.0", "code": 4, "msg": "unknown CNI_COMMAND: FROB"}
    d.update(kw)
    return json.dumps({k: v for k, v in d.items() if v is not None})


def test_a_good_error_answer() -> None:
    assert error_problem(1, _err(), "", code=4) is None
    assert error_problem(1, _err(code=999), "") is None  # any code, when none is asked for


@pytest.mark.parametrize(("rc", "stdout", "stderr", "words"), [
    (0, _err(), "", "exited 0"),
    (1, "", _err(), "went to stderr"),
    (1, "boom", "", "not the spec's error JSON"),
    (1, _err(cniVersion=None), "", "has no cniVersion"),
    (1, _err(code=None, msg=None), "", "has no code, msg"),
    (1, _err(code="4"), "", "is not a number"),
    (1, _err(code=True), "", "is not a number"),
    (1, _err(msg=" "), "", "msg is empty"),
    (1, _err(code=999), "", "code 999 (not one of the spec's codes); FROB is code 4"),
    (1, _err(code=6), "", "code 6 (failed to decode content)"),
])
def test_error_problems(rc: int, stdout: str, stderr: str, words: str) -> None:
    p = error_problem(rc, stdout, stderr, code=4, why="FROB")
    assert p is not None and words in p.message, p
    assert p.hint


# --- the ADD result --------------------------------------------------------------------------

def good_result() -> dict[str, Any]:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
                           {"name": "veth1234abcd", "mac": "aa:aa:aa:aa:aa:02"},
                           {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": NETNS}],
            "ips": [{"address": "10.244.99.5/24", "gateway": "10.244.99.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def problems(result: Any) -> list[str]:
    return [p.message for p in result_problems(result, netns=NETNS, ifname="eth0",
                                               subnet="10.244.99.0/24")]


def test_a_good_result() -> None:
    assert problems(good_result()) == []


def test_an_ipam_result_is_not_a_plugin_result() -> None:
    r = good_result()
    del r["interfaces"]
    del r["ips"][0]["interface"]
    found = problems(r)
    assert found[0] == "the result has no interfaces list"
    assert any("ips[0].interface is None" in m for m in found)


def _broken(change: Any) -> list[str]:
    r = good_result()
    change(r)
    return problems(r)


@pytest.mark.parametrize(("change", "words"), [
    (lambda r: r.update(cniVersion="0.4.0"), "cniVersion is '0.4.0'"),
    (lambda r: r["interfaces"][2].pop("sandbox"), "interfaces[2] (eth0) has no sandbox"),
    (lambda r: r["interfaces"][2].update(sandbox="/run/netns/other"), "not CNI_NETNS"),
    (lambda r: r["interfaces"][2].update(name="net1"), "no interface named eth0"),
    (lambda r: r["ips"][0].update(interface=1), "which is 'veth1234abcd', not eth0"),
    (lambda r: r["ips"][0].update(interface=7), "not an index into interfaces (0..2)"),
    (lambda r: r["ips"][0].update(address="10.244.99.5"), "with its prefix length"),
    (lambda r: r["ips"][0].update(address="10.1.0.5/24"), "in the IPAM range 10.244.99.0/24"),
    (lambda r: r["ips"][0].pop("gateway"), "ips[0] has no gateway"),
    (lambda r: r["ips"][0].update(gateway="gw"), "is not an IP address"),
    (lambda r: r.update(ips=[]), "no ips list"),
    (lambda r: r.update(routes=[]), "lack 0.0.0.0/0"),
    (lambda r: r.update(routes=[{"gw": "10.244.99.1"}]), "has no valid dst"),
    (lambda r: r.pop("routes"), "no routes list"),
])
def test_result_problems(change: Any, words: str) -> None:
    found = _broken(change)
    assert any(words in m for m in found), found


def test_a_result_that_is_not_an_object() -> None:
    assert problems([1, 2]) == ["the result is list, not a JSON object"]


# --- reports ---------------------------------------------------------------------------------

TRACEBACK = """Traceback (most recent call last):
  File "/root/lab_kit-work/my-cni", line 20, in <module>
    sys.exit(program["main"]())
  File "/root/lab_kit-work/my-cni.d/1-protocol.py", line 12, in main
    return x
NameError: name 'x' is not defined
"""


def test_stderr_gist() -> None:
    assert stderr_gist(TRACEBACK) == ("NameError: name 'x' is not defined "
                                      "(at 1-protocol.py:12 in main)")
    assert stderr_gist("ip: command failed\n") == "ip: command failed"
    assert stderr_gist("x" * 1000).startswith("…") and len(stderr_gist("x" * 1000)) == 401


def _inv(**kw: Any) -> Invocation:
    d: dict[str, Any] = {"exe": "/p/my cni", "netns": "lk-cc-node",
                         "env": {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}, "stdin": '{"a": 1}',
                         "rc": 1, "stdout": _err(details="more"), "stderr": "", "seconds": 0.1}
    d.update(kw)
    return Invocation(**d)


def test_invocation_views() -> None:
    inv = _inv()
    assert inv.command == "ADD"
    assert inv.shell() == ("nsenter --net=/run/netns/lk-cc-node env CNI_COMMAND=ADD "
                           "CNI_IFNAME=eth0 '/p/my cni' <<'EOF'\n{\"a\": 1}\nEOF")
    assert inv.gist() == "error 4: unknown CNI_COMMAND: FROB (more)"
    assert _inv(stdout="", stderr=TRACEBACK).gist().startswith("NameError")
    assert _inv(stdout="", stderr="").gist() == "no output"
    assert "killed: timed out" in _inv(timed_out=True).brief()
    assert _inv(stdout="nope").output() is None
    json.dumps(inv.to_dict())


def test_report_views() -> None:
    ok = CaseResult("version", "VERSION works", True, "answers")
    bad = CaseResult("add-result", "ADD <prints>", False, "no interfaces", hint="list them",
                     expected="shape", actual="nothing", calls=(_inv(),))
    r = ConformanceReport("my-cni", [ok, bad], seconds=1.5)
    assert not r.passed and r.failed == [bad] and r.case("version") is ok
    with pytest.raises(KeyError, match="cases: version, add-result"):
        r.case("nope")
    text = str(r)
    assert text.startswith("CNI conformance of my-cni: 1/2 cases pass (1.5 s)")
    assert "[FAIL] add-result" in text and "hint: list them" in text and "last call:" in text
    page = r._repr_html_()
    assert "ADD &lt;prints&gt;" in page and "1 fail" in page and "<details>" in page
    d = r.to_dict()
    assert d["passed"] is False and d["cases"][1]["calls"][0]["rc"] == 1
    json.dumps(d)
    assert not ConformanceReport("x").passed  # nothing ran: nothing passed


def test_run_conformance_rejects_bad_arguments_before_doing_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown conformance case.*cases: version"):
        run_conformance(REFERENCE, cases=["version", "frob"], root=tmp_path)
    with pytest.raises(LabError, match="must be a cluster name"):
        run_conformance(REFERENCE, name="Bad_Name", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_case_names() -> None:
    assert list(CASES) == [
        "version", "error-unknown-command", "error-bad-config", "error-missing-env",
        "add-result", "add-kernel", "add-existing", "del-twice", "del-unknown",
        "del-netns-gone", "check-good", "check-detects", "cross-node"]
    assert all(c.title for c in CASES.values())


# --- lab 06's plumbing -----------------------------------------------------------------------

def test_lab_checks_cover_every_case_and_part() -> None:
    grouped = [c for cases in cni_plugin.GROUPS.values() for c in cases]
    assert sorted(grouped + ["cross-node"]) == sorted(CASES)
    assert set(cni_plugin.PART_OF_CASE) == set(CASES)
    assert set(cni_plugin.LAB.checks) == {*cni_plugin.GROUPS, "pods", "conformance"}


def test_the_cluster_config_gives_worker2_the_learners_plugin() -> None:
    path = REPO / "labs" / "clusters" / "cniplugin.yaml"
    conf = config.load_config(path)
    assert conf.name == cni_plugin.LAB.cluster_name
    assert yaml.safe_load(path.read_text())["networking"] == {"cni": "host-gw"}  # explicit
    assert conf.plugin_for(conf.node(cni_plugin.BRIDGE_NODE)) == "bridge"
    mine = conf.plugin_for(conf.node(cni_plugin.PLUGIN_NODE))
    assert mine == "~/lab_kit-work/my-cni"


def test_the_launcher_runs_the_parts_in_order(tmp_path: Path) -> None:
    plugin = cni_plugin.install_launcher(tmp_path / "work" / "my-cni")
    assert plugin == tmp_path / "work" / "my-cni" and os.access(plugin, os.X_OK)
    parts = cni_plugin.parts_dir(plugin)
    assert parts.is_dir()
    (parts / "2-b.py").write_text("def main():\n    print(WHO, 'and b')\n    return 3\n")
    (parts / "1-a.py").write_text("WHO = 'a'\n")
    p = subprocess.run([plugin], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (3, "a and b\n")
    (parts / "3-c.py").write_text("def main(:\n")  # a syntax error names the part
    p = subprocess.run([plugin], capture_output=True, text=True)
    assert p.returncode == 1 and "3-c.py" in p.stderr
    cni_plugin.install_launcher(plugin)  # again: the parts stay, they are the learner's
    assert sorted(f.name for f in parts.iterdir()) == ["1-a.py", "2-b.py", "3-c.py"]


def test_the_launcher_without_parts_answers_with_an_error(tmp_path: Path) -> None:
    plugin = cni_plugin.install_launcher(tmp_path / "my-cni")
    p = subprocess.run([plugin], capture_output=True, text=True)
    err = json.loads(p.stdout)
    assert p.returncode == 1 and err["code"] == 100 and "%%writefile" in err["msg"]


PART_RE = re.compile(r"^# === part: (\S+) ===\n(.*?)(?=^# === )", re.MULTILINE | re.DOTALL)


def test_the_reference_plugin_is_written_in_the_notebooks_parts() -> None:
    text = REFERENCE.read_text()
    parts = dict(PART_RE.findall(text))
    assert list(parts) == ["protocol", "add", "del", "check"]
    program: dict[str, Any] = {"__name__": "my_cni"}
    for name, code in parts.items():  # as the launcher runs them
        exec(compile(code, f"{name}.py", "exec"), program)
    for fn in ("main", "cmd_add", "cmd_del", "cmd_check", "ipam", "run", "link"):
        assert callable(program[fn]), fn
    solution = (REPO / "tests" / "notebooks" / "solutions" / "06-write-a-cni-plugin.py")
    assert "# === part: {part} ===" in solution.read_text()


def _reference(command: str | None, stdin: str, **env: str) -> tuple[int, Any]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    if command is not None:
        full["CNI_COMMAND"] = command
    full.update(env)
    p = subprocess.run([sys.executable, str(REFERENCE)], input=stdin, capture_output=True,
                       text=True, env=full)
    return p.returncode, json.loads(p.stdout)


ADD_ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}


def test_the_reference_plugin_speaks_the_protocol() -> None:
    assert _reference("VERSION", '{"cniVersion": "0.4.0"}') == (
        0, {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
    conf = json.dumps({"cniVersion": "1.0.0", "name": "cbr0"})
    rc, err = _reference("FROB", conf, **ADD_ENV)
    assert (rc, err["code"], err["cniVersion"]) == (1, 4, "1.0.0")
    rc, err = _reference(None, conf, **ADD_ENV)
    assert (rc, err["code"]) == (1, 4)
    rc, err = _reference("ADD", "{", **ADD_ENV)
    assert (rc, err["code"]) == (1, 6)
    rc, err = _reference("ADD", conf, **{k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"})
    assert (rc, err["code"]) == (1, 4) and "CNI_NETNS" in err["msg"]
    rc, err = _reference("ADD", json.dumps({"cniVersion": "1.0.0"}), **ADD_ENV)
    assert (rc, err["code"]) == (1, 7)
    rc, err = _reference("ADD", json.dumps({"cniVersion": "9.9.9", "name": "x"}), **ADD_ENV)
    assert (rc, err["code"], err["cniVersion"]) == (1, 1, "9.9.9")
    rc, err = _reference("CHECK", conf, **ADD_ENV)  # no prevResult
    assert (rc, err["code"]) == (1, 7) and "prevResult" in err["msg"]


@pytest.mark.parametrize("plugin", sorted(p.name for p in PLUGINS.glob("*.py")))
def test_every_test_plugin_is_executable_and_answers_version(plugin: str) -> None:
    path = PLUGINS / plugin
    assert os.access(path, os.X_OK) and path.read_text().startswith("#!/usr/bin/env python3\n")
    p = subprocess.run([path], input='{"cniVersion": "1.0.0"}', capture_output=True, text=True,
                       env=dict(os.environ, CNI_COMMAND="VERSION"))
    assert p.returncode == 0 and "supportedVersions" in json.loads(p.stdout)


# --- the runtime's rules in lab_kit.cni --------------------------------------------------------

def test_find_plugin_expands_the_home_directory(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    exe = tmp_path / "work" / "my-cni"
    exe.parent.mkdir()
    with pytest.raises(LabError, match=f"not found: there is no file {exe}"):
        cni.find_plugin("~/work/my-cni", [])
    exe.write_text("#!/bin/sh\n")
    with pytest.raises(LabError, match="chmod"):
        cni.find_plugin("~/work/my-cni", [])
    exe.chmod(0o755)
    assert cni.find_plugin("~/work/my-cni", []) == str(exe)
    with pytest.raises(LabError, match="is a directory"):
        cni.find_plugin("~/work", [])


class FailingAdd:
    """A runner whose `mine` plugin fails ADD; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def run(self, argv: list[str], netns: str | None = None, *, env: dict[str, str],
            input: str, **_: Any) -> Completed:
        name, command = Path(argv[0]).name, env["CNI_COMMAND"]
        self.calls.append((name, command))
        if name == "mine" and command == "ADD":
            raise CommandError(netns, argv, 1, "", json.dumps(
                {"cniVersion": "1.0.0", "code": 999, "msg": "half-built"}))
        return Completed(argv, netns, 0, json.dumps({"cniVersion": "1.0.0", "ips": []}), "")


def test_a_failed_add_is_followed_by_del_of_the_whole_chain(tmp_path: Path) -> None:
    for n in ("first", "mine"):
        (tmp_path / n).write_text("#!/bin/sh\n")
        (tmp_path / n).chmod(0o755)
    r = FailingAdd()
    conflist = {"cniVersion": "1.0.0", "name": "cbr0",
                "plugins": [{"type": "first"}, {"type": "mine"}]}
    with pytest.raises(cni.CniError, match="half-built"):
        cni.add(r, "lk-x-node", conflist, cni.Attachment("c", "lk-x.default.p"),  # type: ignore
                [str(tmp_path)])
    assert r.calls == [("first", "ADD"), ("mine", "ADD"), ("mine", "DEL"), ("first", "DEL")]


def test_request_config() -> None:
    conf = cni.request_config({"type": "x", "bridge": "cni0"}, "cbr0", {"ips": []})
    assert conf == {"type": "x", "bridge": "cni0", "cniVersion": "1.0.0", "name": "cbr0",
                    "prevResult": {"ips": []}}
    assert "prevResult" not in cni.request_config({"type": "x"}, "n")
