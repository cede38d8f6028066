"""A writer lane copies the next batch while the one before it merges (core/writer.py).

The copied batch waits on its own pooled connection, its transaction open, until its turn.
What that must not change: merges in stream order (the first stored IO value of a key wins),
every record stored once, a connection lost while it holds a copied batch costs a retry and
nothing else, and a cancelled lane gives every connection back, rolled back. Real PostgreSQL
and Redis; the writer is driven directly with deliveries read from the stream.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import psycopg
import pytest
import redis
import trio

from processor.app import migrate
from processor.config import Config, load_config
from processor.core.records import Delivery
from processor.core.writer import Writer
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.positions import prepare_connection
from processor.store.postgres import Database
from tests.support.fixes import BASE_TIME, fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import wait_until
from tests.support.writer import direct_writer, read_delivery

BATCH = 200
BATCHES = 10
REPEATED = 50  # keys of the batch before, again, in every batch but the first
LOCK_HELD_S = 1.0


class CountingDatabase(Database):
    """The writer's database, counting the connections held across thread hops (a lane's
    copied batches): how many at once, and whether every one came back."""

    def __init__(self, config: Config) -> None:
        super().__init__(
            config.database_url,
            pool_size=6,
            statement_timeout_ms=config.db_statement_timeout_ms,
            configure=prepare_connection,
        )
        self._lock = threading.Lock()
        self.out = 0
        self.most_out = 0

    def checkout(self) -> psycopg.Connection[Any]:
        conn = super().checkout()
        with self._lock:
            self.out += 1
            self.most_out = max(self.most_out, self.out)
        return conn

    def checkin(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self.out -= 1
        super().checkin(conn)


@attrs.define
class Rig:
    config: Config
    database: CountingDatabase
    metrics: Metrics
    writer: Writer


def documents() -> list[dict[str, Any]]:
    """BATCHES batches of BATCH fixes; each batch after the first repeats REPEATED keys of the
    one before with a changed and an added IO value."""
    batches: list[list[dict[str, Any]]] = []
    for b in range(BATCHES):
        batch = [
            fix(f"dev{j % 5}", b * 1000 + j, attributes={"1": b}) for j in range(BATCH - REPEATED)
        ]
        if b:
            batch += [
                fix(f"dev{j % 5}", (b - 1) * 1000 + j, attributes={"1": b, "2": b})
                for j in range(REPEATED)
            ]
        else:
            batch += [fix(f"dev{j % 5}", j + 500) for j in range(REPEATED)]
        batches.append(batch)
    return [document for batch in batches for document in batch]


def named(url: str, application_name: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["application_name"] = application_name
    return urlunsplit(parts._replace(query=urlencode(query)))


@asynccontextmanager
async def writer_rig(
    env: dict[str, str], redis_client: redis.Redis, stream: str
) -> AsyncIterator[Rig]:
    config = load_config(
        env
        | {
            "WRITE_RETRY_INITIAL_MS": "20",
            "WRITE_RETRY_MAX_MS": "100",
            # the writer's backends carry the stream's name: the pg_stat_activity queries below
            # see this test's connections only, not those of a suite running beside it
            "DATABASE_URL": named(env["DATABASE_URL"], stream),
        }
    )
    await redis_store.ensure_group(redis_client, stream, config.redis_group)
    database = CountingDatabase(config)
    await database.connect(deadline_s=10)
    await migrate(config, database)
    metrics = Metrics()
    writer_redis = redis.Redis.from_url(config.redis_url, socket_timeout=5)
    writer = direct_writer(
        config,
        database=database,
        control=writer_redis,
        stream=stream,
        metrics=metrics,
        batch_size=BATCH,
    )
    try:
        yield Rig(config, database, metrics, writer)
    finally:
        writer_redis.close()
        await database.aclose()


@contextmanager
def key_locked(database_url: str, document: dict[str, Any]) -> Iterator[None]:
    """Hold the row of `document`'s key locked (inserted, not committed): a batch merging that
    key waits until the block ends, and the batches behind it wait copied."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO positions (device_id, ts, latitude, longitude, attributes)"
            " VALUES (%s, %s, 0, 0, '{}')",
            (document["device_id"], document["timestamp"]),
        )
        try:
            yield
        finally:
            conn.rollback()


@asynccontextmanager
async def lane_held_up(
    rig: Rig, nursery: trio.Nursery, database_url: str, stream: str, sent: list[dict[str, Any]]
) -> AsyncIterator[None]:
    """Run the writer on `sent` and hold its lane up: batch 1 merges behind a lock on its first
    key, and batch 2 waits copied. The lock goes when the block ends."""
    delivery = read_delivery(rig.config, stream, len(sent), Metrics())
    send, receive = trio.open_memory_channel[Delivery](1)
    with key_locked(database_url, sent[0]):
        await nursery.start(rig.writer.run, receive)
        async with send:
            await send.send(delivery)
        await wait_until(lambda: merging_behind_a_lock_and_copied_waiting(database_url, stream))
        yield


def copied_waiting(database_url: str, stream: str) -> list[int]:
    """This test's writer backends holding a copied batch: idle in a transaction whose last
    statement was COPY."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        return [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'"
                " AND query LIKE 'COPY processor_staging%%' AND application_name = %s",
                (stream,),
            )
        ]


def merging_behind_a_lock_and_copied_waiting(database_url: str, stream: str) -> bool:
    """Batch 1 merges, waiting for `key_locked`'s lock, and batch 2 waits copied."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND application_name = %s",
            (stream,),
        ).fetchone()
    return found is not None and found[0] == 1 and len(copied_waiting(database_url, stream)) == 1


def stored_io(database_url: str) -> dict[tuple[str, int], dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        return {
            (device_id, int(epoch)): attributes
            for device_id, epoch, attributes in conn.execute(
                "SELECT device_id, extract(epoch FROM ts), attributes FROM positions"
            )
        }


def writes(metrics: Metrics, status: str) -> float:
    found = metrics.registry.get_sample_value("processor_position_writes_total", {"status": status})
    return found or 0.0


async def test_copied_batches_merge_in_stream_order_while_the_next_is_copied(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    sent = documents()
    publish(redis_client, stream_key, sent)
    with trio.fail_after(60):
        async with writer_rig(env, redis_client, stream_key) as rig:
            delivery = read_delivery(rig.config, stream_key, len(sent), Metrics())
            send, receive = trio.open_memory_channel[Delivery](1)
            async with trio.open_nursery() as nursery:
                await nursery.start(rig.writer.run, receive)
                async with send:
                    await send.send(delivery)
                await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            assert rig.database.most_out >= 2  # a batch was copied while another merged
            assert rig.database.out == 0

    keys = BATCHES * (BATCH - REPEATED) + REPEATED
    assert row_count(database_url) == keys
    assert writes(rig.metrics, "inserted") == keys
    assert writes(rig.metrics, "merged") == (BATCHES - 1) * REPEATED
    assert value(rig.metrics.write_retries) == 0
    stored = stored_io(database_url)
    for b in range(1, BATCHES):
        for j in range(REPEATED):
            key = (f"dev{j % 5}", int(BASE_TIME.timestamp()) + (b - 1) * 1000 + j)
            # the earlier batch's value stays (stored first), the later one adds its new key
            assert stored[key] == {"1": b - 1, "2": b}, key


@pytest.fixture
def three_batches(redis_client: redis.Redis, stream_key: str) -> list[dict[str, Any]]:
    """The first three batches of `documents`, published (the held-up lane's input)."""
    sent = documents()[: 3 * BATCH]
    publish(redis_client, stream_key, sent)
    return sent


async def test_a_copied_batch_whose_connection_is_lost_is_written_again_once(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    three_batches: list[dict[str, Any]],
) -> None:
    sent = three_batches
    with trio.fail_after(60):
        async with writer_rig(env, redis_client, stream_key) as rig:
            async with trio.open_nursery() as nursery:
                async with lane_held_up(rig, nursery, database_url, stream_key, sent):
                    (pid,) = copied_waiting(database_url, stream_key)  # batch 2's connection
                    await trio.to_thread.run_sync(terminate, database_url, pid)
                    await trio.sleep(LOCK_HELD_S)  # batch 1's merge is slow; the others wait
                await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            assert rig.database.out == 0

    keys = 3 * (BATCH - REPEATED) + REPEATED
    assert row_count(database_url) == keys
    assert value(rig.metrics.acks) == len(sent)
    assert value(rig.metrics.write_retries) == 1  # batch 2, on a new connection
    assert writes(rig.metrics, "inserted") == keys
    assert writes(rig.metrics, "merged") == 2 * REPEATED
    assert writes(rig.metrics, "duplicate") == 0
    # write durations: batch 1's merge waited for the lock; batches 2 and 3 waited for batch 1,
    # which is not their write time (the metric tells a slow database, not a busy lane)
    sample = rig.metrics.registry.get_sample_value
    assert sample("processor_write_duration_seconds_count") == 3
    assert sample("processor_write_duration_seconds_bucket", {"le": "1.0"}) == 2


def terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_a_cancelled_lane_gives_its_copied_batch_back_rolled_back(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    three_batches: list[dict[str, Any]],
) -> None:
    sent = three_batches
    with trio.fail_after(60):
        async with writer_rig(env, redis_client, stream_key) as rig:
            async with (
                trio.open_nursery() as nursery,
                lane_held_up(rig, nursery, database_url, stream_key, sent),
            ):
                nursery.cancel_scope.cancel()
                # the merge waiting for the lock is not abandoned: the lock goes next
            assert rig.database.out == 0
            assert copied_waiting(database_url, stream_key) == []

    # batch 1's merge finished once the lock went (a thread is never abandoned); the copied
    # batch 2 was rolled back
    assert row_count(database_url) == BATCH
    assert pending_count(redis_client, stream_key) == len(sent)  # cancelled: nothing acked
