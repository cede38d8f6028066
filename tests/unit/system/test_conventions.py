"""The conventions an operator expects of a service: `--version`, `processor config`, build and
process metrics, every labelled counter exported from the start."""

from __future__ import annotations

import ast
import platform
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from prometheus_client import generate_latest

from processor.domain import alerts
from processor.live import auth, history, protocol
from processor.observability import metrics as metrics_module
from processor.observability.metrics import Metrics
from processor.version import VERSION
from tests.support.paths import ROOT

SRC = ROOT / "src" / "processor"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", *args],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_installed_version() -> None:
    done = cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"processor {VERSION}"), done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", VERSION)


def test_config_prints_every_setting_effective_and_redacted() -> None:
    done = cli(
        "config",
        env={
            "DATABASE_URL": "postgresql://app:S3cret@db:5432/processor",
            "REDIS_URL": "rediss://default:S3cret@redis:6380/0",
            "INSTANCE_ID": "edge-1",
            "REDIS_STREAM": "telemetry:x",
            "LIVE_WS_ALLOWED_ORIGINS": "https://a.example, https://b.example/",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "S3cret" not in done.stdout + done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    from processor.config import settings

    assert list(values) == [field.metadata["env"] for field in settings()]
    assert values["DATABASE_URL"] == "postgresql://app:***@db:5432/processor"
    assert values["REDIS_URL"] == "rediss://default:***@redis:6380/0"
    assert values["REDIS_CONSUMER"] == "edge-1"  # the default resolved, as the daemon does
    assert values["DLQ_STREAM"] == "telemetry:x:dead"
    assert values["READ_COUNT"] == "2000"
    assert values["LIVE_WS_ALLOWED_ORIGINS"] == "https://a.example,https://b.example"


def test_config_json_and_an_invalid_setting_exits_2() -> None:
    done = cli("config", "--json", env={"DATABASE_URL": "postgresql://app:S3cret@db/x"})
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["DATABASE_URL"] == "postgresql://app:***@db/x"
    bad = cli("config", env={"READ_COUNT": "0", "DATABASE_URL": "postgresql://a:S3cret@db/x"})
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip() == (
        "processor: configuration error: invalid READ_COUNT='0': expected an integer from 1 to "
        "100000"
    )


def test_build_info_and_process_metrics_are_exported() -> None:
    text = generate_latest(Metrics().registry).decode()
    python = platform.python_version()
    assert f'processor_build_info{{python="{python}",version="{VERSION}"}} 1.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"):
        assert f"\n{name}" in text, name


# Labelled per supervised service: the supervisor creates the series as it starts the service,
# at process start (processor/supervise.py), for just the services this instance runs.
PER_SERVICE = {"processor_service_restarts"}


def test_every_labelled_counter_has_its_series_from_the_start() -> None:
    """`increase()` misses a series' first increment when the series appears with it. A
    Service, not a bare Metrics: some series are created by the part that owns the label
    values (the racing domain's problem reasons)."""
    from processor.app import Service
    from processor.config import load_config

    service = Service(load_config({"INSTANCE_ID": "conventions"}))
    empty = [
        family.name
        for family in service.metrics.registry.collect()
        if family.type == "counter"
        and family.name.startswith("processor_")
        and family.name not in PER_SERVICE
        and not [s for s in family.samples if s.name.endswith("_total")]
    ]
    assert not empty, f"labelled counters without series at start: {empty}"


def _codec_error_kinds() -> set[str]:
    """The first argument of every `CodecError(...)` in the codec (its metric label)."""
    tree = ast.parse((SRC / "codecs" / "position.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "CodecError"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def _returned_strings(path: Path, function: str) -> set[str]:
    tree = ast.parse(path.read_text())
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return {
        n.value.value
        for n in ast.walk(body)
        if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant) and n.value.value
    }


def _labels_in(path: Path, metric: str) -> set[str]:
    return set(re.findall(rf"{metric}\.labels\(\"([a-z_]+)\"\)", path.read_text()))


@pytest.mark.parametrize(
    ("declared", "produced"),
    [
        pytest.param(metrics_module.DECODE_ERROR_KINDS, _codec_error_kinds(), id="decode_errors"),
        pytest.param(
            metrics_module.FAULT_REASONS,
            _returned_strings(SRC / "codecs" / "quality.py", "fix_fault"),
            id="faulty_positions",
        ),
        pytest.param(
            metrics_module.ALERT_KINDS, {alerts.STOPPED, alerts.NO_SIGNAL}, id="alerts_raised"
        ),
        pytest.param(
            metrics_module.LIVE_MESSAGES_IN,
            {protocol.SUBSCRIBE, protocol.UNSUBSCRIBE, "too_big", "invalid"},
            id="live_messages_in",
        ),
        pytest.param(
            metrics_module.LIVE_AUTH_RESULTS,
            {o.value for o in auth.AuthOutcome}
            | _labels_in(SRC / "live" / "server.py", "live_auth"),
            id="live_auth",
        ),
        pytest.param(
            metrics_module.LIVE_HISTORY_RESULTS,
            {"ok", *history.ERROR_CODES.values()},
            id="live_history_requests",
        ),
    ],
)
def test_the_label_values_created_at_start_are_those_the_code_produces(
    declared: tuple[str, ...], produced: set[str]
) -> None:
    assert set(declared) == produced


def test_dead_letter_reasons_are_the_writers_categories() -> None:
    categories = set(
        re.findall(r'"(decode_error|db_rejected|max_deliveries|trimmed)[":]', _core_sources())
    )
    assert set(metrics_module.DEAD_LETTER_REASONS) == categories


def _core_sources() -> str:
    return "".join(path.read_text() for path in (SRC / "core").glob("*.py"))
