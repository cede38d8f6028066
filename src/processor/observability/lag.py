"""How far behind the group is: `processor_consumer_lag` and `processor_pending_entries`.

Both come from `XINFO GROUPS` (sent with `XLEN` in one pipelined round trip), sampled on a fixed
schedule. `lag` is what Redis (7.0+) reports: entries added to the stream but not yet delivered
to the group. Redis answers `nil` when it cannot tell (after `XDEL`, or for a group created at an
arbitrary ID) and older servers have no `lag` at all; then the gauge falls back to `XLEN`
(docs/metrics.md), an upper bound that can only over-report, so a lag alert never stays silent
because of it.
`pending` is the group's pending entries list: delivered but not acknowledged.

A failed sample leaves both gauges at their last value (and is logged once per outage); the
consumer's own metrics show the outage itself.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.observability.metrics import Metrics
from processor.observability.schedule import FixedRate
from processor.store import redis as redis_store

log = structlog.get_logger("processor.lag")


class GroupMissing(LookupError):
    """The stream has no such consumer group (deleted under our feet)."""


SAMPLE_ERRORS: tuple[type[Exception], ...] = (
    *redis_store.TRANSIENT_ERRORS,
    redis.ResponseError,
    GroupMissing,
)


@attrs.frozen
class LagSample:
    lag: int
    pending: int
    exact: bool  # False when `lag` is the XLEN fallback


def lag_from_info(groups: list[dict[str, Any]], group: str, length: int) -> LagSample:
    """Pick `group` out of an `XINFO GROUPS` reply; `length` (XLEN) stands in for a nil lag."""
    wanted = group.encode()
    for info in groups:
        name = info.get("name")
        if name in (wanted, group):
            lag = info.get("lag")
            pending = int(info.get("pending") or 0)
            if lag is None:
                return LagSample(length, pending, exact=False)
            return LagSample(int(lag), pending, exact=True)
    raise GroupMissing(group)


def sample_lag_sync(client: redis.Redis, stream: str, group: str) -> LagSample:
    """One round trip: XINFO GROUPS and XLEN pipelined."""
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(stream)
    pipe.xlen(stream)
    groups, length = pipe.execute()
    return lag_from_info(groups, group, int(length))


async def run_lag_sampler(
    client: redis.Redis,
    *,
    stream: str,
    group: str,
    metrics: Metrics,
    interval_s: float,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample every `interval_s` without drift; started after the first attempt."""
    schedule = FixedRate(interval_s)
    failing = False
    started = False
    while True:
        await schedule.wait()
        try:
            sample = await trio.to_thread.run_sync(sample_lag_sync, client, stream, group)
        except SAMPLE_ERRORS as exc:
            if not failing:
                log.warning("lag sample failed", error=f"{type(exc).__name__}: {exc}"[:300])
            failing = True
        else:
            if failing:
                log.info("lag sampling recovered")
            failing = False
            metrics.consumer_lag.set(sample.lag)
            metrics.pending_entries.set(sample.pending)
        if not started:
            started = True
            task_status.started()
