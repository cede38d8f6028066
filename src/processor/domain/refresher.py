"""The engine's definitions part: re-read, check, and rebuild what changed — one stage at a time.

Every `DOMAIN_REFRESH_MS`: read the catalog (`schema`) and the definitions (`definitions`) in
one worker-thread hop, report what is wrong to the domain's health, then rebuild, each in a
transaction of its own, every stage whose stored rows are not those of its current definitions.
The failure boundary is the stage: a refused definition or rebuild is that stage's problem
alone. The failure rules and the backoff: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
import psycopg
import structlog
import trio
from trio import TaskStatus

from processor.codecs.race_feed import RaceChange
from processor.domain import schema
from processor.domain import timing_store as store
from processor.domain.definitions import Definitions, read_definitions
from processor.domain.evaluation import RebuildRace, database_problem, rebuild_stage
from processor.domain.health import DomainHealth, Problem
from processor.lifecycle import Stopper, StopRequested
from processor.observability.metrics import Metrics
from processor.store import db_errors
from processor.store.postgres import Database
from processor.store.retry import Backoff, retry_in_thread

log = structlog.get_logger("processor.domain.refresher")

FORGET_ALL = "DELETE FROM domain_stages"


@attrs.frozen
class Snapshot:
    """One refresh's reading: the schema verdict and, when timing can run, the definitions."""

    report: schema.SchemaReport
    definitions: Definitions | None


def read_snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    report = schema.check(schema.read_catalog(conn))
    if report.timing_absent:
        return Snapshot(report, None)
    if not report.usable("timing"):
        with conn.transaction():
            conn.execute(FORGET_ALL)
        return Snapshot(report, None)
    return Snapshot(report, read_definitions(conn, report))


class Refresher:
    def __init__(
        self,
        *,
        database: Database,
        health: DomainHealth,
        metrics: Metrics,
        stopper: Stopper,
        refresh_s: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._database = database
        self._health = health
        self._metrics = metrics
        self._stopper = stopper
        self._refresh_s = refresh_s
        self._clock = clock
        self._lock = trio.Lock()
        self.definitions = Definitions()
        self.report: schema.SchemaReport | None = None
        self._failed_fingerprint: dict[str, str] = {}
        self._absent_logged = False

    # --- reading ---------------------------------------------------------------------------

    @property
    def timing_absent(self) -> bool:
        return self.report is None or self.report.timing_absent

    @property
    def timing_usable(self) -> bool:
        return self.report is not None and self.report.usable("timing")

    def feature_usable(self, feature: str) -> bool:
        return (
            self.report is not None
            and self.report.usable(feature)
            and self._health.due(f"feature:{feature}", self._clock())
        )

    async def refresh(self) -> Definitions:
        """Read and check everything (retried while PostgreSQL is unreachable); returns the
        new definitions."""
        async with self._lock:
            snapshot: Snapshot = await retry_in_thread(
                "domain definitions read",
                partial(self._database.run_sync, read_snapshot),
                backoff=Backoff(initial_s=0.2, max_s=5.0),
                pause=self._stopper.pause_or_raise,
                stall_after=5,
            )
            self._take(snapshot)
            return self.definitions

    def _take(self, snapshot: Snapshot) -> None:
        report = snapshot.report
        self.report = report
        self._health.set("schema", [p for problems in report.problems.values() for p in problems])
        if report.timing_absent:
            if not self._absent_logged:
                log.info(
                    "racing domain off: no stages/controls/timing_records/stage_results "
                    "tables (checked again every DOMAIN_REFRESH_MS)"
                )
                self._absent_logged = True
            return
        if self._absent_logged:
            log.info("racing tables found: domain engine starting")
            self._absent_logged = False
        definitions = snapshot.definitions
        if definitions is None:  # the timing schema is broken: nothing to evaluate
            self.definitions = Definitions()
            return
        for stage_id, (_fingerprint, problem) in definitions.invalid.items():
            self._health.set(f"definition:{stage_id}", [problem])
        self._health.clear_missing("definition:", [f"definition:{s}" for s in definitions.invalid])
        known = {*definitions.stages, *definitions.invalid}
        self._health.clear_missing("stage:", [f"stage:{s}" for s in known])
        for stage_id, fingerprint in list(self._failed_fingerprint.items()):
            definition = definitions.stages.get(stage_id)
            if definition is None or definition.fingerprint != fingerprint:
                self._health.retry_now(f"stage:{stage_id}")
                del self._failed_fingerprint[stage_id]
        self.definitions = definitions

    def stage_failed(self, stage_id: str, problem: Problem) -> None:
        """An evaluation of the stage was refused (its version is forgotten already): report
        it; rebuilds are retried with backoff, or at once when its definitions change."""
        self._health.failed(f"stage:{stage_id}", problem, self._clock())
        definition = self.definitions.stages.get(stage_id)
        if definition is not None:
            self._failed_fingerprint[stage_id] = definition.fingerprint

    # --- rebuilding ------------------------------------------------------------------------

    async def rebuild_due(self, feed: trio.MemorySendChannel[Sequence[RaceChange]]) -> None:
        """Rebuild every stage whose stored rows are not of its current definitions (and that
        is not waiting out a failure's backoff), each on its own."""
        definitions = self.definitions
        for stage_id in sorted(definitions.stages):
            if self._stopper.requested:
                return
            owner = f"stage:{stage_id}"
            if definitions.current(stage_id):
                if self._health.has(owner):
                    self._health.clear(owner)
                continue
            if not self._health.due(owner, self._clock()):
                continue
            await self._rebuild(definitions, stage_id, feed)
        keep = {*definitions.stages, *definitions.invalid}
        if any(stage_id not in keep for stage_id in definitions.versions):
            await self._database.run(partial(_forget_gone, stage_ids=sorted(keep)))

    async def _rebuild(
        self,
        definitions: Definitions,
        stage_id: str,
        feed: trio.MemorySendChannel[Sequence[RaceChange]],
    ) -> None:
        owner = f"stage:{stage_id}"
        log.info("stage definition new or changed: rebuilding", stage_id=stage_id)
        try:
            outcome = await self._database.run(
                partial(rebuild_stage, definitions=definitions, stage_id=stage_id)
            )
        except RebuildRace:
            log.warning(
                "stage rebuild raced with new rows, retried next refresh", stage_id=stage_id
            )
            return
        except db_errors.DATABASE_ERRORS as exc:
            problem = database_problem(stage_id, exc)
            if problem is None:
                log.warning("stage rebuild failed, retried next refresh", stage_id=stage_id,
                            error=db_errors.describe(exc))  # fmt: skip
                return
            self.stage_failed(stage_id, problem)
            return
        self._health.clear(owner)
        self._failed_fingerprint.pop(stage_id, None)
        if outcome is None:  # another instance rebuilt it from these definitions
            return
        self._metrics.domain_rebuilds.inc()
        for kind, count in outcome.passes_by_kind.items():
            self._metrics.domain_passes.labels(kind).inc(count)
        if outcome.feed:
            await feed.send(outcome.feed)

    # --- the loop --------------------------------------------------------------------------

    async def run(
        self,
        feed: trio.MemorySendChannel[Sequence[RaceChange]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Rebuild what is due at once (the engine refreshed just before), then refresh and
        rebuild every DOMAIN_REFRESH_MS until stopped."""
        task_status.started()
        async with feed:
            try:
                await self.rebuild_due(feed)
                while not await self._stopper.pause(self._refresh_s):
                    await self.refresh()
                    await self.rebuild_due(feed)
            except StopRequested:
                return


def _forget_gone(conn: psycopg.Connection[Any], stage_ids: Sequence[str]) -> None:
    with conn.transaction():
        store.forget_gone_stages(conn, stage_ids)
