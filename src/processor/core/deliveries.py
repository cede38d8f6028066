"""What counts as a delivery towards `MAX_DELIVERIES`, and what happens past it.

A delivery is a hand-over of the entry to a process that will try to store it: the first read
(`XREADGROUP ... >`), a restarted instance re-reading its own pending entries (`... 0`), a claim
by another consumer. Waiting is not: an instance renews its hold on what its pipeline holds
(`XCLAIM ... JUSTID`), so no outage turns good records into dead letters. Redis counts the
hand-overs (`times_delivered`); an entry whose count, the hand-over in progress included,
exceeds `MAX_DELIVERIES` is dead-lettered as `max_deliveries`. Why: docs/pipeline.md, Internals.
"""

from __future__ import annotations

import structlog

from processor.core.records import Rejected
from processor.store.group_reader import StreamEntries

log = structlog.get_logger("processor.deliveries")


def split_worn_out(
    entries: StreamEntries, delivery_counts: dict[str, int], max_deliveries: int
) -> tuple[StreamEntries, list[Rejected]]:
    """(entries to process, entries delivered too often as `max_deliveries` rejects).

    An entry without a known count is processed: storing is idempotent, losing it is not.
    """
    fresh: StreamEntries = []
    worn_out: list[Rejected] = []
    for raw_id, fields in entries:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        deliveries = delivery_counts.get(entry_id, 0)
        if deliveries > max_deliveries:
            log.error(
                "entry delivered too often, dead-lettering it",
                entry_id=entry_id,
                deliveries=deliveries,
                max_deliveries=max_deliveries,
            )
            worn_out.append(
                Rejected(
                    entry_id,
                    dict(fields or {}),
                    "max_deliveries",
                    f"delivered {deliveries} times (MAX_DELIVERIES={max_deliveries})",
                    "max_deliveries",
                )
            )
        else:
            fresh.append((raw_id, fields))
    return fresh, worn_out
