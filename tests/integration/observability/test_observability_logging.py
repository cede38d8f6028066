"""One log shape: every JSON line, ours and the libraries', carries `logger`, `event`, `level`
and `timestamp`, rendered by orjson (observability/logging.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
import structlog

from processor.observability.logging import FailureLog, configure_logging
from tests.support.daemon import Daemon

SHAPE = {"event", "level", "timestamp", "logger"}


def test_every_json_line_names_its_logger(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    structlog.get_logger("processor.app").info("ours", count=1)
    structlog.get_logger().warning("unnamed")
    logging.getLogger("psycopg.pool").warning("a library's line %s", 7)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("processor.writer").exception("failed")
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("processor.app", "ours"),
        ("processor", "unnamed"),
        ("psycopg.pool", "a library's line 7"),
        ("processor.writer", "failed"),
    ]
    assert all(line.keys() >= SHAPE for line in lines), lines
    assert "RuntimeError: boom" in lines[-1]["exception"]


def test_json_lines_are_rendered_by_orjson(capsys: pytest.CaptureFixture[str]) -> None:
    """orjson's compact form (no spaces after separators); objects it cannot encode natively
    fall back to their repr rather than failing the log call."""
    configure_logging("info", "json")
    structlog.get_logger("processor.test").info("shape", path=Path("/x"), values=[1, 2])
    line = capsys.readouterr().err.strip()
    assert line.startswith('{"path":"PosixPath(\'/x\')","values":[1,2],"event":"shape"'), line


async def test_the_daemons_own_lines_carry_the_logger_field(
    env: dict[str, str], tmp_path: Path
) -> None:
    daemon = Daemon(env, tmp_path / "processor.log")
    try:
        await daemon.wait_for("ready")
    finally:
        daemon.terminate()
        await daemon.wait_exit(within=30)
    lines = list(daemon.lines())
    assert lines
    missing = [line for line in lines if not line.keys() >= SHAPE]
    assert not missing, missing
    loggers = {line["logger"] for line in lines}
    assert {"processor.cli", "processor.app"} <= loggers, loggers


def test_a_repeating_failure_is_said_once_and_its_end_once() -> None:
    with structlog.testing.capture_logs() as logs:
        failures = FailureLog(structlog.get_logger("t"), "sample failed", "sampling recovered")
        failures.succeeded()
        for _ in range(3):
            failures.failed(ConnectionError("refused"))
        failures.succeeded()
        failures.succeeded()
        failures.failed(TimeoutError("slow\n  server"))
    assert [(line["log_level"], line["event"], line.get("error")) for line in logs] == [
        ("warning", "sample failed", "ConnectionError: refused"),
        ("info", "sampling recovered", None),
        ("warning", "sample failed", "TimeoutError: slow server"),
    ]
