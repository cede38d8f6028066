"""A speed zone on the demo's stage, so the page has violations and a zone to draw.

The generated stage (`processor_dev.rally_stage`) has no speed zones. The demo adds one between the
second and fourth controls (a stretch where most cars cruise faster than its limit): 80 km/h,
5 km/h tolerance, at least 2 s over, penalty brackets 60/120/180 s by peak excess over the limit
(the `speed_zones` schema of docs/racing-domain.md). Only when the table exists: a database
whose racing tables predate zones simply has none.
"""

from __future__ import annotations

import uuid

import orjson
import psycopg

from processor_dev.rally_stage import RallyStage

LIMIT_KMH = 80.0
TOLERANCE_KMH = 5.0
MIN_DURATION_S = 2.0
PENALTIES = [
    {"up_to_kmh": 20, "penalty_s": 60},
    {"up_to_kmh": 40, "penalty_s": 120},
    {"penalty_s": 180},
]
STEP_M = 25.0  # the zone's polyline: a point every STEP_M metres along the route


def demo_zone(stage: RallyStage) -> dict[str, object] | None:
    """The zone as the page reads it (`/scenario.json` `zones`), or None on a short stage."""
    if len(stage.controls) < 4:
        return None
    start, end = stage.controls[1], stage.controls[3]
    steps = max(1, int((end.at_m - start.at_m) / STEP_M))
    points = []
    for k in range(steps + 1):
        lat, lon, _heading = stage.route.at(start.at_m + (end.at_m - start.at_m) * k / steps)
        points.append([lat, lon])
    return {
        # deterministic like the rest of the scenario: the same seed gives the same ids
        "id": str(uuid.uuid5(uuid.UUID(stage.stage_id), "demo speed zone")),
        "start_control_id": start.id,
        "end_control_id": end.id,
        "max_speed_kmh": LIMIT_KMH,
        "tolerance_kmh": TOLERANCE_KMH,
        "points": points,
    }


def insert_zone(database_url: str, stage: RallyStage) -> dict[str, object] | None:
    """Write the demo's zone into `speed_zones` (if that table exists); the zone or None."""
    zone = demo_zone(stage)
    if zone is None:
        return None
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('speed_zones') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return None
        conn.execute(
            "INSERT INTO speed_zones (id, stage_id, start_control_id, end_control_id, limit_kmh,"
            " tolerance_kmh, min_duration_s, penalties) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (
                zone["id"], stage.stage_id, zone["start_control_id"], zone["end_control_id"],
                LIMIT_KMH, TOLERANCE_KMH, MIN_DURATION_S, orjson.dumps(PENALTIES).decode(),
            ),
        )  # fmt: skip
    return zone
