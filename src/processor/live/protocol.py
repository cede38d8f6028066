"""The live JSON protocol (docs/websocket.md): parsing inbound frames, encoding outbound ones.

Pure code. Every malformed inbound frame maps to one specific `ProtocolError` message, so a
client developer sees exactly what was wrong; the server counts them and closes with 1008 after
`LIVE_WS_MAX_PROTOCOL_ERRORS`. Unknown extra fields are ignored (forward compatibility), like the
stream codec does.

Topics are normalised to `event:<lowercase canonical uuid>`: the registry, the device -> events
map and every reply use that one spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from processor.codecs.position import Position, format_timestamp

SUBSCRIBE, UNSUBSCRIBE = "subscribe", "unsubscribe"
TOPIC_PREFIX = "event:"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.IGNORECASE)

BAD_REQUEST, FORBIDDEN, UNAVAILABLE, INTERNAL = (
    "bad_request",
    "forbidden",
    "unavailable",
    "internal",
)


class ProtocolError(ValueError):
    """A malformed inbound frame; `message` is sent back in an `error bad_request` frame."""

    def __init__(self, message: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.topic = topic


@attrs.frozen(slots=True)
class ClientFrame:
    """A valid inbound message: `kind` is subscribe/unsubscribe, `event_id` the canonical uuid."""

    kind: str
    event_id: str

    @property
    def topic(self) -> str:
        return topic_of(self.event_id)


def topic_of(event_id: str) -> str:
    return TOPIC_PREFIX + event_id


def parse_client_frame(frame: str | bytes) -> ClientFrame:
    """Parse one inbound frame or raise ProtocolError naming the problem."""
    if isinstance(frame, bytes):
        raise ProtocolError("binary frames are not supported: send JSON text frames")
    try:
        document = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid JSON") from None
    if not isinstance(document, dict):
        raise ProtocolError("message must be a JSON object")
    kind = document.get("type")
    if kind is None:
        raise ProtocolError("missing 'type'")
    if not isinstance(kind, str):
        raise ProtocolError("'type' must be a string")
    if kind not in (SUBSCRIBE, UNSUBSCRIBE):
        raise ProtocolError(f"unknown type {kind[:40]!r}: expected subscribe or unsubscribe")
    topic = document.get("topic")
    if topic is None:
        raise ProtocolError(f"{kind}: missing 'topic'")
    if not isinstance(topic, str):
        raise ProtocolError(f"{kind}: 'topic' must be a string")
    if not topic.startswith(TOPIC_PREFIX) or not _UUID.match(topic[len(TOPIC_PREFIX) :]):
        raise ProtocolError(f"{kind}: 'topic' must be event:<uuid>", topic=topic[:80])
    return ClientFrame(kind, topic[len(TOPIC_PREFIX) :].lower())


# --- outbound -------------------------------------------------------------------------------


def position_object(position: Position, io: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `position` object of the wire protocol (also each element of a snapshot); `io`:
    the fix's derived IO values (`processor.codecs.io_map`), only for devices of a mapped model."""
    document = {
        "device_id": position.device_id,
        "ts": format_timestamp(position.ts),
        "latitude": position.latitude,
        "longitude": position.longitude,
        "altitude": position.altitude,
        "angle": position.angle,
        "speed": position.speed,
        "satellites": position.satellites,
    }
    if io is not None:
        document["io"] = io
    return document


def encode_position_object(position: Position, io: Mapping[str, Any] | None = None) -> str:
    """The `position` object as JSON text: encoded once per fix, shared by every topic."""
    return orjson.dumps(position_object(position, io)).decode()


def position_frame(topic_json: str, position_json: str) -> str:
    """A `position` frame from pre-encoded parts (no per-subscriber encoding work)."""
    return f'{{"type":"position","topic":{topic_json},"position":{position_json}}}'


def topic_json(topic: str) -> str:
    return orjson.dumps(topic).decode()


def subscribed_frame(
    topic_json_text: str, snapshot_json: str, results_json: str = "[]", alerts_json: str = "[]"
) -> str:
    """The `subscribed` frame from pre-encoded parts (`live/snapshot.py` encodes them once per
    read, in a worker thread; each variant for a session's permissions is then one string
    concatenation). `snapshot_json`: the positions array; `results_json`: [{"stage_id",
    "results": [...]}] per stage of the event; `alerts_json`: its open alerts (both `[]` when
    the racing tables do not exist or the session may not read them; docs/websocket.md)."""
    return (
        f'{{"type":"subscribed","topic":{topic_json_text},"snapshot":{snapshot_json},'
        f'"results":{results_json},"alerts":{alerts_json}}}'
    )


def unsubscribed_frame(topic: str) -> str:
    return orjson.dumps({"type": "unsubscribed", "topic": topic}).decode()


def error_frame(code: str, message: str, topic: str | None = None) -> str:
    return orjson.dumps(
        {"type": "error", "code": code, "message": message, "topic": topic}
    ).decode()
