"""The runnable examples in the stage-2 modules' docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "chorus_lab.graph",
    "chorus_lab.analytics",
    "chorus_lab.stage2",
    "chorus_lab.patterns.common",
    "chorus_lab.patterns.alerts",
    "chorus_lab.patterns.routing_loop",
    "chorus_lab.patterns.hoarding",
    "chorus_lab.patterns.cascade",
    "chorus_lab.patterns.byzantine",
    "chorus_lab.patterns.anomaly",
    "chorus_lab.patterns.conflict",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
