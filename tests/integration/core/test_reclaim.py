"""The reclaimer (docs/pipeline.md): entries left pending by a vanished consumer are taken over.

A "ghost" consumer reads entries with XREADGROUP and never acks them, exactly what a consumer
that died mid-batch leaves behind; the service under test must claim and store them.
"""

from __future__ import annotations

import redis
import trio

from tests.support.fixes import (
    consumer_pending,
    fix,
    key_of,
    stored_keys,
)
from tests.support.metrics import value
from tests.support.service import (
    Rig,
    running_service,
    wait_until,
)

GROUP = "processor"
RECLAIM_ENV = {"RECLAIM_INTERVAL_S": "0.2", "RECLAIM_MIN_IDLE_MS": "300", "MAX_DELIVERIES": "3"}


def ghost_reads(client: redis.Redis, stream: str, count: int) -> list[str]:
    """Deliver `count` entries to the consumer "ghost" (which then "dies")."""
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    reply = client.xreadgroup(GROUP, "ghost", {stream: ">"}, count=count)
    return [raw_id.decode() for raw_id, _ in reply[0][1]]


async def test_idle_entries_of_a_dead_consumer_are_reclaimed_and_stored(rig: Rig) -> None:
    documents = [fix(f"dev{i % 7}", i) for i in range(450)]
    rig.publish(documents)
    ghost_ids = ghost_reads(rig.redis, rig.stream_key, 250)  # across several XAUTOCLAIM pages
    assert consumer_pending(rig.redis, rig.stream_key, "ghost") == 250

    with trio.fail_after(30):
        async with running_service({**rig.env, **RECLAIM_ENV}) as service:
            await wait_until(lambda: rig.pending() == 0)
            await wait_until(lambda: rig.rows() == 450)
            await wait_until(lambda: value(service.metrics.acks) == 450)
            assert value(service.metrics.reclaimed) == len(ghost_ids)
            assert value(service.metrics.dead_letters.labels("max_deliveries")) == 0
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents}
    assert rig.redis.xlen(f"{rig.stream_key}:dead") == 0


async def test_entries_delivered_too_often_are_dead_lettered_not_stored(rig: Rig) -> None:
    documents = [fix("dev1", i) for i in range(10)]
    ids = rig.publish(documents)
    ghost_reads(rig.redis, rig.stream_key, 10)
    # Three entries have already been delivered MAX_DELIVERIES (3) times: the reclaim is the
    # fourth delivery. The others were delivered once, like the usual dead consumer's.
    worn = ids[2:5]
    rig.redis.xclaim(rig.stream_key, GROUP, "ghost", 0, worn, retrycount=3)

    with trio.fail_after(30):
        async with running_service({**rig.env, **RECLAIM_ENV}) as service:
            await wait_until(lambda: rig.pending() == 0)
            await wait_until(lambda: rig.rows() == 7)
            worn_out = service.metrics.dead_letters.labels("max_deliveries")
            await wait_until(lambda: value(worn_out) == 3)
            assert value(service.metrics.reclaimed) == 10

    dead = rig.redis.xrange(f"{rig.stream_key}:dead")
    assert [fields[b"source_id"].decode() for _, fields in dead] == worn
    for (_, fields), original in zip(dead, worn, strict=True):
        assert fields[b"reason"] == b"max_deliveries"
        assert fields[b"error"] == b"delivered 4 times (MAX_DELIVERIES=3)"
        assert (
            fields[b"payload"]
            == rig.redis.xrange(rig.stream_key, original, original)[0][1][b"payload"]
        )
    assert stored_keys(rig.database_url) == {
        key_of(d) for i, d in enumerate(documents) if ids[i] not in worn
    }


async def test_entries_trimmed_while_pending_are_counted_and_cleared(rig: Rig) -> None:
    documents = [fix("dev1", i) for i in range(20)]
    ids = rig.publish(documents)
    ghost_reads(rig.redis, rig.stream_key, 20)
    rig.redis.xdel(rig.stream_key, *ids[:5])  # e.g. upstream's MAXLEN trimmed them

    with trio.fail_after(30):
        async with running_service({**rig.env, **RECLAIM_ENV}) as service:
            await wait_until(lambda: rig.pending() == 0)
            await wait_until(lambda: rig.rows() == 15)
            assert value(service.metrics.reclaim_trimmed) == 5
            assert value(service.metrics.reclaimed) == 15
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents[5:]}
    assert rig.redis.xlen(f"{rig.stream_key}:dead") == 0


async def test_own_entries_trimmed_while_pending_are_dead_lettered_as_trimmed(rig: Rig) -> None:
    """A restarted instance re-reads its own pending entries first; Redis answers those deleted
    meanwhile with nil fields. They are dead-lettered as `entry trimmed` (the ids of the lost
    fixes, for the operator), not as an undecodable `payload missing`; the rest are stored."""
    documents = [fix("dev1", i) for i in range(20)]
    ids = rig.publish(documents)
    own = rig.env["INSTANCE_ID"]
    rig.redis.xgroup_create(rig.stream_key, GROUP, id="0", mkstream=True)
    rig.redis.xreadgroup(GROUP, own, {rig.stream_key: ">"}, count=20)  # then it "crashed"
    rig.redis.xdel(rig.stream_key, *ids[:5])

    with trio.fail_after(30):
        async with running_service(rig.env) as service:
            await wait_until(lambda: rig.pending() == 0)
            await wait_until(lambda: rig.rows() == 15)
            assert value(service.metrics.dead_letters.labels("trimmed")) == 5
            assert value(service.metrics.decode_errors.labels("missing_payload")) == 0
    dead = rig.redis.xrange(f"{rig.stream_key}:dead")
    assert [fields[b"source_id"].decode() for _, fields in dead] == ids[:5]
    assert {fields[b"reason"] for _, fields in dead} == {b"entry trimmed"}
    assert stored_keys(rig.database_url) == {key_of(d) for d in documents[5:]}


async def test_own_fresh_entries_are_not_reclaimed(rig: Rig) -> None:
    """Entries a healthy instance is working on are never idle long enough to be claimed."""
    with trio.fail_after(30):
        async with running_service({**rig.env, **RECLAIM_ENV}) as service:
            for second in range(0, 2000, 200):
                rig.publish([fix(f"d{i}", second + i) for i in range(200)])
                await trio.sleep(0.1)
            await wait_until(lambda: rig.pending() == 0)
            await trio.sleep(0.5)  # two more reclaim intervals
            assert value(service.metrics.reclaimed) == 0
    assert rig.rows() == 2000


async def test_own_entries_waiting_through_an_outage_are_not_reclaimed_or_dead_lettered(
    rig: Rig,
) -> None:
    """Entries this instance holds while the database is down go idle in Redis. The reclaimer
    must leave them alone: not re-send them and not count them towards MAX_DELIVERIES."""
    from tests.support.fixes import fix
    from tests.support.proxy import tcp_proxy
    from tests.support.service import running_service, wait_until

    documents = [fix(f"dev{d}", s) for s in range(20) for d in range(20)]
    async with tcp_proxy(rig.database_url) as proxy:
        env = rig.env | {
            "DATABASE_URL": proxy.url(rig.database_url),
            "RECLAIM_INTERVAL_S": "0.05",
            "RECLAIM_MIN_IDLE_MS": "100",
            "MAX_DELIVERIES": "1",
            "WRITE_RETRY_INITIAL_MS": "20",
            "WRITE_RETRY_MAX_MS": "100",
            "READ_COUNT": "50",
        }
        async with running_service(env) as service:
            await proxy.cut()
            rig.publish(documents)
            await trio.sleep(1.5)  # entries read, idle far beyond RECLAIM_MIN_IDLE_MS
            assert rig.pending() > 0
            await proxy.restore()
            await wait_until(lambda: rig.pending() == 0, timeout=30)
            await wait_until(lambda: rig.rows() == len(documents))
    assert rig.redis.xlen(f"{rig.stream_key}:dead") == 0
    assert value(service.metrics.dead_letters.labels("max_deliveries")) == 0
    assert value(service.metrics.position_writes.labels("duplicate")) == 0
