"""Stream readers whose blocking reads can be released at once: through a consumer group
(`GroupReader`), or following a stream from a position (`TailReader`).

Used by the durable and the domain consumers, the live broadcast consumer and the race feed's
live reader. Each reader owns a dedicated connection: its socket timeout is above `BLOCK`
(redis-py's default of 5 s would cut long reads short), and its client id lets a stop request
release a read blocked in Redis with `CLIENT UNBLOCK` from the control connection, so a drain
never waits out `READ_BLOCK_MS`.

`read()` retries transient failures itself (capped backoff, each attempt logged, cut short by
`request_stop()`); a group reader recreates its group when it has vanished (`NOGROUP`: deleted
by an operator, or a Redis restored without it) at the position the owner chooses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import redis
import structlog
import trio

from processor.lifecycle import Stopper, StopRequested
from processor.store import redis as redis_store
from processor.store import retry

log = structlog.get_logger("processor.stream")


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def _raw_reply(reply: Any, **_options: Any) -> Any:
    return reply


def stream_entries(reply: Any) -> StreamEntries:
    """A one-stream XREADGROUP reply, as it comes off the wire, as (id, fields) pairs.

    redis-py's own reply callback builds the same pairs through two Python calls per entry
    (`parse_stream_list`, `pairs_to_dict`); here an entry of one field (the upstream's
    `payload`) gets its dict without any call (benchmarks/README.md has the figures).
    Fields Redis reports as nil (an entry deleted while pending) become `{}`, as redis-py makes
    them. Both protocols' shapes are read: RESP3's `{stream: entries}` (redis-py's default) and
    RESP2's `[[stream, entries]]`.
    """
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [pair[1] for pair in reply]
    return [
        (entry_id, {flat[0]: flat[1]} if flat is not None and len(flat) == 2 else _pairs(flat))
        for entries in streams
        for entry_id, flat in entries
    ]


def _pairs(flat: list[bytes] | None) -> dict[bytes, bytes]:
    """`[k1, v1, k2, v2, ...]` as a dict (None: {})."""
    return {} if flat is None else dict(zip(flat[::2], flat[1::2], strict=False))


@attrs.frozen
class GroupRead:
    """Where and how to read: `recreate_at` is where a vanished group is created again."""

    stream: str
    group: str
    consumer: str
    count: int
    block_ms: int
    recreate_at: str
    noack: bool = False


class _BlockingReader:
    """What both kinds of stream read share: a connection of its own whose socket timeout is
    above BLOCK, its client id for `CLIENT UNBLOCK`, the stop request, and retries of transient
    failures with capped backoff (each attempt logged, cut short by the stop)."""

    def __init__(
        self,
        redis_url: str,
        control: redis.Redis,
        *,
        block_ms: int,
        context: dict[str, object],
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._control = control
        self._on_error = on_error
        self._context = context
        self._connection = redis_store.make_client(redis_url, socket_timeout_s=block_ms / 1000 + 5)
        # Replies are turned into entries by `stream_entries`, not by redis-py (see there).
        # The connection is this reader's own, so no other command's replies change.
        self._connection.set_response_callback("XREADGROUP", _raw_reply)
        self._connection.set_response_callback("XREAD", _raw_reply)
        self._client_id: int | None = None
        self._stopper = Stopper()
        self._backoff = retry.Backoff(initial_s=0.2, max_s=5.0)

    @property
    def stopping(self) -> bool:
        return self._stopper.requested

    def request_stop(self) -> None:
        """No new read starts, and a read blocked in Redis returns at once (its own watcher
        sends `CLIENT UNBLOCK`)."""
        self._stopper.request()

    def close(self) -> None:
        self._connection.close()

    async def _released_read(self, read: Callable[[], StreamEntries]) -> StreamEntries:
        """`read` in a worker thread, retried while transient failures last; [] once stopped.
        A stop request releases a read blocked in Redis at once."""
        if self._stopper.requested:
            return []
        entries: StreamEntries = []
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release_on_stop)
            try:
                entries = await retry.retry_in_thread(
                    "stream read",
                    read,
                    backoff=self._backoff,
                    on_failure=self._failed,
                    pause=self._stopper.pause_or_raise,
                    context=self._context,
                )
            except StopRequested:
                pass
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
                failure = exc  # (raised inside it, it would reach the caller wrapped in a group)
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return entries

    async def _release_on_stop(self) -> None:
        await self._stopper.wait()
        await redis_store.unblock(self._control, self._client_id)

    def _failed(self, _failure: retry.Failure) -> None:
        self._on_error()
        self._client_id = None  # the connection is new after a failure: ask its id again

    def _prepared(self) -> bool:
        """In the worker thread, before each command: know the client id; False once stopped."""
        if self._client_id is None:
            self._client_id = int(self._connection.client_id())
        return not self._stopper.requested


class GroupReader(_BlockingReader):
    """XREADGROUP through a consumer group, the group recreated when it has vanished."""

    def __init__(
        self,
        redis_url: str,
        control: redis.Redis,
        read: GroupRead,
        *,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            redis_url,
            control,
            block_ms=read.block_ms,
            context={"group": read.group},
            on_error=on_error,
        )
        self.spec = read

    async def read(self, start_id: str = ">") -> StreamEntries:
        """One XREADGROUP from `start_id` (`>` blocks for new entries; an id reads the pending
        list without blocking). Returns [] when nothing came or the reader was stopped."""
        while not self._stopper.requested:
            try:
                return await self._released_read(functools.partial(self._read, start_id))
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._on_error()
                log.error(
                    "consumer group missing, recreating it",
                    stream=self.spec.stream,
                    group=self.spec.group,
                    at=self.spec.recreate_at,
                )
                await redis_store.ensure_group(
                    self._control, self.spec.stream, self.spec.group, self.spec.recreate_at
                )
        return []

    def _read(self, start_id: str) -> StreamEntries:
        if not self._prepared():
            return []
        spec = self.spec
        reply: Any = self._connection.xreadgroup(
            spec.group,
            spec.consumer,
            {spec.stream: start_id},
            count=spec.count,
            block=spec.block_ms if start_id == ">" else None,
            noack=spec.noack,
        )
        return stream_entries(reply)


class TailReader(_BlockingReader):
    """Plain XREAD of a stream from a position that moves with what was read (no group:
    nothing to create, destroy or reclaim). `position` None: start at the stream's last entry
    (new entries only); keep `position` to resume where a previous reader left off."""

    def __init__(
        self,
        redis_url: str,
        control: redis.Redis,
        *,
        stream: str,
        count: int,
        block_ms: int,
        position: str | None = None,
    ) -> None:
        super().__init__(redis_url, control, block_ms=block_ms, context={"stream": stream})
        self.stream = stream
        self.position = position
        self._count = count
        self._block_ms = block_ms

    async def read(self) -> StreamEntries:
        """The entries after `position` (blocking up to BLOCK); [] when none came or stopped."""
        entries = await self._released_read(self._read)
        if entries:
            self.position = entries[-1][0].decode()
        return entries

    def _read(self) -> StreamEntries:
        if not self._prepared():
            return []
        if self.position is None:
            last: Any = self._connection.xrevrange(self.stream, count=1)
            self.position = last[0][0].decode() if last else "0-0"
        reply: Any = self._connection.xread(
            {self.stream: self.position}, count=self._count, block=self._block_ms
        )
        return stream_entries(reply)
