"""The lag sampler against real Redis, and its schedule on a virtual clock."""

from __future__ import annotations

import pytest
import redis
import trio
import trio.testing

from processor.observability.lag import GroupMissing, LagSample, run_lag_sampler, sample_lag_sync
from processor.observability.metrics import Metrics
from processor.observability.schedule import FixedRate
from tests.support.fixes import fix, publish
from tests.support.service import wait_until

GROUP = "processor"


def test_lag_and_pending_follow_reads_and_acks(redis_client: redis.Redis, stream_key: str) -> None:
    ids = publish(redis_client, stream_key, [fix(second=i) for i in range(10)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    assert sample_lag_sync(redis_client, stream_key, GROUP) == LagSample(10, 0, exact=True)

    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=4)
    assert sample_lag_sync(redis_client, stream_key, GROUP) == LagSample(6, 4, exact=True)

    redis_client.xack(stream_key, GROUP, ids[0], ids[1], ids[2])
    assert sample_lag_sync(redis_client, stream_key, GROUP) == LagSample(6, 1, exact=True)

    publish(redis_client, stream_key, [fix(second=100)])
    assert sample_lag_sync(redis_client, stream_key, GROUP) == LagSample(7, 1, exact=True)


def test_lag_falls_back_to_xlen_when_redis_cannot_tell(
    redis_client: redis.Redis, stream_key: str
) -> None:
    """After an XDEL inside the undelivered range Redis reports `lag` as nil: XLEN stands in."""
    ids = publish(redis_client, stream_key, [fix(second=i) for i in range(10)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=2)
    redis_client.xdel(stream_key, ids[5])
    info = next(g for g in redis_client.xinfo_groups(stream_key) if g["name"] == GROUP.encode())
    assert info["lag"] is None  # the premise: this server cannot tell
    assert sample_lag_sync(redis_client, stream_key, GROUP) == LagSample(9, 2, exact=False)


def test_missing_group_is_reported(redis_client: redis.Redis, stream_key: str) -> None:
    publish(redis_client, stream_key, [fix()])
    redis_client.xgroup_create(stream_key, "someone-else", id="0")
    with pytest.raises(GroupMissing):
        sample_lag_sync(redis_client, stream_key, GROUP)


async def test_sampler_sets_the_gauges(redis_client: redis.Redis, stream_key: str) -> None:
    publish(redis_client, stream_key, [fix(second=i) for i in range(7)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=3)
    metrics = Metrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_lag_sampler(
                    redis_client,
                    stream=stream_key,
                    group=GROUP,
                    metrics=metrics,
                    interval_s=0.05,
                    task_status=task_status,
                )
            )
            assert metrics.consumer_lag._value.get() == 4
            assert metrics.pending_entries._value.get() == 3
            publish(redis_client, stream_key, [fix(second=100 + i) for i in range(5)])
            await wait_until(lambda: metrics.consumer_lag._value.get() == 9, timeout=5)
            nursery.cancel_scope.cancel()


async def test_fixed_rate_does_not_drift(autojump_clock: trio.testing.MockClock) -> None:
    """Each round's work (0.3 s of a 1 s interval) does not push later ticks back."""
    schedule = FixedRate(1.0)
    start = trio.current_time()
    ticks = []
    for _ in range(20):
        await schedule.wait()
        ticks.append(trio.current_time() - start)
        await trio.sleep(0.3)
    assert ticks == [float(k) for k in range(20)]
    assert schedule.skipped == 0


async def test_fixed_rate_skips_missed_ticks(autojump_clock: trio.testing.MockClock) -> None:
    """A round that overruns (2.5 intervals) resumes on the original phase, without a burst."""
    schedule = FixedRate(1.0)
    start = trio.current_time()
    ticks = []
    for work in (0.1, 2.5, 0.1, 0.1):
        await schedule.wait()
        ticks.append(trio.current_time() - start)
        await trio.sleep(work)
    assert ticks == [0.0, 1.0, 4.0, 5.0]
    assert schedule.skipped == 2
