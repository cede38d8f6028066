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
    for count, document in enumerate(documents, start=1):
        payload = document if isinstance(document, bytes | str) else orjson.dumps(document)
        pipe.xadd(stream, {"payload": payload})
        if count % 1000 == 0:
            ids.extend(i.decode() for i in pipe.execute())
    ids.extend(i.decode() for i in pipe.execute())
    return ids


def pending_count(client: redis.Redis, stream: str, group: str = "processor") -> int:
    return int(client.xpending(stream, group)["pending"])


def consumer_pending(
    client: redis.Redis, stream: str, consumer: str, group: str = "processor"
) -> int:
    """Entries delivered to `consumer` and not acked yet."""
    return len(client.xpending_range(stream, group, "-", "+", 10_000_000, consumername=consumer))


def rows(database_url: str, query: str = "SELECT count(*) FROM positions") -> Any:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


def row_count(database_url: str) -> int:
    return int(rows(database_url)[0][0])


def stream_id_key(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)


def acked_ids(
    client: redis.Redis, stream: str, ids: list[str], group: str = "processor"
) -> set[str]:
    """Entries of `ids` that the group has delivered and that are no longer pending."""
    groups = client.xinfo_groups(stream) if client.exists(stream) else []
    info = next((g for g in groups if g["name"] == group.encode()), None)
    if info is None:  # the group does not exist yet: nothing was delivered
        return set()
    last = stream_id_key(info["last-delivered-id"])
    pending = {
        p["message_id"].decode()
        for p in client.xpending_range(stream, group, min="-", max="+", count=10_000_000)
    }
    return {i for i in ids if stream_id_key(i) <= last and i not in pending}


def stored_keys(database_url: str) -> set[tuple[str, str]]:
    """(device_id, ISO timestamp in UTC with Z) of every stored row."""
    with psycopg.connect(database_url) as conn:
        return {
            (device_id, ts.astimezone(UTC).isoformat().replace("+00:00", "Z"))
            for device_id, ts in conn.execute("SELECT device_id, ts FROM positions")
        }


def key_of(document: dict[str, Any]) -> tuple[str, str]:
    ts = datetime.fromisoformat(document["timestamp"]).astimezone(UTC)
    return document["device_id"], ts.isoformat().replace("+00:00", "Z")


def assert_acked_have_rows(
    client: redis.Redis, stream: str, database_url: str, published: dict[str, dict[str, Any]]
) -> int:
    """The core invariant: no entry is acked before its row is committed. Returns #acked.

    Acks are read before rows: rows only grow, so an entry acked at the first read must have
    its row at the second.
    """
    acked = acked_ids(client, stream, list(published))
    if not acked:  # e.g. killed before the first ack (the table may not even exist yet)
        return 0
    keys = stored_keys(database_url)
    missing = [i for i in acked if key_of(published[i]) not in keys]
    assert not missing, f"{len(missing)} entries acked without a row, e.g. {missing[:3]}"
    return len(acked)
