"""The dead-letter format, in one place: writing it (`dead_letter_fields`, used by settle.py)
and reading and replaying the dead-letter stream (the logic behind `processor dlq`).

A dead letter is the original stream entry plus the bookkeeping fields
(`reason`, `error`, `source_id`, `consumer`, `failed_at`). Replaying strips the bookkeeping,
appends the original fields to the main stream as a new entry (a fresh delivery count), and only
after that append succeeded deletes the dead letter. A crash between the two leaves the entry in
both streams; replaying it again appends it twice, which storage absorbs (writes are idempotent
on `(device_id, ts)`). Nothing is ever deleted without its copy in the main stream.

Blocking redis-py calls: these functions serve the short-lived CLI, not the daemon.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
import redis

from processor.core.records import Rejected

BOOKKEEPING_FIELDS = frozenset({"reason", "error", "source_id", "consumer", "failed_at"})
ERROR_MAX_CHARS = 2000


def dead_letter_fields(rejected: Rejected, consumer: str) -> dict[bytes | str, bytes | str]:
    """The original fields plus why, where and when it failed: the mapping settle.py writes
    (its keys are BOOKKEEPING_FIELDS, which replay strips)."""
    fields: dict[bytes | str, bytes | str] = dict(rejected.fields.items())
    bookkeeping = {
        "reason": rejected.reason,
        "error": rejected.error[:ERROR_MAX_CHARS],
        "source_id": rejected.entry_id,
        "consumer": consumer,
        "failed_at": datetime.now(UTC).isoformat(),
    }
    fields.update(bookkeeping)
    return fields


PAGE_SIZE = 500


@attrs.frozen
class DeadLetter:
    id: str
    fields: dict[str, bytes]  # every field, bookkeeping included

    def text(self, name: str) -> str:
        value = self.fields.get(name)
        return "" if value is None else value.decode("utf-8", "backslashreplace")

    @property
    def reason(self) -> str:
        return self.text("reason")

    @property
    def original(self) -> dict[str, bytes]:
        """The entry as upstream wrote it (what replay appends)."""
        return {k: v for k, v in self.fields.items() if k not in BOOKKEEPING_FIELDS}

    @property
    def device_id(self) -> str:
        """Best effort, for display: the payload's device_id when it is readable JSON."""
        try:
            document = orjson.loads(self.fields.get("payload", b""))
        except orjson.JSONDecodeError:
            return ""
        device = document.get("device_id") if isinstance(document, dict) else None
        return device if isinstance(device, str) else ""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "error": self.text("error"),
            "source_id": self.text("source_id"),
            "consumer": self.text("consumer"),
            "failed_at": self.text("failed_at"),
            "fields": {k: v.decode("utf-8", "backslashreplace") for k, v in self.original.items()},
        }


def _dead_letter(raw_id: bytes, raw_fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        raw_id.decode(), {k.decode("utf-8", "backslashreplace"): v for k, v in raw_fields.items()}
    )


def newest(
    client: redis.Redis, dead_letter_stream: str, *, limit: int, reason: str | None = None
) -> list[DeadLetter]:
    """Up to `limit` dead letters, newest first (optionally only those with `reason`)."""
    found: list[DeadLetter] = []
    end = "+"
    while len(found) < limit:
        page: Any = client.xrevrange(dead_letter_stream, max=end, min="-", count=PAGE_SIZE)
        if not page:
            break
        for raw_id, raw_fields in page:
            letter = _dead_letter(raw_id, raw_fields)
            if reason is None or letter.reason == reason:
                found.append(letter)
                if len(found) == limit:
                    break
        end = "(" + page[-1][0].decode()
    return found


def count(client: redis.Redis, dead_letter_stream: str) -> int:
    return int(client.xlen(dead_letter_stream))


def newest_id(client: redis.Redis, dead_letter_stream: str) -> str | None:
    """The id of the newest dead letter (None: the stream is empty or missing)."""
    page: Any = client.xrevrange(dead_letter_stream, max="+", min="-", count=1)
    return page[0][0].decode() if page else None


def oldest_first(
    client: redis.Redis,
    dead_letter_stream: str,
    reason: str | None = None,
    until: str = "+",
) -> Iterator[list[DeadLetter]]:
    """Every dead letter up to `until` (an id, inclusive; optionally only those with
    `reason`), a page at a time, oldest first.

    Pages are read with an exclusive start after the previous page, so deleting the entries of
    a page while iterating is safe. `until` keeps a walk from chasing letters appended while
    it runs (a replayed entry that fails again comes back as a new letter).
    """
    start = "-"
    while True:
        page: Any = client.xrange(dead_letter_stream, min=start, max=until, count=PAGE_SIZE)
        if not page:
            return
        letters = [_dead_letter(raw_id, raw_fields) for raw_id, raw_fields in page]
        yield [d for d in letters if reason is None or d.reason == reason]
        start = "(" + letters[-1].id


def by_ids(client: redis.Redis, dead_letter_stream: str, ids: Sequence[str]) -> list[DeadLetter]:
    """The dead letters with these IDs, in the order given (IDs not found are left out)."""
    pipe = client.pipeline(transaction=False)
    for entry_id in ids:
        pipe.xrange(dead_letter_stream, min=entry_id, max=entry_id, count=1)
    letters = []
    for reply in pipe.execute():
        if reply:
            raw_id, raw_fields = reply[0]
            letters.append(_dead_letter(raw_id, raw_fields))
    return letters


@attrs.define
class ReplayReport:
    replayed: list[tuple[str, str]] = attrs.Factory(list)  # (dead-letter id, new stream id)
    skipped: list[str] = attrs.Factory(list)  # no original fields left to replay
    failed: list[tuple[str, str]] = attrs.Factory(list)  # (dead-letter id, error): kept


def replay(
    client: redis.Redis, stream: str, dead_letter_stream: str, letters: Sequence[DeadLetter]
) -> ReplayReport:
    """Append each letter's original fields to `stream`, then delete the appended ones.

    The XADDs run in one pipeline; a letter whose XADD failed stays in the dead-letter stream
    and is reported in `failed`.
    """
    report = ReplayReport()
    appendable = []
    for letter in letters:
        if letter.original:
            appendable.append(letter)
        else:
            report.skipped.append(letter.id)
    if not appendable:
        return report
    pipe = client.pipeline(transaction=False)
    for letter in appendable:
        pipe.xadd(stream, letter.original)  # type: ignore[arg-type]
    results = pipe.execute(raise_on_error=False)
    appended: list[str] = []
    for letter, result in zip(appendable, results, strict=True):
        if isinstance(result, Exception):
            report.failed.append((letter.id, str(result)))
            continue
        appended.append(letter.id)
        report.replayed.append((letter.id, result.decode()))
    if appended:
        client.xdel(dead_letter_stream, *appended)
    return report
