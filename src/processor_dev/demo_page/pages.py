"""The HTTP server of the demo's race-control page (development tooling only).

Serves, on 127.0.0.1 by default and never from `processor run`: the one-time token's redemption
(a session cookie, then a redirect so the token leaves the address bar), the page and its static
files, the scenario's geometry (`/scenario.json`) and the results fallback (`/results.json`).
Every response carries `Cache-Control: no-store` and a Content-Security-Policy that allows only
this origin and the live server, so the page cannot fetch anything else. The routes and their
answers: docs/race-control-page.md, Internals.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from importlib import resources
from typing import Any

import attrs
import orjson
import psycopg
import trio

from processor.codecs.position import format_timestamp
from processor.observability.http import READ_METHODS, Request, Response, asgi_app
from processor.observability.http_server import App
from processor_dev.demo_page.standin import COOKIE, DirectusStandIn, session_cookie
from processor_dev.rally_stage import RallyStage

JSON = "application/json"
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
RESULTS_SQL = """
SELECT sr.entry_id::text, en.number, en.class, sr.status, sr.started_at, sr.finished_at,
       sr.elapsed_ms, sr.penalty_ms, sr.total_ms, sr.controls_passed, sr.controls_missed,
       sr.position, sr.class_position, sr.gap_ms
FROM stage_results sr LEFT JOIN entries en ON en.id = sr.entry_id
WHERE sr.stage_id = %(s)s
ORDER BY (sr.status = 'finished') DESC, sr.position, sr.controls_passed DESC NULLS LAST,
         en.number
"""
RESULT_FIELDS = (
    "entry_id", "number", "class", "status", "started_at", "finished_at", "elapsed_ms",
    "penalty_ms", "total_ms", "controls_passed", "controls_missed", "position",
    "class_position", "gap_ms",
)  # fmt: skip
DENIED = (
    "<!doctype html><meta charset=utf-8><title>Race control: sign in</title>"
    "<p>No demo session. Open the URL <code>processor demo</code> printed (its token works "
    "once), or restart the demo for a new one.</p>"
)


def static_file(name: str) -> bytes:
    """A file of the page, read from the package data (ships with the dev tooling)."""
    return resources.files("processor_dev.demo_page").joinpath("static", name).read_bytes()


def scenario_document(stage: RallyStage, *, event_name: str, stage_name: str) -> dict[str, Any]:
    """The stage geometry as the page reads it (lat/lon in degrees, distances in metres)."""
    return {
        "event": {"id": stage.event_id, "name": event_name},
        "stage": {"id": stage.stage_id, "name": stage_name, "opens_at": stage.opens_at},
        "route": [[lat, lon] for lat, lon in stage.route.points],
        "controls": [
            {
                "id": c.id,
                "ordinal": c.ordinal,
                "kind": c.kind,
                "line": None if c.lat1 is None else [[c.lat1, c.lon1], [c.lat2, c.lon2]],
                "center": None if c.latitude is None else [c.latitude, c.longitude],
                "validate_radius_m": c.validate_radius_m,
                "penalty_s": c.penalty_s,
            }
            for c in stage.controls
        ],
        # The generated stage has no speed zones (the demo adds one: `zones.py`); the page draws
        # any listed here ({"id", "max_speed_kmh", "points": [[lat, lon], ...]}).
        "zones": [],
        "entries": [
            {"id": e.id, "number": e.number, "class": e.klass, "device_id": e.imei}
            for e in stage.entries
        ],
    }


class ResultsReader:
    """`stage_results` rows for the fallback endpoint: one connection, one query at a time."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = trio.Lock()

    def _read(self, stage_id: str) -> list[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._database_url, autocommit=True, connect_timeout=5)
        rows = self._conn.execute(RESULTS_SQL, {"s": stage_id}).fetchall()
        return [dict(zip(RESULT_FIELDS, row, strict=True)) for row in rows]

    async def read(self, stage_id: str) -> list[dict[str, Any]]:
        async with self._lock:
            try:
                return await trio.to_thread.run_sync(self._read, stage_id)
            except psycopg.Error:
                if self._conn is not None:
                    self._conn.close()
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def make_app(
    standin: DirectusStandIn,
    scenario: dict[str, Any],
    results: ResultsReader,
    live_port: Callable[[], int | None],
) -> App:
    """The page's app. `live_port` is read per request: the live server binds after us."""
    stage_ids = {scenario["stage"]["id"]}

    def signed_in(request: Request) -> bool:
        return standin.user_of(session_cookie(request.headers.get("cookie"))) is not None

    async def index(request: Request) -> Response:
        token = request.query.get("token")
        if token is not None:
            session = standin.redeem(token)
            if session is None:
                return Response(401, DENIED.encode(), STATIC["index.html"])
            cookie = f"{COOKIE}={session}; HttpOnly; Path=/; SameSite=Strict"
            return Response(303, headers=(("location", "/"), ("set-cookie", cookie)))
        if not signed_in(request):
            return Response(401, DENIED.encode(), STATIC["index.html"])
        return Response(200, static_file("index.html"), STATIC["index.html"])

    async def scenario_json(request: Request) -> Response:
        if not signed_in(request):
            return _json(401, {"error": "no demo session"})
        port = live_port()
        if port is None:
            return _json(503, {"error": "the live server is not listening yet"})
        return _json(200, {**scenario, "live": {"port": port, "path": "/live"}})

    async def results_json(request: Request) -> Response:
        if not signed_in(request):
            return _json(401, {"error": "no demo session"})
        stage_id = request.query.get("stage", "")
        if stage_id not in stage_ids:
            return _json(404, {"error": "unknown stage"})
        try:
            rows = await results.read(stage_id)
        except psycopg.Error:
            return _json(503, {"error": "database unavailable"})
        return _json(200, {"stage_id": stage_id, "results": rows})

    routes = {"/": index, "/scenario.json": scenario_json, "/results.json": results_json}

    async def route(request: Request) -> Response:
        if request.method not in READ_METHODS:
            return Response(405, b"method not allowed", headers=(("allow", "GET, HEAD"),))
        handler = routes.get(request.path)
        if handler is not None:
            return await handler(request)
        name = request.path.removeprefix("/")
        if name not in STATIC or name == "index.html":
            return Response(404, b"not found")
        return Response(200, static_file(name), STATIC[name])

    async def page(request: Request) -> Response:
        response = await route(request)
        host = request.host or "127.0.0.1"
        policy = (
            f"default-src 'self'; connect-src 'self' ws://{host}:* http://{host}:*; "
            "img-src 'self' data:; "
            "frame-ancestors 'none'"
        )
        return attrs.evolve(
            response,
            headers=(
                *response.headers,
                ("cache-control", "no-store"),
                ("content-security-policy", policy),
                ("x-content-type-options", "nosniff"),
            ),
        )

    return asgi_app(page)


def _json(status: int, body: object) -> Response:
    document = orjson.dumps(body, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return Response(status, document, JSON)


def _default(value: object) -> object:
    """Timestamps as RFC 3339 UTC with `Z`, like the live protocol."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    raise TypeError(type(value).__name__)
