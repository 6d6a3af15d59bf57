"""Execute every lab notebook for real, twice (root: the notebooks build kernel objects).

- solved: the reference solutions (solutions/<lab>.py) replace the exercise cells; no cell may
  fail and every check of the lab must be recorded as passed in the progress file;
- untouched: the notebook as committed, with errors allowed (a learner who runs everything
  without doing the exercises); every exercise check must be recorded as failed with a hint, and
  the last cell (the teardown) must still have run.

The kernel is `python3` from the interpreter running pytest (jupyter_client starts
`sys.executable` for it), in `labs/`, with LAB_KIT_PROGRESS and LAB_KIT_STATE_DIR pointing into
the test's tmp dir. The notebooks use the labs' own cluster names (`welcome`, `podns`, `bridge`):
a learner's cluster of the same name on this machine is replaced.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from lab_notebooks import LABS_DIR, read_notebook, solutions, with_solutions
from nbclient import NotebookClient

from lab_kit import kernel, naming
from lab_kit.checks import load_progress
from lab_kit.cluster import sweep
from lab_kit.labs import LABS, get_lab

pytestmark = [pytest.mark.root, pytest.mark.notebook]

CELL_TIMEOUT = 120
# labs that bring up a second cluster besides their LAB.cluster_name
EXTRA_CLUSTERS = {"09-iptables-vs-nftables": ("scalenft",)}


def _errors(nb) -> list[str]:
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}")
    return out


def _execute(nb, lab_id: str, tmp_path, monkeypatch, allow_errors: bool):
    progress = tmp_path / "progress.json"
    monkeypatch.setenv("LAB_KIT_PROGRESS", str(progress))
    monkeypatch.setenv("HOME", str(tmp_path))  # lab 06 writes its plugin to ~/lab_kit-work
    # short: the per-node control sockets live in here, and a unix socket path has < 108 bytes
    state = Path(tempfile.mkdtemp(prefix="lknb"))
    monkeypatch.setenv("LAB_KIT_STATE_DIR", str(state))
    monkeypatch.setenv("LAB_KIT_SCALE_MAX", "500")  # lab 09 measures up to 500 Services here
    clusters = (get_lab(lab_id).cluster_name, *EXTRA_CLUSTERS.get(lab_id, ()))
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            allow_errors=allow_errors,
                            resources={"metadata": {"path": str(LABS_DIR)}})
    t0 = time.monotonic()
    try:
        client.execute()
        left = [n for n in kernel.list_netns() for c in clusters if naming.owns_netns(c, n)]
    finally:
        # a failed cell stops the run before the teardown: never leave the cluster behind
        for c in clusters:
            sweep(c, kernel.Runner())
        shutil.rmtree(state, ignore_errors=True)
    print(f"{lab_id}: {time.monotonic() - t0:.1f} s")
    assert not left, f"the notebook's teardown left namespaces behind: {left}"
    return load_progress(progress).get(lab_id, {})


@pytest.mark.parametrize("lab_id", list(LABS))
def test_solved_notebook_passes_every_check(lab_id, tmp_path, monkeypatch):
    nb = with_solutions(read_notebook(lab_id), solutions(lab_id))
    recorded = _execute(nb, lab_id, tmp_path, monkeypatch, allow_errors=False)
    lab = get_lab(lab_id)
    assert set(recorded) == set(lab.checks)
    failing = {name: f"{r['message']} (hint: {r['hint']})" for name, r in recorded.items()
               if not r["passed"]}
    assert not failing, failing


@pytest.mark.parametrize("lab_id", list(LABS))
def test_untouched_notebook_fails_exercise_checks(lab_id, tmp_path, monkeypatch):
    nb = read_notebook(lab_id)
    recorded = _execute(nb, lab_id, tmp_path, monkeypatch, allow_errors=True)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-1].execution_count is not None, "the teardown cell did not run"
    assert not any(o.get("output_type") == "error" for o in code[-1].outputs), _errors(nb)
    lab = get_lab(lab_id)
    assert set(recorded) == set(lab.checks)
    for name, check in lab.checks.items():
        if not check.exercise:
            continue
        r = recorded[name]
        assert not r["passed"], f"{name} passed without the learner's work: {r['message']}"
        assert r["hint"].strip(), f"{name} failed without a hint: {r['message']}"
