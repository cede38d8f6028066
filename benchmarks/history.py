"""The track history figures: what serving a history costs over the bare SQL read.

    python -m benchmarks.run --phases history

One `processor run` with live broadcast on (the live phase's Directus stand-in, which says yes
to everything), and in its schema an event of 201 cars with stored fixes:

1. one car, 6 hours at 1 Hz (21,600 fixes): `GET /live/history?device=...` for the 6 hours;
2. 200 cars, 10 minutes at 1 Hz (120,000 fixes): `GET /live/history` for the 10 minutes.

Each is timed from the request to the last byte of the response (GeoJSON, default limits: both
are simplified to at most LIVE_HISTORY_MAX_POINTS), against the bare SQL read of the same
fixes in the same run (`SELECT ts, latitude, longitude, speed ... ORDER BY device_id, ts`,
every row fetched into Python by psycopg), alternating, medians of `ROUNDS` (3 with --quick).
The ratios are reported, not asserted: they are the price of authorization, simplification and
encoding.
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from benchmarks.directus_standin import DirectusStandIn, create_event
from benchmarks.harness import Bench

ROUNDS = 5
T0 = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
LONG_CAR, LONG_S = "long-0001", 6 * 3600
CARS, WINDOW_S = 200, 600

BARE = """
SELECT device_id, ts, latitude, longitude, speed FROM positions
WHERE device_id = ANY(%s) AND ts >= %s AND ts < %s AND NOT faulty
ORDER BY device_id, ts
"""


def _fixes(device: str, seconds: int, phase: float) -> list[tuple[Any, ...]]:
    """A car on a winding road at ~25 m/s, one fix a second."""
    rows = []
    for i in range(seconds):
        north = 25.0 * i
        east = 400.0 * math.sin(i / 90 + phase)
        rows.append(
            (
                device,
                T0 + timedelta(seconds=i),
                41.0 + north / 111_320,
                19.0 + east / 84_000,
                100.0,
                90.0,
                9,
            )
        )
    return rows


def load(url: str) -> tuple[str, list[str]]:
    """The Directus tables, one event of 201 cars, their fixes; the event id and car ids."""
    cars = [f"car-{i:04d}" for i in range(CARS)]
    event_id = create_event(url, [LONG_CAR, *cars])
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY positions (device_id, ts, latitude, longitude, altitude, speed, satellites)"
            " FROM STDIN"
        ) as copy:
            for row in _fixes(LONG_CAR, LONG_S, 0.0):
                copy.write_row(row)
            for n, car in enumerate(cars):
                for row in _fixes(car, WINDOW_S, n / 10):
                    copy.write_row(row)
        conn.execute("ANALYZE positions")
    return event_id, cars


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def run(runner: Bench) -> None:
    url, stream = runner.schema("history"), runner.stream("history")
    event_id, cars = load(url)
    directus = DirectusStandIn()
    env = {
        "DIRECTUS_URL": directus.url,
        "LIVE_WS_HOST": "127.0.0.1",
        "LIVE_WS_PORT": "0",
        "LIVE_HISTORY_REQUESTS_PER_S": "1000",  # the figure is the cost, not the rate limit
        "LIVE_WS_HANDSHAKE_TIMEOUT_MS": "60000",
    }
    daemon = runner.daemon(url, stream, env)
    cases = {
        "history_6h_car": (
            {"device": LONG_CAR, "to": _iso(T0 + timedelta(seconds=LONG_S))},
            [LONG_CAR],
            LONG_S,
        ),
        "history_10min_200_cars": (
            {"to": _iso(T0 + timedelta(seconds=WINDOW_S))},
            cars,
            WINDOW_S,
        ),
    }
    try:
        daemon.wait_ready()
        port = daemon.live_port
        assert port is not None
        with (
            httpx.Client(trust_env=False, timeout=120) as http,
            psycopg.connect(url) as conn,
        ):
            for name, (params, devices, seconds) in cases.items():
                query = {"event": event_id, "from": _iso(T0), **params}
                end = T0 + timedelta(seconds=seconds)
                served, bare, document = [], [], None
                for _ in range(ROUNDS if runner.repeat > 1 else 3):  # --quick: 3
                    started = time.perf_counter()
                    response = http.get(
                        f"http://127.0.0.1:{port}/live/history",
                        params=query,
                        headers={"Authorization": "Bearer bench"},
                    )
                    response.read()
                    served.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                    document = response.json()
                    started = time.perf_counter()
                    rows = conn.execute(BARE, (devices, T0, end)).fetchall()
                    bare.append(time.perf_counter() - started)
                    conn.rollback()
                assert document is not None
                simplification = document["simplification"] or {}
                served_s, bare_s = statistics.median(served), statistics.median(bare)
                runner.results.update(
                    {
                        f"{name}_ms": round(served_s * 1000, 1),
                        f"{name}_sql_ms": round(bare_s * 1000, 1),
                        f"{name}_ratio": round(served_s / bare_s, 2),
                        f"{name}_fixes": len(rows),
                        f"{name}_points": simplification.get("points", len(rows)),
                        f"{name}_bytes": len(response.content),
                    }
                )
                print(
                    f"  history {name}: {served_s * 1000:.0f} ms served, {bare_s * 1000:.0f} ms "
                    f"bare SQL, ratio {served_s / bare_s:.2f} ({len(rows):,} fixes -> "
                    f"{simplification.get('points', len(rows)):,} points, "
                    f"{len(response.content) / 1e6:.1f} MB)",
                    flush=True,
                )
    finally:
        daemon.kill()
        directus.close()
