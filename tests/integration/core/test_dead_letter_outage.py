"""An unwritable dead-letter stream is an outage, never a lost record (issue 10, item 1).

Redis does not roll a MULTI back: with the dead-letter `XADD` and the `XACK` in one transaction,
a refused `XADD` (here: the dead-letter key holds a string) still let the `XACK` run, so the bad
record was acked without its copy, and the writer then crashed on the error. Now the entry must
stay pending while the copy cannot be written, the service must stay up and say why on
`/readyz`, and once the key is usable the record must be dead-lettered exactly once and acked.
"""

from __future__ import annotations

from typing import Any

import httpx
import redis
import trio

from processor.app import Service
from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import running_service, wait_until

FAST_RETRY = {
    "WRITE_RETRY_INITIAL_MS": "20",
    "WRITE_RETRY_MAX_MS": "200",
    "PROBE_INTERVAL_S": "0.5",
    "PROBE_TIMEOUT_S": "0.5",
}


async def readyz(service: Service) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{service.http_port}/readyz")
    return response.status_code, response.json()


async def wait_for_readyz(service: Service, status: int) -> dict[str, Any]:
    with trio.fail_after(20):
        while True:
            code, body = await readyz(service)
            if code == status:
                return body
            await trio.sleep(0.05)


async def test_a_refused_dead_letter_copy_keeps_the_entry_pending_until_it_is_written(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    dead_stream = f"{stream_key}:dead"
    redis_client.set(dead_stream, "not a stream")  # XADD to it: WRONGTYPE at run time
    good = [fix("dev1", second) for second in range(5)]
    with trio.fail_after(60):
        async with running_service(env | FAST_RETRY) as service:
            publish(redis_client, stream_key, good[:2])
            (bad_id,) = publish(redis_client, stream_key, [b"{not json"])
            publish(redis_client, stream_key, good[2:])
            await wait_until(lambda: row_count(database_url) == len(good))

            # The stored entries are acked; the bad one is not, as long as its copy is refused.
            await wait_until(lambda: pending_count(redis_client, stream_key) == 1)
            body = await wait_for_readyz(service, 503)
            assert "dead_letter_stream" in body["failing"], body
            assert "WRONGTYPE" in body["checks"]["dead_letter_stream"]["error"], body
            stalled = service.metrics.registry.get_sample_value(
                "processor_pipeline_stalled", {"check": "dead_letter_stream"}
            )
            assert stalled == 1
            await trio.sleep(0.5)  # several more retries: still pending, still alive
            pending = redis_client.xpending_range(stream_key, "processor", "-", "+", 10)
            assert [p["message_id"].decode() for p in pending] == [bad_id]

            redis_client.delete(dead_stream)  # the operator repairs the key
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            await wait_for_readyz(service, 200)

    letters = redis_client.xrange(dead_stream)
    assert [fields[b"source_id"].decode() for _, fields in letters] == [bad_id]
    assert letters[0][1][b"payload"] == b"{not json"
    assert value(service.metrics.acks) == len(good) + 1
    assert (
        service.metrics.registry.get_sample_value(
            "processor_pipeline_stalled", {"check": "dead_letter_stream"}
        )
        == 0
    )
