"""Passwords never appear in error output or logs (issue 10, item 5).

`DATABASE_URL=postgresql://app:S3cret@...` with a bad port printed the password in the exit-2
line; `REDIS_URL` likewise. Now every message and log line is redacted.
"""

from __future__ import annotations

import logging

import pytest
import structlog

from processor.observability.logging import configure_logging
from processor.redaction import redact
from tests.support.service import spawn_processor

SECRET = "S3cret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://app:S3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("redis://:S3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:S3cret@redis:6380/1", "rediss://default:***@redis:6380/1"),
        # an unencoded @ in the password is masked up to the host's @
        ("postgres://app:p@ss@db/x", "postgres://app:***@db/x"),
        ("invalid DATABASE_URL='postgresql://a:S3cret@h:99999/d': expected", None),
        ("host=db password=S3cret user=app", "host=db password=*** user=app"),
        ("dbname=x PASSWORD = 'S3 cret' port=1", "dbname=x PASSWORD = *** port=1"),
        # nothing secret: unchanged
        ("postgresql://app@db:5432/x", "postgresql://app@db:5432/x"),
        ("http://directus:8055/users/me", "http://directus:8055/users/me"),
        ("write to bob@example.com at 10:00", "write to bob@example.com at 10:00"),
    ],
)
def test_redact(text: str, expected: str | None) -> None:
    redacted = redact(text)
    assert SECRET not in redacted and "p@ss" not in redacted
    if expected is not None:
        assert redacted == expected


CLI_CASES = [
    ("DATABASE_URL", "postgresql://app:S3cret@127.0.0.1:99999/processor", "run"),
    ("DATABASE_URL", "postgresql://app:S3cret@127.0.0.1:port/processor", "migrate"),
    ("REDIS_URL", "redis://:S3cret@127.0.0.1:99999/0", "run"),
    ("REDIS_URL", "redis://default:S3cret@127.0.0.1:x/0", "run"),
]


@pytest.mark.parametrize(("variable", "value", "command"), CLI_CASES)
def test_config_error_line_has_no_password(variable: str, value: str, command: str) -> None:
    process = spawn_processor({variable: value}, command)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2, stderr.decode()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert SECRET not in lines[0]
    assert f"invalid {variable}=" in lines[0] and ":***@127.0.0.1:" in lines[0]
    assert stdout == b""


def test_startup_failure_logs_have_no_password() -> None:
    """An unreachable server: each connect attempt and the final line are logged, redacted."""
    process = spawn_processor(
        {
            "DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:1/processor",
            "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:1/0",
            "STARTUP_TIMEOUT_S": "1",
            "LOG_FORMAT": "json",
        }
    )
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr.decode()
    assert b"startup failed" in stderr
    assert SECRET.encode() not in stdout + stderr


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_line_is_redacted(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", fmt)
    log = structlog.get_logger("test.redaction")
    # an f-string event on purpose: the redaction must reach the message itself
    log.info(f"connecting to redis://:{SECRET}@redis:6379/0", url=f"postgresql://a:{SECRET}@db/x")  # noqa: G004
    log.warning("nested", fields={"dsn": f"host=db password={SECRET}"}, urls=[f"x://u:{SECRET}@h"])
    try:
        raise RuntimeError(f"failed: postgresql://a:{SECRET}@db/x")
    except RuntimeError:
        log.exception("with a traceback")
    logging.getLogger("psycopg.pool").warning("error connecting to redis://:%s@h:1/0", SECRET)
    output = capsys.readouterr().err
    assert output.count("***") >= 6, output
    assert SECRET not in output
