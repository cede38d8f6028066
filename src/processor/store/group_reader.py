"""A consumer-group reader whose blocking reads can be released at once.

Shared by the durable consumer and the live broadcast consumer. Each reader owns a dedicated
connection: its socket timeout is above `BLOCK` (redis-py's default of 5 s would cut long reads
short), and its client id lets a stop request release a read blocked in Redis with `CLIENT
UNBLOCK` from the control connection, so a drain never waits out `READ_BLOCK_MS`.

`read()` retries transient failures itself (capped backoff, each attempt logged, cut short by
`request_stop()`), and recreates the group when it has vanished (`NOGROUP`: deleted by an
operator, or a Redis restored without it) at the position the owner chooses.
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


class GroupReader:
    def __init__(
        self,
        redis_url: str,
        control: redis.Redis,
        read: GroupRead,
        *,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = read
        self._control = control
        self._on_error = on_error
        self._connection = redis_store.make_client(
            redis_url, socket_timeout_s=read.block_ms / 1000 + 5
        )
        # Replies are turned into entries by `stream_entries`, not by redis-py (see there).
        # The connection is this reader's own, so no other command's replies change.
        self._connection.set_response_callback("XREADGROUP", _raw_reply)
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

    async def read(self, start_id: str = ">") -> StreamEntries:
        """One XREADGROUP from `start_id` (`>` blocks for new entries; an id reads the pending
        list without blocking). Returns [] when nothing came or the reader was stopped."""
        if self._stopper.requested:
            return []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release_on_stop)
            try:
                return await self._read_until_stopped(start_id)
            finally:
                nursery.cancel_scope.cancel()

    async def _release_on_stop(self) -> None:
        await self._stopper.wait()
        await redis_store.unblock(self._control, self._client_id)

    async def _read_until_stopped(self, start_id: str) -> StreamEntries:
        while not self._stopper.requested:
            try:
                return await retry.retry_in_thread(
                    "stream read",
                    functools.partial(self._read, start_id),
                    backoff=self._backoff,
                    on_failure=self._failed,
                    pause=self._stopper.pause_or_raise,
                    context={"group": self.spec.group},
                )
            except StopRequested:
                return []
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

    def _failed(self, _failure: retry.Failure) -> None:
        self._on_error()
        self._client_id = None  # the connection is new after a failure: ask its id again

    def _read(self, start_id: str) -> StreamEntries:
        if self._client_id is None:
            self._client_id = int(self._connection.client_id())
        if self._stopper.requested:
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

    def close(self) -> None:
        self._connection.close()
