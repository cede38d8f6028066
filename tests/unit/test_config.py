"""Configuration from the environment (docs/pipeline.md): typed defaults, and one clear line per bad
value.

The subprocess tests run the real entry point, because "exit code 2, one line, no traceback" is
a property of the process, not of `load_config`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import attrs
import pytest

from processor.config import Config, ConfigError, load_config
from tests.support.service import spawn_processor


def test_defaults() -> None:
    config = load_config({})
    assert config.redis_url == "redis://localhost:6379/0"
    assert config.database_url == "postgresql://localhost/processor"
    assert config.redis_stream == "telemetry:teltonika"
    assert config.redis_group == "processor"
    assert config.read_count == 2000
    assert config.read_block_ms == 1000
    assert config.write_batch_size == 2000
    assert config.write_flush_ms == 50
    assert config.shutdown_timeout_s == 15.0
    assert config.max_deliveries == 5
    assert config.dlq_maxlen == 100_000
    assert config.future_tolerance_s == 300.0
    assert config.max_plausible_speed_kmh == 400.0
    assert (config.http_host, config.http_port) == ("0.0.0.0", 9090)
    assert (config.live_ws_host, config.live_ws_port) == ("0.0.0.0", 8081)
    assert config.live_ws_max_message_bytes == 4096
    assert config.live_ws_allowed_origins == ()
    assert config.directus_url == ""
    assert config.live_ws_reauth_s == 60.0
    assert not config.live_enabled


def test_derived_defaults() -> None:
    config = load_config({})
    assert config.instance_id == socket.gethostname()
    assert config.consumer_name == config.instance_id
    assert config.dead_letter_stream == "telemetry:teltonika:dead"
    assert config.live_group == f"live-{config.instance_id}"

    config = load_config({"INSTANCE_ID": "proc-7", "REDIS_STREAM": "telemetry:other"})
    assert config.consumer_name == "proc-7"
    assert config.dead_letter_stream == "telemetry:other:dead"
    assert config.live_group == "live-proc-7"

    config = load_config(
        {"INSTANCE_ID": "proc-7", "REDIS_CONSUMER": "worker-a", "DLQ_STREAM": "dead:letters"}
    )
    assert config.consumer_name == "worker-a"
    assert config.dead_letter_stream == "dead:letters"


def test_values_are_parsed_to_their_types() -> None:
    config = load_config(
        {
            "READ_COUNT": " 250 ",
            "DLQ_MAXLEN": "1_000_000",
            "SHUTDOWN_TIMEOUT_S": "2.5",
            "HTTP_PORT": "0",
            "LOG_LEVEL": "debug",
            "DIRECTUS_URL": "https://cms.example.org",
            "LIVE_WS_ALLOWED_ORIGINS": "https://a.example.org/, https://b.example.org,,",
            "DATABASE_URL": "postgres://user:pw@db:5433/processor?sslmode=require",
            "REDIS_URL": "rediss://cache:6380/2",
        }
    )
    assert config.read_count == 250
    assert config.dlq_maxlen == 1_000_000
    assert config.shutdown_timeout_s == 2.5
    assert config.http_port == 0
    assert config.log_level == "debug"
    assert config.live_enabled
    assert config.live_ws_allowed_origins == ("https://a.example.org", "https://b.example.org")


def test_config_is_frozen() -> None:
    config = load_config({})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.read_count = 5  # type: ignore[misc]
    assert isinstance(config, Config)


BAD_VALUES = [
    # (variable, value, what the message must say is allowed)
    ("READ_COUNT", "abc", "an integer from 1 to 100000"),
    ("READ_COUNT", "1.5", "an integer from 1 to 100000"),
    ("READ_COUNT", "", "an integer from 1 to 100000"),
    ("READ_COUNT", "100001", "an integer from 1 to 100000"),
    ("WRITE_BATCH_SIZE", "0", "an integer from 1 to 100000"),
    ("WRITE_BATCH_SIZE", "-5", "an integer from 1 to 100000"),
    ("HTTP_PORT", "70000", "an integer from 0 to 65535"),
    ("MAX_DELIVERIES", "1\n2", "an integer from 1 to 1000"),
    ("SHUTDOWN_TIMEOUT_S", "nan", "a number from 0.1 to 3600"),
    ("SHUTDOWN_TIMEOUT_S", "inf", "a number from 0.1 to 3600"),
    ("SHUTDOWN_TIMEOUT_S", "0", "a number from 0.1 to 3600"),
    ("STARTUP_TIMEOUT_S", "soon", "a number from 1 to 3600"),
    ("LOG_LEVEL", "verbose", "one of debug, info, warning, error"),
    ("LOG_FORMAT", "xml", "one of json, console"),
    ("REDIS_STREAM", "   ", "a non-empty string"),
    ("DATABASE_URL", "not a url", "a postgresql:// URL"),
    ("DATABASE_URL", "mysql://db/processor", "a postgresql:// URL"),
    ("DATABASE_URL", "postgresql://db:99999/processor", "a postgresql:// URL"),
    ("DATABASE_URL", "postgresql://db:port/processor", "a postgresql:// URL"),
    ("REDIS_URL", "http://x", "a redis:// or rediss:// URL"),
    ("REDIS_URL", "localhost:6379", "a redis:// or rediss:// URL"),
    ("DIRECTUS_URL", "ftp://cms", "an http:// or https:// URL (empty: live broadcast off)"),
    ("LIVE_WS_REAUTH_S", "0.05", "a number from 0.1 to 86400"),
    ("LIVE_WS_REAUTH_S", "86401", "a number from 0.1 to 86400"),
    ("LIVE_WS_REAUTH_S", "-1", "a number from 0.1 to 86400"),
    ("RECLAIM_MIN_IDLE_MS", "10", "an integer from 100 to 86400000"),
]

INCONSISTENT = [
    # (settings, the one line that refuses them)
    (
        {"DOMAIN_GROUP": "processor"},
        (
            "invalid DOMAIN_GROUP='processor': it is the durable group REDIS_GROUP='processor'; "
            "expected a group of its own"
        ),
    ),
    (
        {"DOMAIN_GROUP": "ingest", "REDIS_GROUP": "ingest"},
        (
            "invalid DOMAIN_GROUP='ingest': it is the durable group REDIS_GROUP='ingest'; "
            "expected a group of its own"
        ),
    ),
    (
        {"DOMAIN_GROUP": "live-a", "INSTANCE_ID": "b"},
        (
            "invalid DOMAIN_GROUP='live-a': it is named like the live groups "
            "LIVE_GROUP_PREFIX-INSTANCE_ID (live-...); expected a name that no instance's live "
            "group can have"
        ),
    ),
    (
        {"WRITE_RETRY_INITIAL_MS": "6000", "WRITE_RETRY_MAX_MS": "5000"},
        (
            "invalid WRITE_RETRY_INITIAL_MS=6000: it is above WRITE_RETRY_MAX_MS=5000; expected "
            "at most WRITE_RETRY_MAX_MS"
        ),
    ),
    (
        {"PROBE_TIMEOUT_S": "3", "PROBE_INTERVAL_S": "2"},
        (
            "invalid PROBE_TIMEOUT_S=3: it is above PROBE_INTERVAL_S=2; expected at most "
            "PROBE_INTERVAL_S"
        ),
    ),
]


@pytest.mark.parametrize(("settings", "message"), INCONSISTENT)
def test_settings_that_cannot_work_together_are_refused(
    settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(settings)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [pytest.param(v, x, a, id=f"{v}={x!r}") for v, x, a in BAD_VALUES],
)
def test_bad_value_is_one_line_naming_variable_value_and_allowed(
    variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({variable: value})
    assert str(caught.value) == f"invalid {variable}={value!r}: expected {allowed}"
    assert "\n" not in str(caught.value)


def test_first_bad_value_is_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"READ_COUNT": "abc", "WRITE_BATCH_SIZE": "0"})
    assert "READ_COUNT" in str(caught.value)


CLI_CASES = [
    ("READ_COUNT", "abc", "run"),
    ("WRITE_BATCH_SIZE", "0", "run"),
    ("DATABASE_URL", "not a url", "run"),
    ("REDIS_URL", "http://x", "run"),
    ("DATABASE_URL", "not a url", "migrate"),
]


@pytest.fixture(scope="module")
def cli_results() -> dict[tuple[str, str, str], tuple[int, bytes, bytes]]:
    """Every CLI case run to its end, one after another.

    One at a time, so each process has the machine's cores to itself instead of five interpreters
    competing on a loaded 2-core machine; the CLI reads its configuration before any heavy import
    (`test_bad_setting_is_reported_before_heavy_imports`), so a case takes about half a second
    (~0.6 s measured under load 10; it was ~5 s when `processor run` imported every
    sub-command first). The bound is only there so a hung process fails the test instead of
    hanging it.
    """
    results = {}
    for case in CLI_CASES:
        process = spawn_processor({case[0]: case[1]}, case[2])
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results[case] = (process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize(("variable", "value", "command"), CLI_CASES)
def test_cli_refuses_bad_value_with_exit_2_and_one_line(
    cli_results: dict[tuple[str, str, str], tuple[int, bytes, bytes]],
    variable: str,
    value: str,
    command: str,
) -> None:
    returncode, stdout, stderr = cli_results[(variable, value, command)]
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert returncode == 2, stderr.decode()
    allowed = {v: a for v, _, a in BAD_VALUES}[variable]
    assert lines == [
        f"processor: configuration error: invalid {variable}={value!r}: expected {allowed}"
    ]
    assert b"Traceback" not in stderr
    assert stdout == b""


HEAVY_MODULES = ("trio", "structlog", "redis", "psycopg", "httpx", "processor.app")


@pytest.mark.parametrize("command", ["run", "migrate"])
def test_bad_setting_is_reported_before_heavy_imports(command: str) -> None:
    """The refusal happens before the daemon's dependencies load: it must come in interpreter
    start-up time, also on a loaded machine (speed itself is not asserted; what is imported is)."""
    probe = (
        "import sys\n"
        "from processor.cli import main\n"
        "try:\n"
        f"    main([{command!r}])\n"
        "except SystemExit as exc:\n"
        "    print(exc.code)\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "READ_COUNT": "abc"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, check=False
    )
    assert done.stdout.decode().splitlines() == ["2", "[]"], done.stderr.decode()
