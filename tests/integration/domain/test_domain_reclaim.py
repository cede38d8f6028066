"""The domain group's reclaim goes through the durable pipeline's reclaimer: entries left by a
dead instance are claimed and evaluated, those delivered too often are dead-lettered for the
domain group (not evaluated again), and entries a live engine holds are renewed, never claimed
by another instance however long their batch takes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from processor.domain import evaluator
from tests.support import racing
from tests.support.metrics import value
from tests.support.racing import stored
from tests.support.service import Rig, running_service, wait_until

CARS = [("steady", "T1"), ("worn", "T1")]
FAST_RECLAIM = {"RECLAIM_MIN_IDLE_MS": "300", "RECLAIM_INTERVAL_S": "0.2", "MAX_DELIVERIES": "3"}


def domain_pending(rig: Rig, consumer: str | None = None) -> int:
    info: Any = rig.redis.xpending(rig.stream_key, "domain")
    if consumer is None:
        return int(info["pending"])
    return sum(int(c["pending"]) for c in info["consumers"] if c["name"].decode() == consumer)


async def test_a_dead_instances_entries_are_claimed_and_worn_out_ones_dead_lettered(
    rig: Rig,
) -> None:
    course = racing.setup_course(rig, CARS)
    steady = rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
    worn = rig.publish(racing.track(course.devices["worn"], racing.constant(20), 10))
    # a dead instance had read everything; the worn car's entries it had been handed 4 times
    rig.redis.xgroup_create(rig.stream_key, "domain", id="0")
    rig.redis.xreadgroup("domain", "dead", {rig.stream_key: ">"})
    for _ in range(3):
        rig.redis.xclaim(rig.stream_key, "domain", "dead", 0, worn)
    await trio.sleep(0.4)  # idle longer than RECLAIM_MIN_IDLE_MS
    env = {**racing.domain_env(rig.env), **FAST_RECLAIM}
    async with running_service(env) as service:
        await racing.judging(service)
        await wait_until(lambda: domain_pending(rig) == 0, timeout=60)
        assert value(service.metrics.domain_reclaimed) == len(steady) + len(worn)
        assert value(service.metrics.domain_dead_letters) == len(worn)
    dead = rig.redis.xrange(f"{rig.stream_key}:dead")
    assert sorted(f[b"source_id"].decode() for _, f in dead) == sorted(worn)
    assert {f[b"reason"] for _, f in dead} == {b"domain_failed"}
    assert b"delivered 5 times (MAX_DELIVERIES=3)" in dead[0][1][b"error"]
    results = stored(rig.database_url, course.stage_id)["results"]
    assert results[course.entries["steady"]][0] == "finished"
    assert rig.rows() == len(steady) + len(worn)  # ingestion stored everything


async def test_entries_a_slow_batch_holds_are_renewed_not_claimed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluation that takes ten times RECLAIM_MIN_IDLE_MS: the engine's hold on the batch
    is renewed meanwhile, so a second instance's reclaimer never takes it (no second
    delivery, nothing counted towards MAX_DELIVERIES)."""
    course = racing.setup_course(rig, CARS)
    release = threading.Event()
    real = evaluator.evaluate_batch

    def slow(conn: Any, **kwargs: Any) -> Any:
        release.wait(timeout=60)
        return real(conn, **kwargs)

    monkeypatch.setattr(evaluator, "evaluate_batch", slow)
    base = {**racing.domain_env(rig.env), **FAST_RECLAIM}
    async with running_service({**base, "INSTANCE_ID": "a"}) as a:
        await racing.judging(a)
        rig.publish(racing.track(course.devices["steady"], racing.constant(20), 160))
        await wait_until(lambda: domain_pending(rig, "a") > 0)
        async with running_service({**base, "INSTANCE_ID": "b"}) as b:
            await racing.judging(b)
            await trio.sleep(3.0)  # ten idle times: a claim would have happened by now
            assert domain_pending(rig, "b") == 0
            assert value(b.metrics.domain_reclaimed) == 0
            release.set()
            await racing.all_judged(rig)
        assert value(a.metrics.domain_dead_letters) == 0
    results = stored(rig.database_url, course.stage_id)["results"]
    assert results[course.entries["steady"]][0] == "finished"
