"""Building, publishing and checking telemetry in tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import redis

BASE_TIME = datetime(2026, 5, 12, 10, 0, tzinfo=UTC)


def fix(
    device: str = "356307042441013",
    second: float = 0,
    *,
    lat: float = 41.3,
    lon: float = 19.8,
    attributes: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One valid Position document (as upstream sends it)."""
    document: dict[str, Any] = {
        "device_id": device,
        "timestamp": (BASE_TIME + timedelta(seconds=second)).isoformat().replace("+00:00", "Z"),
        "latitude": lat,
        "longitude": lon,
        "altitude": 100.0,
        "angle": 90,
        "speed": 50,
        "satellites": 10,
        "priority": 0,
        "attributes": dict(attributes or {}),
    }
    document.update(extra)
    return document


def publish(client: redis.Redis, stream: str, documents: Iterable[Any]) -> list[str]:
    """XADD each document as `payload` (dicts are JSON-encoded, bytes/str sent as they are)."""
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    count = 0
    for document in documents:
        payload = document if isinstance(document, bytes | str) else orjson.dumps(document)
        pipe.xadd(stream, {"payload": payload})
        count += 1
        if count % 1000 == 0:
            ids.extend(i.decode() for i in pipe.execute())
    ids.extend(i.decode() for i in pipe.execute())
    return ids


def pending_count(client: redis.Redis, stream: str, group: str = "processor") -> int:
    return int(client.xpending(stream, group)["pending"])


def rows(database_url: str, query: str = "SELECT count(*) FROM positions") -> Any:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


def row_count(database_url: str) -> int:
    return int(rows(database_url)[0][0])
