"""The engine's evaluation part: a batch of entries in, the affected stages evaluated, acked.

Per batch: wait until the durable pipeline has stored the fixes (`visibility`), evaluate the
affected (stage, entry) pairs one transaction per stage and judge their `stopped` alerts in one
worker-thread hop, hand the committed changes to the race feed, then acknowledge. Failure
boundaries: a refused stage or a failing feature is switched off alone; an unavailable server is
retried with nothing acked; anything else is a bug, never acked away (dead-lettered after
`MAX_DELIVERIES`, `FailureMemory`). Details: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import attrs
import psycopg
import redis
import structlog
import trio
from trio import TaskStatus

from processor.codecs.position import CodecError, decode_payload
from processor.codecs.race_feed import RaceChange
from processor.core.records import Rejected
from processor.core.settle import DeadLetterUnwritable, settle_sync
from processor.core.stream_names import StreamNames
from processor.domain import visibility
from processor.domain.alerts import Judgement, judge_stops
from processor.domain.definitions import Definitions
from processor.domain.evaluation import Outcome, StagesOutcome, evaluate_stages
from processor.domain.health import DomainHealth
from processor.domain.refresher import Refresher
from processor.domain.rules.stops import AlertRules
from processor.lifecycle import Stopper
from processor.observability.metrics import Metrics
from processor.store.group_reader import StreamEntries
from processor.store.postgres import Database
from processor.store.retry import Backoff, Failure, classify, retry_in_thread

log = structlog.get_logger("processor.domain.evaluator")

DOMAIN_FAILED = "domain_failed"
MAX_STALE_ROUNDS = 10


@attrs.frozen
class FixKey:
    entry_id: str
    device_id: str
    ts: datetime


@attrs.frozen
class Batch:
    """One read (or claimed page) of the domain group: entries to evaluate, and entries
    delivered too often, to dead-letter."""

    entries: StreamEntries
    worn_out: list[Rejected] = attrs.field(factory=list)

    def entry_ids(self) -> list[str]:
        return [raw.decode() for raw, _ in self.entries] + [r.entry_id for r in self.worn_out]


def decode_keys(entries: StreamEntries) -> list[FixKey]:
    """Keys of the decodable entries. The durable pipeline dead-letters the undecodable ones;
    here they are merely irrelevant (acked with the batch)."""
    keys: list[FixKey] = []
    for raw_id, fields in entries:
        try:
            position = decode_payload((fields or {}).get(b"payload"))
        except CodecError:
            continue
        keys.append(FixKey(raw_id.decode(), position.device_id, position.ts))
    return keys


class FailureMemory:
    """The last error of the batches that failed, by entry id: what their dead letters say
    once they were delivered too often. Kept by the engine across its lives (bounded)."""

    def __init__(self, cap: int = 100_000) -> None:
        self._errors: dict[str, str] = {}
        self._cap = cap

    def record(self, entry_ids: Sequence[str], error: str) -> None:
        if len(self._errors) + len(entry_ids) > self._cap:
            self._errors.clear()
        self._errors.update(dict.fromkeys(entry_ids, error))

    def error_of(self, entry_id: str) -> str:
        return self._errors.get(entry_id, "unknown: it failed before this process started")

    def forget(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            self._errors.pop(entry_id, None)


def domain_rejects(worn_out: Sequence[Rejected], memory: FailureMemory) -> list[Rejected]:
    """`max_deliveries` rejects as the domain group's dead letters, with the last error."""
    return [
        attrs.evolve(
            r,
            reason=DOMAIN_FAILED,
            error=f"racing-domain evaluation failed repeatedly ({r.error}); last error: "
            f"{memory.error_of(r.entry_id)}",
            category=DOMAIN_FAILED,
        )
        for r in worn_out
    ]


@attrs.define
class BatchResult:
    stages: StagesOutcome
    judgement: Judgement | None


def evaluate_batch(
    conn: psycopg.Connection[Any],
    definitions: Definitions,
    work: Mapping[str, Mapping[str, float | None]],
    alert_rules: AlertRules | None,
    io: bool,
) -> BatchResult:
    """The batch's one worker-thread hop: the stages, then the stop alerts of the pairs
    evaluated (after their stage committed)."""
    stages = evaluate_stages(conn, definitions, work)
    judgement = None
    if alert_rules is not None and stages.outcome.evaluated:
        judgement = judge_stops(conn, definitions, stages.outcome.evaluated, alert_rules, io=io)
    return BatchResult(stages, judgement)


@attrs.frozen
class EvaluatorSettings:
    names: StreamNames  # the domain group's stream, group, consumer and dead-letter stream
    durable_group: str  # REDIS_GROUP: asked whether a missing row was dead-lettered
    visibility_timeout_s: float
    alert_rules: AlertRules


class Evaluator:
    def __init__(
        self,
        *,
        settings: EvaluatorSettings,
        database: Database,
        control: redis.Redis,
        refresher: Refresher,
        health: DomainHealth,
        metrics: Metrics,
        stopper: Stopper,
        failures: FailureMemory,
        settled: Callable[[Sequence[str]], None],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._settings = settings
        self._database = database
        self._control = control
        self._refresher = refresher
        self._health = health
        self._metrics = metrics
        self._stopper = stopper
        self._failures = failures
        self._settled = settled
        self._clock = clock

    async def run(
        self,
        batches: trio.MemoryReceiveChannel[Batch],
        feed: trio.MemorySendChannel[Sequence[RaceChange]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Handle batches until the readers close the channel (or a stop interrupts one)."""
        task_status.started()
        async with batches, feed:
            async for batch in batches:
                try:
                    await self.handle(batch, feed)
                except Exception as exc:
                    self._failures.record(batch.entry_ids(), f"{type(exc).__name__}: {exc}"[:500])
                    raise

    async def handle(
        self, batch: Batch, feed: trio.MemorySendChannel[Sequence[RaceChange]]
    ) -> None:
        ids = batch.entry_ids()
        keys = decode_keys(batch.entries)
        refresher = self._refresher
        if keys and refresher.timing_usable:
            definitions = refresher.definitions
            relevant = [k for k in keys if definitions.pairs_for(k.device_id, k.ts.timestamp())]
            if relevant:
                stored = await self._wait_visible(relevant)
                outcome = await self._evaluate(relevant, stored)
                self._metrics.domain_fixes.inc(len(relevant))
                if outcome.feed:
                    await feed.send(outcome.feed)
        await self._settle(ids, domain_rejects(batch.worn_out, self._failures))
        self._settled(ids)
        self._failures.forget(ids)

    # --- evaluation ------------------------------------------------------------------------

    async def _evaluate(
        self, keys: Sequence[FixKey], stored: Mapping[tuple[str, datetime], bool]
    ) -> Outcome:
        """Evaluate the pairs the stored, non-faulty keys affect; re-read the definitions and
        evaluate again the stages whose definitions were stale (evaluation.py: versions)."""
        definitions = self._refresher.definitions
        total = Outcome()
        only: set[str] | None = None
        for _round in range(MAX_STALE_ROUNDS):
            work = triggers(definitions, keys, stored, only)
            if not work:
                return total
            started = time.perf_counter()
            result = await self._hop(definitions, work)
            self._metrics.domain_evaluation.observe(time.perf_counter() - started)
            self._account(result, total)
            if not result.stages.stale:
                return total
            only = set(result.stages.stale)
            definitions = await self._refresher.refresh()
        raise RuntimeError(
            f"the definitions of stages {sorted(only or ())} kept changing during one batch"
        )

    async def _hop(
        self, definitions: Definitions, work: Mapping[str, Mapping[str, float | None]]
    ) -> BatchResult:
        refresher = self._refresher
        alerts = self._settings.alert_rules if refresher.feature_usable("alerts") else None
        io = refresher.feature_usable("io")
        call = partial(
            self._database.run_sync,
            partial(evaluate_batch, definitions=definitions, work=work, alert_rules=alerts, io=io),
        )
        return await retry_in_thread(
            "domain evaluation",
            call,
            backoff=Backoff(initial_s=0.1, max_s=5.0),
            pause=self._stopper.pause_or_raise,
            stall_after=5,
        )

    def _account(self, result: BatchResult, total: Outcome) -> None:
        stages = result.stages
        outcome = stages.outcome
        total.add(outcome)
        metrics = self._metrics
        for kind, count in outcome.passes_by_kind.items():
            metrics.domain_passes.labels(kind).inc(count)
        if outcome.late:
            metrics.domain_late_reevaluations.inc(outcome.late)
        for fixes in stages.fixes_per_stage:
            metrics.domain_fixes_loaded.observe(fixes)
        now = self._clock()
        for failure in stages.failures:
            self._refresher.stage_failed(failure.stage_id, failure.problem)
        judgement = result.judgement
        if judgement is not None:
            total.feed.extend(judgement.feed)
            for feature, problem in judgement.failed.items():
                self._health.failed(f"feature:{feature}", problem, now)
            if "alerts" not in judgement.failed:
                self._health.clear("feature:alerts")
            if judgement.io_used and "io" not in judgement.failed:
                self._health.clear("feature:io")

    # --- waiting for the durable pipeline ----------------------------------------------------

    async def _wait_visible(self, keys: Sequence[FixKey]) -> dict[tuple[str, datetime], bool]:
        """Poll `positions` with backoff (50 ms doubling to 1 s) until every key is visible,
        a missing key's entry was dead-lettered, or DOMAIN_VISIBILITY_TIMEOUT_MS passed."""
        wanted = {(k.device_id, k.ts): k for k in keys}
        found: dict[tuple[str, datetime], bool] = {}
        deadline = trio.current_time() + self._settings.visibility_timeout_s
        backoff = Backoff(initial_s=0.05, max_s=1.0)
        while True:
            missing = [k for k in wanted if k not in found]
            found.update(await self._visible(missing))
            missing = [k for k in wanted if k not in found]
            if not missing:
                return found
            acked = await self._acked_by_durable([wanted[k].entry_id for k in missing])
            if acked:
                # acked by the durable group, and no row: dead-lettered (check again first:
                # the row may have been committed between our two queries)
                found.update(await self._visible(missing))
                dead = [k for k in missing if k not in found and wanted[k].entry_id in acked]
                self._skip(dead, "dead_lettered")
                for k in dead:
                    wanted.pop(k)
                if all(k in found for k in wanted):
                    return found
            if trio.current_time() >= deadline:
                self._skip([k for k in wanted if k not in found], "timeout")
                return found
            await self._stopper.pause_or_raise(backoff.next_delay())

    async def _visible(
        self, keys: Sequence[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], bool]:
        if not keys:
            return {}
        result: dict[tuple[str, datetime], bool] = await retry_in_thread(
            "domain visibility check",
            partial(self._database.run_sync, partial(visibility.visible, keys=keys)),
            backoff=Backoff(initial_s=0.1, max_s=5.0),
            pause=self._stopper.pause_or_raise,
        )
        return result

    async def _acked_by_durable(self, entry_ids: Sequence[str]) -> set[str]:
        n = self._settings.names
        result: set[str] = await retry_in_thread(
            "domain visibility check",
            partial(
                visibility.acked_by_durable,
                self._control,
                n.stream,
                self._settings.durable_group,
                entry_ids,
            ),
            backoff=Backoff(initial_s=0.1, max_s=5.0),
            pause=self._stopper.pause_or_raise,
        )
        return result

    def _skip(self, keys: Sequence[tuple[str, datetime]], reason: str) -> None:
        if not keys:
            return
        self._metrics.domain_skipped_fixes.labels(reason).inc(len(keys))
        log.error(
            "fixes never stored: not evaluated",
            reason=reason,
            count=len(keys),
            example=f"{keys[0][0]}@{keys[0][1].isoformat()}",
        )

    # --- acknowledging -----------------------------------------------------------------------

    async def _settle(self, ids: Sequence[str], rejected: Sequence[Rejected]) -> None:
        """Ack the batch; dead-letter (for this group) and ack the entries delivered too often.
        Retried while Redis is unavailable; a copy Redis refused is retried alone."""
        names = self._settings.names
        dead = {r.entry_id for r in rejected}
        ack_ids = [i for i in ids if i not in dead]
        pending = list(rejected)
        if pending:
            log.error(
                "entries failed the domain evaluation too often, dead-lettering them",
                count=len(pending),
                first=pending[0].entry_id,
                last=pending[-1].entry_id,
                error=pending[0].error[:300],
            )
        while True:
            try:
                await retry_in_thread(
                    "domain ack",
                    partial(settle_sync, self._control, names, ack_ids, pending),
                    backoff=Backoff(initial_s=0.1, max_s=5.0),
                    classify_failure=_unless_unwritable,
                    pause=self._stopper.pause_or_raise,
                )
            except DeadLetterUnwritable as exc:
                log.error("dead letters not written, retrying", error=exc.error)
                ack_ids, pending = [], exc.unwritten
                await self._stopper.pause_or_raise(1.0)
                continue
            break
        if rejected:
            self._metrics.domain_dead_letters.inc(len(rejected))


def _unless_unwritable(exc: Exception) -> Failure | None:
    """A refused dead-letter copy is retried alone (never its acked companions again)."""
    return None if isinstance(exc, DeadLetterUnwritable) else classify(exc)


def triggers(
    definitions: Definitions,
    keys: Sequence[FixKey],
    stored: Mapping[tuple[str, datetime], bool],
    only: set[str] | None = None,
) -> dict[str, dict[str, float | None]]:
    """stage -> entry -> earliest new fix time, from the keys stored and not faulty (faulty
    fixes are no part of any track); `only`: these stages alone."""
    work: dict[str, dict[str, float | None]] = {}
    for key in keys:
        faulty = stored.get((key.device_id, key.ts))
        if faulty is None or faulty:
            continue
        t = key.ts.timestamp()
        for stage_id, entry_id in definitions.pairs_for(key.device_id, t):
            if only is not None and stage_id not in only:
                continue
            entries = work.setdefault(stage_id, {})
            entries[entry_id] = min(t, entries.get(entry_id) or math.inf)
    return work
