"""PostgreSQL and Redis outages of 10 s under load (docs/pipeline.md, docs/metrics.md).

`processor run` reaches the server through a TCP proxy that the test cuts (new connections
refused, open ones reset). Throughout the outage the daemon must stay up, `/healthz` must say
200 and `/readyz` 503 naming the failing dependency, no entry may be acked before its row is
committed; afterwards it must catch up to exactly one row per distinct key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from processor.store import retry
from tests.support.daemon import Daemon
from tests.support.fixes import assert_acked_have_rows, pending_count, row_count, stored_keys
from tests.support.load import Publisher, distinct_keys, workload
from tests.support.proxy import TcpProxy, tcp_proxy
from tests.support.service import wait_until

OUTAGE_S = 10.0
FAST_PROBES = {
    "PROBE_INTERVAL_S": "0.2",
    "PROBE_TIMEOUT_S": "1",
    "WRITE_RETRY_INITIAL_MS": "50",
    "WRITE_RETRY_MAX_MS": "1000",
    "READ_COUNT": "200",
    "WRITE_BATCH_SIZE": "500",
}


async def readiness(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    response = await daemon.get("/readyz")
    return response.status_code, response.json()


async def wait_for_readiness(daemon: Daemon, status: int, *, within: float) -> dict[str, Any]:
    with trio.fail_after(within):
        while True:
            code, body = await readiness(daemon)
            if code == status:
                return body
            await trio.sleep(0.1)


async def during_outage(
    daemon: Daemon,
    publisher: Publisher,
    client: redis.Redis,
    stream: str,
    database_url: str,
    failing: str,
) -> None:
    """The outage checks, repeated: alive, live, not ready because of `failing`, no early ack."""
    body = await wait_for_readiness(daemon, 503, within=5)
    assert failing in body["failing"], body
    assert body["checks"][failing]["ok"] is False and body["checks"][failing]["error"], body
    assert (await daemon.get("/healthz")).status_code == 200
    assert daemon.alive(), daemon.tail()
    await trio.to_thread.run_sync(
        assert_acked_have_rows, client, stream, database_url, publisher.snapshot()
    )


async def catch_up(
    daemon: Daemon,
    publisher: Publisher,
    client: redis.Redis,
    stream: str,
    database_url: str,
    documents: list[dict[str, Any]],
) -> None:
    expected = distinct_keys(documents)
    publisher.release()
    await publisher.done.wait()
    await wait_until(lambda: pending_count(client, stream) == 0, timeout=60)
    await wait_until(lambda: row_count(database_url) == len(expected), timeout=60)
    await wait_for_readiness(daemon, 200, within=10)
    daemon.terminate()
    assert await daemon.wait_exit(20) == 0, daemon.tail()
    assert stored_keys(database_url) == expected
    acked = assert_acked_have_rows(client, stream, database_url, publisher.snapshot())
    assert acked == len(documents)


@asynccontextmanager
async def under_load(
    env: dict[str, str],
    *,
    upstream: str,
    proxied: dict[str, str],
    publisher: Publisher,
    database_url: str,
    log_path: Path,
) -> AsyncIterator[tuple[TcpProxy, Daemon]]:
    """A daemon whose dependency at `upstream` is reached through a proxy, storing a steady load.

    `proxied` maps the variable to set (REDIS_URL or DATABASE_URL) to the URL to route through
    the proxy. The block runs once the daemon is ready and has stored its first rows.
    """
    async with tcp_proxy(upstream) as proxy:
        routed = {name: proxy.url(url) for name, url in proxied.items()}
        daemon = Daemon({**env, **FAST_PROBES, **routed}, log_path)
        try:
            await daemon.wait_for("ready", within=30)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run)
                await wait_until(lambda: row_count(database_url) > 1000, timeout=20)
                yield proxy, daemon
        finally:
            daemon.close()


@pytest.mark.slow
async def test_postgres_connections_cut_repeatedly_for_10s(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    postgres_server_url: str,
    tmp_path: Path,
) -> None:
    documents = workload(15_000, devices=100, seed=11)
    publisher = Publisher(redis_client, stream_key, documents, chunk=100, interval_s=0.1)
    with trio.fail_after(120):
        async with under_load(
            env,
            upstream=postgres_server_url,
            proxied={"DATABASE_URL": database_url},
            publisher=publisher,
            database_url=database_url,
            log_path=tmp_path / "daemon.log",
        ) as (proxy, daemon):
            checks = await flap(proxy, daemon, publisher, redis_client, stream_key, database_url)
            assert checks >= 3, "too few outage phases were checked"
            assert not publisher.done.is_set(), "the load should outlast the outage"
            await catch_up(daemon, publisher, redis_client, stream_key, database_url, documents)
    assert daemon.events(retry.RETRYING, operation="write") or daemon.events(
        retry.RETRYING, operation="rehydrate"
    )


async def flap(
    proxy: TcpProxy,
    daemon: Daemon,
    publisher: Publisher,
    client: redis.Redis,
    stream: str,
    database_url: str,
) -> int:
    """Cut PostgreSQL for OUTAGE_S: down ~2 s at a time, with 0.1 s reconnect windows.

    Returns how many down phases passed the outage checks (each is checked once).
    """
    deadline = trio.current_time() + OUTAGE_S
    checked = 0
    while trio.current_time() < deadline:
        await proxy.cut()
        with trio.move_on_at(min(deadline, trio.current_time() + 2.0)):
            await during_outage(daemon, publisher, client, stream, database_url, "postgres")
            checked += 1
            await trio.sleep_forever()
        await proxy.restore()
        await trio.sleep(0.1)
    await proxy.restore()
    return checked


@pytest.mark.slow
async def test_redis_unreachable_for_10s(
    env: dict[str, str],
    redis_client: redis.Redis,
    redis_server_url: str,
    stream_key: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    documents = workload(15_000, devices=100, seed=13)
    publisher = Publisher(redis_client, stream_key, documents, chunk=100, interval_s=0.1)
    with trio.fail_after(120):
        async with under_load(
            env,
            upstream=redis_server_url,
            proxied={"REDIS_URL": redis_server_url},
            publisher=publisher,
            database_url=database_url,
            log_path=tmp_path / "daemon.log",
        ) as (proxy, daemon):
            await proxy.cut()
            checks = 0
            with trio.move_on_after(OUTAGE_S):
                while True:
                    await during_outage(
                        daemon, publisher, redis_client, stream_key, database_url, "redis"
                    )
                    checks += 1
                    await trio.sleep(0.5)
            await proxy.restore()
            assert checks >= 5, "too few outage checks completed"
            assert not publisher.done.is_set(), "the load should outlast the outage"
            await catch_up(daemon, publisher, redis_client, stream_key, database_url, documents)
    assert daemon.events(retry.RETRYING, operation="stream read")
