"""Three instances share a stream; one dies for good; the others take over its work
(docs/pipeline.md).

The victim is frozen (SIGSTOP) at a moment when it holds read-but-unacked entries, then
SIGKILLed. Its entries were delivered before it froze, so they are claimable at most
RECLAIM_MIN_IDLE_MS after the kill and claimed at the next reclaim tick: the survivors must have
emptied its pending list within RECLAIM_MIN_IDLE_MS + RECLAIM_INTERVAL_S (plus the time to
store one batch), and the table must end up with exactly one row per distinct key.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from tests.support.daemon import Daemon
from tests.support.fixes import (
    consumer_pending,
    stored_keys,
)
from tests.support.load import Publisher, distinct_keys, workload
from tests.support.service import (
    Rig,
    wait_until,
)

MIN_IDLE_MS = 2000
INTERVAL_S = 0.5
STORE_MARGIN_S = 1.5  # claim, decode, write and ack one page on a busy 2-core machine


@pytest.mark.slow
async def test_survivors_reclaim_a_killed_instances_entries_in_time(
    rig: Rig,
    tmp_path: Path,
) -> None:
    documents = workload(24_000, devices=150, seed=3)
    expected = distinct_keys(documents)
    shared = {
        **rig.env,
        "RECLAIM_MIN_IDLE_MS": str(MIN_IDLE_MS),
        "RECLAIM_INTERVAL_S": str(INTERVAL_S),
        "READ_COUNT": "200",
        "WRITE_BATCH_SIZE": "1000",
        "WRITE_FLUSH_MS": "150",  # entries wait in the batcher: the victim holds some when frozen
    }
    names = ["alpha", "bravo", "victim"]
    daemons = {
        name: Daemon({**shared, "INSTANCE_ID": name}, tmp_path / f"{name}.log") for name in names
    }
    publisher = Publisher(rig.redis, rig.stream_key, documents, chunk=200, interval_s=0.08)
    try:
        # Generous start-up: three interpreters importing the package at once on a busy shared
        # machine took over 30 s once; start-up is not what this test measures.
        with trio.fail_after(180):
            for daemon in daemons.values():
                await daemon.wait_for("ready", within=90)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run)
                await wait_until(lambda: rig.rows() > 3000, timeout=30)

                victim = daemons["victim"]
                orphaned = 0
                for _ in range(200):  # freeze it while it holds entries
                    victim.process.send_signal(signal.SIGSTOP)
                    await trio.sleep(0.05)  # let the stop land before counting
                    orphaned = consumer_pending(rig.redis, rig.stream_key, "victim")
                    if orphaned > 0:
                        break
                    victim.process.send_signal(signal.SIGCONT)
                    await trio.sleep(0.03)
                assert orphaned > 0, "never caught the victim holding entries"
                victim.kill()
                killed_at = time.monotonic()

                await wait_until(
                    lambda: consumer_pending(rig.redis, rig.stream_key, "victim") == 0,
                    timeout=MIN_IDLE_MS / 1000 + INTERVAL_S + STORE_MARGIN_S,
                    interval=0.02,
                )
                took = time.monotonic() - killed_at
                print(f"victim held {orphaned} entries; reclaimed within {took:.2f}s")
                assert not publisher.done.is_set(), "the load ended before the takeover"
                publisher.release()

            await wait_until(lambda: rig.pending() == 0, timeout=30)
            await wait_until(lambda: rig.rows() == len(expected), timeout=30)
            for name in ("alpha", "bravo"):
                daemons[name].terminate()
            for name in ("alpha", "bravo"):
                assert await daemons[name].wait_exit(20) == 0, daemons[name].tail()
    finally:
        for daemon in daemons.values():
            daemon.close()

    assert stored_keys(rig.database_url) == expected
    assert rig.rows() == len(expected)
    assert rig.assert_acked_have_rows(publisher.snapshot()) == len(documents)
    reclaimed = [
        line
        for name in ("alpha", "bravo")
        for line in daemons[name].events("reclaimed idle entries")
    ]
    assert sum(line["count"] for line in reclaimed) >= orphaned
    assert all(set(line["from_consumers"]) == {"victim"} for line in reclaimed)
