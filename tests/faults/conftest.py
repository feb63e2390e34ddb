"""Fault-injection suite (issue 4): registers the ``faults`` marker without touching
pyproject.toml. The scenarios start the real ``diasyndesi up`` and take minutes; run them
with ``make faults``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: fault-injection scenarios against a real `diasyndesi up` (slow; `make faults`)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.faults.harness import SUMMARIES

    if SUMMARIES:
        terminalreporter.section("fault scenarios: reconciliation")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
