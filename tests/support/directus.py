"""A Directus stand-in (a real HTTP/1.1 server on a real socket) and the Directus tables.

The stand-in answers the calls the processor makes, per credential:
- `GET /users/me`: by `users[token]`: "ok" (200 user), "401", "403", "null" (200 `data: null`),
  "500", "nodata" (200 without `data`), "slow" (answers after `slow_s`); unknown token -> 401.
- `GET /items/events/<id>`: 401 unless the user is "ok"; `event_mode` "500"/"slow" overrides;
  200 when the id is in `allowed[token]`, else 403 (what Directus answers for no permission).
- `GET /items/events?filter={"id":{"_in":[...]}}` (the re-check's list read): 401 unless "ok";
  `event_mode` overrides; 200 with the requested ids that are in `allowed[token]` (Directus
  filters a list by the role's item permissions; it does not refuse it).
- `GET /items/<collection>?limit=0` for the race-control collections: 401 unless "ok";
  `collection_mode` "500"/"slow" overrides; 200 `data: []` when the collection is in
  `readable[token]` (all four by default), else 403 with Directus 11's FORBIDDEN error body.
A credential is a Bearer token or the `directus_session_token` cookie. Every request is recorded
(path, query and which kind of credential came) so tests can check what was forwarded.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import attrs
import orjson
import psycopg
import trio

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "directus_schema.sql"
COOKIE_NAME = "directus_session_token"
RACE_COLLECTIONS = frozenset({"timing_records", "stage_results", "speed_violations", "alerts"})


@attrs.define
class Seen:
    path: str
    credential: str | None  # "bearer", "cookie" or None
    token: str | None
    query: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.define
class DirectusStandIn:
    users: dict[str, str] = attrs.field(factory=dict)
    allowed: dict[str, set[str]] = attrs.field(factory=dict)
    readable: dict[str, set[str]] = attrs.field(factory=dict)
    event_mode: str | None = None
    collection_mode: str | None = None
    slow_s: float = 10.0
    port: int = 0
    seen: list[Seen] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def user(
        self,
        token: str,
        mode: str = "ok",
        events: set[str] | None = None,
        collections: set[str] | frozenset[str] = RACE_COLLECTIONS,
    ) -> str:
        self.users[token] = mode
        self.allowed[token] = set(events or ())
        self.readable[token] = set(collections)
        return token

    def calls(self, path: str, token: str | None = None) -> int:
        """How many requests for `path` came (with `token`, when given)."""
        return sum(1 for s in self.seen if s.path == path and token in (None, s.token))

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                raw += chunk
            head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            _method, target, _version = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            path, _, query_text = target.partition("?")
            query = parse_qs(query_text)
            credential, token = _credential(headers)
            self.seen.append(Seen(path, credential, token, query))
            status, body = await self._answer(path, token, query)
            await stream.send_all(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )

    async def _answer(
        self, path: str, token: str | None, query: dict[str, list[str]]
    ) -> tuple[int, bytes]:
        mode = self.users.get(token or "", "401")
        if path == "/users/me":
            return await self._by_mode(
                mode, {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, token or ""))}
            )
        if path == "/items/events":
            if mode != "ok":
                return 401, _errors("unauthenticated")
            if self.event_mode is not None:
                return await self._by_mode(self.event_mode, [])
            wanted = orjson.loads(query["filter"][0])["id"]["_in"]
            allowed = self.allowed.get(token or "", set())
            return 200, orjson.dumps({"data": [{"id": i} for i in wanted if i in allowed]})
        if path.removeprefix("/items/") in RACE_COLLECTIONS:
            collection = path.removeprefix("/items/")
            if mode != "ok":
                return 401, _errors("unauthenticated")
            if self.collection_mode is not None:
                return await self._by_mode(self.collection_mode, [])
            if collection in self.readable.get(token or "", set()):
                return 200, orjson.dumps({"data": []})
            return 403, _forbidden(collection)
        if path.startswith("/items/events/"):
            if mode != "ok":
                return 401, _errors("unauthenticated")
            if self.event_mode is not None:
                return await self._by_mode(self.event_mode, None)
            event_id = path.rsplit("/", 1)[1]
            if event_id in self.allowed.get(token or "", set()):
                return 200, orjson.dumps({"data": {"id": event_id}})
            return 403, _errors("forbidden")
        return 404, _errors("not found")

    async def _by_mode(self, mode: str, data: Any) -> tuple[int, bytes]:
        if mode == "slow":
            await trio.sleep(self.slow_s)
            return 200, orjson.dumps({"data": data})
        if mode == "ok":
            return 200, orjson.dumps({"data": data})
        if mode == "null":
            return 200, orjson.dumps({"data": None})
        if mode == "nodata":
            return 200, orjson.dumps({"something": "else"})
        return int(mode), _errors(mode)


def _credential(headers: dict[str, str]) -> tuple[str | None, str | None]:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return "bearer", authorization[7:].strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE_NAME:
            return "cookie", value
    return None, None


def _errors(message: str) -> bytes:
    return orjson.dumps({"errors": [{"message": message}]})


def _forbidden(collection: str) -> bytes:
    """Directus 11's answer to a read of a collection the role has no read permission on."""
    return orjson.dumps(
        {
            "errors": [
                {
                    "message": f'You don\'t have permission to "read" from collection '
                    f'"{collection}" or it does not exist.',
                    "extensions": {"code": "FORBIDDEN"},
                }
            ]
        }
    )


# --- the Directus tables ----------------------------------------------------------------------


def create_directus_tables(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(FIXTURE.read_text())


def add_event(database_url: str, imeis: list[str], name: str = "Rally") -> str:
    """An event with one entry per device (devices created when new); returns the event id."""
    event_id = str(uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO events (id, name) VALUES (%s, %s)", (event_id, name))
        for number, imei in enumerate(imeis, 1):
            entry_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO entries (id, event_id, number) VALUES (%s, %s, %s)",
                (entry_id, event_id, str(number)),
            )
            device_id = conn.execute(
                "INSERT INTO devices (id, imei) VALUES (%s, %s) "
                "ON CONFLICT (imei) DO UPDATE SET imei = EXCLUDED.imei RETURNING id",
                (uuid.uuid4(), imei),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO entry_devices (entry_id, device_id) VALUES (%s, %s)",
                (entry_id, device_id),
            )
    return event_id
