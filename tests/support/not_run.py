"""Tests that need an engine this machine cannot have: reported loudly, or failed in CI.

The suite runs on a bare machine (Python and pip only) by starting throwaway servers itself;
a few tests need something no package on PyPI provides there (TimescaleDB without a container
engine or local PostgreSQL 15 files). Such a test calls `not_run(what, why, how)`:

- by default it is skipped with a reason starting `not run:`, and `report` (called from
  conftest's terminal summary) prints every such test in a block at the end of the run, with
  what is missing and how to run them. Never silently: the block cannot be missed.
- with `TEST_ENGINES_REQUIRED=1` (`.ci/run` sets it) it fails instead, naming the same things,
  so a CI machine that lost an engine cannot pass.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRED_VARIABLE = "TEST_ENGINES_REQUIRED"
PREFIX = "not run: "


def required() -> bool:
    return os.environ.get(REQUIRED_VARIABLE, "").strip() not in ("", "0")


def not_run(what: str, why: str, how: str) -> NoReturn:
    """Skip (reported at the end) or, under TEST_ENGINES_REQUIRED=1, fail this test."""
    message = f"{what}: {why}; to run them: {how}"
    if required():
        pytest.fail(f"{message} ({REQUIRED_VARIABLE}=1 makes a test that cannot run fail)")
    pytest.skip(PREFIX + message)


def report(terminalreporter: pytest.TerminalReporter) -> None:
    """The block at the end of the run: every test that was not run, grouped by reason."""
    reasons: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if not isinstance(longrepr, tuple) or len(longrepr) != 3:
            continue
        reason = str(longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(PREFIX):
            reasons.setdefault(reason.removeprefix(PREFIX), []).append(report.nodeid)
    if not reasons:
        return
    count = sum(len(ids) for ids in reasons.values())
    terminalreporter.section(f"NOT RUN: {count} test(s)", sep="!", red=True, bold=True)
    for reason, ids in reasons.items():
        terminalreporter.write_line(f"not run: {len(ids)} test(s) need {reason}", red=True)
        for nodeid in ids:
            terminalreporter.write_line(f"    {nodeid}")
    terminalreporter.write_line(
        f"({REQUIRED_VARIABLE}=1 makes these tests fail instead; CI sets it)", red=True
    )
