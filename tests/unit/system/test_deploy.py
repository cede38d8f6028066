"""The Prometheus scrape configurations of deploy/prometheus/ load in Prometheus (`promtool
check config`, which also loads the alert rules they name) and scrape what the compose file
runs. The container side of deploy/ is tested by tests/container (`just container-test`)."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.paths import ROOT
from tests.support.promtool import promtool

PROMETHEUS = ROOT / "deploy" / "prometheus"


@pytest.mark.parametrize("name", ["static.yml", "dns.yml"])
def test_scrape_configuration_is_valid_and_loads_the_alert_rules(name: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "config", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=PROMETHEUS,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {name} is valid prometheus config file syntax" in output
    assert "SUCCESS: 10 rules found" in output  # ops/alerts.yml, found from deploy/prometheus
    assert re.search(r"job_name: processor\n", (PROMETHEUS / name).read_text())


def test_static_targets_are_the_compose_instances() -> None:
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    instances = re.findall(r"^  (processor-\d+):", compose, re.MULTILINE)
    targets = re.search(r"targets: \[(.*)\]", (PROMETHEUS / "static.yml").read_text())
    assert targets is not None
    assert [t.strip().strip('"') for t in targets[1].split(",")] == [
        f"{name}:9090" for name in instances
    ]
