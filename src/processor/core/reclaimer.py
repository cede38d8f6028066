"""The reclaimer: takes over entries left pending by a consumer that went away (docs/pipeline.md).

Every `RECLAIM_INTERVAL_S` it claims, page by page with `XAUTOCLAIM`, every entry idle longer
than `RECLAIM_MIN_IDLE_MS`, and sends it into the owner's channel through the owner's `to_work`,
so claimed entries take the usual path; both groups (durable, domain) use it. Invariants: this
instance's own waiting entries are renewed (`XCLAIM ... JUSTID`) in the same MULTI, so they are
never claimed back nor counted as a delivery; an entry delivered more than `MAX_DELIVERIES` times
is dead-lettered; the first walk waits for the consumer's re-read of its own pending entries.
Details: docs/pipeline.md, Internals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import redis
import structlog
import trio
from trio import TaskStatus

from processor.core.consumer import decode_entries
from processor.core.deliveries import split_worn_out
from processor.core.inflight import InFlight
from processor.core.records import Delivery
from processor.core.stream_names import StreamNames
from processor.lifecycle import Stopper
from processor.observability.metrics import Metrics
from processor.store import redis as redis_store
from processor.store.group_reader import StreamEntries

log = structlog.get_logger("processor.reclaimer")

T = TypeVar("T")


class _Count(Protocol):
    def inc(self, amount: float = 1) -> None: ...


@attrs.frozen
class ReclaimCounters:
    """The metrics a reclaimer counts into (its group's own)."""

    reclaimed: _Count
    trimmed: _Count
    records: _Count | None = None  # entries read, when the group counts reads and claims together


# XAUTOCLAIM examines at most this many pending entries per claimed one (Redis'
# `attempts = count * 10`); the XPENDING window is sized from it.
XAUTOCLAIM_SCAN_FACTOR = 10
SCAN_DONE = "0-0"


@attrs.frozen
class ReclaimSettings:
    """When and how much to reclaim (the names come as the pipeline's one StreamNames)."""

    interval_s: float
    min_idle_ms: int
    max_deliveries: int
    page_size: int = 100


@attrs.frozen
class ClaimedPage:
    """One XAUTOCLAIM page: what was claimed, what was gone, and where the walk goes on."""

    next_cursor: str
    entries: StreamEntries
    trimmed: list[str]
    delivery_counts: dict[str, int]  # entry id -> deliveries including this claim
    previous_owners: dict[str, str]  # entry id -> consumer that held it before


# Ids per renewing XCLAIM: keeps each command's argument list moderate.
RENEW_CHUNK = 1000


def _queue_renewal(pipe: Any, names: StreamNames, held: Sequence[str]) -> int:
    """Queue `XCLAIM ... JUSTID` commands renewing the hold on `held`; returns how many."""
    n = names
    chunks = [held[i : i + RENEW_CHUNK] for i in range(0, len(held), RENEW_CHUNK)]
    for chunk in chunks:
        pipe.xclaim(n.stream, n.group, n.consumer, 0, list(chunk), justid=True)
    return len(chunks)


def renew_sync(client: redis.Redis, names: StreamNames, held: Sequence[str]) -> None:
    """Reset the idle time of the entries this instance holds (no delivery is counted)."""
    if not held:
        return
    pipe = client.pipeline(transaction=False)
    _queue_renewal(pipe, names, held)
    pipe.execute()


def claim_page(
    client: redis.Redis,
    names: StreamNames,
    settings: ReclaimSettings,
    cursor: str,
    held: Sequence[str] = (),
) -> ClaimedPage:
    """Claim one page of idle entries starting at `cursor` (blocking; run in a thread).

    `held` are the entries in this instance's pipeline: renewed first, in the same
    transaction, so that they are not idle when XAUTOCLAIM looks.
    """
    s, n = settings, names
    pipe = client.pipeline(transaction=True)
    renewals = _queue_renewal(pipe, n, held)
    pipe.xpending_range(
        n.stream,
        n.group,
        min=cursor,
        max="+",
        count=s.page_size * XAUTOCLAIM_SCAN_FACTOR,
        idle=s.min_idle_ms,
    )
    pipe.xautoclaim(
        n.stream, n.group, n.consumer, s.min_idle_ms, start_id=cursor, count=s.page_size
    )
    pending, claim = pipe.execute()[renewals:]
    next_cursor = _text(claim[0])
    entries: StreamEntries = claim[1] or []
    trimmed = [_text(entry_id) for entry_id in (claim[2] if len(claim) > 2 else [])]
    if trimmed:
        client.xack(n.stream, n.group, *trimmed)
    counts: dict[str, int] = {}
    owners: dict[str, str] = {}
    for row in pending:
        entry_id = _text(row["message_id"])
        counts[entry_id] = int(row["times_delivered"]) + 1
        owners[entry_id] = _text(row["consumer"])
    return ClaimedPage(next_cursor, entries, trimmed, counts, owners)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def durable_reclaimer(
    *,
    control: redis.Redis,
    names: StreamNames,
    settings: ReclaimSettings,
    metrics: Metrics,
    in_flight: InFlight,
    own_pending_done: trio.Event | None = None,
) -> Reclaimer[Delivery]:
    """The durable pipeline's reclaimer: claimed pages become Deliveries for the writer."""
    return Reclaimer(
        control=control,
        names=names,
        settings=settings,
        in_flight=in_flight,
        to_work=lambda page: split_page(page, settings.max_deliveries, metrics),
        work_ids=Delivery.entry_ids,
        counters=ReclaimCounters(
            metrics.reclaimed, metrics.reclaim_trimmed, metrics.consumer_records
        ),
        own_pending_done=own_pending_done,
    )


def split_page(page: ClaimedPage, max_deliveries: int, metrics: Metrics) -> Delivery:
    """Decode the claimed entries; those delivered too often become `max_deliveries` rejects.

    An entry missing from the XPENDING window (not expected, see the module docstring) has an
    unknown count and is processed normally: storing is idempotent, losing it is not.
    """
    fresh, worn_out = split_worn_out(page.entries, page.delivery_counts, max_deliveries)
    decoded = decode_entries(fresh, metrics)
    return Delivery(decoded.records, decoded.rejected + worn_out)


class Reclaimer(Generic[T]):
    """Claims idle entries of a group for one consumer; `to_work` turns a claimed page into
    the owner's unit of work (e.g. `durable_work`)."""

    def __init__(
        self,
        *,
        control: redis.Redis,
        names: StreamNames,
        settings: ReclaimSettings,
        in_flight: InFlight,
        to_work: Callable[[ClaimedPage], T],
        work_ids: Callable[[T], list[str]],
        counters: ReclaimCounters,
        own_pending_done: trio.Event | None = None,
    ) -> None:
        self.in_flight = in_flight
        self.control = control
        self.names = names
        self.settings = settings
        self._to_work = to_work
        self._work_ids = work_ids
        self._counters = counters
        # Set by the consumer once it has re-read this consumer's own pending entries.
        self.own_pending_done = own_pending_done if own_pending_done is not None else trio.Event()
        if own_pending_done is None:
            self.own_pending_done.set()
        self._stopper = Stopper()

    async def run(
        self,
        deliveries: trio.MemorySendChannel[T],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        s = self.settings
        log.info(
            "reclaimer started",
            group=self.names.group,
            interval_s=s.interval_s,
            min_idle_ms=s.min_idle_ms,
            max_deliveries=s.max_deliveries,
        )
        task_status.started()
        renew_every_s = min(s.interval_s, s.min_idle_ms / 1000 / 3)
        try:
            async with deliveries:
                if not await self._stopper.wait_for(self.own_pending_done):
                    return
                next_walk = trio.current_time() + s.interval_s
                while not self._stopper.requested:
                    wait = min(next_walk, trio.current_time() + renew_every_s) - trio.current_time()
                    if await self._stopper.pause(max(0.0, wait)):
                        break
                    if trio.current_time() < next_walk:
                        await self.renew()
                        continue
                    next_walk = trio.current_time() + s.interval_s
                    await self.reclaim_once(deliveries)
        finally:
            log.info("reclaimer stopped")

    async def renew(self) -> None:
        """Renew the hold on the entries in this instance's pipeline (see deliveries.py)."""
        held = self.in_flight.ids()
        if not held:
            return
        try:
            await trio.to_thread.run_sync(renew_sync, self.control, self.names, held)
        except redis_store.TRANSIENT_ERRORS as exc:
            log.warning("renewing held entries failed, retrying next tick", error=str(exc)[:200])

    async def reclaim_once(self, deliveries: trio.MemorySendChannel[T]) -> int:
        """Walk the whole pending list once; returns how many entries were claimed."""
        claimed = 0
        cursor = SCAN_DONE
        while not self._stopper.requested:
            try:
                held = self.in_flight.ids()
                page = await trio.to_thread.run_sync(
                    claim_page, self.control, self.names, self.settings, cursor, held
                )
            except redis_store.TRANSIENT_ERRORS as exc:
                log.warning("reclaim failed, retrying next interval", error=str(exc)[:200])
                return claimed
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("consumer group missing; the consumer recreates it", error=str(exc))
                return claimed
            page = self._without_in_flight(page)
            self._account(page)
            if page.entries:
                claimed += len(page.entries)
                work = self._to_work(page)
                self.in_flight.add(self._work_ids(work))
                await deliveries.send(work)
            cursor = page.next_cursor
            if cursor == SCAN_DONE:
                break
        return claimed

    def _without_in_flight(self, page: ClaimedPage) -> ClaimedPage:
        """Drop entries this process already has in its pipeline (they are merely waiting)."""
        waiting = [e for e in page.entries if _text(e[0]) in self.in_flight]
        if not waiting:
            return page
        log.info("idle entries are still in this instance's pipeline", count=len(waiting))
        keep = [e for e in page.entries if _text(e[0]) not in self.in_flight]
        return attrs.evolve(page, entries=keep)

    def _account(self, page: ClaimedPage) -> None:
        if page.trimmed:
            self._counters.trimmed.inc(len(page.trimmed))
            log.warning(
                "pending entries were trimmed from the stream before being stored; "
                "their data is lost upstream",
                count=len(page.trimmed),
                first=page.trimmed[0],
                last=page.trimmed[-1],
            )
        if page.entries:
            self._counters.reclaimed.inc(len(page.entries))
            if self._counters.records is not None:
                self._counters.records.inc(len(page.entries))
            owners = Counter(
                page.previous_owners.get(_text(raw_id), "?") for raw_id, _ in page.entries
            )
            log.info(
                "reclaimed idle entries",
                group=self.names.group,
                count=len(page.entries),
                from_consumers=dict(owners),
            )

    def request_stop(self) -> None:
        """Stop after the page in hand (if any) has been handed to the writer."""
        self._stopper.request()
