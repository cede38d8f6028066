"""When the drain cannot finish (docs/pipeline.md rule 3): past SHUTDOWN_TIMEOUT_S, or on a second
signal, everything is cancelled, the process exits 1, and what was read but not stored stays pending
in Redis for the next start. Nothing is acked without its row."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis
import trio

from tests.support.daemon import Daemon
from tests.support.fixes import assert_acked_have_rows, fix, pending_count, publish, row_count
from tests.support.proxy import tcp_proxy
from tests.support.service import wait_until


async def _stuck_daemon(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    proxy_url: str,
    log_path: Path,
) -> tuple[Daemon, dict[str, dict[str, object]]]:
    """A daemon that has stored a first batch, then read a second one it cannot store."""
    daemon = Daemon(
        env
        | {
            "DATABASE_URL": proxy_url,
            "SHUTDOWN_TIMEOUT_S": "1.5",
            "WRITE_RETRY_INITIAL_MS": "50",
            "WRITE_RETRY_MAX_MS": "200",
        },
        log_path,
    )
    await daemon.wait_for("ready")
    first = [fix(f"dev{d}", 0) for d in range(20)]
    published = dict(zip(publish(redis_client, stream_key, first), first, strict=True))
    await wait_until(lambda: row_count(database_url) == len(first))
    return daemon, published


async def test_drain_past_the_deadline_is_cancelled_and_leaves_entries_pending(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    async with tcp_proxy(database_url) as proxy:
        daemon, published = await _stuck_daemon(
            env,
            redis_client,
            stream_key,
            database_url,
            proxy.url(database_url),
            tmp_path / "daemon.log",
        )
        try:
            await proxy.cut()
            second = [fix(f"dev{d}", 10) for d in range(20)]
            published |= dict(zip(publish(redis_client, stream_key, second), second, strict=True))
            await wait_until(lambda: pending_count(redis_client, stream_key) == len(second))
            daemon.terminate()
            started = time.monotonic()
            code = await daemon.wait_exit(10)
            took = time.monotonic() - started
        finally:
            daemon.close()
    assert code == 1, daemon.tail()
    assert 1.4 < took < 5, f"exit {took:.2f}s after SIGTERM with SHUTDOWN_TIMEOUT_S=1.5"
    assert daemon.events("drain deadline exceeded")
    assert pending_count(redis_client, stream_key) == len(second)
    assert row_count(database_url) == 20
    assert_acked_have_rows(redis_client, stream_key, database_url, published)


async def test_a_second_signal_stops_at_once(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    async with tcp_proxy(database_url) as proxy:
        daemon, published = await _stuck_daemon(
            env | {"SHUTDOWN_TIMEOUT_S": "30"},
            redis_client,
            stream_key,
            database_url,
            proxy.url(database_url),
            tmp_path / "daemon.log",
        )
        try:
            await proxy.cut()
            second = [fix(f"dev{d}", 10) for d in range(20)]
            published |= dict(zip(publish(redis_client, stream_key, second), second, strict=True))
            await wait_until(lambda: pending_count(redis_client, stream_key) == len(second))
            daemon.terminate()
            await daemon.wait_for("draining")
            await trio.sleep(0.3)  # the drain is stuck behind the cut database
            assert daemon.alive()
            daemon.process.send_signal(signal.SIGINT)
            started = time.monotonic()
            code = await daemon.wait_exit(10)
            took = time.monotonic() - started
        finally:
            daemon.close()
    assert code == 1, daemon.tail()
    assert took < 5, f"exit {took:.2f}s after the second signal"
    assert daemon.events("stopping now")
    assert pending_count(redis_client, stream_key) == len(second)
    assert_acked_have_rows(redis_client, stream_key, database_url, published)
