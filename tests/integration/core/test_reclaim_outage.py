"""An outage never turns good records into dead letters (issue 10, item 2).

`XAUTOCLAIM` raised the delivery count of entries that were merely waiting in this instance's
writer through a database outage, every `RECLAIM_INTERVAL_S`, before the reclaimer skipped them.
After a restart, or on another instance, they were past `MAX_DELIVERIES` and dead-lettered. Now:

- an instance never claims (nor counts a delivery of) entries it holds in its pipeline;
- it renews its hold on them (`XCLAIM ... JUSTID`, which counts no delivery), so another
  instance does not see them idle and claim them either;
- a real delivery still counts: a first read, a re-read after a restart, a claim from another
  consumer. So an entry that keeps killing whoever reads it is still dead-lettered, also when
  the same instance keeps restarting on it.
"""

from __future__ import annotations

import pytest
import redis
import trio

from tests.support.fixes import (
    consumer_pending,
    fix,
    key_of,
    stored_keys,
)
from tests.support.metrics import value
from tests.support.proxy import tcp_proxy
from tests.support.service import (
    Rig,
    running_service,
    wait_until,
)

MAX_DELIVERIES = 3
INTERVAL_S = 0.2
OUTAGE_S = 5.0  # far longer than MAX_DELIVERIES x RECLAIM_INTERVAL_S
RECLAIM = {
    "RECLAIM_INTERVAL_S": str(INTERVAL_S),
    "RECLAIM_MIN_IDLE_MS": "300",
    "MAX_DELIVERIES": str(MAX_DELIVERIES),
    "WRITE_RETRY_INITIAL_MS": "20",
    "WRITE_RETRY_MAX_MS": "200",
    "READ_COUNT": "50",
}


def max_delivery_count(client: redis.Redis, stream: str) -> int:
    rows = client.xpending_range(stream, "processor", "-", "+", 100_000)
    return max((int(row["times_delivered"]) for row in rows), default=0)


@pytest.mark.parametrize("restart_as", ["same instance", "another instance"])
async def test_entries_held_through_an_outage_are_stored_after_a_restart(
    restart_as: str,
    rig: Rig,
    postgres_server_url: str,
) -> None:
    documents = [fix(f"dev{i % 10}", i) for i in range(150)]
    async with tcp_proxy(postgres_server_url) as proxy:
        first = (
            rig.env | RECLAIM | {"DATABASE_URL": proxy.url(rig.database_url), "INSTANCE_ID": "one"}
        )
        async with running_service(first, drain=False):  # killed, not drained
            await proxy.cut()
            rig.publish(documents)
            await wait_until(lambda: consumer_pending(rig.redis, rig.stream_key, "one") == 150)
            await trio.sleep(OUTAGE_S)
            # Waiting in the writer is not a delivery.
            assert max_delivery_count(rig.redis, rig.stream_key) == 1
        # killed during the outage: everything it held is still pending
        await proxy.restore()
    assert rig.pending() == len(documents)

    second = rig.env | RECLAIM | {"INSTANCE_ID": "one" if restart_as == "same instance" else "two"}
    with trio.fail_after(60):
        async with running_service(second) as service:
            await wait_until(lambda: rig.pending() == 0)
            await wait_until(lambda: rig.rows() == len(documents))
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}
    assert rig.redis.xlen(f"{rig.stream_key}:dead") == 0
    assert value(service.metrics.dead_letters.labels("max_deliveries")) == 0


async def test_instances_do_not_claim_each_others_waiting_entries_during_an_outage(
    rig: Rig,
    postgres_server_url: str,
) -> None:
    """Two live instances through an outage much longer than RECLAIM_MIN_IDLE_MS: each renews
    its hold on what it waits with, so neither claims the other's entries. MAX_DELIVERIES=1
    makes any claim of a good record a dead letter."""
    documents = [fix(f"dev{i % 10}", i) for i in range(300)]
    # Renewal is time-based (every min(RECLAIM_INTERVAL_S, RECLAIM_MIN_IDLE_MS / 3)): the idle
    # bound must leave room for a late renewal on a busy machine (300 ms did not, at load 16),
    # and the outage must still be much longer than it.
    shared = rig.env | RECLAIM | {"MAX_DELIVERIES": "1", "RECLAIM_MIN_IDLE_MS": "2000"}
    async with tcp_proxy(postgres_server_url) as proxy:
        proxied = shared | {"DATABASE_URL": proxy.url(rig.database_url)}
        with trio.fail_after(90):
            async with (
                running_service(proxied | {"INSTANCE_ID": "alpha"}) as alpha,
                running_service(proxied | {"INSTANCE_ID": "bravo"}) as bravo,
            ):
                await proxy.cut()
                for start in range(0, len(documents), 50):
                    rig.publish(documents[start : start + 50])
                    await trio.sleep(0.05)
                await trio.sleep(OUTAGE_S)
                assert max_delivery_count(rig.redis, rig.stream_key) == 1
                await proxy.restore()
                await wait_until(lambda: rig.pending() == 0)
                await wait_until(lambda: rig.rows() == len(documents))
    assert rig.redis.xlen(f"{rig.stream_key}:dead") == 0
    for service in (alpha, bravo):
        assert value(service.metrics.reclaimed) == 0
        assert value(service.metrics.dead_letters.labels("max_deliveries")) == 0
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}


async def test_an_entry_that_keeps_killing_its_reader_is_dead_lettered_on_restart(rig: Rig) -> None:
    """A restart re-reads the instance's own pending entries (`XREADGROUP ... 0`): a delivery.
    One already delivered MAX_DELIVERIES times (each read killed its reader) is dead-lettered."""
    documents = [fix("dev1", i) for i in range(5)]
    ids = rig.publish(documents)
    rig.redis.xgroup_create(rig.stream_key, "processor", id="0")
    rig.redis.xreadgroup("processor", "one", {rig.stream_key: ">"})
    poison = ids[2]
    rig.redis.xclaim(rig.stream_key, "processor", "one", 0, [poison], retrycount=MAX_DELIVERIES)

    with trio.fail_after(30):
        async with running_service(rig.env | RECLAIM | {"INSTANCE_ID": "one"}) as service:
            await wait_until(lambda: rig.pending() == 0)
    letters = rig.redis.xrange(f"{rig.stream_key}:dead")
    assert [fields[b"source_id"].decode() for _, fields in letters] == [poison]
    assert letters[0][1][b"reason"] == b"max_deliveries"
    assert letters[0][1][b"error"] == b"delivered 4 times (MAX_DELIVERIES=3)"
    assert value(service.metrics.dead_letters.labels("max_deliveries")) == 1
    assert stored_keys(rig.database_url) == {key_of(d) for i, d in enumerate(documents) if i != 2}
