"""The simplest end-to-end path: publish valid fixes, they are stored once and acked."""

from __future__ import annotations

import redis

from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import running_service, wait_until


async def test_fixes_are_stored_and_acked(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    async with running_service(env) as service:
        publish(redis_client, stream_key, [fix(f"dev{i % 10}", i) for i in range(1000)])
        await wait_until(lambda: row_count(database_url) == 1000)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
    # Counted once the service has drained: the writer counts a batch's acks after XACK has
    # returned, so a test that sees "nothing pending" in Redis can read the counter before the
    # writer has counted the last batch (this read 800 once). The drain is the sync point.
    assert value(service.metrics.acks) == 1000
