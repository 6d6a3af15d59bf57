"""Lab 13's canary bounds (no root): a fair 90/10 split fails them less than once in 100,000
runs, an 80/20 or 50/50 one passes them less than once in 100,000; and the answers of one
globbing curl are counted per Deployment."""

from __future__ import annotations

from math import comb

from lab_kit.labs.gateway_api import N, bounds
from lab_kit.labs.web import _ANSWER  # web.tally splits its one curl's answers with it


def _mass(n: int, p: float, lo: int, hi: int) -> float:
    """P(lo <= X <= hi) for X ~ Binomial(n, p), exactly (integers, then one division)."""
    num, den = (p * 10).as_integer_ratio()[0], 10
    return sum(comb(n, k) * num**k * (den - num)**(n - k) for k in range(lo, hi + 1)) / den**n


def test_bounds_of_1000_requests():
    lo, hi = bounds(N)
    assert (lo, hi) == (60, 146)
    assert 1 - _mass(N, 0.1, lo, hi) < 1e-5  # a fair 90/10 split fails
    assert _mass(N, 0.2, lo, hi) < 1e-5  # an 80/20 mistake passes
    assert _mass(N, 0.5, lo, hi) < 1e-100  # no weights: 50/50


def test_bounds_scale_with_n():
    lo, hi = bounds(100)
    assert lo < 10 < hi and hi - lo < 30
    assert bounds(5000)[0] > 400


def test_curl_write_out_markers_split_the_answers():
    out = "store-v1-abc12-xyz9<<<200>>>404 Not Found\n<<<404>>><<<000>>>"
    parts = _ANSWER.split(out)
    assert list(zip(parts[0::2], parts[1::2], strict=False)) == [
        ("store-v1-abc12-xyz9", "200"), ("404 Not Found\n", "404"), ("", "000")]
