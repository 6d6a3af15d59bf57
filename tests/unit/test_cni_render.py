"""The node's CNI conflist, and running plugins the way the CNI spec says (with a fake runner)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab_kit import cni, config
from lab_kit.cluster import Cluster
from lab_kit.errors import CommandError, LabError
from lab_kit.kernel import Completed, JournalEntry


def test_bridge_conflist_for_a_node() -> None:
    c = cni.render_bridge_conflist("10.244.1.0/24", "/run/lab_kit/lab/cni/lab-worker/ipam")
    assert c["cniVersion"] == "1.0.0"
    assert c["name"] == "cbr0"
    (plugin,) = c["plugins"]
    assert plugin["type"] == "bridge"
    assert plugin["bridge"] == "cni0"
    assert plugin["isGateway"] is True
    assert plugin["hairpinMode"] is True
    assert plugin["ipMasq"] is False
    assert plugin["mtu"] == 1500
    ipam = plugin["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert ipam["dataDir"] == "/run/lab_kit/lab/cni/lab-worker/ipam"
    json.dumps(c)  # it is sent as JSON on the plugin's stdin


def test_conflist_plugin_and_mtu_are_parameters() -> None:
    c = cni.render_bridge_conflist("10.1.0.0/24", "/d", mtu=1450, plugin="/opt/my/bridge")
    assert c["plugins"][0]["type"] == "/opt/my/bridge"
    assert c["plugins"][0]["mtu"] == 1450


def test_each_node_gets_its_own_range_and_data_dir(tmp_path: Path) -> None:
    conf = config.default_config("lab")
    cl = Cluster("lab", root=tmp_path)  # constructing a Cluster touches no kernel object
    seen = set()
    for n in conf.nodes:
        plugin = cl._conflist(conf, n)["plugins"][0]
        assert plugin["ipam"]["ranges"] == [[{"subnet": n.pod_cidr}]]
        assert plugin["ipam"]["dataDir"] == str(tmp_path / "lab" / "cni" / n.name / "ipam")
        seen.add(plugin["ipam"]["dataDir"])
    assert len(seen) == len(conf.nodes)


def test_loopback_conf() -> None:
    assert cni.LOOPBACK_CONF["plugins"] == [{"type": "loopback"}]


def test_write_conflist(tmp_path: Path) -> None:
    p = tmp_path / "a" / "10-cbr0.conflist"
    c = cni.render_bridge_conflist("10.244.0.0/24", "/d")
    cni.write_conflist(p, c)
    assert json.loads(p.read_text()) == c


def test_result_ipv4() -> None:
    r = {"ips": [{"address": "fd00::5/64"}, {"address": "10.244.1.7/24", "gateway": "10.244.1.1"}]}
    assert cni.result_ipv4(r) == "10.244.1.7"
    with pytest.raises(LabError):
        cni.result_ipv4({"ips": [{"address": "fd00::5/64"}]})


# --- plugin lookup -----------------------------------------------------------------------------

def _exe(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(mode)
    return path


def test_find_plugin_searches_paths_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _exe(b / "bridge")
    assert cni.find_plugin("bridge", [str(a), str(b)]) == str(b / "bridge")
    _exe(a / "bridge")
    assert cni.find_plugin("bridge", [str(a), str(b)]) == str(a / "bridge")


def test_find_plugin_absolute_path(tmp_path: Path) -> None:
    p = _exe(tmp_path / "mybridge")
    assert cni.find_plugin(str(p), []) == str(p)


def test_find_plugin_not_executable(tmp_path: Path) -> None:
    _exe(tmp_path / "bridge", mode=0o644)
    with pytest.raises(LabError, match="chmod"):
        cni.find_plugin("bridge", [str(tmp_path)])


def test_find_plugin_missing(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="not found"):
        cni.find_plugin("nope", [str(tmp_path)])


# --- the CNI exec protocol, with a fake runner ---------------------------------------------------

class FakeRunner:
    """Records what would run; answers like a plugin."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail or set()

    def run(self, argv: list[str], netns: str | None = None, *, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60, **_: Any) -> Completed:
        assert env is not None and input is not None
        conf = json.loads(input)
        self.calls.append({"argv": argv, "netns": netns, "env": env, "conf": conf})
        name = Path(argv[0]).name
        if name in self.fail:
            err = json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": f"{name} broke",
                              "details": "d"})
            raise CommandError(netns, argv, 1, "", err)
        result = {"cniVersion": "1.0.0", "plugin": name,
                  "ips": [{"address": "10.244.1.2/24"}],
                  "prev": conf.get("prevResult", {}).get("plugin")}
        return Completed(argv, netns, 0, json.dumps(result), "")


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    for n in ("bridge", "tuning", "loopback"):
        _exe(tmp_path / n)
    return tmp_path


def test_add_runs_each_plugin_in_the_node_netns_with_cni_env(plugin_dir: Path) -> None:
    r = FakeRunner()
    conflist = {"cniVersion": "1.0.0", "name": "cbr0",
                "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "tuning"}]}
    att = cni.Attachment("c" * 64, "lk-lab.default.web")
    result = cni.add(r, "lk-lab-worker", conflist, att, [str(plugin_dir)])  # type: ignore[arg-type]
    assert [Path(c["argv"][0]).name for c in r.calls] == ["bridge", "tuning"]
    for c in r.calls:
        assert c["netns"] == "lk-lab-worker"
        assert c["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 64,
                            "CNI_NETNS": "/run/netns/lk-lab.default.web", "CNI_IFNAME": "eth0",
                            "CNI_PATH": str(plugin_dir)}
        assert c["conf"]["name"] == "cbr0"
        assert c["conf"]["cniVersion"] == "1.0.0"
    assert "prevResult" not in r.calls[0]["conf"]
    assert r.calls[1]["conf"]["prevResult"]["plugin"] == "bridge"  # chained
    assert result["plugin"] == "tuning"


def test_delete_runs_in_reverse_and_tries_every_plugin(plugin_dir: Path) -> None:
    r = FakeRunner(fail={"tuning"})
    conflist = {"name": "cbr0", "plugins": [{"type": "bridge"}, {"type": "tuning"}]}
    att = cni.Attachment("x", "lk-lab.default.web")
    with pytest.raises(cni.CniError) as ei:
        cni.delete(r, "lk-lab-worker", conflist, att, [str(plugin_dir)],  # type: ignore[arg-type]
                   prev_result={"ips": []})
    assert [Path(c["argv"][0]).name for c in r.calls] == ["tuning", "bridge"]
    assert {c["env"]["CNI_COMMAND"] for c in r.calls} == {"DEL"}
    assert all(c["conf"]["prevResult"] == {"ips": []} for c in r.calls)
    e = ei.value
    assert (e.plugin, e.command, e.code, e.msg, e.details) == ("tuning", "DEL", 11,
                                                               "tuning broke", "d")
    assert "code 11" in str(e)


def test_loopback_attachment_ifname(plugin_dir: Path) -> None:
    r = FakeRunner()
    cni.add(r, "lk-lab-worker", cni.LOOPBACK_CONF,  # type: ignore[arg-type]
            cni.Attachment("x", "lk-lab.default.web", "lo"), [str(plugin_dir)])
    assert r.calls[0]["env"]["CNI_IFNAME"] == "lo"
    assert r.calls[0]["conf"] == {"type": "loopback", "cniVersion": "1.0.0",
                                  "name": "cni-loopback"}


def test_plugin_error_without_json() -> None:
    e = cni._cni_error("bridge", "ADD", CommandError("n", ["bridge"], 2, "segfault", ""))
    assert e.code is None
    assert e.msg == "segfault"


def test_non_json_result_is_an_error(plugin_dir: Path) -> None:
    class Garbage(FakeRunner):
        def run(self, argv: list[str], netns: str | None = None, **kw: Any) -> Completed:
            return Completed(argv, netns, 0, "not json", "")

    with pytest.raises(cni.CniError, match="not JSON"):
        cni.add(Garbage(), "n", {"name": "x", "plugins": [{"type": "bridge"}]},  # type: ignore
                cni.Attachment("x", "p"), [str(plugin_dir)])


def test_journal_shows_cni_call_as_retypable_command() -> None:
    e = JournalEntry(t=0, netns="lk-lab-worker", argv=["/usr/lib/cni/bridge"], rc=0,
                     stdin="{}", env={"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"})
    cmd = e.command()
    assert cmd.startswith("nsenter --net=/run/netns/lk-lab-worker env ")
    assert "CNI_COMMAND=ADD CNI_IFNAME=eth0 /usr/lib/cni/bridge" in cmd

