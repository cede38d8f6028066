"""The image as an operator runs it (issue 16): built from this tree, on the host's network,
against the machine's Redis and PostgreSQL.

The stop-timeout rule under test (OPERATIONS.md §4): the engine's stop timeout is
SHUTDOWN_TIMEOUT_S + STOP_MARGIN_S. A drain under load finishes well inside SHUTDOWN_TIMEOUT_S
(exit 0, nothing pending); when it cannot (a second signal, or a stop timeout too short for
the drain), entries stay pending and a restart stores them all: nothing is lost.
"""

from __future__ import annotations

import pytest
import redis
import trio

from tests.container.engine import Container, running
from tests.support.fixes import (
    assert_acked_have_rows,
    consumer_pending,
    fix,
    pending_count,
    publish,
    row_count,
    stored_keys,
)
from tests.support.load import Publisher, distinct_keys, workload
from tests.support.proxy import tcp_proxy
from tests.support.service import wait_until

SHUTDOWN_TIMEOUT_S = 10
STOP_MARGIN_S = 5  # OPERATIONS.md: stop timeout = SHUTDOWN_TIMEOUT_S + 5 s
NO_QUIRKS = ["--late", "0", "--duplicate", "0", "--zero-satellites", "0", "--event", "0"]
NO_QUIRKS += ["--sentinels", "0"]


async def test_image_runs_read_only_as_non_root_healthy_and_stores_fixes(
    image: str,
    container_name: str,
    container_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> None:
    # --read-only-tmpfs=false: not even /tmp, /run or /var/tmp are writable, so a service that
    # needed to write anywhere but its sockets would fail here.
    read_only = ["--read-only", "--read-only-tmpfs=false"]
    async with running(container_name, image, container_env, read_only) as container:
        await container.wait_for("ready")
        await container.wait_healthy()
        assert (await container.exec("id", "-u")).stdout.strip() == "10001"
        probe = await container.exec("touch", "/opt/processor/probe", check=False)
        assert probe.returncode != 0
        assert "Read-only file system" in probe.stderr
        assert (await container.inspect())["HostConfig"]["ReadonlyRootfs"] is True

        # The image's own simulator publishes (REDIS_URL from the container's environment).
        await container.exec(
            "processor", "simulate", "--count", "500", "--unpaced", *NO_QUIRKS,
            "--stream", stream_key,
        )  # fmt: skip
        await wait_until(lambda: row_count(database_url) == 500, timeout=60)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
        assert redis_client.xlen(stream_key) == 500
        assert await container.running()
        # The migrations came from inside the wheel (nothing else in the image has them).
        assert await container.events("migrations")


async def test_stop_under_load_drains_and_exits_zero_within_the_shutdown_timeout(
    image: str,
    container_name: str,
    container_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> None:
    documents = workload(60_000, devices=100, seed=16)
    env = container_env | {
        "SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "READ_COUNT": "300",
        "WRITE_BATCH_SIZE": "1000",
        "WRITE_FLUSH_MS": "150",  # a partly filled batch is waiting when the signal comes
    }
    consumer = env["INSTANCE_ID"]
    publisher = Publisher(redis_client, stream_key, documents, chunk=200, interval_s=0.05)
    async with running(container_name, image, env) as container:
        await container.wait_for("ready")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            await wait_until(lambda: row_count(database_url) > 3000, timeout=60)
            took = await container.stop(SHUTDOWN_TIMEOUT_S + STOP_MARGIN_S)
            assert not publisher.done.is_set(), "the load should outlast the drain"
            nursery.cancel_scope.cancel()
        print(f"podman stop under load: drained and exited in {took:.2f}s")
        assert await container.exit_code() == 0, (await container.logs())[-3000:]
        assert took < SHUTDOWN_TIMEOUT_S, f"drain took {took:.2f}s"
        assert await container.events("pipeline drained")
        assert await container.events("stopped")
        assert consumer_pending(redis_client, stream_key, consumer) == 0
        published = publisher.snapshot()
        assert_acked_have_rows(redis_client, stream_key, database_url, published)

        # The same instance started again takes the rest of what was published.
        await container.start()
        expected = distinct_keys(list(published.values()))
        await wait_until(lambda: stored_keys(database_url) == expected, timeout=90)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
        await container.stop(SHUTDOWN_TIMEOUT_S + STOP_MARGIN_S)
        assert await container.exit_code() == 0


async def _forced_stop(container: Container, how: str) -> None:
    if how == "second signal":
        await container.signal("TERM")
        await container.wait_for("draining")
        await trio.sleep(0.5)  # the drain is stuck behind the cut database
        assert await container.running()
        await container.signal("INT")
        took = await container.wait_exit(within=20)
        # Far below the 30 s drain deadline (podman's own calls take up to a second here).
        assert took < 10, f"exit {took:.2f}s after the second signal"
        assert await container.exit_code() == 1
        assert await container.events("stopping now")
    else:  # a stop timeout shorter than the drain needs: podman SIGKILLs it
        took = await container.stop(2)
        assert 1.5 < took < 10, f"podman stop -t 2 took {took:.2f}s"
        assert await container.exit_code() == 137  # 128 + SIGKILL


@pytest.mark.parametrize("how", ["second signal", "too-short stop timeout"])
async def test_a_forced_stop_leaves_entries_pending_and_a_restart_stores_them_all(
    how: str,
    image: str,
    container_name: str,
    container_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> None:
    async with tcp_proxy(database_url) as proxy:
        env = container_env | {
            "DATABASE_URL": proxy.url(database_url),
            "SHUTDOWN_TIMEOUT_S": "30",
            "WRITE_RETRY_INITIAL_MS": "50",
            "WRITE_RETRY_MAX_MS": "200",
        }
        async with running(container_name, image, env) as container:
            await container.wait_for("ready")
            first = [fix(f"dev{d}", 0) for d in range(20)]
            published = dict(zip(publish(redis_client, stream_key, first), first, strict=True))
            await wait_until(lambda: row_count(database_url) == len(first), timeout=60)

            await proxy.cut()
            second = [fix(f"dev{d}", 10) for d in range(20)]
            published |= dict(zip(publish(redis_client, stream_key, second), second, strict=True))
            await wait_until(lambda: pending_count(redis_client, stream_key) == len(second))
            await _forced_stop(container, how)
            assert pending_count(redis_client, stream_key) == len(second)
            assert row_count(database_url) == len(first)
            assert_acked_have_rows(redis_client, stream_key, database_url, published)

            # Restarted (same INSTANCE_ID): it re-reads its own pending entries and stores them.
            await proxy.restore()
            await container.start()
            await wait_until(lambda: row_count(database_url) == 40, timeout=60)
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            assert stored_keys(database_url) == distinct_keys(first + second)
            await container.stop(SHUTDOWN_TIMEOUT_S + STOP_MARGIN_S)
            assert await container.exit_code() == 0
