"""The reachability matrix's renderings (no cluster needed): the e2e suite's text truth table
and the notebook's coloured grid."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from lab_kit.netpol import Verdict
from lab_kit.reachability import AMBER, GREEN, RED, Reachability

PODS = [f"{ns}/{p}" for ns in "xyz" for p in "abc"]


def deny_x() -> dict[str, dict[str, bool]]:
    """Ingress to namespace x denied (a pod still reaches itself)."""
    return {a: {b: a == b or not b.startswith("x/") for b in PODS} for a in PODS}


def with_mismatches() -> Reachability:
    measured = deny_x()
    expected = {a: dict(row) for a, row in measured.items()}
    expected["y/a"]["x/b"] = True   # measured blocked, the engine allows it
    expected["x/a"]["z/c"] = False  # measured connected, the engine blocks it
    verdicts = {(a, b): Verdict(expected[a][b], f"why {a}->{b}") for a in PODS for b in PODS}
    return Reachability(measured, expected, 80, "TCP", 1.02, verdicts)


# --- the model --------------------------------------------------------------------------------

def test_counts_mismatches_and_agreement() -> None:
    r = with_mismatches()
    assert r.counts() == (57, 81)
    assert r.mismatches() == [("x/a", "z/c", False, True), ("y/a", "x/b", True, False)]
    assert not r.agrees
    same = Reachability(deny_x(), deny_x())
    assert same.agrees and same.mismatches() == []
    assert Reachability(deny_x()).agrees  # nothing expected: nothing to disagree with


def test_to_dict_is_json_with_the_reasons_of_the_mismatches() -> None:
    d = json.loads(json.dumps(with_mismatches().to_dict()))
    assert (d["port"], d["protocol"], d["connected"], d["pairs"]) == (80, "TCP", 57, 81)
    assert d["measured"]["y/a"]["x/b"] is False and d["expected"]["y/a"]["x/b"] is True
    assert d["mismatches"][1] == {"from": "y/a", "to": "x/b", "expected": True,
                                  "measured": False, "reason": "why y/a->x/b"}


# --- text: the e2e suite's truth table ----------------------------------------------------------

def test_text_is_the_truth_table_with_namespaces_ruled_off() -> None:
    lines = str(Reachability(deny_x(), deny_x(), 81, "UDP")).splitlines()
    assert lines[0] == "UDP/81  x/a x/b x/c | y/a y/b y/c | z/a z/b z/c"
    assert lines[1] == "x/a      .   X   X  |  .   .   .  |  .   .   ."
    assert lines[4] == "--------------------+-------------+------------"
    assert lines[5] == "y/a      X   X   X  |  .   .   .  |  .   .   ."
    assert len(lines) == 1 + 9 + 2 + 2  # header, rows, rules, legend, summary
    assert lines[-2] == ("rows: from, columns: to;  . connected  X blocked"
                         "  [.] [X] measured differs from the policy engine")
    assert lines[-1] == ("81 pairs: 57 connected, 24 blocked; all as the policy engine "
                         "expects")
    assert "[" not in "\n".join(lines[:-2])


def test_text_marks_each_mismatch_and_lists_it_with_the_engines_reason() -> None:
    lines = str(with_mismatches()).splitlines()
    assert lines[1] == "x/a      .   X   X  |  .   .   .  |  .   .  [.]"
    assert lines[5] == "y/a      X  [X]  X  |  .   .   .  |  .   .   ."
    assert sum(ln.count("[") for ln in lines[:12]) == 2
    assert ("2 pairs differ from the policy engine's expectation; probed in 1.02 s"
            in lines[-3])
    assert lines[-2:] == ["  x/a -> z/c: connected, expected blocked (why x/a->z/c)",
                          "  y/a -> x/b: blocked, expected connected (why y/a->x/b)"]


def test_text_without_an_expectation_has_no_mismatch_legend() -> None:
    text = str(Reachability(deny_x()))
    assert "[" not in text and "differs" not in text
    assert text.splitlines()[-1] == "81 pairs: 57 connected, 24 blocked"


def test_text_of_one_namespace_has_no_rules_and_fits_long_names() -> None:
    pods = ["default/web-1", "default/client"]
    m = {a: {b: True for b in pods} for a in pods}
    m["default/client"]["default/web-1"] = False
    lines = str(Reachability(m)).splitlines()
    assert lines[:3] == ["TCP/80          default/web-1  default/client",
                         "default/web-1         .              .",
                         "default/client        X              ."]
    assert not any(set(ln) <= {"-", "+"} for ln in lines)


def test_explain_lists_blocked_or_every_pair() -> None:
    r = with_mismatches()
    blocked = r.explain("blocked").splitlines()
    assert len(blocked) == 24 + 1  # every blocked pair, and the connected one that differs
    assert "x/a -> x/b: blocked (why x/a->x/b)" in blocked
    assert len(r.explain("all").splitlines()) == 81


# --- HTML: the notebook's coloured grid -------------------------------------------------------

class Grid(HTMLParser):
    """The cells of the grid: (title, style, text) of each <td> with a tooltip, and headers."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self._cur: dict[str, str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "title" in a:
            self._cur = {**a, "text": ""}
            self.cells.append(self._cur)
        elif tag == "th":
            self._cur = {**a, "text": ""}
            self.headers.append(self._cur)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._cur = None

    def handle_data(self, data: str) -> None:
        if self._cur is not None:
            self._cur["text"] += data


def test_html_grid_is_green_and_red_row_by_row_from_to() -> None:
    r = with_mismatches()
    g = Grid(r._repr_html_())
    assert len(g.cells) == 81
    for i, cell in enumerate(g.cells):  # row-major: from x/a to x/a, x/b, …
        a, b = PODS[i // 9], PODS[i % 9]
        got = r.measured[a][b]
        assert f"background:{GREEN if got else RED}" in cell["style"]
        assert cell["title"].startswith(f"from {a} to {b}: {'connected' if got else 'blocked'}")
        assert f"why {a}->{b}" in cell["title"]  # the engine's reason in the tooltip
        assert cell["text"].rstrip("!") == ("✓" if got else "✗")


def test_html_outlines_exactly_the_mismatches_and_explains_them() -> None:
    r = with_mismatches()
    g = Grid(r._repr_html_())
    outlined = [(PODS[i // 9], PODS[i % 9]) for i, c in enumerate(g.cells)
                if f"outline:3px solid {AMBER}" in c["style"]]
    assert outlined == [("x/a", "z/c"), ("y/a", "x/b")]
    cell = g.cells[PODS.index("y/a") * 9 + PODS.index("x/b")]
    assert cell["text"] == "✗!"
    assert "the policy engine expects: connected  ≠ measured" in cell["title"]
    page = r._repr_html_()
    assert "measured differs from the policy engine" in page  # the legend
    assert "2 pairs differ from the policy engine&#x27;s expectation" in page
    ok = Grid(Reachability(deny_x(), deny_x())._repr_html_())
    assert not any("outline" in c["style"] for c in ok.cells)


def test_html_groups_namespaces_with_a_two_level_header() -> None:
    page = with_mismatches()._repr_html_()
    headers = Grid(page).headers
    heads = [h["text"] for h in headers]
    assert heads[1:4] == ["x", "y", "z"]  # after the corner: namespaces spanning their pods
    assert [h.get("colspan") for h in headers[1:4]] == ["3", "3", "3"]
    assert heads[4:13] == ["a", "b", "c"] * 3
    assert page.count('rowspan="3"') == 3  # each namespace's rows bracketed once


def test_html_is_theme_neutral_and_escapes_names() -> None:
    pods = ["ns/<b>", "ns/a&b"]
    m = {a: {b: a == b for b in pods} for a in pods}
    page = Reachability(m, m, verdicts={("ns/<b>", "ns/a&b"): Verdict(False, 'no "rule"')}
                        )._repr_html_()
    assert "<b>" not in page.replace("<b>TCP/80</b>", "")
    assert "&lt;b&gt;" in page and "a&amp;b" in page and "&quot;rule&quot;" in page
    # cells carry their own background and white text; headers inherit the theme's colour
    assert "color:#fff" in page and "background:#fff" not in page and "color:#000" not in page
    assert "hover a cell for the policy engine&#x27;s reason" in page
