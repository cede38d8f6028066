"""When the drain cannot finish (docs/pipeline.md rule 3): past SHUTDOWN_TIMEOUT_S, or on a second
signal, everything is cancelled, the process exits 1, and what was read but not stored stays pending
in Redis for the next start. Nothing is acked without its row."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tests.support.daemon import Daemon
from tests.support.fixes import fix
from tests.support.proxy import tcp_proxy
from tests.support.service import (
    Rig,
    wait_until,
)


@asynccontextmanager
async def stuck_daemon(
    rig: Rig, log_path: Path, **settings: str
) -> AsyncIterator[tuple[Daemon, dict[str, dict[str, object]], int]]:
    """A daemon that has stored a first batch, then read a second one it cannot store (its
    database is cut); yields it, what was published, and the size of the second batch."""
    async with tcp_proxy(rig.database_url) as proxy:
        daemon = Daemon(
            rig.env
            | {
                "DATABASE_URL": proxy.url(rig.database_url),
                "SHUTDOWN_TIMEOUT_S": "1.5",
                "WRITE_RETRY_INITIAL_MS": "50",
                "WRITE_RETRY_MAX_MS": "200",
            }
            | settings,  # the caller's settings win (e.g. a long deadline)
            log_path,
        )
        try:
            await daemon.wait_for("ready")
            first = [fix(f"dev{d}", 0) for d in range(20)]
            published = dict(zip(rig.publish(first), first, strict=True))
            await wait_until(lambda: rig.rows() == len(first))
            await proxy.cut()
            second = [fix(f"dev{d}", 10) for d in range(20)]
            published |= dict(zip(rig.publish(second), second, strict=True))
            await wait_until(lambda: rig.pending() == len(second))
            yield daemon, published, len(second)
        finally:
            daemon.close()


async def test_drain_past_the_deadline_is_cancelled_and_leaves_entries_pending(
    rig: Rig, tmp_path: Path
) -> None:
    async with stuck_daemon(rig, tmp_path / "daemon.log") as (daemon, published, second):
        daemon.terminate()
        started = time.monotonic()
        code = await daemon.wait_exit(10)
        took = time.monotonic() - started
    assert code == 1, daemon.tail()
    assert 1.4 < took < 5, f"exit {took:.2f}s after SIGTERM with SHUTDOWN_TIMEOUT_S=1.5"
    assert daemon.events("drain deadline exceeded")
    assert rig.pending() == second
    assert rig.rows() == 20
    rig.assert_acked_have_rows(published)


async def test_a_second_signal_stops_at_once(rig: Rig, tmp_path: Path) -> None:
    async with stuck_daemon(rig, tmp_path / "daemon.log", SHUTDOWN_TIMEOUT_S="30") as (
        daemon,
        published,
        second,
    ):
        daemon.terminate()
        await daemon.wait_for("draining")
        await trio.sleep(0.3)  # the drain is stuck behind the cut database
        assert daemon.alive()
        daemon.process.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = await daemon.wait_exit(10)
        took = time.monotonic() - started
    assert code == 1, daemon.tail()
    assert took < 5, f"exit {took:.2f}s after the second signal"
    assert daemon.events("stopping now")
    assert rig.pending() == second
    rig.assert_acked_have_rows(published)
