"""A development-only Directus stand-in: just enough of Directus for the live server's auth.

It answers the calls of `processor.live.auth` with Directus' shapes and status codes: a one-time
demo token (printed in the page's URL) is redeemed once by the page server for a session, which
travels as the `directus_session_token` cookie or as a Bearer token. Invariants: tokens and
sessions are random (`secrets`) and live only in this process's memory; only the one token is
printed; the runtime layers may not import this module (import-linter). The answers and why a
cookie: docs/race-control-page.md, Internals.
"""

from __future__ import annotations

import secrets
from http.cookies import CookieError, SimpleCookie
from typing import Any

import orjson

from processor.observability.http import Request, Response, asgi_app, json_response
from processor.observability.http_server import App

COOKIE = "directus_session_token"
MAX_TOKENS = 64  # outstanding one-time tokens (the demo prints one; tests may ask for a few)
MAX_SESSIONS = 1024  # redeemed sessions kept; the oldest is forgotten beyond that
RACE_COLLECTIONS = frozenset({"timing_records", "stage_results", "speed_violations", "alerts"})


class DirectusStandIn:
    """The demo's users: one-time tokens, sessions, and the events every session may read."""

    def __init__(self, event_ids: tuple[str, ...]) -> None:
        self.event_ids = frozenset(e.lower() for e in event_ids)
        self._tokens: set[str] = set()
        self._sessions: dict[str, str] = {}  # session -> user id (insertion ordered)

    def issue_token(self) -> str:
        """A new one-time token (the oldest outstanding one is dropped beyond MAX_TOKENS)."""
        if len(self._tokens) >= MAX_TOKENS:
            self._tokens.pop()
        token = secrets.token_urlsafe(24)
        self._tokens.add(token)
        return token

    def redeem(self, token: str) -> str | None:
        """The session a one-time token buys, or None (unknown or already used)."""
        if token not in self._tokens:
            return None
        self._tokens.discard(token)
        if len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = f"demo-user-{len(self._sessions) + 1}"
        return session

    def user_of(self, session: str | None) -> str | None:
        return None if session is None else self._sessions.get(session)

    def session_of(self, cookie_header: str | None, authorization: str | None) -> str | None:
        """The session a request carries: Bearer first (like the live server), then the cookie."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return session_cookie(cookie_header)

    def app(self) -> App:
        """The stand-in's HTTP surface (only the routes the live server calls)."""
        return asgi_app(self.answer)

    async def answer(self, request: Request) -> Response:
        session = self.session_of(
            request.headers.get("cookie"), request.headers.get("authorization")
        )
        user = self.user_of(session)
        if request.method not in ("GET", "HEAD"):
            return _errors(405, "Method not allowed.")
        if request.path == "/users/me":
            if user is None:
                return _errors(401, "Invalid user credentials.")
            return json_response(200, {"data": {"id": user}})
        if not request.path.startswith("/items/"):
            return _errors(404, "Route doesn't exist.")
        if user is None:
            return _errors(401, "Invalid user credentials.")
        collection, _, item = request.path.removeprefix("/items/").partition("/")
        if collection == "events" and item:
            if item.lower() not in self.event_ids:
                return _errors(403, "You don't have permission to access this.")
            return json_response(200, {"data": {"id": item.lower()}})
        if collection == "events":
            wanted = _filter_ids(request.query.get("filter"))
            if wanted is None:
                return _errors(400, "Invalid query.")
            return json_response(200, {"data": [{"id": i} for i in wanted if i in self.event_ids]})
        if item:
            return _errors(404, "Route doesn't exist.")
        if collection not in RACE_COLLECTIONS:
            return _errors(403, "You don't have permission to access this.")
        return json_response(200, {"data": []})


def _filter_ids(text: str | None) -> list[str] | None:
    """The ids of a `{"id": {"_in": [...]}}` filter (None when it is not one)."""
    try:
        document: Any = orjson.loads(text or "")
        ids = document["id"]["_in"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(ids, list):
        return None
    return [str(i).lower() for i in ids]


def session_cookie(cookie_header: str | None) -> str | None:
    """The `directus_session_token` value of a Cookie header (None if absent or unparsable)."""
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _errors(status: int, message: str) -> Response:
    """Directus' error shape: `{"errors": [{"message": ...}]}`."""
    return json_response(status, {"errors": [{"message": message}]})
