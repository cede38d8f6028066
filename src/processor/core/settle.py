"""Settling entries in Redis: dead-letter the rejected, and ack only what is safe to ack.

An entry may be acked only once its row is committed or its dead-letter copy is known to exist.
Redis does not roll a MULTI back: when an `XADD` inside one fails at run time (the dead-letter
key holds another type, the server is out of memory), an `XACK` queued behind it still runs. So
the dead-letter `XADD`s go first and their replies are checked; only the entries whose copy was
written are acked. Without rejected entries (the usual batch) settling is one `XACK`; with
them, one pipeline (the copies and the stored entries' ack) plus one `XACK` for the copied.

An entry whose copy could not be written stays pending and is reported in
`DeadLetterUnwritable`: the writer retries exactly those, with backoff, as an outage (never a
crash, never an ack), and a retry never writes a second copy of an entry already copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from processor.core.dead_letters import dead_letter_fields
from processor.core.records import Rejected
from processor.core.stream_names import StreamNames


class DeadLetterUnwritable(Exception):
    """Some dead-letter copies could not be written, so those entries were not acked.

    `acked` counts what the call did ack (stored entries, rejected ones whose copy exists);
    `unwritten` are the rejected entries still to dead-letter.
    """

    def __init__(self, acked: int, unwritten: list[Rejected], error: str) -> None:
        super().__init__(error)
        self.acked = acked
        self.unwritten = unwritten
        self.error = error


def settle_sync(
    client: redis.Redis, names: StreamNames, ack_ids: Sequence[str], rejected: Sequence[Rejected]
) -> int:
    """Ack `ack_ids`; dead-letter `rejected` and ack each one whose copy was written.

    Returns how many entries were acked. Raises DeadLetterUnwritable (after acking the rest)
    when a copy was refused. A connection error propagates with nothing acked that should not
    be; the caller retries the whole call (XACK is idempotent; a copy whose reply was lost may
    be written twice, which the dead-letter tools tolerate).
    """
    if not rejected:
        return int(client.xack(names.stream, names.group, *ack_ids)) if ack_ids else 0
    pipe = client.pipeline(transaction=False)
    for entry in rejected:
        pipe.xadd(
            names.dead_letter_stream,
            dead_letter_fields(entry, names.consumer),  # type: ignore[arg-type]
            maxlen=names.dead_letter_maxlen,
            approximate=True,
        )
    if ack_ids:
        pipe.xack(names.stream, names.group, *ack_ids)
    replies = pipe.execute(raise_on_error=False)
    copies = replies[: len(rejected)]
    if ack_ids:
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        acked = int(replies[-1])
    else:
        acked = 0
    written = [e.entry_id for e, reply in zip(rejected, copies, strict=True) if _ok(reply)]
    if written:
        acked += int(client.xack(names.stream, names.group, *written))
    failures = [reply for reply in copies if not _ok(reply)]
    if failures:
        unwritten = [e for e, reply in zip(rejected, copies, strict=True) if not _ok(reply)]
        error = f"{type(failures[0]).__name__}: {' '.join(str(failures[0]).split())[:300]}"
        raise DeadLetterUnwritable(acked, unwritten, error)
    return acked


def _ok(reply: object) -> bool:
    return not isinstance(reply, Exception)
