"""Cached readiness probes: Redis and PostgreSQL are checked in the background, never on request.

`/readyz` only reads the latest result, so a scrape or a kubelet probe never waits on a dead
dependency. Each check is a small blocking function run in a worker thread every
`PROBE_INTERVAL_S`; a check that has not answered within `PROBE_TIMEOUT_S` counts as failed at
that instant. Its thread is abandoned rather than awaited (it is bounded by its own connect and
socket timeouts and finishes on its own), and while it is still running no second thread is
started for the same check, so a black-holed server costs at most one thread per check.

The checks use their own connections, not the pipeline's: a PostgreSQL pool busy with writes must
not make the instance look unready, and a probe must not wait for a pooled connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import attrs
import psycopg
import redis
import structlog
import trio
from trio import TaskStatus

from processor.observability.schedule import FixedRate
from processor.store import redis as redis_store
from processor.store.postgres import Database

log = structlog.get_logger("processor.probes")


@attrs.frozen
class ProbeResult:
    ok: bool
    error: str
    checked_at: float  # trio.current_time() when the verdict was reached


NOT_PROBED = ProbeResult(ok=False, error="not probed yet", checked_at=float("-inf"))


class Probe:
    """One named dependency check and its latest result."""

    def __init__(
        self,
        name: str,
        check: Callable[[], None],
        *,
        errors: tuple[type[Exception], ...],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self._check = check
        self._errors = errors  # what a failing dependency raises; anything else is a bug
        self._close = close
        self.result = NOT_PROBED
        self._busy = threading.Event()  # set while a (possibly abandoned) check thread runs

    def _run_check(self) -> None:
        # Marked busy from inside the thread: a check cancelled while still waiting for a
        # worker thread never ran, so it must not leave the probe marked busy forever.
        self._busy.set()
        try:
            self._check()
        finally:
            self._busy.clear()

    async def probe(self, timeout_s: float) -> ProbeResult:
        """Run the check once (bounded by `timeout_s`) and record the verdict."""
        if self._busy.is_set():
            return self._record(False, f"previous check still running after {timeout_s:g}s")
        try:
            with trio.move_on_after(timeout_s):
                await trio.to_thread.run_sync(self._run_check, abandon_on_cancel=True)
                return self._record(True, "")
            return self._record(False, f"no answer within {timeout_s:g}s")
        except self._errors as exc:
            return self._record(False, f"{type(exc).__name__}: {str(exc).strip()[:300]}")

    def _record(self, ok: bool, error: str) -> ProbeResult:
        previous, self.result = self.result, ProbeResult(ok, error, trio.current_time())
        if ok and not previous.ok and previous is not NOT_PROBED:
            log.info("dependency answers again", check=self.name)
        elif not ok and previous.ok:
            log.warning("dependency check failed", check=self.name, error=error)
        return self.result

    def close(self) -> None:
        self._close()


def redis_probe(url: str, timeout_s: float) -> Probe:
    """PING on a client of its own whose socket timeout is the probe timeout."""
    client = redis_store.make_client(url, socket_timeout_s=timeout_s)

    def check() -> None:
        client.ping()

    return Probe(
        "redis", check, errors=(redis.RedisError, *redis_store.TRANSIENT_ERRORS), close=client.close
    )


def postgres_probe(database: Database) -> Probe:
    """A fresh connection and `SELECT 1`: proves the server accepts connections right now."""

    def check() -> None:
        with database.dedicated_connection() as conn:
            conn.execute("SELECT 1").fetchone()

    return Probe("postgres", check, errors=(psycopg.Error, OSError))


async def run_probes(
    probes: Sequence[Probe],
    *,
    interval_s: float,
    timeout_s: float,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Probe every dependency each `interval_s` (concurrently); reports started after round one,
    so readiness is known by the time the service says it is up."""
    schedule = FixedRate(interval_s)
    try:
        started = False
        while True:
            await schedule.wait()
            async with trio.open_nursery() as nursery:
                for probe in probes:
                    nursery.start_soon(probe.probe, timeout_s)
            if not started:
                started = True
                task_status.started()
    finally:
        for probe in probes:
            probe.close()
