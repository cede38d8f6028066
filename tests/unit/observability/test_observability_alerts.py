"""ops/alerts.yml loads in Prometheus (`promtool check rules`), its alerts fire when, and only
when, they should (`promtool test rules` with ops/alerts.test.yml), and every rule links its
runbook section in OPERATIONS.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.promtool import promtool

OPS = ROOT / "ops"
RUNBOOK = "https://git.example.org/processor/processor/src/branch/main/OPERATIONS.md#"


def run_promtool(*args: str, cwd: Path = OPS) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def rules() -> list[dict[str, str]]:
    """Each rule's name, expression and runbook_url, read from the file's fixed layout (no
    YAML library needed; promtool checks the file itself)."""
    text = (OPS / "alerts.yml").read_text()
    found = []
    for block in re.split(r"^      - alert: ", text, flags=re.MULTILINE)[1:]:
        name = block.split("\n", 1)[0].strip()
        expr = re.search(r"expr: (\|\n(?:          .*\n)+|.*\n)", block)
        url = re.search(r'runbook_url: "([^"]*)"', block)
        found.append(
            {
                "alert": name,
                "expr": expr.group(1).removeprefix("|").strip() if expr else "",
                "runbook_url": url.group(1) if url else "",
            }
        )
    return found


def anchors(markdown: str) -> set[str]:
    """The heading anchors a forge renders (GitHub and Gitea: lowercase, punctuation dropped,
    spaces to dashes)."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_alert_rules_are_valid() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in run_promtool("check", "rules", "alerts.yml")
    assert len(rules()) == 10


def test_alert_rules_fire_as_specified() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "alerts.test.yml")


def test_every_rule_links_its_runbook_section() -> None:
    sections = anchors((ROOT / "OPERATIONS.md").read_text())
    for rule in rules():
        url = rule["runbook_url"]
        assert url == RUNBOOK + rule["alert"].lower(), rule["alert"]
        assert url.removeprefix(RUNBOOK) in sections, f"OPERATIONS.md has no heading for {url}"


def test_lag_is_alerted_in_seconds_and_a_missing_job_is_alerted() -> None:
    expressions = {rule["alert"]: rule["expr"] for rule in rules()}
    assert "processor_consumer_lag_seconds" in expressions["ProcessorLagHigh"]
    assert expressions["ProcessorAbsent"].strip() == 'absent(up{job="processor"})'
