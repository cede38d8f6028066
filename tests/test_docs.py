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


def test_metrics_document_lists_every_metric() -> None:
    """docs/metrics.md is the operator's list: a metric added in code must be documented."""
    from processor.observability.metrics import Metrics

    document = (ROOT / "docs" / "metrics.md").read_text()
    names = [
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    ]
    missing = [name for name in names if f"`{name}`" not in document]
    assert not missing, f"docs/metrics.md does not document {missing}"


def test_docs_index_links_resolve() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for target in ("stream-input.md", "storage.md", "websocket.md", "metrics.md"):
        assert f"]({target})" in index
        assert (ROOT / "docs" / target).is_file()
