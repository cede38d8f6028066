"""The history endpoint's query string, checked before anything is asked of anyone. Pure code.

`GET /live/history?event=<uuid>&from=<RFC 3339>[&to=<RFC 3339>][&device=<id>]
[&format=geojson|gpx][&faulty=true|false][&max_points=<n>]` (docs/history.md). Every mistake
is a `QueryError` naming the parameter, answered 400 without a Directus call or a query:
unknown, repeated or empty parameters, a malformed uuid or instant, an instant without a UTC
offset, `to` not after `from`, a window longer than `LIVE_HISTORY_MAX_WINDOW_S`, a device id
that cannot be one (1-64 printable characters, as the stream contract says).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

import attrs

from processor.codecs.position import format_timestamp

GEOJSON, GPX = "geojson", "gpx"
PARAMETERS = ("event", "device", "from", "to", "format", "faulty", "max_points")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.IGNORECASE)
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?([Zz]|[+-]\d{2}:\d{2})\Z"
)
MAX_DEVICE_ID = 64


class QueryError(ValueError):
    """A parameter the endpoint cannot take; the message names it."""


@attrs.frozen
class HistoryQuery:
    event_id: str  # lowercase canonical uuid
    device_id: str | None
    start: datetime
    end: datetime
    format: str
    include_faulty: bool
    max_points: int

    def document(self) -> dict[str, object]:
        """The request as the response echoes it."""
        return {
            "event_id": self.event_id,
            "device_id": self.device_id,
            "from": _rfc3339(self.start),
            "to": _rfc3339(self.end),
            "faulty": self.include_faulty,
        }


def parse(query: str, *, now: datetime, max_window: timedelta, max_points: int) -> HistoryQuery:
    """The checked query; `now` is `to` when it is not given."""
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            encoding="utf-8",
            errors="strict",
            max_num_fields=len(PARAMETERS),
        )
    except ValueError:
        raise QueryError("malformed query string") from None
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMETERS:
            raise QueryError(f"unknown parameter {name[:40]!r}: expected {', '.join(PARAMETERS)}")
        if name in given:
            raise QueryError(f"{name}: given more than once")
        if not value:
            raise QueryError(f"{name}: empty")
        given[name] = value
    event = given.get("event")
    if event is None:
        raise QueryError("event: required (the event's uuid)")
    if not _UUID.match(event):
        raise QueryError("event: not a uuid")
    device = given.get("device")
    if device is not None and (len(device) > MAX_DEVICE_ID or not device.isprintable()):
        raise QueryError(f"device: not a device id (1-{MAX_DEVICE_ID} printable characters)")
    kind = given.get("format", GEOJSON)
    if kind not in (GEOJSON, GPX):
        raise QueryError("format: geojson or gpx")
    faulty = given.get("faulty", "false")
    if faulty not in ("true", "false"):
        raise QueryError("faulty: true or false")
    points = max_points
    if "max_points" in given:
        text = given["max_points"]
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise QueryError("max_points: a whole number")
        points = int(text)
        if not 2 <= points <= max_points:
            raise QueryError(f"max_points: between 2 and {max_points}")
    if "from" not in given:
        raise QueryError("from: required (an RFC 3339 instant with a UTC offset)")
    start = _instant("from", given["from"])
    end = _instant("to", given["to"]) if "to" in given else now
    if end <= start:
        raise QueryError("to: must be after from")
    if end - start > max_window:
        raise QueryError(
            f"window of {(end - start).total_seconds():.0f} s is longer than the maximum "
            f"{max_window.total_seconds():.0f} s (LIVE_HISTORY_MAX_WINDOW_S): narrow it"
        )
    return HistoryQuery(
        event_id=event.lower(),
        device_id=device,
        start=start,
        end=end,
        format=kind,
        include_faulty=faulty == "true",
        max_points=points,
    )


def _instant(name: str, text: str) -> datetime:
    if not _INSTANT.match(text):
        raise QueryError(
            f"{name}: not an RFC 3339 instant with a UTC offset, e.g. 2026-05-12T10:00:00Z "
            "(in a URL, write + as %2B)"
        )
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError:
        raise QueryError(f"{name}: not a valid date and time") from None


def _rfc3339(instant: datetime) -> str:
    return format_timestamp(instant)
