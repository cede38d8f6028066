"""Fix quality (docs/stream-input.md): which decodable fixes are implausible and why.

Faulty fixes are stored (for analysis) but flagged, excluded from live data, and never advance
device state. Pure functions: the caller supplies the clock and the device's last good fix.

A neutral module (not in `core`) because both layers judge fixes: the writer (`core`) flags what
it stores, and the live broadcast (`live`, which may not import `core`) must withhold the same
implausible fixes from clients, judging them against the device's last broadcast fix.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import attrs

from processor.codecs.position import Position

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius, as the racing domain's geometry
# Two fixes closer in time than this give no meaningful speed (GPS jitter / same-second records).
MIN_SPEED_INTERVAL_S = 1.0


@attrs.frozen
class QualityRules:
    future_tolerance: timedelta
    max_speed_kmh: float


def equirectangular_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance on the plane tangent at the mean latitude: a third of haversine's cost.

    Between consecutive fixes of one vehicle (metres to a few km apart) it agrees with
    haversine to well under 0.1 %; the speed rule only has to tell 400 km/h from a jump of
    tens or thousands of km/h, so the difference never changes a verdict that matters
    (tests compare the two). Longitudes are wrapped, so crossing the antimeridian is short.
    """
    x = math.radians((lon2 - lon1 + 180.0) % 360.0 - 180.0) * math.cos(
        math.radians((lat1 + lat2) / 2)
    )
    return EARTH_RADIUS_M * math.hypot(x, math.radians(lat2 - lat1))


def implied_speed_kmh(previous: Position, position: Position) -> float | None:
    return _speed_kmh(_values(previous), _values(position))


def _speed_kmh(previous: Fix, fix: Fix) -> float | None:
    seconds: float = abs((fix[1] - previous[1]).total_seconds())
    if seconds < MIN_SPEED_INTERVAL_S:
        return None
    metres = equirectangular_m(previous[2], previous[3], fix[2], fix[3])
    return metres / seconds * 3.6


def faulty_reason(
    position: Position, last_good: Position | None, now: datetime, rules: QualityRules
) -> str | None:
    """The first reason this fix is implausible, or None when it is good."""
    return fix_fault(
        _values(position),
        None if last_good is None else _values(last_good),
        now + rules.future_tolerance,
        rules.max_speed_kmh,
    )


# A fix as plain values in docs/storage.md column order (device_id, ts, latitude, longitude,
# altitude, angle, speed, satellites, ...): a `position.StoredRow`, as the batch writer holds it.
Fix = tuple[Any, ...]


def _values(p: Position) -> Fix:
    return (p.device_id, p.ts, p.latitude, p.longitude, None, None, None, p.satellites)


def fix_fault(
    fix: Fix, last_good: Fix | None, latest_ts: datetime, max_speed_kmh: float
) -> str | None:
    """`faulty_reason` on plain values (the batch writer's form: no Position per fix).

    `latest_ts` is the processor's clock plus FUTURE_TOLERANCE_S, computed once per batch.
    """
    if fix[7] == 0:
        return "zero_satellites"
    if fix[2] == 0.0 and fix[3] == 0.0:
        return "null_island"
    if fix[1] > latest_ts:
        return "future_timestamp"
    if last_good is not None:
        speed = _speed_kmh(last_good, fix)
        if speed is not None and speed > max_speed_kmh:
            return "implausible_speed"
    return None
