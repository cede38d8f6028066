"""The engine's alerts part: `no_signal` judged on the wall clock, and the open-alert gauges.

Every `DOMAIN_REFRESH_MS`, while the `alerts` feature is usable (its table as `schema` wants it
and not switched off by a recent failure): raise and clear `no_signal` alerts (`alerts`) and
set `processor_alerts_open{kind}`, in one worker-thread hop; announce the changes on the race
feed. A database refusal switches the feature off (reported, retried with backoff); a lost
connection waits for the next tick; timing goes on either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import psycopg
import structlog
import trio
from trio import TaskStatus

from processor.codecs.race_feed import RaceChange
from processor.domain import alerts
from processor.domain.alerts import feature_problem
from processor.domain.health import DomainHealth
from processor.domain.refresher import Refresher
from processor.domain.rules.stops import AlertRules
from processor.lifecycle import Stopper
from processor.observability.metrics import Metrics
from processor.store import db_errors
from processor.store.postgres import Database

log = structlog.get_logger("processor.domain.silence")


def judge(
    conn: psycopg.Connection[Any], rules: AlertRules
) -> tuple[list[RaceChange], dict[str, int]]:
    feed = alerts.judge_silence(conn, rules)
    with conn.transaction():
        counts = alerts.open_counts(conn)
    return feed, counts


class SilenceWatch:
    def __init__(
        self,
        *,
        database: Database,
        refresher: Refresher,
        health: DomainHealth,
        metrics: Metrics,
        stopper: Stopper,
        rules: AlertRules,
        every_s: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._database = database
        self._refresher = refresher
        self._health = health
        self._metrics = metrics
        self._stopper = stopper
        self._rules = rules
        self._every_s = every_s
        self._clock = clock

    async def run(
        self,
        feed: trio.MemorySendChannel[Sequence[RaceChange]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async with feed:
            while not await self._stopper.pause(self._every_s):
                changes = await self.check()
                if changes:
                    await feed.send(changes)

    async def check(self) -> list[RaceChange]:
        """One judgement (nothing while the feature is off)."""
        refresher = self._refresher
        if not (refresher.timing_usable and refresher.feature_usable("alerts")):
            return []
        try:
            changes, counts = await self._database.run(partial(judge, rules=self._rules))
        except db_errors.DATABASE_ERRORS as exc:
            problem = feature_problem("alerts", exc)
            if problem is None:
                log.warning("no_signal check failed, retried next tick",
                            error=db_errors.describe(exc))  # fmt: skip
                return []
            self._health.failed("feature:alerts", problem, self._clock())
            return []
        self._health.clear("feature:alerts")
        for kind, count in counts.items():
            self._metrics.alerts_open.labels(kind).set(count)
        return changes
