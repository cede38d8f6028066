"""PostgreSQL access for Trio: a bounded psycopg pool used from worker threads.

psycopg's synchronous API runs inside `trio.to_thread.run_sync` (never abandoned on cancel), so a
cancelled task always waits for its thread to return the connection to the pool: no thread is
left holding a pooled connection. Every call is bounded by `connect_timeout`, the pool's wait
timeout and a server-side `statement_timeout`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from processor.store import db_errors
from processor.store.retry import connect_with_retry

T = TypeVar("T")

log = structlog.get_logger("processor.postgres")

CONNECT_TIMEOUT_S = 5
# How long a worker thread waits for a pooled connection. Short on purpose: a cancelled task
# must wait for its thread (it is never abandoned holding a connection), so this bounds how long
# a cancellation (drain deadline, second signal) can be held up while the database is
# unreachable. Callers retry a PoolTimeout like any transient failure, in cancellable sleeps.
POOL_WAIT_S = 1.0

# Which failures are transient is decided in one place, store/db_errors.py (re-exported here
# for the callers that catch them).
TRANSIENT_ERRORS = db_errors.TRANSIENT_ERRORS


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections work in `schema` (isolated tests and benchmark contenders)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"-csearch_path={schema}"
    return urlunsplit(parts._replace(query=urlencode(query)))


def connection_kwargs(url: str, statement_timeout_ms: int) -> dict[str, Any]:
    """Per-connection settings: bounded connect, bounded statements, TCP keepalives.

    Options already in the URL (e.g. a `search_path`) are kept, ours are appended. An
    `application_name` in the URL (standard libpq) wins over ours, so an operator can tell
    instances apart in `pg_stat_activity`.
    """
    given = conninfo_to_dict(url)
    url_options = str(given.get("options") or "")
    options = f"{url_options} -c statement_timeout={statement_timeout_ms} -c timezone=UTC"
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": options.strip(),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": str(given.get("application_name") or "processor"),
    }


class Database:
    """A pool of PostgreSQL connections, used one thread hop at a time (or, for the writer's
    copied batches, held from one hop to the next: `checkout`)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        statement_timeout_ms: int,
        configure: Callable[[psycopg.Connection[Any]], None] | None = None,
        min_size: int = 1,
        name: str = "processor",
    ) -> None:
        self.url = url
        self._kwargs = connection_kwargs(url, statement_timeout_ms)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=pool_size,
            kwargs=self._kwargs,
            open=False,
            timeout=POOL_WAIT_S,
            reconnect_timeout=3600,
            name=name,
            configure=configure,
        )

    async def connect(self, *, deadline_s: float) -> None:
        """Wait for the server with capped backoff (each attempt logged), then open the pool."""
        await connect_with_retry(
            "postgres", self._probe_connect, (psycopg.Error,), deadline_s=deadline_s
        )
        await trio.to_thread.run_sync(lambda: self._pool.open(wait=False))

    async def wait_filled(self, timeout_s: float) -> bool:
        """Wait until the pool holds its `min_size` connections (False: not within timeout_s),
        so that the first users do not run into the short pool wait."""
        try:
            await trio.to_thread.run_sync(lambda: self._pool.wait(timeout=timeout_s))
        except PoolTimeout:
            return False
        return True

    def _probe_connect(self) -> None:
        with psycopg.connect(self.url, **self._kwargs) as conn:
            conn.execute("SELECT 1")

    def dedicated_connection(self) -> psycopg.Connection[Any]:
        """A connection outside the pool (migrations hold a session-level advisory lock)."""
        return psycopg.connect(self.url, **self._kwargs)

    async def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work(conn)` in a worker thread inside one transaction (committed on return)."""
        return await trio.to_thread.run_sync(self.run_sync, work)

    def run_sync(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._pool.connection(timeout=POOL_WAIT_S) as conn:
            return work(conn)

    def checkout(self) -> psycopg.Connection[Any]:
        """A pooled connection held across thread hops (the writer's lane keeps a transaction
        open from one hop to the next); give it back with `checkin`."""
        return self._pool.getconn(timeout=POOL_WAIT_S)

    def checkin(self, conn: psycopg.Connection[Any]) -> None:
        """Return a `checkout` connection (rolled back by the pool if still in a transaction)."""
        self._pool.putconn(conn)

    async def ping(self) -> None:
        """One cheap round trip; raises when the server does not answer."""
        await self.run(lambda conn: conn.execute("SELECT 1").fetchone())

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(lambda: self._pool.close(timeout=3))
