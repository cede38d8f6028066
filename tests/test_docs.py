"""The README documents every setting and the two quick-start commands; CI runs the same."""

from __future__ import annotations

from pathlib import Path

from processor.config import settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f.metadata["env"] for f in settings() if f"`{f.metadata['env']}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "just test" in readme and "just demo" in readme
    assert "\njust test\n" in ci
