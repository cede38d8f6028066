"""The race feed: race-control changes travelling from the domain engine to every live server.

Pure code: the entry codec and the frame bodies shared by the domain, which appends one entry
per committed change to the capped stream `<REDIS_STREAM>:race` after the commit, and live,
which reads it with a plain `XREAD` and sends frames to the event's subscribers. Entry fields:
`event` (event uuid), `kind` (`timing`, `results`, `alert`, `violation`), `stage` (stage uuid,
empty for none), `body` (JSON object: the frame's fields besides `type` and `topic`). A
`results` entry carries no table: it says the stage's standings changed. Why a capped stream:
docs/decisions.md, The processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import orjson

from processor.codecs.position import format_timestamp

TIMING, RESULTS, ALERT, VIOLATION = "timing", "results", "alert", "violation"
KINDS = (TIMING, RESULTS, ALERT, VIOLATION)
RACE_FEED_MAXLEN = 10_000  # entries kept (approximately): minutes of a busy rally


def feed_key(stream: str) -> str:
    """The race feed's stream key next to the input stream (`<REDIS_STREAM>:race`)."""
    return f"{stream}:race"


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


@attrs.frozen(slots=True)
class RaceChange:
    event_id: str
    kind: str
    stage_id: str | None
    body: Mapping[str, Any]

    def fields(self) -> dict[str, bytes]:
        """The stream entry's fields (XADD)."""
        return {
            "event": self.event_id.encode(),
            "kind": self.kind.encode(),
            "stage": (self.stage_id or "").encode(),
            "body": orjson.dumps(self.body),
        }


class FeedError(ValueError):
    """An entry of the feed that is not a race change (skipped by readers)."""


def decode_fields(fields: Mapping[bytes, bytes] | None) -> RaceChange:
    if not fields:
        raise FeedError("empty entry")
    try:
        event = fields[b"event"].decode()
        kind = fields[b"kind"].decode()
        stage = fields.get(b"stage", b"").decode() or None
        body = orjson.loads(fields[b"body"])
    except (KeyError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise FeedError(f"malformed race entry: {type(exc).__name__}") from None
    if kind not in KINDS or not isinstance(body, dict) or not event:
        raise FeedError("malformed race entry")
    return RaceChange(event, kind, stage, body)


def frame(topic: str, change: RaceChange) -> str:
    """The WebSocket frame of a change (`results` frames are built by `results_frame`)."""
    document: dict[str, Any] = {"type": change.kind, "topic": topic}
    if change.stage_id is not None:
        document["stage_id"] = change.stage_id
    document.update(change.body)
    return orjson.dumps(document).decode()


def results_frame(topic: str, stage_id: str, results: list[dict[str, Any]]) -> str:
    return orjson.dumps(
        {"type": RESULTS, "topic": topic, "stage_id": stage_id, "results": results}
    ).decode()


# --- bodies (PROTOCOL-RC.md) ----------------------------------------------------------------


def record_object(
    *,
    entry_id: str,
    control_id: str,
    control_ordinal: int,
    kind: str,
    device_id: str | None,
    passed_at: datetime,
    speed_kmh: float | None,
    distance_m: float | None,
    fix_before: datetime | None,
    fix_after: datetime | None,
) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "control_id": control_id,
        "control_ordinal": control_ordinal,
        "kind": kind,
        "device_id": device_id,
        "passed_at": format_timestamp(passed_at),
        "speed_kmh": speed_kmh,
        "distance_m": distance_m,
        "fix_before": timestamp(fix_before),
        "fix_after": timestamp(fix_after),
    }


def timing_change(event_id: str, stage_id: str, record: dict[str, Any]) -> RaceChange:
    return RaceChange(event_id, TIMING, stage_id, {"record": record})


def removed_change(event_id: str, stage_id: str, entry_id: str, control_id: str) -> RaceChange:
    return RaceChange(
        event_id, TIMING, stage_id, {"removed": {"entry_id": entry_id, "control_id": control_id}}
    )


def results_change(event_id: str, stage_id: str) -> RaceChange:
    """ "The standings of this stage changed" (the live server reads and coalesces them)."""
    return RaceChange(event_id, RESULTS, stage_id, {})


def alert_change(event_id: str, alert: dict[str, Any]) -> RaceChange:
    return RaceChange(event_id, ALERT, None, {"alert": alert})


def violation_change(event_id: str, violation: dict[str, Any]) -> RaceChange:
    return RaceChange(event_id, VIOLATION, None, {"violation": violation})
