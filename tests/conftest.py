"""Shared test setup.

The fixtures (`lab_cluster_factory`, `host_snapshot`, `state_dir`) and the leak check of every
`root`-marked test come from `lab_kit.pytest_plugin`, which the installed package registers as a
pytest11 plugin. When the package is used from a checkout without being installed, register the
same plugin here so `pytest tests` still works; never register it twice.

Unit tests (tests/unit) need no root and no kernel objects; root tests skip without root.
"""

from __future__ import annotations

import pytest

import lab_kit.pytest_plugin as _lab_plugin


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(_lab_plugin):
        config.pluginmanager.register(_lab_plugin, "lab_kit")
