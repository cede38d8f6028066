"""ops/alerts.yml loads in Prometheus (`promtool check rules`) and its alerts fire when, and only
when, they should (`promtool test rules` with ops/alerts.test.yml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.promtool import promtool

OPS = Path(__file__).resolve().parent.parent / "ops"


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=OPS
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 9 rules found" in run_promtool("check", "rules", "alerts.yml")


def test_alert_rules_fire_as_specified() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "alerts.test.yml")
