"""At-least-once in, exactly-once stored: duplicates, late fixes and same-key new IO
(docs/pipeline.md)."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import psycopg
import redis

from tests.support.expected import expected_state
from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import running_service, wait_until


def messy_telemetry(seed: int = 7) -> list[dict[str, Any]]:
    """10,000 fixes from 100 devices, the way real trackers deliver them.

    - 8,000 distinct fixes, with every 10th device's fixes shuffled (late, out of order);
    - 1,000 exact redeliveries, half right after the original (same batch), half far away;
    - 1,000 records with an existing key but different IO (event + periodic record), placed
      before or after their twin.
    """
    rng = random.Random(seed)
    base = [
        fix(f"35630704244{device:04d}", second, attributes={"1": second, "66": 12000 + device})
        for device in range(100)
        for second in range(80)
    ]
    for device in range(0, 100, 10):
        chunk = base[device * 80 : (device + 1) * 80]
        rng.shuffle(chunk)
        base[device * 80 : (device + 1) * 80] = chunk
    documents = list(base)
    for original in rng.sample(base, 1000):
        twin = dict(original)
        position = documents.index(original)
        if rng.random() < 0.5:
            documents.insert(position + 1, twin)
        else:
            documents.insert(rng.randrange(len(documents) + 1), twin)
    for original in rng.sample(base, 1000):
        event = dict(original)
        event["attributes"] = {"1": -1, "239": 1, "240": rng.randrange(2)}
        documents.insert(rng.randrange(len(documents) + 1), event)
    assert len(documents) == 10_000
    return documents


async def test_ten_thousand_messy_fixes_are_stored_exactly_once(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    documents = messy_telemetry()
    expected = expected_state(documents)
    # two writer lanes (the default is one): the lane split by device must keep exactly-once
    env = {**env, "READ_COUNT": "150", "WRITE_BATCH_SIZE": "200", "WRITE_CONCURRENCY": "2"}
    async with running_service(env) as service:
        publish(redis_client, stream_key, documents)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0, timeout=60)
        await wait_until(lambda: value(service.metrics.acks) == 10_000, timeout=10)

    assert row_count(database_url) == len(expected.attributes) == 8_000
    with psycopg.connect(database_url) as conn:
        stored = {
            (device_id, ts): attributes
            for device_id, ts, attributes in conn.execute(
                "SELECT device_id, ts, attributes FROM positions"
            )
        }
    assert stored == dict(expected.attributes.items())
    writes = service.metrics.position_writes
    assert value(writes.labels("inserted")) == expected.inserted == 8_000
    assert value(writes.labels("merged")) == expected.merged
    assert value(writes.labels("duplicate")) == expected.duplicate
    assert (expected.merged, expected.duplicate) == (1000, 1000)  # the data really is messy
    assert value(service.metrics.acks) == 10_000
    assert value(service.metrics.consumer_records) == 10_000
    group = next(g for g in redis_client.xinfo_groups(stream_key) if g["name"] == b"processor")
    assert group["pending"] == 0
    assert isinstance(next(iter(stored))[1], datetime)
