"""A reachability matrix: which pod reached which, measured by real probes, beside what the
NetworkPolicy engine expects — the picture the upstream e2e suite prints as its truth table.

`Reachability` renders three ways:

- `str()`: the e2e suite's truth table (`.` connected, `X` blocked, rows = from, columns = to),
  namespaces separated by rules, a pair whose measurement differs from the engine's expectation
  in brackets (`[X]`), a legend line, a summary, and each differing pair with the engine's reason;
- `_repr_html_()`: the same grid coloured for a notebook (green connected, red blocked, a
  differing pair outlined in amber and marked `!`, the engine's reason in each cell's tooltip);
- `to_dict()`: JSON for scripts and gradebooks.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field
from typing import Any

from lab_kit.netpol import Verdict

Matrix = dict[str, dict[str, bool]]

# cell colours with white text: readable on JupyterLab's light and dark themes alike
GREEN, RED, AMBER = "#2e7d32", "#c62828", "#ffb300"
RULE = "rgba(128,128,128,.55)"  # separators: mid-grey shows on a white and a black page

LEGEND = "rows: from, columns: to;  . connected  X blocked"
LEGEND_DIFF = "  [.] [X] measured differs from the policy engine"


def _namespace(key: str) -> str:
    return key.rpartition("/")[0]


def _pod_name(key: str) -> str:
    return key.rpartition("/")[2]


def _word(ok: bool | None) -> str:
    return "unknown" if ok is None else "connected" if ok else "blocked"


@dataclass(frozen=True)
class Reachability:
    measured: Matrix
    expected: Matrix | None = None
    port: int = 80
    protocol: str = "TCP"
    seconds: float = 0.0  # how long the probes took
    # the policy engine's verdict for each pair, its reasons (netpol.Verdict)
    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict, compare=False)

    def reason(self, a: str, b: str) -> str:
        """The engine's reason for a → b ('' when it was not asked)."""
        v = self.verdicts.get((a, b))
        return v.reason if v is not None else ""

    @property
    def pods(self) -> list[str]:
        return list(self.measured)

    def expects(self, a: str, b: str) -> bool | None:
        """The engine's verdict for a → b (None: no expectation for this pair)."""
        if self.expected is None:
            return None
        return self.expected.get(a, {}).get(b)

    def mismatches(self) -> list[tuple[str, str, bool, bool]]:
        """(from, to, expected, measured) of every pair where the two disagree."""
        if self.expected is None:
            return []
        return [(a, b, self.expects(a, b), got) for a, row in self.measured.items()
                for b, got in row.items() if self.expects(a, b) != got]

    @property
    def agrees(self) -> bool:
        return not self.mismatches()

    def counts(self) -> tuple[int, int]:
        """(connected pairs, all pairs) measured."""
        cells = [v for row in self.measured.values() for v in row.values()]
        return sum(cells), len(cells)

    def to_dict(self) -> dict[str, Any]:
        conn, total = self.counts()
        return {"port": self.port, "protocol": self.protocol, "measured": self.measured,
                "expected": self.expected, "connected": conn, "pairs": total,
                "seconds": round(self.seconds, 3),
                "mismatches": [{"from": a, "to": b, "expected": e, "measured": m,
                                "reason": self.reason(a, b)}
                               for a, b, e, m in self.mismatches()]}

    def _groups(self) -> list[list[str]]:
        """The pods in runs of one namespace (x/*, y/*, z/*), in the matrix's order."""
        return [list(g) for _, g in itertools.groupby(self.pods, key=_namespace)]

    def summary(self) -> str:
        """One line: how many pairs connected, whether the engine agrees, how long it took."""
        conn, total = self.counts()
        line = f"{total} pairs: {conn} connected, {total - conn} blocked"
        if self.expected is not None:
            bad = len(self.mismatches())
            line += ("; all as the policy engine expects" if not bad
                     else f"; {bad} pair{'s' * (bad != 1)} differ{'s' * (bad == 1)} from the "
                          "policy engine's expectation")
        if self.seconds:
            line += f"; probed in {self.seconds:.2f} s"
        return line

    def explain(self, only: str = "mismatches") -> str:
        """One line per pair with the engine's reason: `only` = "mismatches" (the default),
        "blocked" (blocked or differing pairs) or "all"."""
        lines = []
        for a in self.pods:
            for b in self.pods:
                got, exp = self.measured[a][b], self.expects(a, b)
                differs = self.expected is not None and exp != got
                if only == "mismatches" and not differs:
                    continue
                if only == "blocked" and got and not differs:
                    continue
                line = f"{a} -> {b}: {_word(got)}"
                if differs:
                    line += f", expected {_word(exp)}"
                why = self.reason(a, b)
                lines.append(line + (f" ({why})" if why else ""))
        return "\n".join(lines)

    # --- text: the e2e suite's truth table ----------------------------------------------------

    def __str__(self) -> str:
        groups = self._groups()
        width = max([3, *(len(p) for p in self.pods)])
        corner = f"{self.protocol}/{self.port}"
        head_w = max(width, len(corner))

        def cell(a: str, b: str) -> str:
            got = self.measured[a][b]
            mark = "." if got else "X"
            if self.expected is not None and self.expects(a, b) != got:
                mark = f"[{mark}]"
            return mark.center(width)

        def row(head: str, cells: list[list[str]]) -> str:
            return (head.ljust(head_w) + "  "
                    + " | ".join(" ".join(c) for c in cells)).rstrip()

        lines = [row(corner, [[p.center(width) for p in g] for g in groups])]
        rule = ("-" * head_w + "--"
                + "-+-".join("-" * (len(g) * (width + 1) - 1) for g in groups))
        for i, g in enumerate(groups):
            if i:
                lines.append(rule)
            lines += [row(a, [[cell(a, b) for b in gb] for gb in groups]) for a in g]
        legend = LEGEND + (LEGEND_DIFF if self.expected is not None else "")
        lines += [legend, self.summary()]
        if self.mismatches():
            lines += ["  " + ln for ln in self.explain("mismatches").splitlines()]
        return "\n".join(lines)

    # --- HTML: a coloured grid for a notebook -------------------------------------------------

    def _repr_html_(self) -> str:
        groups = self._groups()
        flat = not all("/" in p for p in self.pods)  # flat keys: one header row
        font = "font-family:var(--jp-code-font-family,monospace);font-size:12px"
        th = f"padding:1px 6px;{font};font-weight:normal;white-space:nowrap"
        base = ("color:#fff;text-align:center;min-width:2em;height:1.7em;padding:0 2px;"
                f"{font};font-weight:bold;cursor:default")
        gap = '<td style="width:6px;padding:0"></td>'

        def swatch(bg: str, sym: str, extra: str = "") -> str:
            return (f'<span style="display:inline-block;background:{bg};{base};'
                    f'line-height:1.7em;{extra}">{sym}</span>')

        def cell(a: str, b: str) -> str:
            got, exp = self.measured[a][b], self.expects(a, b)
            differs = self.expected is not None and exp != got
            tip = f"from {a} to {b}: {_word(got)} ({self.protocol}/{self.port}, measured)"
            if self.expected is not None:
                tip += (f"\nthe policy engine expects: {_word(exp)}"
                        + ("  ≠ measured" if differs else ""))
            why = self.reason(a, b)
            if why:
                tip += f"\n{why}"
            style = f"background:{GREEN if got else RED};{base}"
            sym = "✓" if got else "✗"
            if differs:
                style += f";outline:3px solid {AMBER};outline-offset:-3px"
                sym += "!"
            return f'<td title="{html.escape(tip)}" style="{style}">{sym}</td>'

        # header: namespaces spanning their pods, then the pod names
        corner = (f'<th rowspan="{1 if flat else 2}" colspan="{1 if flat else 2}" '
                  f'style="{th};text-align:left;vertical-align:bottom">'
                  f'<b>{html.escape(self.protocol)}/{self.port}</b><br>'
                  '<span style="opacity:.75">from ↓ to →</span></th>')
        rows = []
        if flat:
            rows.append("<tr>" + corner + "".join(
                f'<th style="{th}">{html.escape(p)}</th>' for p in self.pods) + "</tr>")
        else:
            rows.append("<tr>" + corner + gap.join(
                f'<th colspan="{len(g)}" style="{th};border-bottom:2px solid {RULE}">'
                f'{html.escape(_namespace(g[0]) or "-")}</th>' for g in groups) + "</tr>")
            rows.append("<tr>" + gap.join("".join(
                f'<th style="{th}">{html.escape(_pod_name(p))}</th>' for p in g)
                for g in groups) + "</tr>")
        for i, g in enumerate(groups):
            if i:
                rows.append(f'<tr><td colspan="{len(self.pods) + len(groups) + 1}" '
                            'style="height:4px;padding:0"></td></tr>')
            for j, a in enumerate(g):
                head = ""
                if flat:
                    head = f'<th style="{th};text-align:right">{html.escape(a)}</th>'
                else:
                    if j == 0:
                        head = (f'<th rowspan="{len(g)}" style="{th};text-align:right;'
                                f'border-right:2px solid {RULE}">'
                                f'{html.escape(_namespace(a) or "-")}</th>')
                    head += f'<th style="{th};text-align:right">{html.escape(_pod_name(a))}</th>'
                rows.append("<tr>" + head + gap.join(
                    "".join(cell(a, b) for b in gb) for gb in groups) + "</tr>")

        legend = [f"{swatch(GREEN, '✓')} connected", f"{swatch(RED, '✗')} blocked"]
        if self.expected is not None:
            legend.append(f"{swatch(GREEN, '✓!', f'outline:3px solid {AMBER};outline-offset:-3px')}"
                          f"{swatch(RED, '✗!', f'outline:3px solid {AMBER};outline-offset:-3px')}"
                          " measured differs from the policy engine")
        note = html.escape(self.summary())
        bad = self.mismatches()
        if bad:
            note = f'<b style="color:{AMBER}">⚠</b> ' + note
        hint = ("rows: from, columns: to; hover a cell for "
                + ("the policy engine's reason" if self.verdicts else "details"))
        return (f'<div style="{font}">'
                f'<table style="border-collapse:separate;border-spacing:2px;'
                f'margin:0">{"".join(rows)}</table>'
                f'<div style="margin-top:4px">{" &nbsp; ".join(legend)}</div>'
                f'<div style="margin-top:2px">{note}</div>'
                f'<div style="opacity:.75">{html.escape(hint)}</div></div>')
