"""Fix quality and device state through the pipeline (docs/stream-input.md, docs/pipeline.md):
implausible fixes are stored flagged, counted by reason, never advance device state; state is
rehydrated from the database. The rules themselves: tests/unit/core/test_fix_quality.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis

import processor.core.writer as writer_module
from tests.support.fixes import BASE_TIME, fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import running_service, wait_until


def stored(database_url: str) -> dict[tuple[str, int], bool]:
    """(device, seconds after BASE_TIME) -> faulty."""
    with psycopg.connect(database_url) as conn:
        return {
            (device, int((ts - BASE_TIME).total_seconds())): faulty
            for device, ts, faulty in conn.execute("SELECT device_id, ts, faulty FROM positions")
        }


async def test_implausible_fixes_are_stored_flagged_counted_and_do_not_advance_state(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    documents = [
        fix("car", 0, lat=41.30),
        fix("car", 60, lat=41.309),  # 60 km/h: good
        fix("car", 120, lat=43.0),  # ~11,000 km/h from the last good fix: faulty
        # judged against the fix at 60 s (the faulty one did not advance state): 60 km/h
        fix("car", 180, lat=41.318),
        fix("car", 240, satellites=0),
        fix("car", 300, lat=0.0, lon=0.0),
        {**fix("car", 0), "timestamp": future},
    ]
    async with running_service(env) as service:
        publish(redis_client, stream_key, documents)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
        await wait_until(lambda: row_count(database_url) == len(documents))
        state = service.states.get("car")
    rows = stored(database_url)
    assert rows[("car", 0)] is False and rows[("car", 60)] is False
    assert rows[("car", 120)] is True and rows[("car", 180)] is False
    assert rows[("car", 240)] is True and rows[("car", 300)] is True
    assert sum(rows.values()) == 4
    faulty = service.metrics.faulty_positions
    assert {
        reason: value(faulty.labels(reason))
        for reason in ("implausible_speed", "zero_satellites", "null_island", "future_timestamp")
    } == {"implausible_speed": 1, "zero_satellites": 1, "null_island": 1, "future_timestamp": 1}
    assert state is not None and state.last_position is not None
    assert state.last_position.ts == BASE_TIME + timedelta(seconds=180)
    assert state.positions_this_session == len(documents)


async def test_state_is_rehydrated_from_the_database_once_per_batch(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a restart (or an eviction) a device's last good fix comes from the database, so the
    speed rule still holds; the look-up is one query per batch for all its unknown devices."""
    env = {**env, "WRITE_BATCH_SIZE": "1000", "READ_COUNT": "1000", "WRITE_FLUSH_MS": "200"}
    first = [fix(f"car{d}", 0, lat=41.30) for d in range(50)]
    async with running_service(env):
        publish(redis_client, stream_key, first)
        await wait_until(lambda: row_count(database_url) == len(first))

    lookups: list[int] = []
    original = writer_module.latest_good_positions

    def counting(conn: psycopg.Connection[Any], device_ids: Any) -> Any:
        lookups.append(len(device_ids))
        return original(conn, device_ids)

    monkeypatch.setattr(writer_module, "latest_good_positions", counting)
    # 60 s later every car is either 1 km away (plausible) or 111 km away (not).
    second = [fix(f"car{d}", 60, lat=41.309 if d % 2 else 42.30) for d in range(50)]
    async with running_service(env) as restarted:
        publish(redis_client, stream_key, second)
        await wait_until(lambda: row_count(database_url) == len(first) + len(second))
    rows = stored(database_url)
    assert [rows[(f"car{d}", 60)] for d in range(50)] == [d % 2 == 0 for d in range(50)]
    assert lookups == [50], "one rehydration query for the batch, covering every device"
    assert value(restarted.metrics.faulty_positions.labels("implausible_speed")) == 25


async def test_evicted_devices_are_rehydrated(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    env = {**env, "DEVICE_STATE_CAP": "2", "WRITE_BATCH_SIZE": "1", "READ_COUNT": "1"}
    documents = [
        fix("a", 0, lat=41.30),
        fix("b", 0),
        fix("c", 0),  # evicts a
        fix("a", 60, lat=42.30),  # a comes back from the database: 111 km in 60 s is faulty
    ]
    async with running_service(env) as service:
        publish(redis_client, stream_key, documents)
        await wait_until(lambda: row_count(database_url) == len(documents))
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
    assert stored(database_url)[("a", 60)] is True
    assert value(service.metrics.device_state_evictions) >= 1
    assert value(service.metrics.device_state_size) == 2
