"""Crashes, database outages and SIGTERM: nothing lost, nothing duplicated (docs/pipeline.md)."""

from __future__ import annotations

import signal
import time
import uuid

import psycopg
import trio

from processor.app import Service
from processor.config import load_config
from tests.support.fixes import (
    fix,
    key_of,
    row_count,
    stored_keys,
)
from tests.support.metrics import value
from tests.support.service import (
    Rig,
    running_service,
    spawn_processor,
    wait_until,
)


def workload(devices: int, per_device: int) -> list[dict[str, object]]:
    return [fix(f"dev{d:04d}", s) for s in range(per_device) for d in range(devices)]


async def test_cancelled_mid_batch_then_restarted_completes_without_loss(rig: Rig) -> None:
    documents = workload(200, 100)
    env = {**rig.env, "READ_COUNT": "200", "WRITE_BATCH_SIZE": "250"}
    published = dict(zip(rig.publish(documents), documents, strict=True))

    with trio.move_on_after(60) as run_scope:
        async with trio.open_nursery() as nursery:
            service = Service(load_config(env))
            await nursery.start(service.run)
            await wait_until(lambda: rig.rows() >= 2000, interval=0.005)
            nursery.cancel_scope.cancel()  # the whole task tree, mid-batch, no drain
    assert not run_scope.cancelled_caught
    rows_at_crash = rig.rows()
    assert rows_at_crash < len(documents), "the crash came too late to prove anything"
    assert rig.pending() > 0
    rig.assert_acked_have_rows(published)

    async with running_service(env) as restarted:
        await wait_until(lambda: rig.pending() == 0, timeout=60)
        writes = restarted.metrics.position_writes
        await wait_until(lambda: rig.rows() == len(documents))
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}
    # The restarted instance re-read its own pending entries: whatever the first one had
    # committed but not acked comes back as a duplicate, never as a second row.
    assert value(writes.labels("inserted")) == len(documents) - rows_at_crash
    rig.assert_acked_have_rows(published)


async def test_sigkilled_daemon_restarted_completes_without_loss(rig: Rig) -> None:
    documents = workload(500, 60)
    published = dict(zip(rig.publish(documents), documents, strict=True))
    env = {**rig.env, "READ_COUNT": "200", "WRITE_BATCH_SIZE": "200"}
    process = spawn_processor(env)
    try:
        await wait_until(
            lambda: row_count_or_zero(rig.database_url) >= 3000, timeout=30, interval=0.01
        )
    finally:
        process.kill()
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert rig.rows() < len(documents)
    rig.assert_acked_have_rows(published)

    process = spawn_processor(env)
    try:
        await wait_until(lambda: rig.pending() == 0, timeout=60)
        await wait_until(lambda: rig.rows() == len(documents))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}
    rig.assert_acked_have_rows(published)


def row_count_or_zero(database_url: str) -> int:
    try:
        return row_count(database_url)
    except psycopg.errors.UndefinedTable:
        return 0


def terminate_processor_backends(server_url: str, application_name: str) -> int:
    """Terminate this test's daemon's connections only (its own application_name), never those
    of other processors using the same server."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        return len(
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchall()
        )


async def test_terminated_database_connections_retry_without_early_acks(
    rig: Rig,
    postgres_server_url: str,
) -> None:
    env = {
        **rig.env,
        "INSTANCE_ID": "terminated",
        "WRITE_RETRY_INITIAL_MS": "20",
        "WRITE_RETRY_MAX_MS": "200",
        "READ_COUNT": "100",
        "WRITE_BATCH_SIZE": "100",
    }
    application_name = f"processor-{uuid.uuid4().hex[:8]}"
    env["DATABASE_URL"] += f"&application_name={application_name}"
    documents = workload(100, 100)
    published: dict[str, dict[str, object]] = {}
    async with running_service(env) as service:
        terminated = 0
        for start in range(0, len(documents), 500):
            chunk = documents[start : start + 500]
            published.update(zip(rig.publish(chunk), chunk, strict=True))
            terminated += await trio.to_thread.run_sync(
                terminate_processor_backends, postgres_server_url, application_name
            )
            await trio.sleep(0.02)
            await trio.to_thread.run_sync(rig.assert_acked_have_rows, published)
        await wait_until(lambda: rig.pending() == 0, timeout=60)
        assert value(service.metrics.write_retries) > 0
        assert service.ready.is_set() and not service.draining.is_set()
    assert terminated > 0
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}
    assert rig.rows() == len(documents)


async def test_sigterm_with_entries_in_flight_drains_and_exits_zero(rig: Rig) -> None:
    documents = workload(1000, 40)
    published = dict(zip(rig.publish(documents), documents, strict=True))
    env = {
        **rig.env,
        "READ_COUNT": "500",
        "WRITE_BATCH_SIZE": "500",
        "SHUTDOWN_TIMEOUT_S": "10",
        "LOG_LEVEL": "info",
        "LOG_FORMAT": "json",
    }
    process = spawn_processor(env)
    try:
        await wait_until(
            lambda: row_count_or_zero(rig.database_url) >= 2000, timeout=30, interval=0.01
        )
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await trio.to_thread.run_sync(lambda: process.wait(timeout=15))
        drain_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate()
    assert code == 0, stderr.decode()[-2000:]
    assert drain_s < 10
    assert b'"draining"' in stderr and b'"stopped"' in stderr
    acked = rig.assert_acked_have_rows(published)
    assert 0 < acked < len(documents), "SIGTERM should arrive with work still unread"
    # Everything read was written and acked: nothing the drained instance read is pending.
    assert rig.pending() == 0
    assert rig.rows() == acked


async def test_deleted_consumer_group_is_recreated_and_nothing_is_lost(rig: Rig) -> None:
    """An operator (or a Redis restore) destroys the group under a running instance: the
    consumer recreates it from the start of the stream instead of crashing or skipping."""
    first = workload(10, 10)
    second = [fix(f"late{d}", s) for s in range(10) for d in range(10)]
    async with running_service(rig.env) as service:
        rig.publish(first)
        await wait_until(lambda: rig.rows() == len(first))
        rig.redis.xgroup_destroy(rig.stream_key, "processor")
        rig.publish(second)
        await wait_until(lambda: rig.rows() == len(first) + len(second))
        await wait_until(lambda: rig.pending() == 0)
        assert service.ready.is_set() and not service.draining.is_set()
    assert stored_keys(rig.database_url) == {key_of(d) for d in first + second}
