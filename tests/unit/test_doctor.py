"""lab_kit.doctor without root: the system is faked through run_checks' injected callables."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from lab_kit import doctor
from lab_kit.doctor import BINARIES, CNI_PLUGINS, DoctorItem, RunResult, main_text, report_html


class FakeMininet:
    VERSION = "2.3.0"


@dataclass
class FakeSystem:
    """A machine where everything the lab needs is present, unless told otherwise."""

    root: bool = True
    missing_programs: set[str] = field(default_factory=set)
    failing: dict[str, RunResult] = field(default_factory=dict)  # key (see run) -> result
    raising: set[str] = field(default_factory=set)
    paths: set[str] = field(
        default_factory=lambda: (
            {"/proc/sys/net/bridge"} | {f"/usr/lib/cni/{p}" for p in CNI_PLUGINS}
        )
    )
    mininet_error: Exception | None = None
    calls: list[list[str]] = field(default_factory=list)

    def which(self, name: str) -> str | None:
        return None if name in self.missing_programs else f"/usr/bin/{name}"

    def run(self, argv: Sequence[str], timeout: float) -> RunResult:
        argv = list(argv)
        self.calls.append(argv)
        assert timeout == 5.0
        # key: the probe's program after "unshare --net" (for "ip link add X type KIND": KIND),
        # or the command's own name
        key = (argv[2] if argv[0].endswith("/unshare") else argv[0]).rsplit("/", 1)[-1]
        if key == "ip":
            key = argv[argv.index("type") + 1]
        if key in self.raising:
            raise RuntimeError(f"boom in {key}")
        if key == "modprobe" and "br_netfilter" in argv:
            if "modprobe" not in self.failing:
                self.paths.add("/proc/sys/net/bridge")
            return self.failing.get("modprobe", RunResult(0, ""))
        return self.failing.get(key, RunResult(0, ""))

    def geteuid(self) -> int:
        return 0 if self.root else 1000

    def exists(self, path: str) -> bool:
        return path in self.paths

    def import_module(self, name: str) -> object:
        assert name == "mininet.net"
        if self.mininet_error is not None:
            raise self.mininet_error
        return FakeMininet

    def check(self) -> list[DoctorItem]:
        return doctor.run_checks(
            which=self.which,
            run=self.run,
            geteuid=self.geteuid,
            path_exists=self.exists,
            import_module=self.import_module,
        )


def failures(items: list[DoctorItem]) -> list[DoctorItem]:
    bad = [it for it in items if not it.ok]
    for it in bad:
        assert it.fix and "\n" not in it.fix, f"{it.name}: the fix must be one line"
    return bad


def test_everything_present_passes() -> None:
    sys_ = FakeSystem()
    items = sys_.check()
    assert failures(items) == []
    names = [it.name for it in items]
    assert len(names) == len(set(names)), "item names must be unique"
    for expected in (
        "root",
        "kernel: netns",
        "kernel: veth",
        "kernel: bridge",
        "kernel: vxlan",
        "kernel: nf_tables",
        "kernel: br_netfilter",
        "python: mininet",
        *(b for b, _ in BINARIES),
        *(f"CNI {p}" for p in CNI_PLUGINS),
    ):
        assert expected in names
    # every kernel probe ran inside a throwaway namespace
    assert sys_.calls and all(c[:2] == ["/usr/bin/unshare", "--net"] for c in sys_.calls)


@pytest.mark.parametrize(("program", "package"), BINARIES)
def test_each_missing_program_is_one_failing_item_naming_its_package(
    program: str, package: str
) -> None:
    items = FakeSystem(missing_programs={program}).check()
    bad = failures(items)
    assert [it.name for it in bad] == [program]
    assert f"apt-get install {package}" in bad[0].fix


@pytest.mark.parametrize(
    ("program", "held_back"), [("ip", ["veth", "bridge", "vxlan"]), ("nft", ["nf_tables"])]
)
def test_missing_probe_program_names_the_probes_it_held_back(
    program: str, held_back: list[str]
) -> None:
    items = FakeSystem(missing_programs={program}).check()
    (bad,) = failures(items)
    for feature in held_back:
        assert feature in bad.detail
        assert f"kernel: {feature}" not in [it.name for it in items]


@pytest.mark.parametrize("plugin", CNI_PLUGINS)
def test_each_missing_cni_plugin_is_one_failing_item(plugin: str) -> None:
    sys_ = FakeSystem()
    sys_.paths.discard(f"/usr/lib/cni/{plugin}")
    bad = failures(sys_.check())
    assert [it.name for it in bad] == [f"CNI {plugin}"]
    assert "apt-get install containernetworking-plugins" in bad[0].fix


def test_cni_plugins_in_opt_cni_bin_are_found() -> None:
    sys_ = FakeSystem()
    sys_.paths = {"/proc/sys/net/bridge"} | {f"/opt/cni/bin/{p}" for p in CNI_PLUGINS}
    items = sys_.check()
    assert failures(items) == []
    assert {it.detail for it in items if it.name.startswith("CNI ")} == {
        f"/opt/cni/bin/{p}" for p in CNI_PLUGINS
    }


def test_missing_mininet_module() -> None:
    items = FakeSystem(mininet_error=ModuleNotFoundError("No module named 'mininet'")).check()
    (bad,) = failures(items)
    assert bad.name == "python: mininet"
    assert "apt-get install mininet" in bad.fix
    assert "--system-site-packages" in bad.fix


def test_missing_unshare_is_one_item_and_probes_nothing() -> None:
    sys_ = FakeSystem(missing_programs={"unshare"})
    (bad,) = failures(sys_.check())
    assert bad.name == "kernel: netns"
    assert "apt-get install util-linux" in bad.fix
    assert sys_.calls == []


def test_no_network_namespace_is_one_item() -> None:
    sys_ = FakeSystem(
        failing={"true": RunResult(1, "unshare: unshare failed: Operation not permitted")}
    )
    items = sys_.check()
    (bad,) = failures(items)
    assert bad.name == "kernel: netns"
    assert "Operation not permitted" in bad.detail
    assert not any(it.name in ("kernel: veth", "kernel: vxlan") for it in items)


@pytest.mark.parametrize("feature", ["veth", "bridge", "vxlan", "nf_tables"])
def test_each_missing_kernel_feature_is_named(feature: str) -> None:
    key = "nft" if feature == "nf_tables" else feature
    sys_ = FakeSystem(failing={key: RunResult(2, "Error: Unknown device type.")})
    (bad,) = failures(sys_.check())
    assert bad.name == f"kernel: {feature}"
    assert "Unknown device type" in bad.detail
    assert bad.fix.startswith("modprobe ")


def test_timeout_is_a_failed_item() -> None:
    sys_ = FakeSystem(failing={"vxlan": RunResult(None, "timed out after 5 s")})
    (bad,) = failures(sys_.check())
    assert bad.name == "kernel: vxlan"
    assert "timed out" in bad.detail


def test_a_crashing_helper_is_a_failed_item_not_an_exception() -> None:
    sys_ = FakeSystem(raising={"bridge"})
    (bad,) = failures(sys_.check())
    assert "boom in bridge" in bad.detail


def test_not_root_skips_kernel_probes_and_says_sudo() -> None:
    sys_ = FakeSystem(root=False)
    items = sys_.check()
    (bad,) = failures(items)
    assert bad.name == "root"
    assert bad.fix == "run with sudo"
    assert sys_.calls == [], "nothing may be run for a non-root user"
    assert not any(it.name == "kernel: veth" for it in items)


def test_br_netfilter_loaded_on_demand() -> None:
    sys_ = FakeSystem()
    sys_.paths.discard("/proc/sys/net/bridge")
    items = sys_.check()
    assert failures(items) == []
    assert ["/usr/bin/modprobe", "br_netfilter"] in sys_.calls


def test_br_netfilter_unavailable() -> None:
    sys_ = FakeSystem(failing={"modprobe": RunResult(1, "modprobe: FATAL: Module not found")})
    sys_.paths.discard("/proc/sys/net/bridge")
    (bad,) = failures(sys_.check())
    assert bad.name == "kernel: br_netfilter"
    assert bad.fix == "modprobe br_netfilter (package kmod)"
    assert "Module not found" in bad.detail


def test_br_netfilter_without_modprobe() -> None:
    sys_ = FakeSystem(missing_programs={"modprobe"})
    sys_.paths.discard("/proc/sys/net/bridge")
    (bad,) = failures(sys_.check())
    assert bad.name == "kernel: br_netfilter"
    assert "kmod" in bad.fix


def test_default_which_is_shutil_which(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which

    def fake_which(name: str, *args: object, **kwargs: object) -> str | None:
        return None if name == "socat" else real("true")

    monkeypatch.setattr(shutil, "which", fake_which)
    sys_ = FakeSystem()
    items = doctor.run_checks(
        run=sys_.run,
        geteuid=sys_.geteuid,
        path_exists=sys_.exists,
        import_module=sys_.import_module,
    )
    bad = failures(items)
    assert [it.name for it in bad] == ["socat"]
    assert "apt-get install socat" in bad[0].fix


def test_run_command_never_raises() -> None:
    missing = doctor.run_command(["/nonexistent/lab-kit-no-such-program"], 5.0)
    assert missing.returncode is None and not missing.ok
    slow = doctor.run_command([sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
    assert slow.returncode is None
    assert "timed out" in slow.output
    done = doctor.run_command([sys.executable, "-c", "print('hi')"], 5.0)
    assert done.ok and done.output == "hi"


def test_main_text_format() -> None:
    items = [
        DoctorItem("root", True, "running as root"),
        DoctorItem("socat", False, "not found on PATH", "apt-get install socat"),
    ]
    text = main_text(items)
    lines = text.splitlines()
    assert lines[0] == "✔ root — running as root"
    assert lines[1] == "✘ socat — not found on PATH; fix: apt-get install socat"
    assert lines[2].startswith("1 of 2 checks failed")
    assert len(lines) == 3


def test_main_text_all_ok_summary() -> None:
    text = main_text([DoctorItem("root", True, "running as root")])
    assert text.splitlines()[-1] == "All 1 checks passed: this machine can run the lab."


def test_report_html_escapes_and_marks() -> None:
    items = [
        DoctorItem("root", True, "ok"),
        DoctorItem("<dig>", False, "a & b", "apt-get install dnsutils"),
    ]
    out = report_html(items)
    assert out.startswith("<table") and out.endswith("</table>")
    assert "&lt;dig&gt;" in out and "a &amp; b" in out and "<dig>" not in out
    assert out.count("<tr>") == 4  # header, two items, summary
    assert "1 of 2 checks failed." in out
