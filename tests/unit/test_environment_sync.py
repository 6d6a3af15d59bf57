"""The repo's setup files agree with each other: environment.yml, .ci/run, README.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])


def _environment_pip_list() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip_lists = [
        dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep
    ]
    assert len(pip_lists) == 1, "environment.yml must have exactly one `- pip:` list"
    return [str(x) for x in pip_lists[0]]


def test_environment_yml_pip_list_matches_pyproject() -> None:
    expected = _pyproject_requirements()
    actual = _environment_pip_list()
    if actual == expected:
        return
    only_pyproject = [r for r in expected if r not in actual]
    only_env = [r for r in actual if r not in expected]
    lines = ["environment.yml's pip list differs from pyproject.toml (dependencies + dev):"]
    if only_pyproject:
        lines.append(f"  missing from environment.yml: {only_pyproject}")
    if only_env:
        lines.append(f"  not in pyproject.toml: {only_env}")
    if not only_pyproject and not only_env:
        for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
            if want != got:
                lines.append(f"  order differs at entry {i}: expected {want!r}, found {got!r}")
                break
        if len(expected) != len(actual):
            lines.append(f"  {len(expected)} entries expected, {len(actual)} found (duplicates?)")
    pytest.fail("\n".join(lines))


def test_environment_yml_basics() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert env["name"] == "lab_kit"
    assert env["channels"] == ["conda-forge"]
    assert "python=3.11" in env["dependencies"]
    assert "pip" in env["dependencies"]


def test_ci_run_invokes_make_test() -> None:
    text = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    code = [line.split("#", 1)[0] for line in text.splitlines()]
    assert any(re.search(r"^\s*(exec\s+)?make\s+test\s*$", line) for line in code), (
        ".ci/run must run `make test`"
    )


def test_readme_shows_the_two_commands_early() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md does not exist yet")
    head = "\n".join(readme.read_text(encoding="utf-8").splitlines()[:40])
    missing = [cmd for cmd in ("sudo make lab", "sudo make test") if cmd not in head]
    assert not missing, f"README.md's first 40 lines must show: {missing}"
