"""SIGTERM under steady load (docs/pipeline.md rule 3): a clean drain within SHUTDOWN_TIMEOUT_S,
exit 0.

Fixes keep arriving before, during and after the signal. The drained instance must have stored
and acked everything it had read (its pending list is empty), must never have acked an entry
without its row, and a successor must pick up exactly where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

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

SHUTDOWN_TIMEOUT_S = 5.0


async def test_sigterm_under_steady_load_drains_and_exits_zero_in_time(
    rig: Rig,
    tmp_path: Path,
) -> None:
    documents = workload(16_000, devices=100, seed=5)
    env = {
        **rig.env,
        "SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        "READ_COUNT": "300",
        "WRITE_BATCH_SIZE": "1000",
        "WRITE_FLUSH_MS": "150",  # a partly filled batch is waiting when the signal comes
    }
    publisher = Publisher(rig.redis, rig.stream_key, documents, chunk=200, interval_s=0.05)
    first = Daemon({**env, "INSTANCE_ID": "first"}, tmp_path / "first.log")
    try:
        with trio.fail_after(60):
            await first.wait_for("ready", within=30)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run)
                await wait_until(lambda: rig.rows() > 2000, timeout=20)
                first.terminate()
                signalled = time.monotonic()
                code = await first.wait_exit(SHUTDOWN_TIMEOUT_S + 2)
                took = time.monotonic() - signalled
                assert code == 0, first.tail()
                assert took < SHUTDOWN_TIMEOUT_S, f"drain took {took:.2f}s"
                assert not publisher.done.is_set(), "the load should outlast the drain"

                # Everything the first instance read was stored and acked before it exited.
                assert consumer_pending(rig.redis, rig.stream_key, "first") == 0
                acked = await trio.to_thread.run_sync(
                    rig.assert_acked_have_rows,
                    publisher.snapshot(),
                )
                # It read a prefix of the stream and acked all of it: exactly that prefix's rows.
                prefix = list(publisher.snapshot().values())[:acked]
                assert rig.rows() == len(distinct_keys(prefix))

                publisher.release()
                second = Daemon({**env, "INSTANCE_ID": "second"}, tmp_path / "second.log")
                try:
                    await publisher.done.wait()
                    await wait_until(lambda: rig.pending() == 0)
                    expected = distinct_keys(documents)
                    await wait_until(lambda: rig.rows() == len(expected))
                finally:
                    second.terminate()
                assert await second.wait_exit(SHUTDOWN_TIMEOUT_S + 2) == 0, second.tail()
    finally:
        first.close()

    events = [line["event"] for line in first.lines()]
    assert events.index("draining") < events.index("pipeline drained") < events.index("stopped")
    assert not first.events("drain deadline exceeded")
    assert stored_keys(rig.database_url) == distinct_keys(documents)
    assert rig.assert_acked_have_rows(publisher.snapshot()) == len(documents)
