"""Several domain engines at once, and a restart in the middle, still write one correct set of
rows: the same as a from-scratch rebuild, with the analytic crossing times."""

from __future__ import annotations

import trio

from processor.app import Service
from processor.commands.timing import format_changes
from processor.config import load_config
from tests.integration.domain.test_domain_engine import (
    CARS,
    check_results,
    rebuild_changes,
    shuffled_twice,
    tracks,
)
from tests.support import racing
from tests.support.metrics import value
from tests.support.racing import stored
from tests.support.service import (
    Rig,
    running_service,
    wait_until,
)


async def test_two_instances_and_a_killed_one_restarted(rig: Rig) -> None:
    course = racing.setup_course(rig, CARS)
    documents, gap = tracks(course)
    everything = shuffled_twice(documents + gap, seed=21)
    chunks = [everything[i : i + 150] for i in range(0, len(everything), 150)]
    base = {**racing.domain_env(rig.env), "READ_COUNT": "40", "DOMAIN_READ_COUNT": "40"}
    base["RECLAIM_MIN_IDLE_MS"] = "500"
    env_a = {**base, "INSTANCE_ID": "a"}
    env_b = {**base, "INSTANCE_ID": "b"}

    async with running_service(env_b) as b:
        await racing.judging(b)
        # instance a is killed (cancelled, no drain) while both are busy
        async with trio.open_nursery() as nursery:
            a = Service(load_config(env_a))
            await nursery.start(a.run)
            for chunk in chunks[: len(chunks) // 2]:
                rig.publish(chunk)
                await trio.sleep(0.01)
            assert a.domain is not None
            evaluated = a.metrics.domain_fixes
            await wait_until(lambda: value(evaluated) >= 80, timeout=90)
            nursery.cancel_scope.cancel()
        # ... and restarted with the same name: it finishes its own pending entries first
        async with running_service(env_a):
            for chunk in chunks[len(chunks) // 2 :]:
                rig.publish(chunk)
                await trio.sleep(0.01)
            await racing.all_judged(rig)
            assert value(b.metrics.domain_fixes) > 0

    rows = stored(rig.database_url, course.stage_id)
    check_results(rows, course, late_passed=True)
    changes = await trio.to_thread.run_sync(rebuild_changes, rig.database_url, course.stage_id)
    assert format_changes(changes, {}) == "no change"
    assert stored(rig.database_url, course.stage_id) == rows
