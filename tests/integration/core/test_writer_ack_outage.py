"""A batch committed while Redis is unreachable is acked later, and written only once.

When the ack after a commit fails, the batch is committed but still pending: the writer must
retry the ack alone, with backoff, until Redis answers -- not write the batch again (its
records would be counted as duplicates, the inserted ones never), not drop it, not crash. Real
PostgreSQL and Redis; the writer's Redis connection goes through a proxy that is cut for the
commit and restored afterwards.
"""

from __future__ import annotations

import redis
import trio

from processor.app import make_database, migrate
from processor.config import load_config
from processor.core.records import Delivery
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.proxy import tcp_proxy
from tests.support.service import wait_until
from tests.support.writer import direct_writer, read_delivery

FIXES = 50


async def test_an_ack_refused_after_the_commit_is_retried_without_writing_again(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    config = load_config(env | {"WRITE_RETRY_INITIAL_MS": "20", "WRITE_RETRY_MAX_MS": "100"})
    await redis_store.ensure_group(redis_client, stream_key, config.redis_group)
    publish(redis_client, stream_key, [fix("dev1", second) for second in range(FIXES)])
    metrics = Metrics()
    delivery = read_delivery(config, stream_key, FIXES, metrics)
    database = make_database(config)
    with trio.fail_after(60):
        await database.connect(deadline_s=10)
        await migrate(config, database)
        async with tcp_proxy(config.redis_url) as proxy:
            writer_redis = redis.Redis.from_url(proxy.url(config.redis_url), socket_timeout=5)
            writer = direct_writer(
                config,
                database=database,
                control=writer_redis,
                stream=stream_key,
                metrics=metrics,
                batch_size=FIXES,
            )
            await proxy.cut()
            send, receive = trio.open_memory_channel[Delivery](1)
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run, receive)
                async with send:
                    await send.send(delivery)
                    await wait_until(lambda: row_count(database_url) == FIXES)
                    await trio.sleep(0.3)  # several ack attempts: all refused, nothing lost
                    assert pending_count(redis_client, stream_key) == FIXES
                    assert value(metrics.write_retries) >= 2
                    await proxy.restore()
                    await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            writer_redis.close()
    await database.aclose()

    assert row_count(database_url) == FIXES
    assert value(metrics.acks) == FIXES
    writes = metrics.registry.get_sample_value
    assert writes("processor_position_writes_total", {"status": "inserted"}) == FIXES
    assert writes("processor_position_writes_total", {"status": "duplicate"}) in (None, 0)
