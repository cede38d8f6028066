"""What travels from the consumer to the writer: decoded records and rejected entries."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from processor.position import CodecError, Position, decode_payload


def entry_time(entry_id: str) -> float:
    """The stream entry's own time (seconds since the epoch) from its ID `<ms>-<seq>`."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


@attrs.define(slots=True)
class Record:
    """A decoded stream entry on its way to the database."""

    entry_id: str
    position: Position
    fields: dict[bytes, bytes]  # the original entry, kept for dead-lettering a database refusal
    faulty_reason: str | None = None

    @property
    def faulty(self) -> bool:
        return self.faulty_reason is not None


@attrs.frozen(slots=True)
class Rejected:
    """An entry that will be dead-lettered (and then acked) instead of stored."""

    entry_id: str
    fields: dict[bytes, bytes]
    reason: str
    error: str
    category: str  # metric label: decode_error:<kind>, db_rejected, max_deliveries

    @property
    def failed_at(self) -> str:
        return datetime.now(UTC).isoformat()


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> Record | Rejected:
    """Decode one stream entry; a CodecError becomes a Rejected with its reason."""
    try:
        return Record(entry_id, decode_payload(fields.get(b"payload")), fields)
    except CodecError as exc:
        return Rejected(entry_id, fields, exc.reason, exc.detail, f"decode_error:{exc.kind}")


@attrs.frozen(slots=True)
class Delivery:
    """One read's worth of work: the unit sent through the consumer -> writer channel.

    Chunks (not single records) cross the channel so that a channel operation is per read, not
    per record; the channel's capacity in chunks bounds the memory held between the two.
    """

    records: list[Record]
    rejected: list[Rejected]

    def __len__(self) -> int:
        return len(self.records) + len(self.rejected)

    def entry_ids(self) -> list[str]:
        return [r.entry_id for r in self.records] + [r.entry_id for r in self.rejected]
