"""Fix quality and device state (docs/stream-input.md, docs/pipeline.md): implausible fixes are
stored flagged, counted by reason, never advance device state; state is LRU-capped and rehydrated
from the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import processor.core.writer as writer_module
from processor.codecs.position import Position
from processor.codecs.quality import QualityRules, equirectangular_m, faulty_reason, haversine_m
from processor.core.device_state import DeviceStates
from tests.support.fixes import BASE_TIME, fix, pending_count, publish, row_count
from tests.support.service import running_service, wait_until

RULES = QualityRules(future_tolerance=timedelta(seconds=300), max_speed_kmh=400.0)
NOW = BASE_TIME + timedelta(hours=1)


def at(second: float, lat: float = 41.3, lon: float = 19.8, **extra: Any) -> Position:
    return Position("dev", BASE_TIME + timedelta(seconds=second), lat, lon, **extra)


# --- the rules (pure) ---------------------------------------------------------------------------


def test_haversine_is_right_for_a_known_distance() -> None:
    # One degree of latitude is ~111.2 km everywhere.
    assert haversine_m(41.0, 19.8, 42.0, 19.8) == pytest.approx(111_195, rel=1e-3)


@pytest.mark.parametrize(
    ("position", "last_good", "reason"),
    [
        (at(10, satellites=0), None, "zero_satellites"),
        (at(10, lat=0.0, lon=0.0), None, "null_island"),
        (at(3600 + 301), None, "future_timestamp"),
        (at(3600 + 299), None, None),  # within FUTURE_TOLERANCE_S
        # 1 degree of latitude (~111 km) in 60 s is ~6,700 km/h
        (at(60, lat=42.3), at(0), "implausible_speed"),
        # 1 km in 60 s is 60 km/h
        (at(60, lat=41.309), at(0), None),
        # same timestamp (event + periodic record): no speed can be implied
        (at(0, lat=42.3), at(0), None),
        # a late fix is judged by its distance in time from the last good one, either way
        (at(-60, lat=42.3), at(0), "implausible_speed"),
        (at(10, satellites=12), None, None),
        (at(10, satellites=None), None, None),  # unknown satellites is not zero
    ],
)
def test_faulty_reason(position: Position, last_good: Position | None, reason: str | None) -> None:
    assert faulty_reason(position, last_good, NOW, RULES) == reason


# --- device state (pure) ------------------------------------------------------------------------


def test_state_moves_only_forward_and_faulty_fixes_do_not_advance_it() -> None:
    states = DeviceStates(cap=10)
    seen = datetime(2026, 5, 12, tzinfo=UTC)
    states.observe(at(10), good=True, seen_at=seen)
    states.observe(at(5), good=True, seen_at=seen)  # late: older than the last one
    states.observe(at(20, satellites=0), good=False, seen_at=seen)  # faulty
    state = states.get("dev")
    assert state is not None
    assert state.last_position == at(10)
    assert state.positions_this_session == 3
    assert state.last_seen == seen


def test_state_is_lru_capped_and_counts_evictions() -> None:
    evictions: list[int] = []
    states = DeviceStates(cap=2, on_evict=lambda: evictions.append(1))
    seen = datetime(2026, 5, 12, tzinfo=UTC)
    for device in ("a", "b"):
        states.observe(Position(device, BASE_TIME, 1.0, 1.0), good=True, seen_at=seen)
    states.get("a")  # touch: b is now the least recently used
    states.observe(Position("c", BASE_TIME, 1.0, 1.0), good=True, seen_at=seen)
    assert "b" not in states and "a" in states and "c" in states
    assert len(states) == 2 and len(evictions) == 1
    assert states.missing(["a", "b", "c", "d"]) in (["b", "d"], ["d", "b"])


# --- through the pipeline ---------------------------------------------------------------------


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
        reason: faulty.labels(reason)._value.get()
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
    assert restarted.metrics.faulty_positions.labels("implausible_speed")._value.get() == 25


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
    assert service.metrics.device_state_evictions._value.get() >= 1
    assert service.metrics.device_state_size._value.get() == 2


# --- the cheap distance the speed rule uses ---------------------------------------------------


@settings(max_examples=300)
@given(
    st.floats(-85, 85),
    st.floats(-180, 180),
    st.floats(-0.5, 0.5),  # up to ~55 km apart: far beyond two fixes of one vehicle
    st.floats(-0.5, 0.5),
)
def test_equirectangular_agrees_with_haversine_between_nearby_fixes(
    lat: float, lon: float, dlat: float, dlon: float
) -> None:
    lat2 = max(-89.9, min(89.9, lat + dlat))
    lon2 = (lon + dlon + 180.0) % 360.0 - 180.0  # may cross the antimeridian
    exact = haversine_m(lat, lon, lat2, lon2)
    cheap = equirectangular_m(lat, lon, lat2, lon2)
    assert cheap == pytest.approx(exact, rel=2e-3, abs=0.01)


def test_equirectangular_crosses_the_antimeridian_the_short_way() -> None:
    assert equirectangular_m(0.0, 179.99, 0.0, -179.99) == pytest.approx(2_224, rel=1e-3)
