"""`apply` warns when the kernel's global ARP table is too small for the cluster's pods."""

from __future__ import annotations

import warnings

import pytest

from lab_kit import cluster, kernel


def test_warns_when_pods_need_more_arp_entries_than_the_kernel_keeps(monkeypatch) -> None:
    monkeypatch.setattr(kernel, "neighbour_limit", lambda: 1024)
    with pytest.warns(RuntimeWarning, match=r"gc_thresh3 = 1024.*leaves that host setting"):
        cluster._warn_neighbour_limit(600)


def test_silent_within_the_limit_or_when_unknown(monkeypatch) -> None:
    for limit, pods in ((1024, 500), (None, 5000)):
        monkeypatch.setattr(kernel, "neighbour_limit", lambda limit=limit: limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cluster._warn_neighbour_limit(pods)


def test_neighbour_limit_reads_the_kernel() -> None:
    value = kernel.neighbour_limit()
    assert value is None or value > 0
