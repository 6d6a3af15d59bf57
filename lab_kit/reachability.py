"""A reachability matrix: which pod reached which, measured by real probes, beside what the
NetworkPolicy engine expects — the picture the upstream e2e suite prints as its truth table.

`Reachability` renders three ways: `_repr_html_` (a coloured grid in a notebook), `str()` (the
e2e suite's text table: `.` connected, `X` blocked, a mismatch marked), `to_dict()` (JSON).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

Matrix = dict[str, dict[str, bool]]


@dataclass(frozen=True)
class Reachability:
    measured: Matrix
    expected: Matrix | None = None
    port: int = 80
    protocol: str = "TCP"
    seconds: float = 0.0  # how long the probes took
    reasons: dict[tuple[str, str], str] = field(default_factory=dict, compare=False)

    @property
    def pods(self) -> list[str]:
        return list(self.measured)

    def mismatches(self) -> list[tuple[str, str, bool, bool]]:
        """(from, to, expected, measured) of every pair where the two disagree."""
        if self.expected is None:
            return []
        return [(a, b, self.expected[a][b], got) for a, row in self.measured.items()
                for b, got in row.items() if self.expected.get(a, {}).get(b) != got]

    @property
    def agrees(self) -> bool:
        return not self.mismatches()

    def counts(self) -> tuple[int, int]:
        """(connected pairs, all pairs) measured."""
        cells = [v for row in self.measured.values() for v in row.values()]
        return sum(cells), len(cells)

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "protocol": self.protocol, "measured": self.measured,
                "expected": self.expected,
                "mismatches": [{"from": a, "to": b, "expected": e, "measured": m}
                               for a, b, e, m in self.mismatches()]}

    def __str__(self) -> str:
        pods = self.pods
        width = max((len(p) for p in pods), default=3)
        head = f"{self.protocol}/{self.port}".ljust(width)
        lines = [head + "  " + " ".join(p.ljust(width) for p in pods)]
        for a in pods:
            cells = []
            for b in pods:
                got = self.measured[a][b]
                mark = "." if got else "X"
                if self.expected is not None and self.expected[a][b] != got:
                    mark = "!" + mark  # measured differs from expected
                cells.append(mark.ljust(width))
            lines.append(a.ljust(width) + "  " + " ".join(cells))
        conn, total = self.counts()
        summary = f"{conn}/{total} pairs connected"
        if self.expected is not None:
            bad = len(self.mismatches())
            summary += ("; measured = expected" if not bad
                        else f"; {bad} pairs differ from the expected (marked !)")
        if self.seconds:
            summary += f"; probed in {self.seconds:.2f} s"
        lines.append(summary)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        pods = self.pods
        green, red, amber = "#2e7d32", "#c62828", "#ff8f00"

        def cell(a: str, b: str) -> str:
            got = self.measured[a][b]
            exp = None if self.expected is None else self.expected[a][b]
            bg = green if got else red
            sym = "✓" if got else "✗"
            why = self.reasons.get((a, b), "")
            tip = f"{a} → {b}: {'connected' if got else 'blocked'}"
            style = f"background:{bg};color:white;text-align:center;width:2.2em;height:1.8em"
            if exp is not None and exp != got:
                style += f";outline:3px solid {amber};outline-offset:-3px"
                tip += f" (expected {'connected' if exp else 'blocked'})"
                sym += "!"
            if why:
                tip += f" — {why}"
            return f'<td title="{html.escape(tip)}" style="{style}">{sym}</td>'

        th = "padding:2px 6px;font-family:monospace"
        rows = [f'<tr><th style="{th}">{html.escape(self.protocol)}/{self.port}</th>'
                + "".join(f'<th style="{th}">{html.escape(p)}</th>' for p in pods) + "</tr>"]
        for a in pods:
            rows.append(f'<tr><th style="{th};text-align:right">{html.escape(a)}</th>'
                        + "".join(cell(a, b) for b in pods) + "</tr>")
        conn, total = self.counts()
        note = f"{conn}/{total} connected (rows: from, columns: to)"
        if self.expected is not None:
            bad = self.mismatches()
            note += (" — measured matches the policy engine" if not bad else
                     f" — <b style='color:{amber}'>{len(bad)} pairs differ from the "
                     "engine</b> (outlined)")
        return (f'<table style="border-collapse:separate;border-spacing:2px">{"".join(rows)}'
                f'</table><div style="font-size:90%">{note}</div>')
