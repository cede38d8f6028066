"""The reference pages are generated from the code and never stale; the README's commands
are the ones CI runs; the docs index links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.config import DOC, ENV, settings
from processor_dev import reference_docs
from tests.support.paths import ROOT


def test_generated_pages_are_up_to_date() -> None:
    stale = [str(path.relative_to(ROOT)) for path in reference_docs.stale()]
    assert not stale, f"{stale} differ from the code: run `{reference_docs.REGENERATE}`"


def test_every_setting_says_what_it_does() -> None:
    undocumented = [f.metadata[ENV] for f in settings() if not f.metadata.get(DOC, "").strip()]
    assert not undocumented, f"settings without doc=...: {undocumented}"


def test_configuration_page_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f.metadata[ENV] for f in settings() if f"| `{f.metadata[ENV]}` |" not in page]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_metrics_page_lists_every_metric() -> None:
    from processor.observability.metrics import Metrics

    document = (ROOT / "docs" / "metrics.md").read_text()
    names = [
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    ]
    missing = [name for name in names if f"| `{name}` |" not in document]
    assert not missing, f"docs/metrics.md does not document {missing}"


def test_a_stale_page_is_reported_with_the_command_that_regenerates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale_page = tmp_path / "configuration.md"
    stale_page.write_text("# Configuration\n| `REDIS_URL` | old |\n")
    monkeypatch.setattr(reference_docs, "CONFIGURATION", stale_page)
    monkeypatch.setattr(reference_docs, "ROOT", tmp_path)
    metrics_copy = tmp_path / "metrics.md"
    metrics_copy.write_text(reference_docs.METRICS.read_text())
    monkeypatch.setattr(reference_docs, "METRICS", metrics_copy)
    assert reference_docs.stale() == [stale_page]
    assert reference_docs.main(["--check"]) == 1
    assert reference_docs.main([]) == 0  # regenerates
    assert reference_docs.stale() == []


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "just test" in readme and "just demo" in readme
    assert "\njust test\n" in ci
    assert "\njust fresh-machine-test" in ci


DOCS = ROOT / "docs"
INDEX = DOCS / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target): the targets of Markdown links


def relative_links(page: Path) -> list[str]:
    """The targets of `page`'s links to files of this repository (no scheme, no bare anchor)."""
    return [
        target
        for target in LINK.findall(page.read_text())
        if not target.startswith("#") and ":" not in target.split("/", 1)[0]
    ]


def test_docs_index_links_every_page() -> None:
    linked = set(relative_links(INDEX))
    pages = sorted(p.name for p in DOCS.glob("*.md") if p != INDEX)
    assert pages, "no pages in docs/"
    assert [page for page in pages if page not in linked] == []


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_relative_links_resolve(page: Path) -> None:
    broken = [
        target
        for target in relative_links(page)
        if not (page.parent / target.split("#", 1)[0]).exists()
    ]
    assert broken == []
