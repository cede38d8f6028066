"""SIGKILL at random moments during a 50,000-fix run (docs/pipeline.md rule 2): nothing lost,
nothing doubled.

`processor run` is a real subprocess, killed with SIGKILL at random instants (during start-up,
mid-read, mid-batch, between commit and ack: wherever the dice fall) six times while fixes keep
arriving, and restarted each time with the same consumer name. After every kill, every acked
entry must have its row; at the end, rows = distinct keys and nothing is pending.

The schedule follows the run's progress, not the clock: after the first kill (in start-up), each
instance is killed once the stored rows pass a random point of its own slice of the run (kill k
somewhere in [k, k + 1/2] sevenths of the distinct keys). So every kill lands while the instance
is storing, and the last one with about a fifth of the run still to do, however slowly the
machine starts processes (a clock schedule ran past the end of the run on a loaded machine:
six start-ups of several seconds each outlasted the ~25 s of publishing).
"""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

import psycopg
import pytest
import redis
import trio

from tests.support.daemon import Daemon
from tests.support.fixes import pending_count, row_count, stored_keys
from tests.support.load import Publisher, distinct_keys, workload
from tests.support.service import (
    Rig,
    wait_until,
)

TOTAL = 50_000
KILLS = 6


@pytest.mark.slow
async def test_random_sigkills_during_a_50k_run_lose_and_duplicate_nothing(
    rig: Rig,
    tmp_path: Path,
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"kill schedule seed: {seed}")
    documents = workload(TOTAL, devices=300)
    expected = distinct_keys(documents)
    # A steady ~2,000 fixes/s for ~25 s. Batches wait up to 200 ms to fill, so at almost any
    # instant some entries are read and not yet acked: the kills hit work in flight.
    env = {
        **rig.env,
        "READ_COUNT": "500",
        "WRITE_BATCH_SIZE": "2000",
        "WRITE_FLUSH_MS": "200",
        "INSTANCE_ID": "killed",
        "WRITE_CONCURRENCY": "2",  # kills also hit two batches in flight at once
    }
    publisher = Publisher(rig.redis, rig.stream_key, documents, chunk=250, interval_s=0.12)

    orphaned: list[int] = []  # entries read but not acked by each killed instance
    slice_rows = len(expected) / (KILLS + 1)
    # Every wait below has its own bound; this one only turns a hang into a failure (7 start-ups
    # of up to 60 s on a loaded machine would be far slower than anything seen).
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run)
            for kill in range(KILLS):
                daemon = Daemon(env, tmp_path / f"run{kill}.log")
                try:
                    if kill == 0:  # the first kill falls anywhere in start-up
                        await trio.sleep(rng.uniform(0.1, 1.5))
                    else:  # the others once this instance has stored into its slice
                        await daemon.wait_for("ready", within=60)
                        target = int(slice_rows * (kill + rng.uniform(0, 0.5)))
                        await wait_until(
                            partial(stored_or_died, rig.database_url, target, daemon),
                            timeout=60,
                            interval=0.02,
                        )
                        # Rows reach the target right after a commit, when this instance's
                        # entries were just acked: kill once it holds entries again (the
                        # publisher keeps feeding it), so the kill lands on work in flight.
                        await wait_until(
                            partial(holding_or_died, rig.redis, rig.stream_key, daemon),
                            timeout=30,
                            interval=0.005,
                        )
                    assert daemon.alive(), daemon.tail()
                finally:
                    daemon.kill()
                rows_at_kill = await trio.to_thread.run_sync(row_count_or_zero, rig.database_url)
                assert rows_at_kill < len(expected), f"kill {kill} came after the run ended"
                orphaned.append(pending_or_zero(rig.redis, rig.stream_key))
                await trio.to_thread.run_sync(
                    rig.assert_acked_have_rows,
                    publisher.snapshot(),
                )

            publisher.release()
            final = Daemon(env, tmp_path / "final.log")
            try:
                await publisher.done.wait()
                await wait_until(lambda: rig.pending() == 0, timeout=60)
                await wait_until(lambda: rig.rows() == len(expected), timeout=60)
                await wait_until(lambda: group_lag(rig.redis, rig.stream_key) == 0, timeout=60)
            finally:
                final.terminate()
            assert await final.wait_exit(20) == 0, final.tail()

    print(f"pending at each kill: {orphaned}")
    assert sum(1 for count in orphaned if count > 0) >= 3, "too few kills hit work in flight"
    assert stored_keys(rig.database_url) == expected
    assert rig.rows() == len(expected) < TOTAL
    assert rig.pending() == 0
    acked = rig.assert_acked_have_rows(publisher.snapshot())
    assert acked == TOTAL


def group_lag(client: redis.Redis, stream: str, group: str = "processor") -> int:
    info = next(g for g in client.xinfo_groups(stream) if g["name"] == group.encode())
    return int(info["lag"])


def pending_or_zero(client: redis.Redis, stream: str) -> int:
    try:
        return pending_count(client, stream)
    except redis.ResponseError as exc:  # killed before it created the group
        assert "NOGROUP" in str(exc)
        return 0


def stored_or_died(database_url: str, target: int, daemon: Daemon) -> bool:
    """Kill time: `target` rows are stored (or the instance died, which the caller reports)."""
    return not daemon.alive() or row_count(database_url) >= target


def holding_or_died(client: redis.Redis, stream: str, daemon: Daemon) -> bool:
    """Kill time: the instance holds read, un-acked entries (or it died)."""
    return not daemon.alive() or pending_or_zero(client, stream) > 0


def row_count_or_zero(database_url: str) -> int:
    try:
        return row_count(database_url)
    except psycopg.errors.UndefinedTable:  # killed before its migrations ran
        return 0
