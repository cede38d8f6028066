"""What counts as a delivery towards `MAX_DELIVERIES`, and what happens past it.

`MAX_DELIVERIES` exists for the record that kills whoever reads it (a poison entry): every
instance that picks it up dies, restarts and picks it up again. So a delivery is a *hand-over
of the entry to a process that will try to store it*:

- the first read (`XREADGROUP ... >`);
- a restarted instance re-reading its own pending entries (`XREADGROUP ... 0`): the process
  that held them is gone, maybe killed by one of them;
- a claim by another consumer (`XCLAIM`/`XAUTOCLAIM` in the reclaimer): the holder went away.

Waiting is not a delivery. An entry held in a live instance's pipeline through a database
outage of any length keeps its count: the reclaimer never claims entries its own instance holds,
and renews its hold on them with `XCLAIM ... JUSTID` (which resets the idle time without
counting a delivery) so that other instances do not find them idle and claim them either. So
no outage, however long, turns good records into dead letters (docs/pipeline.md rule 7 applies to
records that cannot be stored, not to records that could not be stored *yet*).

Redis counts every one of these hand-overs itself (`times_delivered` in `XPENDING`); an entry
whose count, including the hand-over in progress, exceeds `MAX_DELIVERIES` is dead-lettered with
reason `max_deliveries` instead of being processed.
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
