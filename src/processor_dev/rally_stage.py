"""A simulated special stage: a generated route with controls, and the cars that drive it.

`processor simulate --stage` and `processor demo` use it to exercise the racing domain end to
end. Pure and deterministic like `simulate`: the same scenario (seed) gives the same route,
controls, ids and fixes. Only how a car moves is new here (staggered starts; every seventh car
misses a waypoint); the fix schedule and the quirks are `simulate.Simulator`'s. `scenario_sql`
writes the scenario as SQL for the Directus tables. The route, the controls and the driving:
docs/race-control-page.md, Internals.
"""

from __future__ import annotations

import bisect
import math
import random
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs

from processor_dev.simulate import (
    AREA_LAT,
    AREA_LON,
    IMEI_BASE,
    METRES_PER_DEGREE,
    Scenario,
    Simulator,
    _Car,
)

LEG_M = (300.0, 800.0)
TURN_DEG = 25.0
LEAD_IN_M = 100.0  # from the route's beginning to the start line (and finish to the end)
LINE_HALF_M = 40.0
WAYPOINT_RADIUS_M = 25.0
PENALTY_S = {"waypoint": 300, "checkpoint": 600}
ACCELERATION_MS2 = 3.0
SWERVE_M = 60.0
SWERVE_SPAN_M = 150.0
CLASSES = ("T1", "T2", "T3", "T4")


@attrs.frozen
class StageSettings:
    length_km: float = 3.0
    controls: int = 6  # intermediate controls between start and finish
    start_interval_s: float = 2.0
    first_start_s: float = 5.0  # simulated seconds before the first car starts
    lead_in_m: float = LEAD_IN_M  # route before the start line (and after the finish)

    def __attrs_post_init__(self) -> None:
        if not 0.5 <= self.length_km <= 500:
            raise ValueError("--stage-km must be from 0.5 to 500")
        if not 0 <= self.controls <= 1000:
            raise ValueError("--stage-controls must be from 0 to 1000")
        if not 0 <= self.start_interval_s <= 3600:
            raise ValueError("--start-interval must be from 0 to 3600 seconds")
        if not 0 <= self.first_start_s <= 86_400 or not 1 <= self.lead_in_m <= 10_000:
            raise ValueError("first start 0..86400 s, lead-in 1..10000 m")


@attrs.frozen
class StageControl:
    id: str
    ordinal: int
    kind: str
    at_m: float  # distance along the route
    lat1: float | None = None
    lon1: float | None = None
    lat2: float | None = None
    lon2: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    validate_radius_m: float | None = None
    penalty_s: int = 0


@attrs.frozen
class StageEntry:
    id: str
    device_uuid: str
    imei: str
    number: str
    klass: str
    cruise_ms: float
    starts_at_s: float  # simulated seconds after the scenario start
    swerve_at_m: float | None  # around this waypoint the car leaves the road


class Route:
    """A polyline with arc-length lookup (equirectangular per leg: fine over 800 m)."""

    def __init__(self, rng: random.Random, length_m: float) -> None:
        lat = rng.uniform(AREA_LAT[0] + 0.2, AREA_LAT[1] - 0.2)
        lon = rng.uniform(AREA_LON[0] + 0.2, AREA_LON[1] - 0.2)
        heading = rng.uniform(0.0, 360.0)
        self.points: list[tuple[float, float]] = [(lat, lon)]
        self.headings: list[float] = []
        self.starts: list[float] = [0.0]  # cumulative distance at each point
        travelled = 0.0
        while travelled < length_m:
            leg = min(rng.uniform(*LEG_M), length_m - travelled)
            self.headings.append(heading)
            lat, lon = _offset(lat, lon, heading, leg)
            self.points.append((lat, lon))
            travelled += leg
            self.starts.append(travelled)
            heading = (heading + rng.uniform(-TURN_DEG, TURN_DEG)) % 360.0
        self.length_m = travelled

    def at(self, metres: float) -> tuple[float, float, float]:
        """(latitude, longitude, heading) `metres` along the route (clamped to its ends)."""
        metres = max(0.0, min(self.length_m, metres))
        leg = min(bisect.bisect_right(self.starts, metres) - 1, len(self.headings) - 1)
        lat, lon = self.points[leg]
        heading = self.headings[leg]
        lat, lon = _offset(lat, lon, heading, metres - self.starts[leg])
        return lat, lon, heading


def _offset(lat: float, lon: float, heading_deg: float, metres: float) -> tuple[float, float]:
    north = metres * math.cos(math.radians(heading_deg)) / METRES_PER_DEGREE
    east = metres * math.sin(math.radians(heading_deg)) / METRES_PER_DEGREE
    return lat + north, lon + east / math.cos(math.radians(lat))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@attrs.frozen
class RallyStage:
    """The whole scenario: ids, route, controls and entries."""

    event_id: str
    stage_id: str
    route: Route
    controls: tuple[StageControl, ...]
    entries: tuple[StageEntry, ...]
    opens_at: datetime

    @classmethod
    def generate(cls, scenario: Scenario, settings: StageSettings) -> RallyStage:
        rng = random.Random(f"stage-{scenario.seed}")
        route = Route(rng, settings.length_km * 1000 + 2 * settings.lead_in_m)
        controls = _controls(rng, route, settings.controls, settings.lead_in_m)
        waypoints = [c.at_m for c in controls if c.kind == "waypoint"]
        entries = []
        for index in range(scenario.devices):
            swerve = waypoints[index % len(waypoints)] if waypoints and index % 7 == 3 else None
            entries.append(
                StageEntry(
                    id=_uuid(rng),
                    device_uuid=_uuid(rng),
                    imei=str(IMEI_BASE + index),
                    number=str(101 + index),
                    klass=CLASSES[index % len(CLASSES)],
                    cruise_ms=rng.uniform(60.0, 130.0) / 3.6,
                    starts_at_s=settings.first_start_s + index * settings.start_interval_s,
                    swerve_at_m=swerve,
                )
            )
        return cls(
            event_id=_uuid(rng),
            stage_id=_uuid(rng),
            route=route,
            controls=tuple(controls),
            entries=tuple(entries),
            opens_at=scenario.start - timedelta(minutes=1),
        )


def _controls(rng: random.Random, route: Route, count: int, lead_in_m: float) -> list[StageControl]:
    first, last = lead_in_m, route.length_m - lead_in_m
    places = [("start", first)]
    step = (last - first) / (count + 1)
    places += [
        ("waypoint" if i % 2 == 0 else "checkpoint", first + step * (i + 1)) for i in range(count)
    ]
    places.append(("finish", last))
    controls = []
    for ordinal, (kind, at_m) in enumerate(places, start=1):
        lat, lon, heading = route.at(at_m)
        if kind == "waypoint":
            controls.append(
                StageControl(
                    _uuid(rng), ordinal, kind, at_m, latitude=lat, longitude=lon,
                    validate_radius_m=WAYPOINT_RADIUS_M, penalty_s=PENALTY_S[kind],
                )
            )  # fmt: skip
            continue
        # point 1 on the driver's right, point 2 on the left: driving on crosses forward
        lat1, lon1 = _offset(lat, lon, heading + 90.0, LINE_HALF_M)
        lat2, lon2 = _offset(lat, lon, heading - 90.0, LINE_HALF_M)
        controls.append(
            StageControl(
                _uuid(rng), ordinal, kind, at_m, lat1=lat1, lon1=lon1, lat2=lat2, lon2=lon2,
                penalty_s=PENALTY_S.get(kind, 0),
            )
        )  # fmt: skip
    return controls


def distance_at(entry: StageEntry, t: float) -> tuple[float, float]:
    """(metres along the route, speed m/s) of a car `t` simulated seconds into the scenario."""
    driving = t - entry.starts_at_s
    if driving <= 0:
        return 0.0, 0.0
    ramp = entry.cruise_ms / ACCELERATION_MS2
    if driving <= ramp:
        return ACCELERATION_MS2 * driving * driving / 2, ACCELERATION_MS2 * driving
    return entry.cruise_ms * ramp / 2 + entry.cruise_ms * (driving - ramp), entry.cruise_ms


class StageSimulator(Simulator):
    """`Simulator` whose cars drive the stage's route instead of random roads."""

    def __init__(self, scenario: Scenario, stage: RallyStage) -> None:
        if len(stage.entries) < scenario.devices:
            raise ValueError("the stage has fewer entries than the scenario has devices")
        self.stage = stage
        self._driven: dict[str, float] = {}
        super().__init__(scenario)

    def _drive(self, car: _Car, now_s: float) -> None:
        entry = self.stage.entries[int(car.device_id) - IMEI_BASE]
        route = self.stage.route
        metres, speed = distance_at(entry, now_s)
        if metres >= route.length_m:
            metres, speed = route.length_m, 0.0  # parked after the end of the stage
        lat, lon, heading = route.at(metres)
        if entry.swerve_at_m is not None:
            away = SWERVE_M * max(0.0, 1.0 - abs(metres - entry.swerve_at_m) / SWERVE_SPAN_M)
            lat, lon = _offset(lat, lon, heading + 90.0, away)
        car.odometer_m += max(0.0, metres - self._driven.get(car.device_id, 0.0))
        self._driven[car.device_id] = metres
        car.clock_s = now_s
        car.origin, car.heading, car.offset_m = (lat, lon), heading, 0.0
        car.length_m = math.inf  # never used: the route, not the car, decides where it goes
        car.speed_kmh = speed * 3.6


def _sql(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _insert(table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    values = ",\n  ".join("(" + ", ".join(_sql(v) for v in row) + ")" for row in rows)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES\n  {values};\n"


CONTROL_COLUMNS = (
    "id", "stage_id", "ordinal", "kind", "lat1", "lon1", "lat2", "lon2", "latitude",
    "longitude", "validate_radius_m", "penalty_s",
)  # fmt: skip


def _control_row(stage_id: str, x: StageControl) -> tuple[object, ...]:
    return (
        x.id, stage_id, x.ordinal, x.kind, x.lat1, x.lon1, x.lat2, x.lon2, x.latitude,
        x.longitude, x.validate_radius_m, x.penalty_s,
    )  # fmt: skip


def scenario_sql(stage: RallyStage, name: str = "Simulated rally") -> str:
    """The scenario as SQL for the Directus tables (one transaction)."""
    c = stage.controls
    parts = [
        "BEGIN;\n",
        _insert("events", ("id", "name"), [(stage.event_id, name)]),
        _insert(
            "entries",
            ("id", "event_id", "number", "class"),
            [(e.id, stage.event_id, e.number, e.klass) for e in stage.entries],
        ),
        _insert("devices", ("id", "imei"), [(e.device_uuid, e.imei) for e in stage.entries]),
        _insert(
            "entry_devices",
            ("entry_id", "device_id"),
            [(e.id, e.device_uuid) for e in stage.entries],
        ),
        _insert(
            "stages",
            ("id", "event_id", "name", "ordinal", "opens_at", "closes_at"),
            [(stage.stage_id, stage.event_id, "SS1", 1, stage.opens_at.isoformat(), None)],
        ),
        _insert("controls", CONTROL_COLUMNS, [_control_row(stage.stage_id, x) for x in c]),
        "COMMIT;\n",
    ]
    return "".join(parts)
