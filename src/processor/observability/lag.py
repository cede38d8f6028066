"""How far behind the group is: `processor_consumer_lag` (entries),
`processor_consumer_lag_seconds` and `processor_pending_entries`.

Sampled on a fixed schedule from `XINFO GROUPS` and `XLEN` in one pipelined round trip. The lag
falls back to `XLEN` when Redis cannot tell, an upper bound, so a lag alert never stays silent
because of it; `lag_seconds` is measured on Redis' clock (`TIME` minus the entry id's
milliseconds), so the hosts' clocks do not matter. A failed sample leaves the gauges at their
last value (logged once per outage). The exact rules: docs/pipeline.md, Internals.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.observability.logging import FailureLog
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
    seconds: float = 0.0  # age of the oldest entry not acknowledged (module docstring)
    last_delivered: str = "0-0"


def lag_from_info(groups: list[dict[str, Any]], group: str, length: int) -> LagSample:
    """Pick `group` out of an `XINFO GROUPS` reply; `length` (XLEN) stands in for a nil lag."""
    wanted = group.encode()
    for info in groups:
        name = info.get("name")
        if name in (wanted, group):
            lag = info.get("lag")
            pending = int(info.get("pending") or 0)
            last = _text(info.get("last-delivered-id") or "0-0")
            if lag is None:
                return LagSample(length, pending, exact=False, last_delivered=last)
            return LagSample(int(lag), pending, exact=True, last_delivered=last)
    raise GroupMissing(group)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_ms(entry_id: Any) -> int:
    """The millisecond time of a stream entry ID (`<ms>-<seq>`)."""
    return int(_text(entry_id).partition("-")[0])


def age_s(now_ms: int, entry_id: Any) -> float:
    """Seconds from an entry's ID time to `now_ms`; never negative (an ID set ahead of the
    clock, or a clock stepped back, reads as 0, not as a negative lag)."""
    return max(0.0, (now_ms - entry_ms(entry_id)) / 1000)


def sample_lag_sync(client: redis.Redis, stream: str, group: str) -> LagSample:
    """One round trip (XINFO GROUPS, XLEN, XPENDING summary, TIME pipelined), and a second
    (XRANGE of one entry) only when nothing is pending but entries wait undelivered."""
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(stream)
    pipe.xlen(stream)
    pipe.xpending(stream, group)
    pipe.time()
    groups, length, summary, clock = pipe.execute(raise_on_error=False)
    for reply in (groups, length, clock):
        if isinstance(reply, Exception):
            raise reply
    sample = lag_from_info(groups, group, int(length))  # GroupMissing before XPENDING's NOGROUP
    if isinstance(summary, Exception):
        raise summary
    seconds, micros = clock
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    oldest = summary.get("min") if sample.pending else None
    if oldest is None and sample.lag > 0:
        first = client.xrange(stream, min=f"({sample.last_delivered}", count=1)
        oldest = first[0][0] if first else None
    if oldest is None:
        return sample
    return attrs.evolve(sample, seconds=age_s(now_ms, oldest))


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
    failures = FailureLog(log, "lag sample failed", "lag sampling recovered")
    started = False
    while True:
        await schedule.wait()
        try:
            sample = await trio.to_thread.run_sync(sample_lag_sync, client, stream, group)
        except SAMPLE_ERRORS as exc:
            failures.failed(exc)
        else:
            failures.succeeded()
            metrics.consumer_lag.set(sample.lag)
            metrics.consumer_lag_seconds.set(sample.seconds)
            metrics.pending_entries.set(sample.pending)
        if not started:
            started = True
            task_status.started()
