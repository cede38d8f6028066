"""Fix quality (SPEC §2): which decodable fixes are implausible and why.

Faulty fixes are stored (for analysis) but flagged, excluded from live data, and never advance
device state. Pure functions: the caller supplies the clock and the device's last good fix.

A neutral module (not in `core`) because both layers judge fixes: the writer (`core`) flags what
it stores, and the live broadcast (`live`, which may not import `core`) must withhold the same
implausible fixes from clients, judging them against the device's last broadcast fix.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import attrs

from processor.position import Position

EARTH_RADIUS_M = 6_371_008.8
# Two fixes closer in time than this give no meaningful speed (GPS jitter / same-second records).
MIN_SPEED_INTERVAL_S = 1.0


@attrs.frozen
class QualityRules:
    future_tolerance: timedelta
    max_speed_kmh: float


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def implied_speed_kmh(previous: Position, position: Position) -> float | None:
    seconds = abs((position.ts - previous.ts).total_seconds())
    if seconds < MIN_SPEED_INTERVAL_S:
        return None
    metres = haversine_m(
        previous.latitude, previous.longitude, position.latitude, position.longitude
    )
    return metres / seconds * 3.6


def faulty_reason(
    position: Position, last_good: Position | None, now: datetime, rules: QualityRules
) -> str | None:
    """The first reason this fix is implausible, or None when it is good."""
    if position.satellites == 0:
        return "zero_satellites"
    if position.latitude == 0.0 and position.longitude == 0.0:
        return "null_island"
    if position.ts > now + rules.future_tolerance:
        return "future_timestamp"
    if last_good is not None:
        speed = implied_speed_kmh(last_good, position)
        if speed is not None and speed > rules.max_speed_kmh:
            return "implausible_speed"
    return None
