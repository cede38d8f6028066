"""Prose where it belongs: a module's docstring says its purpose and invariants in a few lines;
why it is so, and how it was measured, is in docs/ (decisions.md and the topic pages), where it
can be kept current. Issue numbers mean nothing to a reader of the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

MODULES = sorted(
    path
    for tree in ("src", "benchmarks")
    for path in (ROOT / tree).rglob("*.py")
    if "node_modules" not in path.parts
)
# A module's task tree (app.py, live/server.py) is a picture, not prose: a little more room.
MAX_DOCSTRING_LINES = 16
ISSUE_REFERENCE = re.compile(r"\b[Ii]ssues? ?#?\d+|\(#\d+\)")


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_a_module_docstring_is_a_few_lines(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    lines = len(docstring.splitlines())
    assert lines <= MAX_DOCSTRING_LINES, (
        f"{_name(path)}: a module docstring of {lines} lines; keep purpose and invariants, "
        "move the reasons to docs/decisions.md or the topic page"
    )


def test_no_issue_numbers_in_the_code() -> None:
    found = [
        f"{_name(path)}:{number}: {line.strip()}"
        for path in MODULES
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ISSUE_REFERENCE.search(line)
    ]
    assert not found, "issue numbers in the code (say what the thing is instead):\n" + "\n".join(
        found
    )
