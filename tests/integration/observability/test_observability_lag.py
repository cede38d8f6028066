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
from tests.support.metrics import value
from tests.support.service import wait_until

GROUP = "processor"


def counts(sample: LagSample) -> tuple[int, int, bool]:
    return sample.lag, sample.pending, sample.exact


def test_lag_and_pending_follow_reads_and_acks(redis_client: redis.Redis, stream_key: str) -> None:
    ids = publish(redis_client, stream_key, [fix(second=i) for i in range(10)])
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    assert counts(sample_lag_sync(redis_client, stream_key, GROUP)) == (10, 0, True)

    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=4)
    assert counts(sample_lag_sync(redis_client, stream_key, GROUP)) == (6, 4, True)

    redis_client.xack(stream_key, GROUP, ids[0], ids[1], ids[2])
    assert counts(sample_lag_sync(redis_client, stream_key, GROUP)) == (6, 1, True)

    publish(redis_client, stream_key, [fix(second=100)])
    assert counts(sample_lag_sync(redis_client, stream_key, GROUP)) == (7, 1, True)


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
    assert counts(sample_lag_sync(redis_client, stream_key, GROUP)) == (9, 2, False)


def test_lag_seconds_is_the_age_of_the_oldest_entry_not_acknowledged(
    redis_client: redis.Redis, stream_key: str
) -> None:
    """Pending first (the oldest delivered, not acked), else the first undelivered, else 0;
    ages by Redis' own clock from the entries' IDs."""
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    ids = [
        redis_client.xadd(stream_key, {"payload": "{}"}, id=f"{now_ms - ago_s * 1000}-0")
        for ago_s in (600, 300, 100)
    ]
    redis_client.xgroup_create(stream_key, GROUP, id="0")

    def age() -> float:
        return sample_lag_sync(redis_client, stream_key, GROUP).seconds

    assert age() == pytest.approx(600, abs=5)  # nothing delivered: the first entry waits
    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=1)
    assert age() == pytest.approx(600, abs=5)  # delivered, not acked: still waiting
    redis_client.xack(stream_key, GROUP, ids[0])
    assert age() == pytest.approx(300, abs=5)  # the first undelivered one
    redis_client.xreadgroup(GROUP, "c1", {stream_key: ">"}, count=2)
    redis_client.xack(stream_key, GROUP, ids[1])
    assert age() == pytest.approx(100, abs=5)  # the one pending
    redis_client.xack(stream_key, GROUP, ids[2])
    assert age() == 0  # all stored: no lag, whatever the entries' age


def test_an_entry_id_ahead_of_the_clock_is_no_negative_lag(
    redis_client: redis.Redis, stream_key: str
) -> None:
    seconds, _micros = redis_client.time()
    redis_client.xadd(stream_key, {"payload": "{}"}, id=f"{(seconds + 3600) * 1000}-0")
    redis_client.xgroup_create(stream_key, GROUP, id="0")
    assert sample_lag_sync(redis_client, stream_key, GROUP).seconds == 0


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
            assert value(metrics.consumer_lag) == 4
            assert value(metrics.consumer_lag_seconds) >= 0
            assert value(metrics.pending_entries) == 3
            publish(redis_client, stream_key, [fix(second=100 + i) for i in range(5)])
            await wait_until(lambda: value(metrics.consumer_lag) == 9, timeout=5)
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
