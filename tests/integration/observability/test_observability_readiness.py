"""/healthz and /readyz over real HTTP while Redis or PostgreSQL become unreachable.

The shared servers are never stopped: the processor talks to each through a TCP proxy that the
test cuts (connections refused, open ones reset) or black-holes (nothing answers).
"""

from __future__ import annotations

import time

import httpx
import redis
import trio

from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.proxy import tcp_proxy
from tests.support.scrape import base_url, get, scrape
from tests.support.service import running_service, wait_until

FAST_PROBES = {"PROBE_INTERVAL_S": "0.5", "PROBE_TIMEOUT_S": "0.5"}


def readyz(port: int | None) -> httpx.Response:
    return httpx.get(base_url(port) + "/readyz", timeout=5)


def failing(port: int | None) -> list[str]:
    response = readyz(port)
    body = response.json()
    assert (response.status_code == 200) == (body["failing"] == []), (response, body)
    return list(body["failing"])


async def test_readyz_follows_postgres(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    async with tcp_proxy(database_url) as proxy:
        env |= FAST_PROBES | {"DATABASE_URL": proxy.url(database_url)}
        async with running_service(env) as service:
            port = service.http_port
            assert await trio.to_thread.run_sync(failing, port) == []
            assert (await scrape(port)).value("processor_ready") == 1

            await proxy.cut()
            await wait_until(lambda: failing(port) == ["postgres"], timeout=5)
            # A probe caught in the middle of the cut sees its connection reset rather than
            # refused; the next one (0.1 s later) is refused.
            await wait_until(
                lambda: (
                    "refused" in readyz(port).json()["checks"]["postgres"].get("error", "").lower()
                ),
                timeout=5,
            )
            response = await get(port, "/readyz")
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            check = response.json()["checks"]["postgres"]
            assert check["ok"] is False and "refused" in check["error"].lower(), check
            assert response.json()["checks"]["redis"] == {"ok": True}
            assert (await get(port, "/healthz")).status_code == 200
            assert (await scrape(port)).value("processor_ready") == 0

            await proxy.restore()
            await wait_until(lambda: failing(port) == [], timeout=5)
            assert (await scrape(port)).value("processor_ready") == 1
            # and the pipeline itself recovered: new fixes are stored and acked
            publish(redis_client, stream_key, [fix(second=i) for i in range(20)])
            await wait_until(lambda: row_count(database_url) == 20, timeout=20)
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0, timeout=10)


async def test_readyz_follows_redis(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    async with tcp_proxy(env["REDIS_URL"]) as proxy:
        env |= FAST_PROBES | {"REDIS_URL": proxy.url(env["REDIS_URL"])}
        async with running_service(env) as service:
            port = service.http_port
            assert await trio.to_thread.run_sync(failing, port) == []

            await proxy.cut()
            await wait_until(lambda: failing(port) == ["redis"], timeout=5)
            response = await get(port, "/readyz")
            assert response.json()["checks"]["postgres"] == {"ok": True}
            assert (await get(port, "/healthz")).status_code == 200

            await proxy.restore()
            await wait_until(lambda: failing(port) == [], timeout=5)
            publish(redis_client, stream_key, [fix(second=i) for i in range(20)])
            await wait_until(lambda: row_count(database_url) == 20, timeout=20)


async def test_readyz_never_blocks_on_a_hung_dependency(
    env: dict[str, str], database_url: str
) -> None:
    """PostgreSQL accepts connections but never answers: the probe gives up after its 2 s
    timeout, while /readyz answers at once (from the cached verdict) with 503 all along."""
    async with tcp_proxy(database_url) as proxy:
        env |= {
            "PROBE_INTERVAL_S": "2",
            "PROBE_TIMEOUT_S": "2",
            "DATABASE_URL": proxy.url(database_url),
        }
        async with running_service(env) as service:
            port = service.http_port
            await proxy.blackhole()
            await wait_until(lambda: failing(port) == ["postgres"], timeout=10)
            for _ in range(5):  # probes keep hanging meanwhile; the endpoint never waits on one
                started = time.monotonic()
                response = await get(port, "/readyz")
                assert time.monotonic() - started < 1.0
                assert response.status_code == 503
                error = response.json()["checks"]["postgres"]["error"]
                assert "2s" in error, error  # "no answer within 2s" / "... still running after 2s"
                await trio.sleep(0.3)
            await proxy.restore()
            await wait_until(lambda: failing(port) == [], timeout=10)


async def test_readyz_is_503_while_draining(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    """The database is down with records in flight, so the drain waits on the writer: during
    it /readyz says draining, /healthz still 200; once the database is back the drain ends."""
    async with tcp_proxy(database_url) as proxy:
        env |= FAST_PROBES | {"DATABASE_URL": proxy.url(database_url), "SHUTDOWN_TIMEOUT_S": "30"}
        async with running_service(env) as service:
            port = service.http_port
            await proxy.cut()
            publish(redis_client, stream_key, [fix(second=i) for i in range(10)])
            await wait_until(lambda: pending_count(redis_client, stream_key) == 10, timeout=10)
            service.request_stop()
            response = await get(port, "/readyz")
            assert response.status_code == 503
            assert response.json()["failing"][0] == "draining"
            assert (await get(port, "/healthz")).status_code == 200
            assert (await scrape(port)).value("processor_ready") == 0
            await proxy.restore()
        # leaving the block waited for the drain to finish
    assert row_count(database_url) == 10
    assert pending_count(redis_client, stream_key) == 0
