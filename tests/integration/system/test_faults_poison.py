"""A record the decoder accepts but the database refuses is isolated; its batch is stored.

The refusal comes from PostgreSQL itself: a CHECK constraint (as a DBA might add) that one
device id violates. The whole batch fails at first; the writer splits it until the poison
record stands alone, dead-letters it with the database's error, and stores the rest.
"""

from __future__ import annotations

import redis
import trio

from tests.support.fixes import fix, key_of, pending_count, publish, row_count, stored_keys
from tests.support.metrics import value
from tests.support.schema import migrate_and_forbid
from tests.support.service import running_service, wait_until


async def test_database_refusal_is_dead_lettered_and_the_rest_of_the_batch_stored(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    migrate_and_forbid(database_url, "poison")
    good = [fix(f"dev{i % 13}", i) for i in range(600)]
    documents = [*good[:300], fix("poison", 12345), *good[300:]]
    ids = publish(redis_client, stream_key, documents)  # before start: one read, one batch
    env = {**env, "READ_COUNT": "1000", "WRITE_BATCH_SIZE": "1000", "WRITE_CONCURRENCY": "1"}

    with trio.fail_after(30):
        async with running_service(env) as service:
            m = service.metrics
            await wait_until(lambda: value(m.acks) == 601)
            assert pending_count(redis_client, stream_key) == 0
            assert value(m.write_batch_size) == 601  # all in one first attempt ...
            assert value(m.dead_letters.labels("db_rejected")) == 1
            assert value(m.position_writes.labels("failed")) == 1
            assert value(m.position_writes.labels("inserted")) == 600
            assert value(m.acks) == 601
            assert value(m.write_retries) == 0  # a data refusal is never retried

    assert row_count(database_url) == 600
    assert stored_keys(database_url) == {key_of(d) for d in good}
    dead = redis_client.xrange(f"{stream_key}:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"source_id"].decode() == ids[300]
    assert fields[b"reason"] == b"database refused record"
    assert b"no_poison" in fields[b"error"]
    assert (
        fields[b"payload"] == redis_client.xrange(stream_key, ids[300], ids[300])[0][1][b"payload"]
    )
