"""Tests that need an engine the machine cannot have are reported loudly, or fail in CI
(tests/support/not_run.py): run as a small pytest session of their own (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.timescale import missing_locally

pytest_plugins = ["pytester"]

MODULE = """
from tests.support.not_run import not_run

def test_needs_an_engine():
    not_run("EngineX", "no EngineX here", "install EngineX")

def test_plain():
    assert True
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: str) -> list[str]:
    monkeypatch.setenv("TEST_ENGINES_REQUIRED", required)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeconftest(
        "import pytest\n"
        "from tests.support import not_run\n"
        "@pytest.hookimpl(wrapper=True, tryfirst=True)\n"
        "def pytest_terminal_summary(terminalreporter):\n"
        "    yield\n"
        "    not_run.report(terminalreporter)\n"
    )
    pytester.makepyfile(test_engine=MODULE)
    result = pytester.runpytest_subprocess("-ra", "-p", "no:cacheprovider", "-p", "no:trio")
    return result.outlines


def test_a_test_that_cannot_run_is_named_in_a_block_at_the_end(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = run(pytester, monkeypatch, "")
    text = "\n".join(lines)
    assert "NOT RUN: 1 test(s)" in text, text
    assert "not run: 1 test(s) need EngineX: no EngineX here; to run them: install EngineX" in text
    assert "    test_engine.py::test_needs_an_engine" in lines
    assert "1 passed, 1 skipped" in lines[-1], text
    # after pytest's own short summary, right before the count line: the last thing one reads
    assert text.index("short test summary info") < text.index("NOT RUN"), text


def test_under_the_ci_switch_it_fails_instead(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "\n".join(run(pytester, monkeypatch, "1"))
    assert "1 failed, 1 passed" in text, text
    assert "NOT RUN" not in text
    assert "EngineX: no EngineX here; to run them: install EngineX" in text


def test_timescaledb_is_missing_without_server_binaries_or_extension_files(tmp_path: Path) -> None:
    bindir = tmp_path / "lib" / "postgresql" / "15" / "bin"
    assert missing_locally(bindir) == f"no PostgreSQL 15 server binaries in {bindir}"
    bindir.mkdir(parents=True)
    (bindir / "postgres").write_text("")
    extension = tmp_path / "share" / "postgresql" / "15" / "extension"
    assert missing_locally(bindir) == f"no TimescaleDB extension files in {extension}"
    extension.mkdir(parents=True)
    (extension / "timescaledb.control").write_text("")
    assert missing_locally(bindir) is None
