"""What travels from the consumer to the writer: decoded records and rejected entries.

Decoded records travel as columns (entry ids, COPY values, original fields), not as one object
per record: the writer works on whole batches, and per-record objects were a measurable share of
the per-fix cost without being needed by anything but the batch they belong to.
"""

from __future__ import annotations

import attrs

from processor.codecs.position import StoredRow


def entry_time(entry_id: str) -> float:
    """The stream entry's own time (seconds since the epoch) from its ID `<ms>-<seq>`."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def latencies_s(entry_ids: list[str], at: float) -> list[float]:
    """Seconds from each entry's own time to `at` (epoch seconds), never negative.

    One comprehension per batch, parsing and subtracting in the same pass: the writer observes
    one end-to-end latency per stored record, and a second list per batch showed in profiles.
    """
    at_ms = at * 1000.0
    return [max(0.0, at_ms - int(entry_id.partition("-")[0])) / 1000.0 for entry_id in entry_ids]


@attrs.define(slots=True)
class Records:
    """Decoded stream entries on their way to the database, as parallel columns.

    `rows[i]` holds the values COPY writes for the entry `ids[i]` (`position.StoredRow`);
    `fields[i]` is that entry's original fields, kept to dead-letter a database refusal.
    """

    ids: list[str] = attrs.Factory(list)
    rows: list[StoredRow] = attrs.Factory(list)
    fields: list[dict[bytes, bytes]] = attrs.Factory(list)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: Records) -> None:
        self.ids += other.ids
        self.rows += other.rows
        self.fields += other.fields

    def slice(self, start: int, stop: int) -> Records:
        return Records(self.ids[start:stop], self.rows[start:stop], self.fields[start:stop])


@attrs.frozen(slots=True)
class Rejected:
    """An entry that will be dead-lettered (and then acked) instead of stored."""

    entry_id: str
    fields: dict[bytes, bytes]
    reason: str
    error: str
    category: str  # metric label: decode_error:<kind>, db_rejected, max_deliveries


@attrs.define(slots=True)
class Delivery:
    """One read's worth of work: the unit sent through the consumer -> writer channel, and the
    batcher's accumulator of several (`extend`).

    Chunks (not single records) cross the channel so that a channel operation is per read, not
    per record; the channel's capacity in chunks bounds the memory held between the two.
    """

    records: Records
    rejected: list[Rejected]

    def __len__(self) -> int:
        return len(self.records) + len(self.rejected)

    def extend(self, other: Delivery) -> None:
        """Append `other`'s records and rejects (the batcher's own accumulator only: a
        delivery handed over a channel belongs to its receiver)."""
        self.records.extend(other.records)
        self.rejected.extend(other.rejected)

    def entry_ids(self) -> list[str]:
        return self.records.ids + [r.entry_id for r in self.rejected]
