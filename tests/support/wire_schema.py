"""The live protocol's JSON Schema (docs/websocket.schema.json), compiled once for the tests.

Every frame the live tests receive goes through `server_frame` (tests/support/live.py), so the
schema is checked against what the server really sends, and a field added to a frame without
being documented there fails the suite.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "websocket.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(SCHEMA.read_bytes())
    return document


@functools.cache
def validator(definition: str) -> Draft202012Validator:
    """A validator of one `$defs` entry (e.g. "serverFrame"), references resolved in the file."""
    return Draft202012Validator({**schema(), "oneOf": [{"$ref": f"#/$defs/{definition}"}]})


def problems(document: Any, definition: str = "serverFrame") -> list[str]:
    return [error.message for error in validator(definition).iter_errors(document)]


def server_frame(document: Any) -> Any:
    """`document`, after checking it is a server frame of the schema (AssertionError if not)."""
    found = problems(document)
    assert not found, (
        f"frame does not match docs/websocket.schema.json: {found[:3]} {document!r:.300}"
    )
    return document
