"""Incremental evaluation (resume from settled passes, not-started shortcut) always ends where a
from-scratch evaluation of the stored fixes does, whatever the arrival order and batching.

The engine's database side is driven directly: fixes are stored in random chunks (shuffled,
duplicated) and after each chunk the affected pairs are evaluated from the chunk's earliest fix,
exactly as the engine does per batch; then `rebuild` must find nothing to change.
"""

from __future__ import annotations

import random
from datetime import datetime

import psycopg
import pytest

from processor.commands.timing import rebuild
from processor.domain import definitions
from processor.domain.evaluation import evaluate_pairs, rebuild_stage
from tests.integration.domain.test_domain_engine import CARS, tracks
from tests.support import racing
from tests.support.racing import stored


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_batching_ends_equal_to_a_rebuild(database_url: str, seed: int) -> None:
    course = racing.migrated_course(database_url, CARS)
    documents, gap = tracks(course)
    rng = random.Random(seed)
    arrivals = documents + documents[: len(documents) // 3]
    rng.shuffle(arrivals)
    arrivals += gap  # the late car's buffered fixes come last, as a burst
    entry_of = {course.devices[name]: course.entries[name] for name, _ in CARS}
    with psycopg.connect(database_url) as conn:
        # the engine's first sight of the stage: rebuilt (nothing stored yet), its version kept
        assert rebuild_stage(conn, definitions.read_current(conn), course.stage_id) is not None
        snapshot = definitions.read_current(conn)
        assert snapshot.current(course.stage_id)
        position = 0
        while position < len(arrivals):
            chunk = arrivals[position : position + rng.randint(1, 60)]
            position += len(chunk)
            racing.store_fixes(conn, chunk)
            triggers: dict[tuple[str, str], float | None] = {}
            for d in chunk:
                t = datetime.fromisoformat(d["timestamp"]).timestamp()
                pair = (course.stage_id, entry_of[d["device_id"]])
                triggers[pair] = min(t, triggers.get(pair) or t)
            result = evaluate_pairs(conn, snapshot, triggers)
            assert not result.stale and not result.failures
            assert result.outcome.skipped == 0
        incremental = stored(database_url, course.stage_id)
        assert rebuild(conn, course.stage_id) == []
    assert stored(database_url, course.stage_id) == incremental
    late = incremental["results"][course.entries["late"]]
    assert late[4] == 0 and late[6:8] == (4, 0)  # the gap's fixes made the waypoint pass
