"""A test stage with every kind of control, the cars that drive it, and how to read the results.

The course runs east along a local metric frame around (41.3 N, 19.8 E): x east, y north, metres.

    start line x=100 | waypoint (1000, 0) r=30 | checkpoint line x=2000 | finish line x=3000

Lines run from south (y=-150) to north (y=+150): looking north, west is on the left, so a car
driving east crosses them forward (left to right, docs/racing-domain.md).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import psycopg
import redis
import trio

from processor.app import Service
from tests.support.directus import FIXTURE as DIRECTUS_FIXTURE
from tests.support.fixes import BASE_TIME, fix
from tests.support.live import TOKEN, LiveRig
from tests.support.service import Rig, wait_until

RACING_FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "racing_schema.sql"
LAT0, LON0 = 41.3, 19.8
M_PER_DEG_LAT = 111_320.0
M_PER_DEG_LON = M_PER_DEG_LAT * math.cos(math.radians(LAT0))
T0 = BASE_TIME.timestamp()

START_X, WAYPOINT_X, CHECKPOINT_X, FINISH_X = 100.0, 1000.0, 2000.0, 3000.0
WAYPOINT_RADIUS = 30.0
WAYPOINT_PENALTY_S, CHECKPOINT_PENALTY_S = 300, 600
# A speed zone's penalties by peak excess over its limit: the example of docs/racing-domain.md.
BRACKETS = [
    {"up_to_kmh": 20, "penalty_s": 60},
    {"up_to_kmh": 40, "penalty_s": 120},
    {"penalty_s": 180},
]


def to_latlon(x: float, y: float) -> tuple[float, float]:
    return LAT0 + y / M_PER_DEG_LAT, LON0 + x / M_PER_DEG_LON


@attrs.frozen
class Course:
    event_id: str
    stage_id: str
    controls: dict[str, str]  # kind name ("start", "waypoint", ...) -> control id
    entries: dict[str, str]  # car name -> entry id
    devices: dict[str, str]  # car name -> IMEI


def create_tables(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(DIRECTUS_FIXTURE.read_text())
        conn.execute(RACING_FIXTURE.read_text())


def create_racing_tables(database_url: str) -> None:
    """The racing tables only (the Directus ones exist already, e.g. from `live_env`)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(RACING_FIXTURE.read_text())


def line(x: float) -> dict[str, float]:
    lat1, lon1 = to_latlon(x, -150)
    lat2, lon2 = to_latlon(x, 150)
    return {"lat1": lat1, "lon1": lon1, "lat2": lat2, "lon2": lon2}


def add_course(database_url: str, cars: Iterable[tuple[str, str | None]]) -> Course:
    """An event, one stage with start/waypoint/checkpoint/finish, and one entry (number, class)
    with one device per car. `cars`: (name, class)."""
    event_id, stage_id = str(uuid.uuid4()), str(uuid.uuid4())
    controls = {k: str(uuid.uuid4()) for k in ("start", "waypoint", "checkpoint", "finish")}
    entries: dict[str, str] = {}
    devices: dict[str, str] = {}
    wlat, wlon = to_latlon(WAYPOINT_X, 0)
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO events (id, name) VALUES (%s, 'Rally')", (event_id,))
        conn.execute(
            "INSERT INTO stages (id, event_id, name, ordinal, opens_at, closes_at) "
            "VALUES (%s, %s, 'SS1', 1, %s, NULL)",
            (stage_id, event_id, BASE_TIME),
        )
        rows: list[tuple[str, int, str, dict[str, float], int]] = [
            ("start", 1, "start", line(START_X), 0),
            ("waypoint", 2, "waypoint", {}, WAYPOINT_PENALTY_S),
            ("checkpoint", 3, "checkpoint", line(CHECKPOINT_X), CHECKPOINT_PENALTY_S),
            ("finish", 4, "finish", line(FINISH_X), 0),
        ]
        for name, ordinal, kind, geometry, penalty in rows:
            conn.execute(
                "INSERT INTO controls (id, stage_id, ordinal, kind, lat1, lon1, lat2, lon2, "
                "latitude, longitude, validate_radius_m, penalty_s) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    controls[name], stage_id, ordinal, kind,
                    geometry.get("lat1"), geometry.get("lon1"),
                    geometry.get("lat2"), geometry.get("lon2"),
                    wlat if kind == "waypoint" else None,
                    wlon if kind == "waypoint" else None,
                    WAYPOINT_RADIUS if kind == "waypoint" else None,
                    penalty,
                ),
            )  # fmt: skip
        for number, (name, klass) in enumerate(cars, 1):
            entry_id, device_uuid = str(uuid.uuid4()), str(uuid.uuid4())
            imei = f"35630704{number:07d}"
            conn.execute(
                "INSERT INTO entries (id, event_id, number, class) VALUES (%s, %s, %s, %s)",
                (entry_id, event_id, str(100 + number), klass),
            )
            conn.execute("INSERT INTO devices (id, imei) VALUES (%s, %s)", (device_uuid, imei))
            conn.execute(
                "INSERT INTO entry_devices (entry_id, device_id) VALUES (%s, %s)",
                (entry_id, device_uuid),
            )
            entries[name], devices[name] = entry_id, imei
    return Course(event_id, stage_id, controls, entries, devices)


def setup_course(rig: Rig, cars: Iterable[tuple[str, str | None]]) -> Course:
    """`add_course` in the rig's schema, the Directus and racing tables created first."""
    create_tables(rig.database_url)
    return add_course(rig.database_url, cars)


def live_course(live_rig: LiveRig, cars: Iterable[tuple[str, str | None]]) -> Course:
    """`add_course` in the rig's schema (racing tables created next to the Directus ones of
    `live_env`), its event readable by TOKEN's user."""
    create_racing_tables(live_rig.database_url)
    course = add_course(live_rig.database_url, cars)
    live_rig.directus.user(TOKEN, events={course.event_id})
    return course


# --- the domain engine on a running service ---------------------------------------------------


def domain_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the domain engine refreshing and reclaiming fast enough for a test.

    Directus gets 5 s to answer (the default is 3 s): live_env's 0.5 s cut is for the tests of
    that cut, and a race test's subscribe, answered by the in-process stand-in while the engine
    works on a loaded machine, must not turn into a 503."""
    return {
        **env,
        "DOMAIN_REFRESH_MS": "200",
        "RECLAIM_INTERVAL_S": "0.5",
        "DIRECTUS_AUTH_TIMEOUT_MS": "5000",
    }


def domain_done(client: redis.Redis, stream: str) -> bool:
    """Both groups have delivered every entry and hold none pending."""
    if not client.exists(stream):
        return False
    last = client.xinfo_stream(stream)["last-generated-id"]
    groups = {g["name"]: g for g in client.xinfo_groups(stream)}
    return all(
        name in groups
        and groups[name]["last-delivered-id"] == last
        and int(groups[name]["pending"]) == 0
        for name in (b"processor", b"domain")
    )


async def judging(*services: Service) -> None:
    """Each service's domain engine has started judging (90 s each: start-up on a busy shared
    machine is slow, and it is not what these tests measure)."""
    for service in services:
        assert service.domain is not None
        with trio.fail_after(90):
            await service.domain.enabled.wait()


async def all_judged(rig: Rig) -> None:
    """Wait until both groups have taken in everything published to the rig's stream."""
    await wait_until(lambda: domain_done(rig.redis, rig.stream_key), timeout=120)


Path2D = Callable[[float], tuple[float, float, float]]  # t (s) -> (x, y, speed m/s)


def constant(v: float, x0: float = 0.0, y: float = 0.0) -> Path2D:
    return lambda t: (x0 + v * t, y, v)


def accelerating(v0: float, a: float) -> Path2D:
    return lambda t: (v0 * t + a * t * t / 2, 0.0, v0 + a * t)


def reverse_first(v: float) -> Path2D:
    """Starts east of the start line, drives west across it (a reverse crossing), turns at
    x=20 and drives east over the course."""

    def at(t: float) -> tuple[float, float, float]:
        back = (200 - 20) / v
        if t <= back:
            return 200 - v * t, 0.0, v
        return 20 + v * (t - back), 0.0, v

    return at


def detour(v: float) -> Path2D:
    """Drives at y=80 (outside the waypoint's 30 m radius) except for a dip to y=0 around the
    waypoint (x 900..1100): the dip's fixes make the waypoint pass."""

    def at(t: float) -> tuple[float, float, float]:
        x = v * t
        near = abs(x - WAYPOINT_X)
        return x, (80 * near / 100 if near <= 100 else 80.0), v

    return at


def track(device: str, path: Path2D, seconds: int, *, offset: float = 0.5) -> list[dict[str, Any]]:
    """1 Hz fixes at t = offset + k (random-ish phase), as upstream sends them."""
    documents = []
    for k in range(seconds):
        t = offset + k
        x, y, v = path(t)
        lat, lon = to_latlon(x, y)
        documents.append(fix(device, t, lat=lat, lon=lon, speed=v * 3.6, angle=90))
    return documents


def stored(database_url: str, stage_id: str) -> dict[str, Any]:
    """Every derived row of the stage: records by (entry, control), results by entry."""
    with psycopg.connect(database_url) as conn:
        records = {
            (e, c): (passed, speed, dist, fb, fa, updated)
            for e, c, passed, speed, dist, fb, fa, updated in conn.execute(
                "SELECT entry_id::text, control_id::text, passed_at, speed_kmh, distance_m, "
                "fix_before, fix_after, updated_at FROM timing_records WHERE stage_id = %s",
                (stage_id,),
            )
        }
        results = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT entry_id::text, status, started_at, finished_at, elapsed_ms, penalty_ms, "
                "total_ms, controls_passed, controls_missed, position, class_position, gap_ms, "
                "updated_at FROM stage_results WHERE stage_id = %s",
                (stage_id,),
            )
        }
    return {"records": records, "results": results}


def seconds_after_base(value: Any) -> float:
    return float(value.timestamp() - T0)


def add_twin_stage(database_url: str, course: Course) -> tuple[str, dict[str, str]]:
    """A second stage of the course's event with the same window and course (new ids): every
    fix of the event's cars counts on both. Returns (stage id, kind -> control id)."""
    stage_id = str(uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO stages (id, event_id, name, ordinal, opens_at, closes_at) "
            "SELECT %s, event_id, 'SS2', 2, opens_at, closes_at FROM stages WHERE id = %s",
            (stage_id, course.stage_id),
        )
        controls: dict[str, str] = {}
        for kind, old in course.controls.items():
            controls[kind] = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO controls (id, stage_id, ordinal, kind, lat1, lon1, lat2, lon2, "
                "latitude, longitude, validate_radius_m, penalty_s) "
                "SELECT %s, %s, ordinal, kind, lat1, lon1, lat2, lon2, latitude, longitude, "
                "validate_radius_m, penalty_s FROM controls WHERE id = %s",
                (controls[kind], stage_id, old),
            )
    return stage_id, controls


def store_fixes(conn: psycopg.Connection[Any], documents: Iterable[dict[str, Any]]) -> None:
    """Store fix documents as the durable pipeline would (faulty: no satellites or (0, 0)),
    committed: for tests that drive the engine's database side directly."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO positions (device_id, ts, latitude, longitude, speed, satellites, faulty)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    d["device_id"],
                    datetime.fromisoformat(d["timestamp"]),
                    d["latitude"],
                    d["longitude"],
                    d["speed"],
                    d["satellites"],
                    d["satellites"] == 0 or (d["latitude"], d["longitude"]) == (0.0, 0.0),
                )
                for d in documents
            ],
        )
    conn.commit()


def migrated_course(database_url: str, cars: Iterable[tuple[str, str | None]]) -> Course:
    """The processor's migrations, the Directus and racing tables, and `add_course`: the
    engine's database side, ready to be driven directly."""
    from processor.store.migrations import apply_migrations, default_directory, load_migrations

    with psycopg.connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
    create_tables(database_url)
    return add_course(database_url, cars)
