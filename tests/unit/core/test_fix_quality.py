"""Fix quality and device state, the pure parts (docs/stream-input.md, docs/pipeline.md): which
fixes are implausible and why, state that only moves forward and is LRU-capped, and the cheap
distance the speed rule uses; through the pipeline: tests/integration/core/test_fix_quality.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codecs.position import Position
from processor.codecs.quality import QualityRules, equirectangular_m, faulty_reason
from processor.core.device_state import DeviceStates
from processor.domain.rules.geometry import haversine_m
from tests.support.fixes import BASE_TIME

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
