"""The racing-domain engine: a side service of the root nursery with its own durable group.

    DomainEngine.run
    ├── wait for the racing tables (`stages` ...; logged once while absent)
    ├── group `DOMAIN_GROUP` on the input stream, created at 0 when missing
    └── nursery
        ├── definitions: re-read every DOMAIN_REFRESH_MS; changed stages rebuilt; lag sampled
        └── batches: own pending entries first, then new ones; reclaims idle entries of dead
            instances; per batch: wait for the rows -> evaluate the affected pairs -> commit
            -> XACK

It reads the stream through its own consumer group so that it can never slow, stall or lose
ingestion: the durable pipeline does not know it exists. An entry is acked only after the
evaluation it triggered has committed (or it proved irrelevant: undecodable, no stage of any
entry of its device, dead-lettered by the durable pipeline). A crash at any point leaves the
entry pending, and re-evaluating it is idempotent.

Why the group starts at 0: a group created later at `$` would miss fixes written to the stream
but not yet stored; re-reading history once is cheap next to a silently wrong result (and the
first sight of each stage rebuilds it anyway, see `definitions`).

A batch that fails because a server is unavailable is retried with capped backoff and not
acked. A batch that fails for any other reason (a bug, a schema Directus changed under us) is
logged at error, counted in `processor_domain_errors_total` and acked: one bad batch must not
stall timing for everyone; `processor timing rebuild` recomputes a stage once fixed.

Anything else that escapes ends this *life* of the engine (its pool and reader are closed) and
reaches the service's supervisor (`processor.supervise`), which logs it, counts it in
`processor_service_restarts_total{service="domain-engine"}` and starts a new life after a capped
backoff: the engine has no restart loop of its own. A new life re-reads its own pending entries
first, so nothing it had read is skipped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import attrs
import psycopg
import redis
import structlog
import trio
from trio import TaskStatus

from processor.domain import alerts, definitions, visibility
from processor.domain.alerts import AlertRules
from processor.domain.definitions import Course
from processor.domain.evaluation import Outcome, Pair, evaluate_pairs, rebuild_stage
from processor.observability.lag import SAMPLE_ERRORS, sample_lag_sync
from processor.observability.metrics import Metrics
from processor.position import CodecError, decode_payload
from processor.race_feed import ALERT, RACE_FEED_MAXLEN, VIOLATION, RaceChange, feed_key
from processor.store import postgres
from processor.store import redis as redis_store
from processor.store.group_reader import GroupRead, GroupReader, StreamEntries
from processor.store.postgres import Database
from processor.store.retry import Backoff, Unavailable

log = structlog.get_logger("processor.domain.engine")

RETRYABLE: tuple[type[Exception], ...] = (
    *postgres.TRANSIENT_ERRORS,
    *redis_store.TRANSIENT_ERRORS,
)

REFRESH_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, redis.RedisError, ValueError)
RECLAIM_ERRORS: tuple[type[Exception], ...] = (*redis_store.TRANSIENT_ERRORS, redis.ResponseError)


@attrs.frozen
class EngineSettings:
    stream: str
    group: str  # DOMAIN_GROUP
    durable_group: str  # REDIS_GROUP: asked whether a missing row was dead-lettered
    consumer: str
    read_count: int
    read_block_ms: int
    refresh_s: float
    visibility_timeout_s: float
    reclaim_interval_s: float
    reclaim_min_idle_ms: int
    yield_backlog: int = 0  # pause while the durable group has more to store (0: never)
    alert_rules: AlertRules = attrs.field(factory=AlertRules)

    @property
    def fingerprints_key(self) -> str:
        return f"{self.stream}:{self.group}:stages"


@attrs.frozen
class Key:
    entry_id: str
    device_id: str
    ts: datetime


def decode_keys(entries: StreamEntries) -> tuple[list[Key], list[str]]:
    """(keys of decodable entries, ids of the others). The durable pipeline dead-letters the
    undecodable ones; here they are merely irrelevant."""
    keys: list[Key] = []
    other: list[str] = []
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        try:
            position = decode_payload((fields or {}).get(b"payload"))
        except CodecError:
            other.append(entry_id)
            continue
        keys.append(Key(entry_id, position.device_id, position.ts))
    return keys, other


class DomainEngine:
    def __init__(
        self,
        *,
        settings: EngineSettings,
        open_database: Callable[[], Database],
        redis_url: str,
        control: redis.Redis,
        metrics: Metrics,
        startup_timeout_s: float = 60.0,
    ) -> None:
        """`open_database` makes the engine's own pool: one per life of `run`, which opens and
        closes it (a closed psycopg pool cannot be opened again)."""
        self.settings = settings
        self._startup_timeout_s = startup_timeout_s
        self._open_database = open_database
        self._database = open_database()
        self._redis_url = redis_url
        self._control = control
        self._metrics = metrics
        self.course = Course()
        self.enabled = trio.Event()  # set once the racing tables exist and the group is ready
        self.batches = 0  # batches committed and acked (tests and the demo watch it)
        self._reader = self._new_reader()
        self._lives = 0
        self._stopping = False
        self._stopped = trio.Event()
        self._last_reclaim = -math.inf
        self._invalid_logged: dict[str, str] = {}
        self.alerts_on = False  # the `alerts` table exists (checked at each refresh)

    # --- lifecycle ---------------------------------------------------------------------------

    def _new_reader(self) -> GroupReader:
        s = self.settings
        return GroupReader(
            self._redis_url,
            self._control,
            GroupRead(
                stream=s.stream,
                group=s.group,
                consumer=s.consumer,
                count=s.read_count,
                block_ms=s.read_block_ms,
                recreate_at="0",
            ),
        )

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One life of the engine, under the supervisor (module docstring): it returns once
        stopped; a failure closes this life's pool and reader and propagates."""
        if self._lives:  # a restart: the last life closed its pool and reader
            self._database, self._reader = self._open_database(), self._new_reader()
        self._lives += 1
        task_status.started()
        try:
            if await self._connect():
                await self._serve()
        except Exception:
            self._metrics.domain_errors.inc()
            raise
        finally:
            self._reader.close()
            with trio.CancelScope(shield=True):
                await self._database.aclose()
            log.info("domain engine stopped")

    async def _serve(self) -> None:
        """Tables, group, definitions, then batches until stopped."""
        if not await self._wait_for_tables():
            return
        s = self.settings
        await redis_store.ensure_group(self._control, s.stream, s.group, "0")
        await self._refresh_until_done()
        if self._stopping:
            return
        log.info("domain engine started", group=self.settings.group)
        self.enabled.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._refresh_loop)
            await self._consume()
            nursery.cancel_scope.cancel()

    async def _connect(self) -> bool:
        """Open the engine's pool; the service is already connected, so this rarely waits. A
        failure never ends the service: the engine keeps trying (logged) until stopped."""
        while not self._stopping:
            try:
                await self._database.connect(deadline_s=self._startup_timeout_s)
                return True
            except Unavailable as exc:
                log.error("domain engine cannot reach PostgreSQL, retrying", error=str(exc))
                await self._pause(self.settings.refresh_s)
        return False

    async def stop(self) -> None:
        """Stop reading; the batch in hand is finished and acked, then `run` returns."""
        self._stopping = True
        self._stopped.set()
        await self._reader.stop()

    async def _pause(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stopped.wait()

    async def _wait_for_tables(self) -> bool:
        logged = False
        while not self._stopping:
            try:
                if await self._database.run(definitions.tables_exist):
                    if logged:
                        log.info("racing tables found: domain engine starting")
                    return True
                if not logged:
                    log.info(
                        "racing domain off: no stages/controls/timing_records/stage_results "
                        "tables (checked again every DOMAIN_REFRESH_MS)"
                    )
                    logged = True
            except RETRYABLE as exc:
                log.warning("racing tables check failed", error=str(exc)[:200])
            await self._pause(self.settings.refresh_s)
        return False

    # --- definitions -------------------------------------------------------------------------

    async def _refresh_until_done(self) -> None:
        backoff = Backoff(initial_s=0.2, max_s=5.0)
        while not self._stopping:
            try:
                await self.refresh()
                return
            except RETRYABLE as exc:
                delay = backoff.next_delay()
                log.warning("domain definitions read failed", error=str(exc)[:200])
                await self._pause(delay)

    async def _refresh_loop(self) -> None:
        while not self._stopping:
            await self._pause(self.settings.refresh_s)
            if self._stopping:
                return
            try:
                await self.refresh()
                await self.check_silence()
            except RETRYABLE as exc:
                log.warning("domain definitions refresh failed", error=str(exc)[:200])
            except REFRESH_ERRORS as exc:  # e.g. a table Directus changed: keep the old course
                self._metrics.domain_errors.inc()
                why = f"{type(exc).__name__}: {exc}"[:300]
                log.error("domain definitions refresh failed", error=why)
            await self.sample_lag()

    async def sample_lag(self) -> None:
        """`processor_domain_lag`: entries in the stream not yet delivered to the domain group
        (XINFO GROUPS, XLEN when Redis cannot tell); sampled at each refresh."""
        try:
            sample = await trio.to_thread.run_sync(
                sample_lag_sync, self._control, self.settings.stream, self.settings.group
            )
        except SAMPLE_ERRORS as exc:
            log.debug("domain lag sample failed", error=str(exc)[:200])
        else:
            self._metrics.domain_lag.set(sample.lag)

    async def check_silence(self) -> None:
        """Raise and clear `no_signal` alerts (wall clock; every DOMAIN_REFRESH_MS)."""
        if not self.alerts_on:
            return
        rules = self.settings.alert_rules
        feed = await self._database.run(partial(alerts.judge_silence, rules=rules))
        await self._announce(feed)
        for kind, count in (await self._database.run(alerts.open_counts)).items():
            self._metrics.alerts_open.labels(kind).set(count)

    async def refresh(self) -> None:
        """Re-read the definitions; rebuild every stage whose fingerprint changed (or was
        never seen: fingerprints live in Redis, so this survives restarts)."""
        course = await self._database.run(definitions.read_course)
        self.course = course
        self.alerts_on = await self._database.run(alerts.enabled)
        for stage_id, (fingerprint, why) in course.invalid.items():
            if self._invalid_logged.get(stage_id) != fingerprint:
                log.error("stage not evaluated until fixed", stage_id=stage_id, error=why)
                self._invalid_logged[stage_id] = fingerprint
        key = self.settings.fingerprints_key
        known: dict[bytes, bytes] = await redis_store.call(self._control, "hgetall", key)
        for stage_id, definition in sorted(course.stages.items()):
            if known.get(stage_id.encode()) == definition.fingerprint.encode():
                continue
            log.info("stage definition new or changed: rebuilding", stage_id=stage_id)
            outcome = await self._database.run(
                partial(rebuild_stage, course=course, stage_id=stage_id)
            )
            self._count(outcome)
            await self._announce(outcome.feed)
            self._metrics.domain_rebuilds.inc()
            await redis_store.call(self._control, "hset", key, stage_id, definition.fingerprint)
        gone = [
            k for k in known if k.decode() not in course.stages and k.decode() not in course.invalid
        ]
        if gone:
            await redis_store.call(self._control, "hdel", key, *gone)

    # --- batches -----------------------------------------------------------------------------

    async def _consume(self) -> None:
        start_id = "0"  # own pending entries first (a restart finishes what it had read)
        while not self._stopping:
            await self._maybe_reclaim()
            await self._yield_to_ingestion()
            entries = await self._reader.read(start_id)
            if not entries:
                if start_id != ">" and not self._reader.stopping:
                    start_id = ">"
                continue
            if start_id != ">":
                start_id = entries[-1][0].decode()
            await self._handle(entries)

    async def _yield_to_ingestion(self) -> None:
        """Pause while the durable pipeline has a backlog (more than DOMAIN_YIELD_BACKLOG
        entries undelivered or unacked): storing fixes comes first, and in this process both
        share one interpreter and the same database. The engine catches up once the backlog is
        gone (its lag says by how much); a fix it evaluated now would mostly wait for its row
        anyway. Backoff 50 ms doubling to 1 s; a failed check does not hold the engine."""
        limit = self.settings.yield_backlog
        if limit <= 0:
            return
        delay = 0.05
        while not self._stopping:
            try:
                s = self.settings
                sample = await trio.to_thread.run_sync(
                    sample_lag_sync, self._control, s.stream, s.durable_group
                )
            except SAMPLE_ERRORS:
                return
            if not sample.exact or sample.lag + sample.pending <= limit:
                return  # (an inexact lag is XLEN: an upper bound that could hold us for good)
            self._metrics.domain_yields.inc()
            await self._pause(delay)
            delay = min(delay * 2, 1.0)

    async def _maybe_reclaim(self) -> None:
        """Take over entries another (dead) instance read and never acked."""
        now = trio.current_time()
        if now - self._last_reclaim < self.settings.reclaim_interval_s:
            return
        self._last_reclaim = now
        s = self.settings
        try:
            reply: Any = await redis_store.call(
                self._control,
                "xautoclaim",
                s.stream,
                s.group,
                s.consumer,
                min_idle_time=s.reclaim_min_idle_ms,
                start_id="0-0",
                count=s.read_count,
            )
        except RECLAIM_ERRORS as exc:
            log.warning("domain reclaim failed", error=str(exc)[:200])
            return
        claimed: StreamEntries = list(reply[1])
        if claimed:
            log.info("domain entries reclaimed", count=len(claimed))
            await self._handle(claimed)

    async def _handle(self, entries: StreamEntries) -> None:
        """Wait for the rows, evaluate, commit, ack; retried (not acked) while a server is
        unavailable."""
        backoff = Backoff(initial_s=0.1, max_s=5.0)
        ids = [raw.decode() for raw, _ in entries]
        keys, _irrelevant = decode_keys(entries)
        while True:
            try:
                course = self.course
                relevant = [k for k in keys if course.pairs_for(k.device_id, k.ts.timestamp())]
                triggers = await self._triggers(course, relevant)
                if triggers:
                    started = time.perf_counter()
                    outcome = await self._database.run(
                        partial(evaluate_pairs, course=course, triggers=triggers)
                    )
                    self._metrics.domain_evaluation.observe(time.perf_counter() - started)
                    self._count(outcome)
                    self._metrics.domain_fixes.inc(len(relevant))
                    await self._announce(outcome.feed)
                    if self.alerts_on:
                        judged = await self._database.run(
                            partial(
                                alerts.judge_stops,
                                course=course,
                                pairs=list(triggers),
                                rules=self.settings.alert_rules,
                            )
                        )
                        await self._announce(judged)
                await redis_store.call(
                    self._control, "xack", self.settings.stream, self.settings.group, *ids
                )
                self.batches += 1
                return
            except RETRYABLE as exc:
                delay = backoff.next_delay()
                log.warning(
                    "domain batch failed, retrying",
                    error=str(exc)[:200],
                    attempt=backoff.attempts,
                    retry_in_s=round(delay, 2),
                )
                await trio.sleep(delay)
            except (psycopg.Error, ValueError, TypeError, KeyError, AttributeError) as exc:
                self._metrics.domain_errors.inc()
                log.error(
                    "domain batch failed, skipped (run `processor timing rebuild`)",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    first=ids[0],
                    last=ids[-1],
                )
                with contextlib.suppress(*RECLAIM_ERRORS):  # best effort: redelivered if not
                    await redis_store.call(
                        self._control, "xack", self.settings.stream, self.settings.group, *ids
                    )
                return

    async def _triggers(self, course: Course, keys: Sequence[Key]) -> dict[Pair, float]:
        """Wait until every key is stored (or proved never to be), then the earliest new fix
        time per affected pair. Faulty fixes trigger nothing: they are not part of any track."""
        stored = await self._wait_visible(keys)
        triggers: dict[Pair, float] = {}
        for key in keys:
            faulty = stored.get((key.device_id, key.ts))
            if faulty is None or faulty:
                continue
            t = key.ts.timestamp()
            for pair in course.pairs_for(key.device_id, t):
                triggers[pair] = min(t, triggers.get(pair, math.inf))
        return triggers

    async def _wait_visible(self, keys: Sequence[Key]) -> dict[tuple[str, datetime], bool]:
        """Poll `positions` with backoff (50 ms doubling to 1 s) until every key is visible,
        a missing key's entry was dead-lettered, or DOMAIN_VISIBILITY_TIMEOUT_MS passed."""
        if not keys:
            return {}
        wanted = {(k.device_id, k.ts): k for k in keys}
        found: dict[tuple[str, datetime], bool] = {}
        deadline = trio.current_time() + self.settings.visibility_timeout_s
        delay = 0.05
        while True:
            missing = [k for k in wanted if k not in found]
            found.update(await self._database.run(partial(visibility.visible, keys=missing)))
            missing = [k for k in wanted if k not in found]
            if not missing:
                return found
            acked = await trio.to_thread.run_sync(
                visibility.acked_by_durable,
                self._control,
                self.settings.stream,
                self.settings.durable_group,
                [wanted[k].entry_id for k in missing],
            )
            if acked:
                # acked by the durable group, and no row: dead-lettered (check again first:
                # the row may have been committed between our two queries)
                found.update(await self._database.run(partial(visibility.visible, keys=missing)))
                dead = [k for k in missing if k not in found and wanted[k].entry_id in acked]
                self._skip(dead, "dead_lettered")
                for k in dead:
                    wanted.pop(k)
                if all(k in found for k in wanted):
                    return found
            if trio.current_time() >= deadline:
                self._skip(missing, "timeout")
                return found
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _skip(self, keys: Iterable[tuple[str, datetime]], reason: str) -> None:
        keys = list(keys)
        if not keys:
            return
        self._metrics.domain_skipped_fixes.labels(reason).inc(len(keys))
        log.error(
            "fixes never stored: not evaluated",
            reason=reason,
            count=len(keys),
            example=f"{keys[0][0]}@{keys[0][1].isoformat()}",
        )

    async def _announce(self, feed: Sequence[RaceChange]) -> None:
        for change in feed:
            if change.kind == VIOLATION:
                self._metrics.speed_violations.inc()
            elif change.kind == ALERT and change.body["alert"]["cleared_at"] is None:
                self._metrics.alerts_raised.labels(change.body["alert"]["kind"]).inc()
        await self._append(feed)

    async def _append(self, feed: Sequence[RaceChange]) -> None:
        """Append the committed changes to the race feed (`race_feed`), retried while Redis is
        unavailable: the evaluation is committed, and re-evaluating would find nothing new to
        announce, so the announcement is retried on its own (not the batch). Given up only
        when the engine stops (live clients then see the change at their next `subscribed`)."""
        if not feed:
            return
        backoff = Backoff(initial_s=0.1, max_s=5.0)
        key = feed_key(self.settings.stream)
        while True:
            try:
                await trio.to_thread.run_sync(_append, self._control, key, feed)
                return
            except redis_store.TRANSIENT_ERRORS as exc:
                if self._stopping:
                    log.warning("race feed not written (stopping)", changes=len(feed))
                    return
                delay = backoff.next_delay()
                log.warning("race feed write failed, retrying", error=str(exc)[:200])
                await self._pause(delay)

    def _count(self, outcome: Outcome) -> None:
        for kind, count in outcome.passes_by_kind.items():
            self._metrics.domain_passes.labels(kind).inc(count)
        if outcome.late:
            self._metrics.domain_late_reevaluations.inc(outcome.late)


def _append(client: redis.Redis, key: str, feed: Sequence[RaceChange]) -> None:
    """One round trip for a batch's changes (in order), capped approximately."""
    pipe = client.pipeline(transaction=False)
    for change in feed:
        pipe.xadd(key, change.fields(), maxlen=RACE_FEED_MAXLEN, approximate=True)  # type: ignore[arg-type]
    pipe.execute()
