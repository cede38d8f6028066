"""Fix-quality rules for the durable pipeline: they live in the neutral `processor.quality`
(shared with `live`, which may not import `core`); re-exported here for existing imports."""

from __future__ import annotations

from processor.quality import (
    EARTH_RADIUS_M,
    MIN_SPEED_INTERVAL_S,
    QualityRules,
    faulty_reason,
    haversine_m,
    implied_speed_kmh,
)

__all__ = [
    "EARTH_RADIUS_M",
    "MIN_SPEED_INTERVAL_S",
    "QualityRules",
    "faulty_reason",
    "haversine_m",
    "implied_speed_kmh",
]
