"""The expected database state for a sequence of published documents, computed independently.

Mirrors docs/pipeline.md in the plainest possible way (stream order, first value of a key wins, a
record is `merged` only when it adds an IO key), so pipeline tests can compare rows and counters
exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs


@attrs.define
class Expected:
    attributes: dict[tuple[str, datetime], dict[str, Any]] = attrs.Factory(dict)
    inserted: int = 0
    merged: int = 0
    duplicate: int = 0


def expected_state(documents: Iterable[dict[str, Any]]) -> Expected:
    result = Expected()
    for document in documents:
        key = (document["device_id"], datetime.fromisoformat(document["timestamp"]))
        attributes = document.get("attributes") or {}
        stored = result.attributes.get(key)
        if stored is None:
            result.attributes[key] = dict(attributes)
            result.inserted += 1
        elif set(attributes) - set(stored):
            for name, value in attributes.items():
                stored.setdefault(name, value)
            result.merged += 1
        else:
            result.duplicate += 1
    return result
