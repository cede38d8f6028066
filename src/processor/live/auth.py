"""Authentication and authorization through Directus (docs/websocket.md).

Directus owns users and permissions: the processor forwards the client's own credential and maps
Directus' answer to a verdict; anything it cannot read is UNAVAILABLE (fail closed, HTTP 503),
never a blame on the user. Invariants: every call is bounded by `DIRECTUS_AUTH_TIMEOUT_MS` as a
total deadline; credentials never reach logs or error messages (`Credentials` hides them); a
credential that is not printable ASCII is refused without asking Directus. The calls and their
mapping: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs
import httpx
import orjson
import structlog
import trio

from processor.observability.metrics import Metrics

log = structlog.get_logger("processor.live.auth")


class AuthOutcome(enum.Enum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"
    UNAVAILABLE = "unavailable"


class Access(enum.Enum):
    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"


class Verdict(enum.Enum):
    """A re-check read's answer (module docstring)."""

    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"
    EXPIRED = "expired"
    UNAVAILABLE = "unavailable"


EVENTS_PER_CALL = 100  # ids per events read: ~4 KB of query string, far below header limits


@attrs.frozen(slots=True)
class Credentials:
    """What the client presented. A Bearer token wins over a cookie when both are present.

    Only the chosen credential is forwarded, which is what makes the Origin rule exact: a
    browser cannot attach an `Authorization` header to a WebSocket upgrade, so only
    cookie-authenticated upgrades can be cross-site hijacked and need the Origin check.
    """

    cookie: str | None = attrs.field(default=None, repr=False)
    bearer: str | None = attrs.field(default=None, repr=False)

    @property
    def usable(self) -> bool:
        """Printable ASCII only: anything else cannot be a Directus credential (-> 401)."""
        return all(value is None or _printable_ascii(value) for value in (self.cookie, self.bearer))

    @property
    def via_cookie(self) -> bool:
        return self.bearer is None and self.cookie is not None

    def headers(self) -> dict[str, str]:
        if self.bearer is not None:
            return {"Authorization": f"Bearer {self.bearer}"}
        if self.cookie is not None:
            return {"Cookie": self.cookie}
        return {}


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first value of header `name` (case-insensitive), decoded as latin-1 (HTTP's charset)."""
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1").strip()
    return None


def credentials_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Credentials | None:
    """The upgrade request's credentials, or None when it carries neither kind."""
    headers = list(headers)
    bearer: str | None = None
    authorization = header(headers, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            bearer = token.strip()
    cookie = header(headers, b"cookie") or None
    if bearer is None and cookie is None:
        return None
    return Credentials(cookie=cookie, bearer=bearer)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """docs/websocket.md: a cookie session must come from an allowed Origin; an empty list allows
    none."""
    return origin is not None and origin.rstrip("/") in allowed


class Directus:
    """A small Directus client sharing one HTTP connection pool for the server's lifetime."""

    def __init__(self, client: httpx.AsyncClient, *, timeout_s: float, metrics: Metrics) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._metrics = metrics

    @classmethod
    def client(cls, base_url: str, timeout_s: float) -> httpx.AsyncClient:
        """The httpx client (trio via anyio) that `Directus` uses: no redirects, no env proxies."""
        return httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def authenticate(self, credentials: Credentials) -> tuple[AuthOutcome, str]:
        """The verdict and, when OK, the user's id (`data.id`; per-user connection caps)."""
        started = time.perf_counter()
        status, data = await self._get("/users/me", credentials)
        self._metrics.live_auth_duration.observe(time.perf_counter() - started)
        if status == 200 and data is not _MISSING:
            if data is None:
                return AuthOutcome.UNAUTHORIZED, ""
            user_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(user_id, str | int) or isinstance(user_id, bool):
                return AuthOutcome.UNAVAILABLE, ""  # a body we cannot read: do not guess
            return AuthOutcome.OK, str(user_id)[:200]
        if status in (401, 403):
            return AuthOutcome.UNAUTHORIZED, ""
        return AuthOutcome.UNAVAILABLE, ""

    async def event_access(self, credentials: Credentials, event_id: str) -> Access:
        status, data = await self._get(f"/items/events/{event_id}", credentials)
        if status == 200 and data is not _MISSING:
            return Access.ALLOWED if data is not None else Access.FORBIDDEN
        if status in (401, 403, 404):
            return Access.FORBIDDEN
        return Access.UNAVAILABLE

    async def readable_events(
        self, credentials: Credentials, event_ids: Collection[str]
    ) -> tuple[Verdict, frozenset[str]]:
        """Which of `event_ids` (lowercase uuids) the credentials may read; the set is only
        meaningful with ALLOWED (FORBIDDEN: the role cannot read `events` at all)."""
        wanted = sorted(event_ids)
        readable: set[str] = set()
        for start in range(0, len(wanted), EVENTS_PER_CALL):
            chunk = wanted[start : start + EVENTS_PER_CALL]
            status, data = await self._get(
                "/items/events",
                credentials,
                {
                    "fields": "id",
                    "limit": str(len(chunk)),
                    "filter": orjson.dumps({"id": {"_in": chunk}}).decode(),
                },
            )
            verdict = _list_verdict(status, data)
            if verdict is not Verdict.ALLOWED:
                return verdict, frozenset()
            readable.update(
                str(item["id"]).lower() for item in data if isinstance(item, dict) and "id" in item
            )
        return Verdict.ALLOWED, frozenset(readable.intersection(wanted))

    async def collection_access(
        self, credentials: Credentials, collections: Iterable[str]
    ) -> Mapping[str, Verdict]:
        """May the credentials read each collection at all (`GET /items/<c>?limit=0`, the
        reads running concurrently)."""
        verdicts: dict[str, Verdict] = {}

        async def probe(collection: str) -> None:
            status, data = await self._get(f"/items/{collection}", credentials, {"limit": "0"})
            verdicts[collection] = _list_verdict(status, data)

        async with trio.open_nursery() as nursery:
            for collection in collections:
                nursery.start_soon(probe, collection)
        return verdicts

    async def _get(
        self, path: str, credentials: Credentials, params: Mapping[str, str] | None = None
    ) -> tuple[int | None, Any]:
        """(status, data) of one GET; status None on timeout or a transport error."""
        with trio.move_on_after(self._timeout_s):
            try:
                response = await self._client.get(
                    path,
                    params=dict(params) if params is not None else {"fields": "id"},
                    headers=credentials.headers(),
                )
            except httpx.HTTPError as exc:
                log.warning("directus request failed", path=_route(path), error=type(exc).__name__)
                return None, _MISSING
            return response.status_code, _data(response.content)
        log.warning("directus request timed out", path=_route(path), timeout_s=self._timeout_s)
        return None, _MISSING


_MISSING: Any = object()


def _list_verdict(status: int | None, data: Any) -> Verdict:
    if status == 200:
        return Verdict.ALLOWED if isinstance(data, list) else Verdict.UNAVAILABLE
    if status == 401:
        return Verdict.EXPIRED
    if status == 403:
        return Verdict.FORBIDDEN
    return Verdict.UNAVAILABLE


def _data(body: bytes) -> Any:
    """The `data` member of a JSON body, `_MISSING` when the body is not an object with one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MISSING
    if not isinstance(document, dict) or "data" not in document:
        return _MISSING
    return document["data"]


def _route(path: str) -> str:
    """The path as logged (ids are not secret, but keep the label set small)."""
    return "/items/events/<id>" if path.startswith("/items/events/") else path
