"""Removing dead consumers from the groups: gone, holding nothing, idle past a documented time.

Instances that come and go under new names leave consumers behind in `REDIS_GROUP` and
`DOMAIN_GROUP`, and nothing else removes them, so every running instance sweeps them every
`CONSUMER_CLEANUP_INTERVAL_S`. Invariants: a consumer is removed only when it holds no pending
entry, was idle longer than `CONSUMER_MAX_IDLE_S` and is not this instance's own; check and
removal are one Lua script, so a pending entry is never forgotten; `CONSUMER_MAX_IDLE_S=0` turns
the sweep off. Why and how: docs/pipeline.md, Internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.observability.logging import FailureLog
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store

log = structlog.get_logger("processor.consumer_cleanup")

# KEYS[1] stream; ARGV group, consumer, minimum idle ms. Returns 1 when the consumer was
# removed, 0 when it was kept (it holds entries, was active since, or is gone already).
_REMOVE_IF_DEAD = """
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, fields in ipairs(consumers) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""

SWEEP_ERRORS: tuple[type[Exception], ...] = (*redis_store.TRANSIENT_ERRORS, redis.ResponseError)


@attrs.frozen
class Removed:
    group: str
    consumer: str
    idle_s: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def remove_dead_consumers(
    client: redis.Redis, stream: str, group: str, *, own: str, max_idle_ms: int
) -> list[Removed]:
    """One sweep of one group (blocking): every other consumer with nothing pending and idle
    longer than `max_idle_ms`, removed atomically. A missing stream or group removes nothing."""
    try:
        consumers = client.xinfo_consumers(stream, group)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
            return []
        raise
    removed = []
    for info in consumers:
        name = _text(info["name"])
        idle = int(info["idle"])
        if name == own or int(info["pending"]) or idle <= max_idle_ms:
            continue
        if client.eval(_REMOVE_IF_DEAD, 1, stream, group, name, max_idle_ms):
            removed.append(Removed(group, name, idle / 1000))
    return removed


@attrs.frozen
class CleanupSettings:
    stream: str
    groups: Sequence[str]
    own: str  # this instance's consumer name: never removed
    max_idle_s: float
    interval_s: float


async def run_consumer_cleanup(
    client: redis.Redis,
    *,
    settings: CleanupSettings,
    metrics: Metrics,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sweep every group now and then every `interval_s`, until cancelled."""
    task_status.started()
    if settings.max_idle_s <= 0:
        log.info("consumer cleanup off: CONSUMER_MAX_IDLE_S=0")
        await trio.sleep_forever()
    max_idle_ms = int(settings.max_idle_s * 1000)
    failures = FailureLog(log, "consumer cleanup failed", "consumer cleanup recovered")
    while True:
        try:
            for group in settings.groups:
                removed = await trio.to_thread.run_sync(
                    partial(
                        remove_dead_consumers,
                        client,
                        settings.stream,
                        group,
                        own=settings.own,
                        max_idle_ms=max_idle_ms,
                    )
                )
                for gone in removed:
                    metrics.consumers_removed.inc()
                    log.info(
                        "removed dead consumer",
                        stream=settings.stream,
                        group=gone.group,
                        consumer=gone.consumer,
                        idle_s=round(gone.idle_s, 1),
                        max_idle_s=settings.max_idle_s,
                    )
        except SWEEP_ERRORS as exc:
            failures.failed(exc)
        else:
            failures.succeeded()
        await trio.sleep(settings.interval_s)
