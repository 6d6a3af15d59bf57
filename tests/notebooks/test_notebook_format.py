"""The committed lab notebooks are clean and complete (no root, nothing is executed).

- no outputs, no execution counts, the `Python (lab_kit)` kernelspec, valid nbformat;
- every exercise cell is tagged and has a reference solution, and every solution an exercise;
- every check of the lab module is run by its own `LAB.run("<name>"` cell, and the notebook ends
  with the "Check my work" widget, a run of all checks, and `c.down()`;
- the notebook (re)builds its cluster with `replace=True` from a config whose name is the lab's.
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest
import yaml
from lab_notebooks import (
    LABS_DIR,
    NOTEBOOKS,
    code_sources,
    exercise_cells,
    exercise_id,
    python_source,
    read_notebook,
    solutions,
)

from lab_kit.labs import LABS, get_lab

LAB_IDS = list(LABS)


def test_every_notebook_is_a_lab_and_every_lab_a_notebook():
    on_disk = {p.stem for p in LABS_DIR.glob("[0-9][0-9]-*.ipynb")}
    assert on_disk == set(LABS)
    for lab_id in LABS:
        assert get_lab(lab_id).lab_id == lab_id
    for path in NOTEBOOKS.values():
        assert path.is_file()


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_committed_without_outputs(lab_id):
    nb = read_notebook(lab_id)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs"
            assert cell.execution_count is None, f"cell {i} has an execution count"


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_kernelspec(lab_id):
    ks = read_notebook(lab_id).metadata["kernelspec"]
    assert ks["name"] == "lab_kit"
    assert ks["display_name"] == "Python (lab_kit)"


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_exercises_match_solutions(lab_id):
    nb = read_notebook(lab_id)
    cells = exercise_cells(nb)
    sols = solutions(lab_id)
    assert cells, "a lab without exercises"
    assert set(cells) == set(sols), "exercise cells and solution sections differ"
    order = [exercise_id(c) for c in nb.cells if exercise_id(c)]
    assert order == list(sols), "solutions must be in the notebook's order"
    for ex, cell in cells.items():
        assert cell.cell_type == "code"
        assert "exercise" in cell.metadata.get("tags", []), f"{ex}: not tagged `exercise`"
        assert "# YOUR CODE HERE" in cell.source, f"{ex}: the stub has no `# YOUR CODE HERE`"
        ast.parse(python_source(cell.source))  # the stub runs as it is
        ast.parse(sols[ex])


def _run_calls(sources: list[str]) -> list[tuple[str | None, int]]:
    """(check name or None for all checks, cell index) for every LAB.run(...) call."""
    calls = []
    for i, src in enumerate(sources):
        for node in ast.walk(ast.parse(python_source(src))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "LAB"):
                first = node.args[0] if node.args else None
                name = first.value if isinstance(first, ast.Constant) else None
                calls.append((name, i))
    return calls


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_every_check_is_run(lab_id):
    lab = get_lab(lab_id)
    sources = code_sources(read_notebook(lab_id))
    calls = _run_calls(sources)
    named = {name for name, _ in calls if name}
    assert named <= set(lab.checks), f"unknown checks run: {named - set(lab.checks)}"
    missing = set(lab.checks) - named
    assert not missing, f"checks without their own LAB.run(...) cell: {missing}"
    all_runs = [i for name, i in calls if name is None]
    assert all_runs, "no final LAB.run(...) of every check"
    widget = [i for i, s in enumerate(sources) if "LAB.widget(" in s]
    assert widget and widget[-1] < all_runs[-1], "the widget comes before the final run"


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_starts_with_a_fresh_cluster_and_ends_with_down(lab_id):
    lab = get_lab(lab_id)
    sources = code_sources(read_notebook(lab_id))
    ups = [(i, m) for i, s in enumerate(sources)
           for m in re.finditer(r'Cluster\.up\("(clusters/[^"]+)"([^)]*)\)', s)]
    assert len(ups) == 1, "exactly one Cluster.up(...)"
    i_up, m = ups[0]
    assert "replace=True" in m.group(2)
    conf = yaml.safe_load((LABS_DIR / m.group(1)).read_text())
    assert conf["name"] == lab.cluster_name
    module = LABS[lab_id]
    assert f"from {module} import LAB" in sources[i_up], "import LAB next to Cluster.up"
    assert "c.down(" in sources[-1], "the last code cell must tear the cluster down"
    assert not any("c.down(" in s for s in sources[:-1])


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_check_cells_only_check(lab_id):
    """A learner re-running a check cell must not change the lab."""
    for src in code_sources(read_notebook(lab_id)):
        if src.startswith("LAB.run("):
            assert src.count("\n") == 0, src
