"""The racing collections on a real Directus 11.3.5, set up with deploy/directus's two files.

- The tables Directus makes from snapshot.json + racing.sql are the tables the suite's fixtures
  make (tests/fixtures/directus_schema.sql + racing_schema.sql): same columns, types, defaults,
  nullability, keys, foreign keys, checks and indexes. Coordinates are double precision.
  Applied again with the guide's `--ignoreRules` (without it Directus would drop the
  processor's `positions`), the snapshot changes nothing; snapshot.json is what Directus
  writes for that database.
- An admin creates a stage, its controls, a speed zone, an IO mapping, entries and their
  devices through Directus's REST API; the processor runs against Directus's database and
  Directus; a simulated stage is published (a speeder, a car that stops); a race-control user
  (the role of racing.sql) reads results, timing records, violations and alerts back through
  the REST API, exactly as the SPA does (READS below), and watches the event on the live
  WebSocket with its Directus session cookie. A user without that role can do neither; one
  whose role reads events only gets positions and no race-control frames; race control cannot
  write what the processor owns.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
import trio

from processor.store.migrations import apply_migrations, default_directory, load_migrations
from tests.support import racing
from tests.support.directus_real import (
    ADMIN_EMAIL,
    PROCESSOR_TABLES,
    RACE_CONTROL_ROLE,
    SNAPSHOT,
    RealDirectus,
    login,
    request,
    session_cookie,
)
from tests.support.fixes import BASE_TIME
from tests.support.live import Frames, live_client, receive, send, subscribe
from tests.support.paths import ROOT
from tests.support.service import Rig, running_service

# A first run installs Directus (about 2 minutes here, more on a loaded machine).
pytestmark = pytest.mark.timeout(900)

ORIGIN = "https://race.example"
RACE_KINDS = {"timing", "results", "violation", "alert"}
NOW = "2026-01-01T00:00:00Z"
GUIDE = ROOT / "docs" / "racing-domain.md"
TABLES = (
    "events", "entries", "devices", "entry_devices", "stages", "controls", "speed_zones",
    "io_mappings", "timing_records", "stage_results", "speed_violations", "alerts",
)  # fmt: skip
COORDINATES = {
    "controls": ("lat1", "lon1", "lat2", "lon2", "latitude", "longitude"),
    "alerts": ("latitude", "longitude"),
}


# --- the tables -------------------------------------------------------------------------------


def catalog(conn: psycopg.Connection[Any]) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """What the processor depends on in each table of the connection's schema: columns (type,
    NOT NULL, default), constraints (by definition: Directus names foreign keys `*_foreign`,
    PostgreSQL `*_fkey`) and the other indexes (by definition, name left out)."""
    found = {}
    for table in TABLES:
        columns = conn.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attname""",
            (table,),
        ).fetchall()
        constraints = conn.execute(
            "SELECT contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass ORDER BY 1, 2",
            (table,),
        ).fetchall()
        indexes = conn.execute(
            r"""SELECT regexp_replace(pg_get_indexdef(i.indexrelid), 'INDEX \S+ ON \S+', 'INDEX ON')
               FROM pg_index i
               WHERE i.indrelid = %s::regclass
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
               ORDER BY 1""",
            (table,),
        ).fetchall()
        found[table] = {"columns": columns, "constraints": constraints, "indexes": indexes}
    return found


def test_directus_makes_the_tables_of_the_fixtures(
    real_directus: RealDirectus, database_url: str
) -> None:
    racing.create_tables(database_url)  # the suite's fixtures, in this test's own schema
    with psycopg.connect(database_url) as conn:
        fixture = catalog(conn)
    with psycopg.connect(real_directus.database_url) as conn:
        deployed = catalog(conn)
        types = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ANY(%s) "
            "AND column_name IN ('lat1', 'lon1', 'lat2', 'lon2', 'latitude', 'longitude')",
            (list(COORDINATES),),
        ).fetchall()
    for table in TABLES:
        assert deployed[table] == fixture[table], table
    assert sorted(types) == sorted(
        (table, column, "double precision")
        for table, names in COORDINATES.items()
        for column in names
    )
    # the natural keys the processor's ON CONFLICT clauses name, and the one-open-alert index
    assert ("u", "UNIQUE (stage_id, entry_id)") in deployed["stage_results"]["constraints"]
    assert ("p", "PRIMARY KEY (id)") in deployed["stage_results"]["constraints"]
    assert deployed["alerts"]["indexes"] == [
        ("CREATE INDEX ON USING btree (event_id, raised_at)",),
        ("CREATE UNIQUE INDEX ON USING btree (entry_id, kind) WHERE (cleared_at IS NULL)",),
    ]


def test_the_snapshot_applied_again_with_the_processor_beside_it(
    real_directus: RealDirectus,
) -> None:
    """Directus's `schema apply` makes the database equal to the snapshot: it would drop the
    processor's tables (positions!), which the snapshot cannot list. Applied as the guide says,
    with `--ignoreRules` naming them, it changes nothing, racing.sql's column types included
    (the snapshot records them). snapshot.json is what Directus writes for such a database."""
    directus = real_directus
    with psycopg.connect(directus.database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
        extra = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT LIKE 'directus%%' AND NOT (tablename = ANY(%s))",
                (list(TABLES),),
            )
        }
    assert extra == set(PROCESSOR_TABLES), (
        "the processor's migrations make tables that Directus's schema apply would drop: name "
        "them in PROCESSOR_TABLES and in the guide's --ignoreRules (docs/racing-domain.md)"
    )
    unguarded = directus.run_cli("schema", "apply", "--dry-run", str(SNAPSHOT)).stdout
    assert "- Delete positions" in unguarded, unguarded
    ignore = ",".join(PROCESSOR_TABLES)
    assert f"--ignoreRules {ignore}" in GUIDE.read_text()
    plan = directus.run_cli("schema", "apply", "--dry-run", "--ignoreRules", ignore, str(SNAPSHOT))
    assert "No changes to apply" in plan.stdout, plan.stdout

    written = directus.log.parent / "snapshot.json"
    directus.run_cli("schema", "snapshot", "--yes", "--format", "json", str(written))
    snapshot = orjson.loads(written.read_bytes())
    for part in ("collections", "fields", "relations"):
        snapshot[part] = [x for x in snapshot[part] if x["collection"] not in PROCESSOR_TABLES]
    assert snapshot == orjson.loads(SNAPSHOT.read_bytes()), "snapshot.json is not Directus's own"


# --- a stage through Directus -------------------------------------------------------------------

V = 20.0  # m/s: every car drives east along y=0 at 72 km/h (the course of tests/support/racing.py)
ZONE_LIMIT_KMH, SPEEDING_KMH = 80.0, 110.0  # 30 km/h over: the 120 s bracket
STOP_AT, STOP_S, ALERT_STOPPED_S = 60.0, 90.0, 60.0
CARS = {  # name: (number, class)
    "steady": ("101", "T1"),
    "speeder": ("102", "T1"),
    "stopper": ("103", "T2"),
}
# The REST calls the SPA makes to show a stage, as docs/racing-domain.md lists them: path and
# query, `filter` JSON-encoded (as @directus/sdk sends it), <stage>/<event>/<since> filled in.
STAGE = {"stage_id": {"_eq": "<stage>"}}
READS: dict[str, tuple[str, dict[str, Any]]] = {
    "standings": (
        "/items/stage_results",
        {"filter": STAGE, "fields": "*,entry_id.id,entry_id.number,entry_id.class",
         "sort": "position,entry_id.number", "limit": -1},
    ),
    "passes": (
        "/items/timing_records",
        {"filter": STAGE,
         "fields": "*,entry_id.id,entry_id.number,control_id.id,control_id.ordinal,control_id.kind",
         "sort": "passed_at", "limit": -1},
    ),
    "violations": (
        "/items/speed_violations",
        {"filter": STAGE, "fields": "*,entry_id.id,entry_id.number", "sort": "started_at",
         "limit": -1},
    ),
    "alerts": (
        "/items/alerts",
        {"filter": {"event_id": {"_eq": "<event>"}}, "fields": "*,entry_id.id,entry_id.number",
         "sort": "-raised_at", "limit": -1},
    ),
    "open alerts": (
        "/items/alerts",
        {"filter": {"event_id": {"_eq": "<event>"}, "cleared_at": {"_null": True}},
         "fields": "*,entry_id.id,entry_id.number", "sort": "-raised_at", "limit": -1},
    ),
    "standings changed since": (
        "/items/stage_results",
        {"filter": {"_and": [STAGE, {"updated_at": {"_gt": "<since>"}}]},
         "fields": "*,entry_id.id,entry_id.number,entry_id.class",
         "sort": "position,entry_id.number", "limit": -1},
    ),
}  # fmt: skip


def query(read: str, **values: str) -> tuple[str, dict[str, str]]:
    """READS[read] with `<name>` replaced by `values[name]`: (path, query parameters)."""
    path, params = READS[read]
    encoded = {
        key: orjson.dumps(value).decode() if key == "filter" else str(value)
        for key, value in params.items()
    }
    for name, value in values.items():
        encoded["filter"] = encoded["filter"].replace(f"<{name}>", value)
    return path, encoded


def as_documented(read: str) -> str:
    """READS[read] as the guide writes it: `GET path?filter=...&fields=...`."""
    path, params = query(read)
    return f"GET {path}?" + "&".join(f"{key}={value}" for key, value in params.items())


def test_what_the_processor_writes_is_read_only_in_the_data_studio() -> None:
    snapshot = orjson.loads(SNAPSHOT.read_bytes())
    written = {"timing_records", "stage_results", "speed_violations", "alerts"}
    fields = [f for f in snapshot["fields"] if f["collection"] in written]
    assert {f["collection"] for f in fields} == written
    assert [f"{f['collection']}.{f['field']}" for f in fields if not f["meta"]["readonly"]] == []


def test_the_guide_lists_the_reads_the_test_makes() -> None:
    guide = GUIDE.read_text()
    for read in READS:
        assert f"| {read} | `{as_documented(read)}` |" in guide, read


def cars_path(name: str) -> racing.Path2D:
    if name != "stopper":
        return racing.constant(V)

    def stopper(t: float) -> tuple[float, float, float]:
        if t < STOP_AT:
            return V * t, 0.0, V
        if t < STOP_AT + STOP_S:
            return V * STOP_AT, 0.0, 0.0
        return V * (t - STOP_S), 0.0, V

    return stopper


def tracks(devices: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(everything up to 70 s into the stopper's stop, the rest): a stop is alerted while it
    lasts, so the test publishes the stop first and the drive-off once the alert is raised."""
    first: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for name, device in devices.items():
        seconds = 250 if name == "stopper" else 160
        for document in racing.track(device, cars_path(name), seconds):
            t = datetime.fromisoformat(document["timestamp"]).timestamp() - racing.T0
            if name == "speeder" and 50 <= t < 55:  # x 1000..1100: inside the zone, 5 fixes
                document["speed"] = SPEEDING_KMH
            if name == "stopper" and STOP_AT < t < STOP_AT + STOP_S:
                document["attributes"] = {"239": 0}  # ignition off while stopped
            (rest if name == "stopper" and t > STOP_AT + 70 else first).append(document)
    return first, rest


async def build_stage(admin: httpx.AsyncClient) -> racing.Course:
    """The stage of tests/support/racing.py, created as an admin does in the Data Studio."""
    event = await request(admin, "POST", "/items/events", json={"name": "Rally of the Eagles"})
    stage = await request(
        admin,
        "POST",
        "/items/stages",
        json={"event_id": event["id"], "name": "SS1", "ordinal": 1,
              "opens_at": BASE_TIME.isoformat(), "closes_at": None},
    )  # fmt: skip
    wlat, wlon = racing.to_latlon(racing.WAYPOINT_X, 0)
    rows = [
        {"ordinal": 1, "kind": "start", **racing.line(racing.START_X)},
        {"ordinal": 2, "kind": "waypoint", "latitude": wlat, "longitude": wlon,
         "validate_radius_m": racing.WAYPOINT_RADIUS, "penalty_s": racing.WAYPOINT_PENALTY_S},
        {"ordinal": 3, "kind": "checkpoint", **racing.line(racing.CHECKPOINT_X),
         "penalty_s": racing.CHECKPOINT_PENALTY_S},
        {"ordinal": 4, "kind": "finish", **racing.line(racing.FINISH_X)},
    ]  # fmt: skip
    created = await request(
        admin, "POST", "/items/controls", json=[{**row, "stage_id": stage["id"]} for row in rows]
    )
    controls = {row["kind"]: row["id"] for row in created}
    await request(
        admin,
        "POST",
        "/items/speed_zones",
        json={"stage_id": stage["id"], "start_control_id": controls["start"],
              "end_control_id": controls["checkpoint"], "limit_kmh": ZONE_LIMIT_KMH,
              "min_duration_s": 3, "penalties": racing.BRACKETS},
    )  # fmt: skip
    await request(
        admin,
        "POST",
        "/items/io_mappings",
        json={"model": "FMB920", "io_id": 239, "name": "ignition", "unit": "bool"},
    )
    entries, devices = {}, {}
    for k, (name, (number, klass)) in enumerate(CARS.items(), 1):
        imei = f"35630704{uuid.uuid4().int % 10**6:06d}{k}"
        # the entry and its tracker in one call, through the m2m field, as the Data Studio does
        entry = await request(
            admin,
            "POST",
            "/items/entries",
            json={"event_id": event["id"], "number": number, "class": klass,
                  "devices": {"create": [{"device_id": {"imei": imei, "model": "FMB920"}}],
                              "update": [], "delete": []}},
        )  # fmt: skip
        entries[name], devices[name] = entry["id"], imei
    return racing.Course(event["id"], stage["id"], controls, entries, devices)


async def spectator_role(admin: httpx.AsyncClient) -> str:
    """A role made in the Data Studio that may read events only (a public map, say)."""
    policy = await request(
        admin,
        "POST",
        "/policies",
        json={"name": f"Spectator {uuid.uuid4().hex[:6]}", "app_access": False,
              "permissions": [{"collection": "events", "action": "read", "fields": ["*"],
                               "permissions": {}}]},
    )  # fmt: skip
    role = await request(
        admin,
        "POST",
        "/roles",
        json={"name": f"Spectator {uuid.uuid4().hex[:6]}", "policies": [{"policy": policy["id"]}]},
    )
    role_id: str = role["id"]
    return role_id


async def add_user(admin: httpx.AsyncClient, role: str | None) -> tuple[str, str]:
    email, password = f"user-{uuid.uuid4().hex[:8]}@example.com", secrets.token_urlsafe(12)
    await request(
        admin, "POST", "/users", json={"email": email, "password": password, "role": role}
    )
    return email, password


async def read(
    client: httpx.AsyncClient, read_: str, course: racing.Course, since: str = ""
) -> list[Any]:
    path, params = query(read_, stage=course.stage_id, event=course.event_id, since=since)
    rows: list[Any] = await request(client, "GET", path, params=params)
    return rows


async def poll(
    client: httpx.AsyncClient,
    read_: str,
    course: racing.Course,
    done: Callable[[list[Any]], bool],
    timeout: float = 120,  # noqa: ASYNC109 - the deadline is this helper's point
) -> list[Any]:
    """Read through Directus until `done(rows)`: the SPA's polling, bounded."""
    with trio.fail_after(timeout):
        while True:
            rows = await read(client, read_, course)
            if done(rows):
                return rows
            await trio.sleep(0.2)


def ms(value: str) -> int:
    """Directus's ISO timestamp as epoch milliseconds."""
    return round(datetime.fromisoformat(value).timestamp() * 1000)


async def test_a_stage_set_up_run_and_read_through_directus(
    real_directus: RealDirectus, env: dict[str, str], redis_client: redis.Redis, stream_key: str
) -> None:
    directus = real_directus
    admin_token = await login(directus, ADMIN_EMAIL, directus.admin_password)
    async with directus.client(admin_token) as admin:
        course = await build_stage(admin)
        race_control = await add_user(admin, RACE_CONTROL_ROLE)
        outsider = await add_user(admin, None)
        spectator = await add_user(admin, await spectator_role(admin))
    token = await login(directus, *race_control)
    cookie = await session_cookie(directus, *race_control)
    outsider_token = await login(directus, *outsider)
    outsider_cookie = await session_cookie(directus, *outsider)
    spectator_cookie = await session_cookie(directus, *spectator)

    rig = Rig(env, redis_client, stream_key, directus.database_url)
    processor_env = {
        **racing.domain_env(env),
        "DATABASE_URL": directus.database_url,
        "DIRECTUS_URL": directus.url,
        "DIRECTUS_AUTH_TIMEOUT_MS": "5000",
        "LIVE_WS_HOST": "127.0.0.1",
        "LIVE_WS_ALLOWED_ORIGINS": ORIGIN,
        "ALERT_STOPPED_S": str(ALERT_STOPPED_S),
        "ALERT_NO_SIGNAL_S": "1000000000",
    }
    first, rest = tracks(course.devices)
    async with (
        running_service(processor_env) as service,
        directus.client(token) as spa,
        directus.client(outsider_token) as stranger,
    ):
        await racing.judging(service)
        # a user without the race-control role: the event is not theirs to watch
        async with live_client(
            service.live_port, token=None, cookie=outsider_cookie, origin=ORIGIN
        ) as ws:
            await send(ws, {"type": "subscribe", "topic": f"event:{course.event_id}"})
            refused = await receive(ws, within=10)
        assert refused["type"] == "error" and refused["code"] == "forbidden", refused

        async with (
            live_client(service.live_port, token=None, cookie=cookie, origin=ORIGIN) as ws,
            live_client(
                service.live_port, token=None, cookie=spectator_cookie, origin=ORIGIN
            ) as spectator_ws,
            trio.open_nursery() as nursery,
        ):
            reply = await subscribe(ws, course.event_id)
            assert reply["type"] == "subscribed" and reply["snapshot"] == [], reply
            spectator_reply = await subscribe(spectator_ws, course.event_id)
            assert spectator_reply["type"] == "subscribed", spectator_reply
            assert spectator_reply["results"] == spectator_reply["alerts"] == []
            frames, seen_by_spectator = Frames(), Frames()
            nursery.start_soon(frames.collect, ws)
            nursery.start_soon(seen_by_spectator.collect, spectator_ws)

            rig.publish(first)
            [raised] = await poll(spa, "open alerts", course, lambda rows: len(rows) == 1)
            rig.publish(rest)
            await racing.all_judged(rig)
            alerts = await poll(
                spa, "alerts", course, lambda rows: rows[0]["cleared_at"] is not None
            )
            results = await poll(
                spa,
                "standings",
                course,
                lambda rows: [r["status"] for r in rows] == ["finished"] * 3,
            )
            await frames.until(lambda: set(course.devices.values()) <= moved(frames), timeout=30)
            # the race-control frames queue behind the positions the domain judged: read on
            # until they are in too (the server sent them long ago; a busy client lags)
            await frames.until(
                lambda: {f["type"] for f in frames.frames}.issuperset(RACE_KINDS), timeout=30
            )
            await seen_by_spectator.until(
                lambda: set(course.devices.values()) <= moved(seen_by_spectator), timeout=30
            )
            nursery.cancel_scope.cancel()

        timing = await read(spa, "passes", course)
        violations = await read(spa, "violations", course)
        still_open = await read(spa, "open alerts", course)
        newest = max(r["updated_at"] for r in results)
        since = await read(spa, "standings changed since", course, since=newest)
        # an SPA logged in with mode "session" reads with its cookie, as the Data Studio does
        path, params = query("standings", stage=course.stage_id)
        async with directus.client() as browser:
            by_cookie = await browser.get(
                path, params=params, headers={"Cookie": f"directus_session_token={cookie}"}
            )
        assert by_cookie.status_code == 200, by_cookie.text
        assert by_cookie.json()["data"] == results
        # race control reads, never writes what the processor owns or the definitions
        denied = await spa.patch(f"/items/stage_results/{results[0]['id']}", json={"position": 9})
        assert denied.status_code == 403, denied.text
        denied = await spa.post("/items/controls", json={"stage_id": course.stage_id})
        assert denied.status_code == 403, denied.text
        # and a user without the role reads nothing
        for read_ in READS:
            path, params = query(read_, stage=course.stage_id, event=course.event_id, since=NOW)
            assert (await stranger.get(path, params=params)).status_code == 403, read_

    number = {name: CARS[name][0] for name in CARS}
    # results: the stopper lost 90 s, the speeder 120 s of penalty
    assert [(r["entry_id"]["number"], r["position"], r["class_position"]) for r in results] == [
        (number["steady"], 1, 1), (number["stopper"], 2, 1), (number["speeder"], 3, 2),
    ]  # fmt: skip
    assert {r["entry_id"]["id"] for r in results} == set(course.entries.values())
    by_number = {r["entry_id"]["number"]: r for r in results}
    # Directus serves bigint columns as strings (JavaScript numbers stop at 2**53)
    assert by_number[number["speeder"]]["penalty_ms"] == "120000"
    for name, extra_s in (("steady", 0), ("speeder", 0), ("stopper", STOP_S)):
        elapsed = by_number[number[name]]["elapsed_ms"]
        assert abs(int(elapsed) - (145_000 + extra_s * 1000)) <= 10, (name, elapsed)
    # timing: every car passed the four controls, at the crossing times of the simulation
    assert len(timing) == 12
    starts = [r for r in timing if r["control_id"]["kind"] == "start"]
    assert {ms(r["passed_at"]) - round(racing.T0 * 1000) for r in starts} == {5000}
    # violations: the speeder's, in the 120 s bracket
    [violation] = violations
    assert violation["entry_id"]["number"] == number["speeder"]
    assert violation["penalty_s"] == 120 and violation["max_speed_kmh"] == SPEEDING_KMH
    # alerts: the stopper's stop, raised after ALERT_STOPPED_S of fix time, cleared on drive-off
    [alert] = alerts
    assert alert["id"] == raised["id"] and alert["kind"] == "stopped"
    assert alert["entry_id"]["number"] == number["stopper"]
    assert ms(alert["raised_at"]) == ms_after_base(STOP_AT + 0.5 + ALERT_STOPPED_S)
    assert ms(alert["cleared_at"]) == ms_after_base(STOP_AT + STOP_S + 0.5)
    assert alert["details"]["ignition"] is False
    assert still_open == []
    # a delta read returns at most the rows of the newest millisecond (Directus rounds to ms)
    assert {ms(r["updated_at"]) for r in since} <= {ms(newest)}
    # what Directus serves is what the processor stored (ids and coordinates to the last bit)
    with psycopg.connect(directus.database_url) as conn:
        stored = dict(
            conn.execute(
                "SELECT id::text, position FROM stage_results WHERE stage_id = %s",
                (course.stage_id,),
            ).fetchall()
        )
        lat1 = conn.execute(
            "SELECT lat1 FROM controls WHERE id = %s", (course.controls["start"],)
        ).fetchone()
    assert stored == {r["id"]: r["position"] for r in results}
    assert lat1 == (racing.line(racing.START_X)["lat1"],)
    # the live map: positions of every car of the event, and the race-control frames
    assert {"position", *RACE_KINDS} <= {f["type"] for f in frames.frames}
    # a role that reads events but none of the race-control collections: positions only
    # (Directus answers 403 to its GET /items/<collection>?limit=0)
    assert {f["type"] for f in seen_by_spectator.frames} == {"position"}


def moved(frames: Frames) -> set[str]:
    """The devices a client has received positions of."""
    return {f["position"]["device_id"] for f in frames.of("position")}


def ms_after_base(seconds: float) -> int:
    return round((BASE_TIME + timedelta(seconds=seconds)).timestamp() * 1000)
