"""The track history endpoint on the live port: `GET /live/history` (docs/history.md).

A car's or an event's stored fixes between two instants, as GeoJSON or GPX, for the people who
may subscribe to that event, at a cost the server bounds. Invariant: the checks run cheapest
first, each refusing before the next costs anything (query string, credential, per-user rate,
event, then one read at a time server-wide on the live server's own pool under the request's
deadline); simplification and encoding run in the worker thread too. The steps and their
answers: docs/history.md, Internals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import orjson
import psycopg
import structlog
import trio

from processor.codecs.position import format_timestamp
from processor.live.auth import Access, Credentials, Directus, origin_allowed
from processor.live.device_events import event_devices
from processor.live.history_query import GEOJSON, HistoryQuery, QueryError, parse
from processor.live.http1 import HttpConnection, Request
from processor.live.simplify import keep, project, significances, threshold
from processor.live.track_formats import Simplification, Track, geojson, gpx
from processor.observability.metrics import Metrics
from processor.store.history import pass_fixes, window_rows
from processor.store.postgres import TRANSIENT_ERRORS, Database
from processor.supervise import describe_failure

log = structlog.get_logger("processor.live.history")

PATH = "/live/history"
READS_AT_ONCE = 1
MIN_STATEMENT_MS = 100
ANSWER_MARGIN_S = 0.5
PURGE_AT = 4096  # users with a rate bucket before full (idle) buckets are forgotten
JSON = b"application/json"
CONTENT_TYPES = {GEOJSON: b"application/geo+json", "gpx": b"application/gpx+xml"}
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    422: "too_many_fixes",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}
Identify = Callable[[Request], Awaitable[int | tuple[Credentials, str]]]


@attrs.frozen
class Limits:
    max_window: timedelta
    max_points: int
    max_fixes: int
    requests_per_s: float
    allowed_origins: tuple[str, ...]


class Answer(Exception):
    """A refusal on the way: `status` and a message for people."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class RequestRate:
    """Token buckets per user: `rate` per second, bursts of max(1, rate)."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at)

    def retry_after(self, user_id: str, now: float) -> float:
        """0 when the request may go (its token taken), else seconds until it may."""
        tokens, at = self._buckets.get(user_id, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[user_id] = (tokens, now)
            return (1 - tokens) / self._rate
        if len(self._buckets) >= PURGE_AT and user_id not in self._buckets:
            self._purge(now)
        self._buckets[user_id] = (tokens - 1, now)
        return 0.0

    def _purge(self, now: float) -> None:
        for user, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._rate >= self._capacity:
                del self._buckets[user]


class History:
    def __init__(
        self,
        *,
        limits: Limits,
        database: Database,
        metrics: Metrics,
        identify: Identify,
        directus: Callable[[], Directus | None],
        closing: Callable[[], bool],
    ) -> None:
        self._limits = limits
        self._database = database
        self._metrics = metrics
        self._identify = identify
        self._directus = directus
        self._closing = closing
        self._rate = RequestRate(limits.requests_per_s)
        self._reads = trio.CapacityLimiter(READS_AT_ONCE)

    async def serve(self, http: HttpConnection, request: Request, deadline: float) -> None:
        """Answer one request (never raises for a refusal: it is the answer)."""
        started = time.perf_counter()
        origin = request.header(b"origin")
        cors = _cors(origin) if origin_allowed(origin, self._limits.allowed_origins) else ()
        if request.method == b"OPTIONS" and cors:
            await http.respond(204, b"", headers=(*cors, *_PREFLIGHT))
            return
        try:
            status, body, content_type, headers = await self._answer(request, deadline)
        except Answer as answer:
            status, content_type, headers = answer.status, JSON, answer.headers
            body = orjson.dumps({"error": ERROR_CODES[status], "message": answer.message})
        except Exception as exc:  # noqa: BLE001 - a bug: a 500 for the client, its type logged
            log.error("history request failed", error=describe_failure(exc))
            status, content_type, headers = 500, JSON, ()
            body = orjson.dumps({"error": "internal", "message": "history request failed"})
        self._metrics.live_history_requests.labels(
            "ok" if status == 200 else ERROR_CODES[status]
        ).inc()
        await http.respond(status, body, content_type=content_type, headers=(*cors, *headers))
        self._metrics.live_history_duration.observe(time.perf_counter() - started)

    async def _answer(
        self, request: Request, deadline: float
    ) -> tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
        limits = self._limits
        if self._closing():
            raise Answer(503, "server shutting down, retry later")
        if request.method != b"GET":
            raise Answer(405, "the history endpoint takes GET", ((b"allow", b"GET, OPTIONS"),))
        try:
            query = parse(
                request.query,
                now=datetime.now(UTC),
                max_window=limits.max_window,
                max_points=limits.max_points,
            )
        except QueryError as exc:
            raise Answer(400, str(exc)) from None
        identity = await self._identify(request)
        if isinstance(identity, int):
            raise Answer(identity, _IDENTITY_MESSAGES[identity])
        credentials, user_id = identity
        wait = self._rate.retry_after(user_id, trio.current_time())
        if wait > 0:
            raise Answer(
                429,
                f"at most {limits.requests_per_s:g} history requests per second",
                ((b"retry-after", str(math.ceil(wait)).encode()),),
            )
        directus = self._directus()
        if directus is None:
            raise Answer(503, "unavailable, retry later")
        access = await directus.event_access(credentials, query.event_id)
        if access is Access.FORBIDDEN:
            raise Answer(403, "not allowed to read this event")
        if access is Access.UNAVAILABLE:
            raise Answer(503, "authorization unavailable, retry later")
        async with self._reads:
            # the read ends in time for its 503 to go out before the request's deadline
            budget_ms = int((deadline - trio.current_time() - ANSWER_MARGIN_S) * 1000)
            if budget_ms < MIN_STATEMENT_MS:
                raise Answer(503, "busy, retry later")
            try:
                body = await self._database.run(
                    lambda conn: _read(conn, query, limits.max_fixes, budget_ms)
                )
            except psycopg.errors.QueryCanceled:
                raise Answer(503, "the read took too long: narrow the window") from None
            except TRANSIENT_ERRORS as exc:
                log.warning("history unavailable", error=str(exc).strip()[:200])
                raise Answer(503, "history unavailable, retry later") from None
            except psycopg.Error as exc:
                log.error("history query failed", error=str(exc).strip()[:200])
                raise Answer(500, "history query failed") from None
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if query.format != GEOJSON:
            name = f'attachment; filename="history-{query.event_id}.gpx"'
            headers = ((b"content-disposition", name.encode()),)
        return 200, body, CONTENT_TYPES[query.format], headers


def _read(
    conn: psycopg.Connection[Any], query: HistoryQuery, max_fixes: int, budget_ms: int
) -> bytes:
    """In the worker thread: devices, fixes, pass fixes, simplification, encoding."""
    conn.execute(f"SET LOCAL statement_timeout = {int(budget_ms)}")
    devices = sorted(event_devices(conn, query.event_id))
    if query.device_id is not None:
        if query.device_id not in devices:
            raise Answer(404, "no such device in this event")
        devices = [query.device_id]
    rows = window_rows(
        conn,
        devices,
        query.start,
        query.end,
        include_faulty=query.include_faulty,
        limit=max_fixes + 1,
    )
    if len(rows) > max_fixes:
        raise Answer(
            422,
            f"the window holds more than {max_fixes} fixes (LIVE_HISTORY_MAX_FIXES): "
            "narrow it, or ask for one device",
        )
    tracks = _tracks(rows)
    simplification = None
    if len(rows) > query.max_points:
        pinned = pass_fixes(
            conn, query.event_id, [t.device_id for t in tracks], query.start, query.end
        )
        tracks, simplification = _simplify(tracks, pinned, query.max_points)
    if query.format == GEOJSON:
        return geojson(
            tracks,
            request=query.document(),
            include_faulty=query.include_faulty,
            simplification=simplification,
        )
    return gpx(
        tracks,
        name=f"event {query.event_id}",
        generated_at=format_timestamp(datetime.now(UTC)),
        simplification=simplification,
    )


def _tracks(
    rows: list[tuple[str, str, float, float, float | None, float | None, bool]],
) -> list[Track]:
    tracks: dict[str, Track] = {}
    for device_id, t, lat, lon, alt, speed, faulty in rows:
        track = tracks.get(device_id)
        if track is None:
            track = tracks[device_id] = Track(device_id)
        track.times.append(t)
        track.latitudes.append(lat)
        track.longitudes.append(lon)
        track.altitudes.append(alt)
        track.speeds.append(speed)
        track.faulty.append(faulty)
    for track in tracks.values():
        track.fixes = len(track.times)
    return list(tracks.values())


def _simplify(
    tracks: list[Track], pinned: dict[str, set[str]], max_points: int
) -> tuple[list[Track], Simplification]:
    ranks = []
    for track in tracks:
        xs, ys = project(track.latitudes, track.longitudes)
        times = pinned.get(track.device_id, set())
        fixed = [i for i, t in enumerate(track.times) if t in times] if times else []
        ranks.append(significances(xs, ys, fixed))
    limit = threshold(ranks, max_points)
    chosen = keep(ranks, limit)
    simplified = [track.select(indices) for track, indices in zip(tracks, chosen, strict=True)]
    return simplified, Simplification(
        max_points=max_points,
        tolerance_m=None if limit is None or math.isinf(limit) else limit,
        fixes=sum(t.fixes for t in tracks),
        points=sum(len(i) for i in chosen),
    )


def _cors(origin: str | None) -> tuple[tuple[bytes, bytes], ...]:
    assert origin is not None
    return (
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
    )


_PREFLIGHT = (
    (b"access-control-allow-methods", b"GET"),
    (b"access-control-allow-headers", b"Authorization"),
    (b"access-control-max-age", b"600"),
)

_IDENTITY_MESSAGES = {
    401: "unauthorized: send the Directus session cookie or a Bearer token",
    403: "origin not allowed for a cookie session",
    503: "authentication unavailable, retry later",
}
