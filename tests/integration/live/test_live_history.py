"""Track history on the live port (docs/history.md): formats, authorization, limits, hostile
parameters and simplification, against a running processor, real PostgreSQL (and TimescaleDB)
and the Directus stand-in."""

from __future__ import annotations

import itertools
import math
import uuid
from typing import Any

import orjson
import psycopg

from processor.live.simplify import project
from tests.support.directus import add_event, create_directus_tables
from tests.support.history import (
    at,
    check_contract,
    check_gpx,
    check_rfc7946,
    coordinates,
    get,
    iso,
    store,
    straight,
)
from tests.support.live import ORIGIN, TOKEN, LiveRig
from tests.support.metrics import value
from tests.support.racing import create_racing_tables
from tests.support.service import running_service

GPX = "{http://www.topografix.com/GPX/1/1}"
TPX = "{http://www.garmin.com/xmlschemas/TrackPointExtension/v2}"


def window(event_id: str, **more: Any) -> dict[str, Any]:
    return {"event": event_id, "from": iso(at(0)), "to": iso(at(3600)), **more}


def body(response: Any) -> Any:
    document = orjson.loads(response.content)
    check_contract(document, "History" if response.status_code == 200 else "Error")
    if response.status_code == 200:
        check_rfc7946(document)
    return document


async def test_an_event_and_one_car_as_geojson(live_rig: LiveRig) -> None:
    event_id = live_rig.event(["car-a", "car-b"])
    faulty = ("car-a", at(10.5), 0.0, 0.0, None, None, True)
    store(live_rig.database_url, [*straight("car-a", 30), *straight("car-b", 20), faulty])
    store(live_rig.database_url, straight("elsewhere", 10))  # not a device of the event
    async with live_rig.service(LIVE_HISTORY_REQUESTS_PER_S="100") as service:
        response = await get(service.live_port, window(event_id))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/geo+json"
        document = body(response)
        assert [f["id"] for f in document["features"]] == ["car-a", "car-b"]
        car_a = document["features"][0]
        assert len(coordinates(car_a)) == 30  # the faulty fix is left out
        first = straight("car-a", 1)[0]
        assert coordinates(car_a)[0] == [first[3], first[2]]  # [longitude, latitude]
        assert car_a["properties"]["times"][:2] == [
            "2026-05-12T10:00:00.000000Z",
            "2026-05-12T10:00:01.000000Z",
        ]
        assert car_a["properties"]["speeds"][0] == 72.0
        assert car_a["properties"]["fixes"] == 30 and not car_a["properties"]["simplified"]
        assert document["simplification"] is None
        assert document["request"]["event_id"] == event_id
        # one car, a window that cuts its track, faulty fixes on request
        one = await get(
            service.live_port,
            window(event_id, device="car-a", to=iso(at(11)), faulty="true"),
        )
        (feature,) = body(one)["features"]
        assert feature["properties"]["times"][-1] == "2026-05-12T10:00:10.500000Z"
        assert feature["properties"]["faulty"] == [False] * 11 + [True]
        # a single fix is a Point (a LineString needs two)
        single = await get(service.live_port, window(event_id, to=iso(at(0.5))))
        geometries = {f["geometry"]["type"] for f in body(single)["features"]}
        assert geometries == {"Point"}


async def test_gpx_is_valid_gpx_1_1(live_rig: LiveRig) -> None:
    odd = "<b>&\x01 é"  # a stored device id is any text: escaped, and XML-invalid chars replaced
    event_id = live_rig.event(["car-a", odd])
    fixes = straight("car-a", 5)
    fixes.append(("car-a", at(5), 41.0, 1e-07, None, None, False))  # xsd:decimal, no exponent
    store(live_rig.database_url, [*fixes, *straight(odd, 3)])
    async with live_rig.service() as service:
        response = await get(service.live_port, window(event_id, format="gpx"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/gpx+xml"
        assert "attachment" in response.headers["content-disposition"]
        tree = check_gpx(response.content)
        tracks = tree.findall(f"{GPX}trk")
        assert [t.findtext(f"{GPX}name") for t in tracks] == ["<b>&\ufffd é", "car-a"]
        points = tracks[1].findall(f"{GPX}trkseg/{GPX}trkpt")
        assert len(points) == 6
        assert points[0].findtext(f"{GPX}time") == "2026-05-12T10:00:00.000000Z"
        speed = points[0].findtext(f"{GPX}extensions/{TPX}TrackPointExtension/{TPX}speed")
        assert speed is not None and float(speed) == 20.0  # 72 km/h in m/s
        assert points[-1].findtext(f"{GPX}ele") is None  # unknown altitude: no <ele>


async def test_authorization_is_the_live_websocket_s(live_rig: LiveRig) -> None:
    event_id = live_rig.event(["car-a"])
    other_event = str(uuid.uuid4())
    live_rig.directus.user("cookie-session", events={event_id})
    store(live_rig.database_url, straight("car-a", 5))
    async with live_rig.service(LIVE_HISTORY_REQUESTS_PER_S="1000") as service:
        port = service.live_port

        async def status(params: dict[str, Any], **kwargs: Any) -> int:
            response = await get(port, params, **kwargs)
            body(response)
            return response.status_code

        assert await status(window(event_id), token=None) == 401
        assert await status(window(event_id), token="unknown") == 401
        assert await status(window(other_event)) == 403  # Directus: no permission
        assert await status(window(event_id, device="car-zz")) == 404  # not a device of it
        # the cookie session: only from an allowed origin, and then with CORS headers
        assert await status(window(event_id), token=None, cookie="cookie-session") == 403
        refused = await get(
            port, window(event_id), token=None, cookie="cookie-session", origin="https://evil.x"
        )
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        allowed = await get(
            port, window(event_id), token=None, cookie="cookie-session", origin=ORIGIN
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
        preflight = await get(port, window(event_id), token=None, origin=ORIGIN, method="OPTIONS")
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-headers"] == "Authorization"
        foreign = await get(
            port, window(event_id), token=None, origin="https://evil.x", method="OPTIONS"
        )
        assert foreign.status_code == 405 and "access-control-allow-origin" not in foreign.headers
        assert await status(window(event_id), method="POST") == 405
        # Directus down: fail closed
        live_rig.directus.event_mode = "500"
        assert await status(window(event_id)) == 503
        live_rig.directus.event_mode = None
        assert await status(window(event_id)) == 200
        # the asked event is checked with the caller's own credential, once
        asked = [s for s in live_rig.directus.seen if s.path == f"/items/events/{other_event}"]
        assert [s.token for s in asked] == [TOKEN]
        metrics = service.metrics.live_history_requests
        assert value(metrics.labels("ok")) == 2
        assert value(metrics.labels("forbidden")) == 3


HOSTILE = [
    ("", "event: required"),
    ("event=x&from=2026-05-12T10:00:00Z", "event: not a uuid"),
    ("event={e}", "from: required"),
    ("event={e}&from=yesterday", "from: not an RFC 3339 instant"),
    ("event={e}&from=2026-05-12T10:00:00", "from: not an RFC 3339 instant"),  # no offset
    ("event={e}&from=2026-05-12T10:00:00+02:00", "from: not an RFC 3339 instant"),  # raw +
    ("event={e}&from=2026-13-45T10:00:00Z", "from: not a valid date and time"),
    ("event={e}&from=2026-05-12T11:00:00Z&to=2026-05-12T10:00:00Z", "to: must be after from"),
    ("event={e}&from=2026-05-12T10:00:00Z&to=2026-05-12T10:00:00Z", "to: must be after from"),
    ("event={e}&from=2000-01-01T00:00:00Z&to=2026-05-12T10:00:00Z", "window of"),
    ("event={e}&event={e}&from=2026-05-12T10:00:00Z", "event: given more than once"),
    ("event={e}&from=2026-05-12T10:00:00Z&format=kml", "format: geojson or gpx"),
    ("event={e}&from=2026-05-12T10:00:00Z&faulty=yes", "faulty: true or false"),
    ("event={e}&from=2026-05-12T10:00:00Z&max_points=1", "max_points: between 2"),
    ("event={e}&from=2026-05-12T10:00:00Z&max_points=-5", "max_points: a whole number"),
    ("event={e}&from=2026-05-12T10:00:00Z&max_points=" + "9" * 40, "max_points: a whole number"),
    ("event={e}&from=2026-05-12T10:00:00Z&device=" + "d" * 65, "device: not a device id"),
    ("event={e}&from=2026-05-12T10:00:00Z&device=%00", "device: not a device id"),
    ("event={e}&from=2026-05-12T10:00:00Z&device=%ff", "malformed query string"),
    ("event={e}&from=2026-05-12T10:00:00Z&sql=1;DROP", "unknown parameter 'sql'"),
    ("event={e}&from=", "from: empty"),
    ("&&&", "malformed query string"),
    ("a=1&" * 10, "malformed query string"),
]


async def test_hostile_parameters_get_a_400_and_cost_nothing(live_rig: LiveRig) -> None:
    event_id = live_rig.event(["car-a"])
    async with live_rig.service(LIVE_HISTORY_MAX_WINDOW_S="86400") as service:
        for query, message in HOSTILE:
            response = await get(service.live_port, query.format(e=event_id))
            assert response.status_code == 400, (query, response.text)
            assert message in body(response)["message"], (query, response.text)
        # refused before anyone was asked: no Directus call (the read comes after two)
        assert live_rig.directus.seen == []
        assert value(service.metrics.live_history_requests.labels("bad_request")) == len(HOSTILE)
        await live_rig.assert_ingesting()


async def test_limits(live_rig: LiveRig) -> None:
    event_id = live_rig.event(["car-a", "car-b"])
    store(live_rig.database_url, [*straight("car-a", 800), *straight("car-b", 800)])
    settings = {"LIVE_HISTORY_MAX_FIXES": "1000", "LIVE_HISTORY_REQUESTS_PER_S": "1"}
    async with live_rig.service(**settings) as service:
        too_many = await get(service.live_port, window(event_id))
        assert too_many.status_code == 422
        assert "more than 1000 fixes" in body(too_many)["message"]
        limited = await get(service.live_port, window(event_id, device="car-a"))
        assert limited.status_code == 429  # the second request within the second
        assert int(limited.headers["retry-after"]) >= 1
        assert body(limited)["error"] == "too_many_requests"
        other = live_rig.directus.user("bob", events={event_id})
        fine = await get(service.live_port, window(event_id, device="car-a"), token=other)
        assert fine.status_code == 200  # the budget is per user


def _segment_distance(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = (
        0.0
        if length2 == 0
        else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / length2))
    )
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)


async def test_simplification_keeps_the_shape_and_the_control_passes(live_rig: LiveRig) -> None:
    """A 2,000-fix track with turns, asked with max_points=100: the response says it was
    simplified, keeps the first and last fix and every fix that brackets a control pass, and
    no dropped fix lies farther than the reported tolerance from the simplified line."""
    event_id = live_rig.event(["car-a"])
    create_racing_tables(live_rig.database_url)
    fixes = []
    for i in range(2000):  # a slalom: 20 m/s north, swinging 300 m east and west
        north = 20.0 * i
        east = 300.0 * math.sin(i / 60)
        fixes.append(
            (
                "car-a",
                at(i),
                41.0 + north / 111_320,
                19.0 + east / (111_320 * math.cos(math.radians(41))),
                None,
                72.0 + i % 3,
                False,
            )
        )
    store(live_rig.database_url, fixes)
    passes = [(700, 701), (1333, 1334)]  # on straight-ish stretches, not at a turn
    with psycopg.connect(live_rig.database_url) as conn:
        stage_id, control_id, entry_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        conn.execute(
            "INSERT INTO stages (id, event_id, ordinal) VALUES (%s, %s, 1)", (stage_id, event_id)
        )
        conn.execute("INSERT INTO entries (id, event_id) VALUES (%s, %s)", (entry_id, event_id))
        for n, (before, after) in enumerate(passes):
            control = uuid.uuid4() if n else control_id
            conn.execute(
                "INSERT INTO controls (id, stage_id, ordinal, kind)"
                " VALUES (%s, %s, %s, 'checkpoint')",
                (control, stage_id, n + 1),
            )
            conn.execute(
                "INSERT INTO timing_records (id, stage_id, entry_id, control_id, device_id,"
                " passed_at, fix_before, fix_after) VALUES (%s, %s, %s, %s, 'car-a', %s, %s, %s)",
                (
                    uuid.uuid4(),
                    stage_id,
                    entry_id,
                    control,
                    at(before + 0.5),
                    at(before),
                    at(after),
                ),
            )
    async with live_rig.service(LIVE_HISTORY_REQUESTS_PER_S="100") as service:
        response = await get(service.live_port, window(event_id, max_points="100"))
        assert response.status_code == 200, response.text
        document = body(response)
        (feature,) = document["features"]
        kept_times = feature["properties"]["times"]
        simplification = document["simplification"]
        assert simplification["fixes"] == 2000 and simplification["points"] == len(kept_times)
        assert len(kept_times) <= 100 and feature["properties"]["simplified"]
        all_times = [iso(at(i)).replace("Z", ".000000Z") for i in range(2000)]
        assert kept_times[0] == all_times[0] and kept_times[-1] == all_times[-1]
        for before, after in passes:
            assert all_times[before] in kept_times and all_times[after] in kept_times
        # the shape: every fix within the tolerance of the simplified polyline
        xs, ys = project([f[2] for f in fixes], [f[3] for f in fixes])
        index = {t: i for i, t in enumerate(all_times)}
        kept = [index[t] for t in kept_times]
        tolerance = simplification["tolerance_m"]
        assert tolerance > 0
        for left, right in itertools.pairwise(kept):
            for i in range(left + 1, right):
                distance = _segment_distance(
                    (xs[i], ys[i]), (xs[left], ys[left]), (xs[right], ys[right])
                )
                assert distance <= tolerance + 1e-6, (i, distance, tolerance)
        # GPX says so too
        gpx = await get(service.live_port, window(event_id, max_points="100", format="gpx"))
        tree = check_gpx(gpx.content)
        assert "simplified" in (tree.findtext(f"{GPX}metadata/{GPX}desc") or "")


async def test_the_read_uses_the_primary_key(live_rig: LiveRig) -> None:
    """One index range scan per device: no sequential scan of positions, whatever its size."""
    from processor.store.history import WINDOW_GOOD

    live_rig.event(["car-a"])
    async with live_rig.service():
        pass  # migrated
    store(live_rig.database_url, [*straight("car-a", 500), *straight("car-b", 5000)])
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute("ANALYZE positions")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + WINDOW_GOOD,
                {"devices": ["car-a"], "start": at(0), "end": at(100), "limit": 1001},
            )
        )
    assert "Seq Scan on positions" not in plan, plan
    assert "Index" in plan and "positions_pkey" in plan, plan


async def test_history_from_a_timescaledb_hypertable(
    live_env: dict[str, str], directus: Any, timescaledb_url: str
) -> None:
    create_directus_tables(timescaledb_url)
    env = {**live_env, "DATABASE_URL": timescaledb_url}
    async with running_service(env) as service:
        with psycopg.connect(timescaledb_url) as conn:
            kind = conn.execute(
                "SELECT count(*) FROM timescaledb_information.hypertables"
                " WHERE hypertable_name = 'positions'"
            ).fetchone()
        assert kind == (1,)
        event_id = add_event(timescaledb_url, ["car-a"])
        directus.user(TOKEN, events={event_id})
        # two days apart: two chunks
        store(timescaledb_url, [*straight("car-a", 50), *straight("car-a", 50, start_s=2 * 86_400)])
        response = await get(service.live_port, window(event_id))
        (feature,) = body(response)["features"]
        assert len(coordinates(feature)) == 50
        gpx = await get(service.live_port, window(event_id, format="gpx"))
        check_gpx(gpx.content)


async def test_a_failing_read_is_a_500_and_nothing_else(
    live_rig: LiveRig, monkeypatch: Any, capfd: Any
) -> None:
    """A bug in the read (here: the simplification raising, with a secret in its message) is
    answered 500 `internal`, logged by type only, counted; the server and ingestion go on."""
    import processor.live.history as history

    secret = "secret-in-an-exception-message"

    def broken(*_args: Any) -> Any:
        raise KeyError(secret)

    monkeypatch.setattr(history, "_simplify", broken)
    event_id = live_rig.event(["car-a"])
    store(live_rig.database_url, straight("car-a", 50))
    async with live_rig.service(LIVE_HISTORY_REQUESTS_PER_S="100") as service:
        failed = await get(service.live_port, window(event_id, max_points="10"))
        assert failed.status_code == 500 and body(failed)["error"] == "internal"
        fine = await get(service.live_port, window(event_id))  # no simplification needed
        assert fine.status_code == 200
        assert value(service.metrics.live_history_requests.labels("internal")) == 1
        await live_rig.assert_ingesting()
    logged = capfd.readouterr().err
    assert "history request failed" in logged and "KeyError" in logged
    assert secret not in logged
