"""Settling entries in Redis: dead-letter the rejected, then XACK, in one MULTI/EXEC.

Dead-lettering and acking travel together so that a rejected entry is never acked without its
dead-letter copy, and one round trip settles a whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs
import redis

from processor.core.records import Rejected


@attrs.frozen
class StreamNames:
    stream: str
    group: str
    consumer: str
    dead_letter_stream: str
    dead_letter_maxlen: int


def dead_letter_fields(rejected: Rejected, consumer: str) -> dict[bytes | str, bytes | str]:
    """The original fields plus why, where and when it failed (SPEC §4)."""
    fields: dict[bytes | str, bytes | str] = {key: value for key, value in rejected.fields.items()}
    fields.update(
        {
            "reason": rejected.reason,
            "error": rejected.error[:2000],
            "source_id": rejected.entry_id,
            "consumer": consumer,
            "failed_at": datetime.now(UTC).isoformat(),
        }
    )
    return fields


def settle_sync(
    client: redis.Redis, names: StreamNames, ack_ids: Sequence[str], rejected: Sequence[Rejected]
) -> int:
    """Dead-letter `rejected`, then ack `ack_ids` and the rejected; returns how many were acked."""
    ids = list(ack_ids) + [r.entry_id for r in rejected]
    if not ids:
        return 0
    pipe = client.pipeline(transaction=True)
    for entry in rejected:
        pipe.xadd(
            names.dead_letter_stream,
            dead_letter_fields(entry, names.consumer),  # type: ignore[arg-type]
            maxlen=names.dead_letter_maxlen,
            approximate=True,
        )
    pipe.xack(names.stream, names.group, *ids)
    results = pipe.execute()
    return int(results[-1])
