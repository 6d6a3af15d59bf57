"""What the tests of labs 03-05's checks share (test_lab_host_gw, test_lab_vxlan, test_lab_bgp).

`LabDriver` holds one lab's checks, the names the notebook's cells define (`ns`, where the
reference solutions of tests/notebooks/solutions/<lab>.py are exec'd) and runs the checks with
the learner's answers taken from those names. `lab_state` is the body of each file's `lab`
fixture: its own state dir and progress file, `labs/` as the working directory (as in the
notebook), and the lab's cluster removed afterwards, whatever happened.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import egress_path
import pytest

from lab_kit import kernel
from lab_kit.checks import CheckResult, Lab, Results
from lab_kit.cluster import Cluster, sweep
from lab_kit.labs import get_lab

_spec = importlib.util.spec_from_file_location(
    "lab_notebooks", Path(__file__).resolve().parents[1] / "notebooks" / "lab_notebooks.py")
lab_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_notebooks)  # type: ignore[union-attr]


class LabDriver:
    """One lab's checks, the notebook's names and the reference solutions."""

    lab_id: str
    answer_names: tuple[str, ...] = ()  # the notebook names the checks take as answers
    aliases: dict[str, str] = {}  # attribute -> notebook name (`lab.w1` for `W1`)
    # the lab's checks send pod traffic out of the cluster: a failure after a solution is
    # asked again for a while (see egress_path.py), with the evidence left as a warning
    outside_path: bool = False
    undo_mistakes: bool = True  # `mistake` deletes what it applied again

    def __init__(self) -> None:
        self.lab: Lab = get_lab(self.lab_id)
        self.solutions = lab_notebooks.solutions(self.lab_id)
        self.ns: dict[str, Any] = {}

    @property
    def c(self) -> Cluster:
        return self.ns["c"]

    def solve(self, *exercises: str) -> None:
        for ex in exercises:
            exec(compile(self.solutions[ex], f"<solution {self.lab_id}:{ex}>", "exec"), self.ns)

    def answers(self) -> dict[str, Any]:
        return {k: self.ns[k] for k in self.answer_names if k in self.ns}

    def run(self, name: str | None = None, **answers: Any) -> Results:
        return self.lab.run(name, record=False, **{**self.answers(), **answers})

    def one(self, name: str, **answers: Any) -> CheckResult:
        return self.run(name, **answers)[0]

    def mistake(self, check: str, objs: list[dict[str, Any]], words: list[str],
                hint_words: tuple[str, ...] = (), *, undo: bool | None = None,
                **answers: Any) -> str:
        """A learner's plausible mistake: apply `objs` (none: the mistake is already made),
        expect `check` to fail with each of `words` in its message and of `hint_words` in its
        hint (never an empty hint); delete `objs` again afterwards when `undo` (default: the
        driver's `undo_mistakes`). Returns the failure's summary."""
        if objs:
            self.c.apply(objs)
        try:
            r = self.one(check, **answers)
            assert not r.passed, (objs, r.summary())
            for w in words:
                assert w in r.message, (w, r.summary())
            for w in hint_words:
                assert w in r.hint, (w, r.summary())
            assert r.hint.strip(), r.summary()
            return r.summary()
        finally:
            if objs and (self.undo_mistakes if undo is None else undo):
                self.c.delete(objs)

    def __getattr__(self, name: str) -> Any:
        """The notebook's names as attributes: `lab.VIP` is the notebook's `VIP`."""
        try:
            return self.__dict__["ns"][self.aliases.get(name, name)]
        except KeyError:
            raise AttributeError(name) from None

    def assert_each_exercise(self, steps: list[tuple[str, list[str]]],
                             before_each: Callable[[str], None] | None = None) -> None:
        """The notebook's flow, checked: `steps` (exercise -> the checks it makes pass, in
        notebook order) name every exercise check and every solution; on the fresh cluster
        each exercise check fails with a hint and every other check passes; then, exercise by
        exercise (after `before_each(exercise)`, the notebook's cells in between), its checks
        fail with a hint before its solution and pass after it; at the end every check passes.
        """
        exercise_checks = {n for n, c in self.lab.checks.items() if c.exercise}
        assert {n for _, names in steps for n in names} == exercise_checks
        assert [ex for ex, _ in steps] == list(self.solutions)
        for r in self.run():
            if r.name in exercise_checks:
                assert not r.passed, f"{r.name} passes on a fresh cluster: {r.message}"
                assert r.hint.strip(), f"{r.name} fails without a hint: {r.message}"
                assert "could not inspect" not in r.message, r.summary()
            else:
                assert r.passed, r.summary()
        for ex, names in steps:
            if before_each is not None:
                before_each(ex)
            before = Results(self.one(n) for n in names)
            assert not any(r.passed for r in before), f"before {ex}:\n{explain(before)}"
            assert all(r.hint for r in before), explain(before)
            self.solve(ex)
            after = Results(self.one(n) for n in names)
            if self.outside_path and not after.all_passed:
                after = egress_path.until(
                    lambda names=names: Results(self.one(n) for n in names),
                    lambda r: r.all_passed, f"{self.lab_id} after the solution of {ex}:\n"
                    f"{explain(after)}", self.c.name, [n.name for n in self.c.nodes()])
            assert after.all_passed, f"after the solution of {ex}:\n{explain(after)}"
        final = self.run()
        assert final.all_passed, explain(final)


@contextmanager
def lab_state(lab_id: str, prefix: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A state dir and progress file of the test's own, in `labs/`; afterwards the lab's cluster
    is swept away by name (what `Cluster.down` does, also when setting it up failed half-way)."""
    state = Path(tempfile.mkdtemp(prefix=prefix))  # short: unix socket paths live in here
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(state))
    monkeypatch.setenv("LAB_KIT_PROGRESS", str(tmp_path / "progress.json"))
    monkeypatch.chdir(lab_notebooks.LABS_DIR)
    try:
        yield
    finally:
        sweep(get_lab(lab_id).cluster_name, kernel.Runner())
        shutil.rmtree(state, ignore_errors=True)


def explain(results: Iterable[CheckResult]) -> str:
    return "\n".join(r.summary() for r in results)
