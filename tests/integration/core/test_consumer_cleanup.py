"""Dead consumers (gone, holding nothing, idle past CONSUMER_MAX_IDLE_S) are removed from the
groups by the running processor, logged and counted; nothing else is ever removed
(core/consumer_cleanup.py), against a real Redis.

Idle time only grows with time, so these tests let it: consumers are made idle by waiting out
a short threshold (`AGE_S`), never by synchronising with a sleep.
"""

from __future__ import annotations

import time

import redis

from processor.core.consumer_cleanup import _REMOVE_IF_DEAD, remove_dead_consumers
from tests.support.fixes import fix, publish
from tests.support.metrics import value
from tests.support.service import Rig, wait_until

GROUP = "processor"
MAX_IDLE_MS = 1000
AGE_S = 1.5  # comfortably past MAX_IDLE_MS


def consumers(client: redis.Redis, stream: str, group: str = GROUP) -> dict[str, int]:
    """consumer -> pending entries."""
    return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, group)}


def test_only_other_idle_consumers_holding_nothing_are_removed(
    redis_client: redis.Redis, stream_key: str
) -> None:
    publish(redis_client, stream_key, [fix(second=i) for i in range(6)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    redis_client.xgroup_createconsumer(stream_key, GROUP, "gone-empty")
    redis_client.xgroup_createconsumer(stream_key, GROUP, "me")  # this instance, idle too
    held = redis_client.xreadgroup(GROUP, "gone-holding", {stream_key: ">"}, count=2)
    assert len(held[0][1]) == 2
    time.sleep(AGE_S)  # let the consumers age past the threshold
    redis_client.xreadgroup(GROUP, "alive", {stream_key: ">"}, count=1)  # active just now

    removed = remove_dead_consumers(
        redis_client, stream_key, GROUP, own="me", max_idle_ms=MAX_IDLE_MS
    )

    assert [(r.group, r.consumer) for r in removed] == [(GROUP, "gone-empty")]
    assert removed[0].idle_s >= MAX_IDLE_MS / 1000
    assert consumers(redis_client, stream_key) == {"gone-holding": 2, "me": 0, "alive": 1}
    # nothing pending was lost: the group still holds both entries of the dead consumer
    assert redis_client.xpending(stream_key, GROUP)["pending"] == 3


def test_a_consumer_that_became_active_or_took_entries_since_is_kept(
    redis_client: redis.Redis, stream_key: str
) -> None:
    """The check and the removal are one script: what the sweep listed a moment ago is
    checked again inside it, so a read or a claim in between keeps the consumer."""
    publish(redis_client, stream_key, [fix(second=i) for i in range(3)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    redis_client.xgroup_createconsumer(stream_key, GROUP, "back")
    redis_client.xgroup_createconsumer(stream_key, GROUP, "claimed")
    redis_client.xreadgroup(GROUP, "holder", {stream_key: ">"}, count=1)
    time.sleep(AGE_S)
    # between the listing and the removal: one comes back, one is handed an entry
    redis_client.xreadgroup(GROUP, "back", {stream_key: ">"}, count=1)
    entry = redis_client.xpending_range(stream_key, GROUP, "-", "+", 1)[0]["message_id"]
    redis_client.xclaim(stream_key, GROUP, "claimed", 0, [entry], justid=True)

    for name in ("back", "claimed"):
        assert redis_client.eval(_REMOVE_IF_DEAD, 1, stream_key, GROUP, name, MAX_IDLE_MS) == 0
    assert {"back", "claimed"} <= set(consumers(redis_client, stream_key))
    # and a consumer removed already (another instance swept first) is a no-op
    assert redis_client.eval(_REMOVE_IF_DEAD, 1, stream_key, GROUP, "nobody", MAX_IDLE_MS) == 0


def test_a_missing_stream_or_group_removes_nothing(
    redis_client: redis.Redis, stream_key: str
) -> None:
    assert remove_dead_consumers(redis_client, stream_key, GROUP, own="me", max_idle_ms=1) == []
    publish(redis_client, stream_key, [fix()])
    assert remove_dead_consumers(redis_client, stream_key, GROUP, own="me", max_idle_ms=1) == []


async def test_the_processor_removes_a_gone_instances_consumers_and_logs_it(rig: Rig) -> None:
    """A predecessor under another name left consumers in both groups; the running instance
    removes them (its own stay), counts and logs each removal."""
    client, stream = rig.redis, rig.stream_key
    rig.publish([fix(second=i) for i in range(5)])
    client.xgroup_create(stream, GROUP, id="0")
    client.xgroup_create(stream, "domain", id="0")
    for group in (GROUP, "domain"):
        client.xgroup_createconsumer(stream, group, "old-hostname-1a2b")
    # no wait here: the instance sweeps every 0.1 s and removes them once they are idle enough
    async with rig.service(
        CONSUMER_MAX_IDLE_S=str(MAX_IDLE_MS / 1000), CONSUMER_CLEANUP_INTERVAL_S="0.1"
    ) as service:
        own = service.config.consumer_name

        def swept() -> bool:
            return value(service.metrics.consumers_removed) == 2

        await wait_until(swept, timeout=20)
        await wait_until(lambda: rig.rows() == 5)
        assert "old-hostname-1a2b" not in consumers(client, stream)
        assert "old-hostname-1a2b" not in consumers(client, stream, "domain")
        assert own in consumers(client, stream)
