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

import attrs
import pytest
import trio

from processor.store import retry
from tests.support.daemon import Daemon
from tests.support.fixes import stored_keys
from tests.support.load import Publisher, distinct_keys, workload
from tests.support.proxy import TcpProxy, tcp_proxy
from tests.support.service import (
    Rig,
    wait_until,
)

OUTAGE_S = 10.0
FAST_PROBES = {
    "PROBE_INTERVAL_S": "0.5",
    "PROBE_TIMEOUT_S": "0.5",
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


@attrs.frozen
class Outage:
    """A daemon storing a steady load, one of its dependencies reached through `proxy`."""

    proxy: TcpProxy
    daemon: Daemon
    publisher: Publisher
    documents: list[dict[str, Any]]


async def during_outage(rig: Rig, outage: Outage, failing: str) -> None:
    """The outage checks, repeated: alive, live, not ready because of `failing`, no early ack."""
    daemon = outage.daemon
    body = await wait_for_readiness(daemon, 503, within=5)
    assert failing in body["failing"], body
    assert body["checks"][failing]["ok"] is False and body["checks"][failing]["error"], body
    assert (await daemon.get("/healthz")).status_code == 200
    assert daemon.alive(), daemon.tail()
    await trio.to_thread.run_sync(rig.assert_acked_have_rows, outage.publisher.snapshot())


async def catch_up(rig: Rig, outage: Outage) -> None:
    daemon, publisher, documents = outage.daemon, outage.publisher, outage.documents
    expected = distinct_keys(documents)
    publisher.release()
    await publisher.done.wait()
    await wait_until(lambda: rig.pending() == 0, timeout=60)
    await wait_until(lambda: rig.rows() == len(expected), timeout=60)
    await wait_for_readiness(daemon, 200, within=10)
    daemon.terminate()
    assert await daemon.wait_exit(20) == 0, daemon.tail()
    assert stored_keys(rig.database_url) == expected
    acked = rig.assert_acked_have_rows(publisher.snapshot())
    assert acked == len(documents)


@asynccontextmanager
async def under_load(
    rig: Rig, *, seed: int, upstream: str, proxied: dict[str, str], log_path: Path
) -> AsyncIterator[Outage]:
    """A daemon whose dependency at `upstream` is reached through a proxy, storing a steady load
    (15,000 fixes of 100 devices from `seed`, published over about 15 s).

    `proxied` maps the variable to set (REDIS_URL or DATABASE_URL) to the URL to route through
    the proxy. The block runs once the daemon is ready and has stored its first rows; the
    whole of it is bounded by 120 s.
    """
    documents = workload(15_000, devices=100, seed=seed)
    publisher = Publisher(rig.redis, rig.stream_key, documents, chunk=100, interval_s=0.1)
    with trio.fail_after(120):
        async with tcp_proxy(upstream) as proxy:
            routed = {name: proxy.url(url) for name, url in proxied.items()}
            daemon = Daemon({**rig.env, **FAST_PROBES, **routed}, log_path)
            try:
                await daemon.wait_for("ready", within=30)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publisher.run)
                    await wait_until(lambda: rig.rows() > 1000, timeout=20)
                    yield Outage(proxy, daemon, publisher, documents)
            finally:
                daemon.close()


@pytest.mark.slow
async def test_postgres_connections_cut_repeatedly_for_10s(
    rig: Rig, postgres_server_url: str, tmp_path: Path
) -> None:
    async with under_load(
        rig,
        seed=11,
        upstream=postgres_server_url,
        proxied={"DATABASE_URL": rig.database_url},
        log_path=tmp_path / "daemon.log",
    ) as outage:
        checks = await flap(rig, outage)
        assert checks >= 3, "too few outage phases were checked"
        assert not outage.publisher.done.is_set(), "the load should outlast the outage"
        await catch_up(rig, outage)
    assert outage.daemon.events(retry.RETRYING, operation="write") or outage.daemon.events(
        retry.RETRYING, operation="rehydrate"
    )


async def flap(rig: Rig, outage: Outage) -> int:
    """Cut PostgreSQL for OUTAGE_S: down ~2 s at a time, with 0.1 s reconnect windows.

    Returns how many down phases passed the outage checks (each is checked once).
    """
    deadline = trio.current_time() + OUTAGE_S
    checked = 0
    while trio.current_time() < deadline:
        await outage.proxy.cut()
        with trio.move_on_at(min(deadline, trio.current_time() + 2.0)):
            await during_outage(rig, outage, "postgres")
            checked += 1
            await trio.sleep_forever()
        await outage.proxy.restore()
        await trio.sleep(0.1)
    await outage.proxy.restore()
    return checked


@pytest.mark.slow
async def test_redis_unreachable_for_10s(rig: Rig, redis_server_url: str, tmp_path: Path) -> None:
    async with under_load(
        rig,
        seed=13,
        upstream=redis_server_url,
        proxied={"REDIS_URL": redis_server_url},
        log_path=tmp_path / "daemon.log",
    ) as outage:
        await outage.proxy.cut()
        checks = 0
        with trio.move_on_after(OUTAGE_S):
            while True:
                await during_outage(rig, outage, "redis")
                checks += 1
                await trio.sleep(0.5)
        await outage.proxy.restore()
        assert checks >= 5, "too few outage checks completed"
        assert not outage.publisher.done.is_set(), "the load should outlast the outage"
        await catch_up(rig, outage)
    assert outage.daemon.events(retry.RETRYING, operation="stream read")
