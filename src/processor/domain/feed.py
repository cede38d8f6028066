"""The engine's writer of the race feed: committed changes appended to Redis, in order.

The evaluator hands each batch's changes over (a small channel) *after* their transaction
committed and before it acks the batch; this loop appends them to `<REDIS_STREAM>:race`
(`race_feed`), one pipelined round trip per hand-over, retried while Redis is unavailable.
Re-evaluating would find nothing new to announce, so an announcement is retried on its own,
never the batch. The channel is small: while Redis is down the evaluator waits here too (its
acks could not go through either). Given up only when the engine stops (live clients then see
the change at their next `subscribed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.race_feed import ALERT, RACE_FEED_MAXLEN, VIOLATION, RaceChange, feed_key
from processor.lifecycle import Stopper, StopRequested
from processor.observability.metrics import Metrics
from processor.store.retry import Backoff, retry_in_thread

log = structlog.get_logger("processor.domain.feed")


class FeedWriter:
    def __init__(
        self, control: redis.Redis, stream: str, metrics: Metrics, stopper: Stopper
    ) -> None:
        self._control = control
        self._key = feed_key(stream)
        self._metrics = metrics
        self._stopper = stopper

    async def run(
        self,
        changes: trio.MemoryReceiveChannel[Sequence[RaceChange]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Append what arrives until the senders close the channel."""
        task_status.started()
        async with changes:
            async for feed in changes:
                self._count(feed)
                try:
                    await retry_in_thread(
                        "race feed append",
                        partial(append, self._control, self._key, feed),
                        backoff=Backoff(initial_s=0.1, max_s=5.0),
                        pause=self._stopper.pause_or_raise,
                    )
                except StopRequested:
                    log.warning("race feed not written (stopping)", changes=len(feed))

    def _count(self, feed: Sequence[RaceChange]) -> None:
        for change in feed:
            if change.kind == VIOLATION:
                self._metrics.speed_violations.inc()
            elif change.kind == ALERT and change.body["alert"]["cleared_at"] is None:
                self._metrics.alerts_raised.labels(change.body["alert"]["kind"]).inc()


def append(client: redis.Redis, key: str, feed: Sequence[RaceChange]) -> None:
    """One round trip for a batch's changes (in order), capped approximately."""
    pipe = client.pipeline(transaction=False)
    for change in feed:
        pipe.xadd(key, change.fields(), maxlen=RACE_FEED_MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.execute()
