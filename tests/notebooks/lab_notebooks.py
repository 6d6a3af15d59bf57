"""The lab notebooks and their reference solutions, for the tests.

A solution file `solutions/<notebook stem>.py` holds sections::

    # %% exercise: <id>
    <code>

The tests put each section's code into the notebook cell whose metadata says
`{"lab_kit": {"exercise": "<id>"}}`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

from lab_kit.labs import LABS

REPO = Path(__file__).resolve().parents[2]
LABS_DIR = REPO / "labs"
SOLUTIONS_DIR = Path(__file__).resolve().parent / "solutions"
NOTEBOOKS = {lab_id: LABS_DIR / f"{lab_id}.ipynb" for lab_id in LABS}
SECTION_RE = re.compile(r"^# %% exercise: (?P<id>\S+)\s*$", re.MULTILINE)


def read_notebook(lab_id: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS[lab_id], as_version=4)


def exercise_id(cell: nbformat.NotebookNode) -> str | None:
    return (cell.get("metadata", {}).get("lab_kit") or {}).get("exercise")


def exercise_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    out: dict[str, nbformat.NotebookNode] = {}
    for cell in nb.cells:
        ex = exercise_id(cell)
        if ex is not None:
            assert ex not in out, f"exercise {ex!r} appears in two cells"
            out[ex] = cell
    return out


def solutions(lab_id: str) -> dict[str, str]:
    """Exercise id -> reference code, in file order."""
    text = (SOLUTIONS_DIR / f"{lab_id}.py").read_text()
    marks = list(SECTION_RE.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        assert m["id"] not in out, f"{lab_id}: solution {m['id']!r} appears twice"
        out[m["id"]] = text[m.end():end].strip() + "\n"
    return out


def with_solutions(nb: nbformat.NotebookNode, sols: dict[str, str]) -> nbformat.NotebookNode:
    """A copy of `nb` whose exercise cells hold the reference solutions."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        ex = exercise_id(cell)
        if ex is not None:
            cell.source = sols[ex]
    return nb


def code_sources(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def python_source(source: str) -> str:
    """A cell's source as plain Python, the way IPython runs it: a `%%writefile` cell (lab 06's
    exercises) becomes a call of the magic, so `ast` can parse every cell."""
    from IPython.core.inputtransformer2 import TransformerManager
    return TransformerManager().transform_cell(source)
