"""Position and its codec: stream payload bytes <-> a validated, immutable Position.

Pure code with no I/O, shared by the durable pipeline (`core`) and the live broadcast (`live`).
Decoding never raises anything but `CodecError`, whatever the input, so one bad record can always
be dead-lettered with a precise reason instead of stalling the records behind it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

import attrs
import orjson

AttributeValue: TypeAlias = int | float | str | bool | bytes | None
Attributes: TypeAlias = Mapping[str, AttributeValue]

_BIGINT = "__bigint"
_BUFFER = "__buffer_b64"
_BIGINT_DIGITS = re.compile(r"-?[0-9]+\Z")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")
_INT32_MAX = 2**31 - 1
_NUL = "\x00"  # PostgreSQL text and JSONB cannot hold it: reject at decode, not at the database
_SAFE_INT = 2**53
# orjson reads integers in [-2**63, 2**64) exactly and any other as a float: a float this large
# and integral may have been an integer literal (or a float literal such as 1e19: both re-read).
_ORJSON_INT_LIMIT = 2**63
PRIORITIES = (0, 1, 2)


class CodecError(ValueError):
    """A record that can never be decoded: retrying it is pointless, so it is dead-lettered.

    `reason` names the field and the problem in a few words (stable, low cardinality: used as the
    dead-letter reason); `kind` is the category used as a metric label; `detail` says more.
    """

    def __init__(self, kind: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail or reason


@attrs.frozen(slots=True)
class Position:
    """One GPS fix of one device, as decoded from the stream."""

    device_id: str
    ts: datetime
    latitude: float
    longitude: float
    altitude: float | None = None
    angle: float | None = None
    speed: float | None = None
    satellites: int | None = None
    priority: int | None = None
    attributes: Attributes = attrs.field(factory=dict)


# A decoded fix as plain values, in docs/storage.md column order:
# device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes.
# The durable pipeline works on these tuples (built in C, no per-field Python call); `Position`
# is the named, immutable form for everything else (live broadcast, tests, tools).
Fields: TypeAlias = tuple[
    str,
    datetime,
    float,
    float,
    float | None,
    float | None,
    float | None,
    int | None,
    int | None,
    dict[str, AttributeValue],
]
# The same with `attributes` as its JSONB text: exactly the values COPY writes.
StoredRow: TypeAlias = tuple[
    str,
    datetime,
    float,
    float,
    float | None,
    float | None,
    float | None,
    int | None,
    int | None,
    str,
]


def decode_payload(payload: bytes | str | None) -> Position:
    """Decode one stream entry's `payload` field into a Position, or raise CodecError."""
    return Position(*decode_fields(payload))


def decode_row(payload: bytes | str | None) -> StoredRow:
    """Decode one payload straight into the values COPY writes for it (`attributes` as its
    JSONB text), or raise CodecError: the batch writer's form of a fix, with no Position built."""
    values = decode_fields(payload)
    return (*values[:9], attributes_json(values[9]))


def decode_fields(payload: bytes | str | None) -> Fields:
    """Decode one payload into its plain field values (see `Fields`), or raise CodecError."""
    if payload is None:
        raise CodecError("missing_payload", "payload missing", "entry has no 'payload' field")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CodecError("invalid_json", "invalid JSON", str(exc)) from None
    if not isinstance(document, dict):
        raise CodecError("not_object", "payload not an object", f"got {type(document).__name__}")
    try:
        return _fields(document, orjson_numbers=True)
    except _InexactInteger:
        # orjson reads an integer beyond 64 bits as a float (silently inexact). Such values are
        # rare (upstream sends them as __bigint): re-read this payload with the standard library,
        # whose integers are exact. orjson has already validated it, so both read the same JSON.
        try:
            exact = json.loads(payload)
        except RecursionError:  # nesting orjson allows but the standard library's stack does not
            raise CodecError("invalid_json", "invalid JSON", "nested too deeply") from None
        return _fields(exact, orjson_numbers=False)


class _InexactInteger(Exception):
    """An attribute read by orjson as a float may have been an integer beyond 64 bits."""


def position_from_dict(document: Mapping[str, Any]) -> Position:
    """Validate an already-parsed JSON object (docs/stream-input.md) into a Position."""
    return Position(*_fields(document, orjson_numbers=False))


def _fields(document: Mapping[str, Any], *, orjson_numbers: bool) -> Fields:
    device_id = document.get("device_id")
    if type(device_id) is not str or not 0 < len(device_id) <= 64 or _NUL in device_id:
        device_id = _device_id(document)  # the precise error (or a str subclass)
    return (
        device_id,
        _timestamp(_required(document, "timestamp")),
        _number(document, "latitude", -90.0, 90.0, required=True),  # type: ignore[return-value]
        _number(document, "longitude", -180.0, 180.0, required=True),
        _number(document, "altitude", -math.inf, math.inf),
        _number(document, "angle", 0.0, 360.0),
        _number(document, "speed", 0.0, math.inf),
        _integer(document, "satellites", 0, _INT32_MAX),
        _integer(document, "priority", 0, 2),
        _attributes(document.get("attributes"), orjson_numbers),
    )


def _device_id(document: Mapping[str, Any]) -> str:
    device_id = _required(document, "device_id")
    if not isinstance(device_id, str):
        raise _wrong_type("device_id", "a string", device_id)
    if not 1 <= len(device_id) <= 64:
        raise CodecError(
            "out_of_range", "device_id length out of range", f"{len(device_id)} chars, allowed 1-64"
        )
    if _NUL in device_id:
        raise CodecError("bad_text", "device_id contains NUL", "PostgreSQL text cannot store it")
    return device_id


def _required(document: Mapping[str, Any], name: str) -> Any:
    if name not in document or document[name] is None:
        raise CodecError("missing_field", f"missing {name}", f"'{name}' is required")
    return document[name]


def _wrong_type(name: str, expected: str, value: Any) -> CodecError:
    return CodecError(
        "wrong_type", f"{name} wrong type", f"expected {expected}, got {_json_type(value)}"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _number(
    document: Mapping[str, Any], name: str, low: float, high: float, *, required: bool = False
) -> float | None:
    value = document.get(name)
    if value is None:
        return _required(document, name) if required else None  # _required raises
    if type(value) is float:  # the common case first (this runs five times per record)
        number = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(name, "a number", value)
    else:
        try:
            number = float(value)
        except OverflowError:  # an int beyond the double range
            number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise CodecError("out_of_range", f"{name} out of range", f"{value} not in {low}..{high}")
    return number


def _integer(document: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if not low <= value <= high:
        raise CodecError("out_of_range", f"{name} out of range", f"{value} not in {low}..{high}")
    return value


# RFC 3339 §5.6 `date-time`, ASCII digits only: `YYYY-MM-DD`, `T`, `hh:mm:ss`, an optional
# fraction, then `Z` or `±hh:mm`. `fromisoformat` alone also takes week dates, ordinal dates,
# basic format, any separator, offsets with seconds and non-ASCII digits (not RFC 3339).
# Decisions (docs/decisions.md): lowercase `t`/`z` are accepted (§5.6 NOTE); a space separator
# is not; more than 6 fraction digits are truncated to microseconds (never rounded into the next
# second), at most 9 (nanoseconds); `-00:00` is UTC; a leap second (`:60`) is refused: devices
# count time as Unix milliseconds, which cannot express one, so it can only be a broken producer.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])",
    re.ASCII,
)
# The same without the offset (or a date alone): refused with a reason of its own.
_RFC3339_NAIVE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?)?", re.ASCII
)


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _wrong_type("timestamp", "an RFC 3339 string", value)
    match = _RFC3339.fullmatch(value)
    if match is None:
        if _RFC3339_NAIVE.fullmatch(value):
            raise CodecError(
                "bad_timestamp", "timestamp without offset", f"{value!r} needs Z or an offset"
            )
        raise CodecError("bad_timestamp", "timestamp invalid", f"{value[:64]!r} is not RFC 3339")
    if match[1] == "60":
        raise CodecError(
            "bad_timestamp", "timestamp invalid", f"{value!r}: leap seconds are not supported"
        )
    if "t" in value or "z" in value:  # fromisoformat (3.11) takes neither; the rest is ASCII
        value = value.upper()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:  # a day that does not exist (2026-02-30, month 13) or year 0
        if value.startswith("0000"):
            raise CodecError("bad_timestamp", "timestamp out of range", value) from None
        raise CodecError(
            "bad_timestamp", "timestamp invalid", f"{value!r} is not a valid date"
        ) from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise CodecError("bad_timestamp", "timestamp out of range", value) from None


def _attributes(value: Any, orjson_numbers: bool) -> dict[str, AttributeValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type("attributes", "an object", value)
    # Most IO values are plain integers, which need no check but their key's: only the others
    # go through `_attribute` (this loop is the codec's hottest, ten or more items per record).
    decoded: dict[str, AttributeValue] = dict(value)
    others: list[str] = []
    for key, item in value.items():
        if _NUL in key:
            raise CodecError("bad_text", "attribute contains NUL", "JSONB cannot store \\u0000")
        if type(item) is not int:
            others.append(key)
    for key in others:
        decoded[key] = _attribute(key, value[key], orjson_numbers)
    return decoded


def _attribute(key: str, value: Any, orjson_numbers: bool) -> AttributeValue:
    if isinstance(value, str) and _NUL in value:
        raise CodecError("bad_text", "attribute contains NUL", f"attribute {key!r}: \\u0000")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON has no such number; orjson would write null
            raise CodecError("out_of_range", "attribute out of range", f"attribute {key!r}")
        if orjson_numbers and abs(value) >= _ORJSON_INT_LIMIT and value.is_integer():
            raise _InexactInteger
        return value
    if isinstance(value, dict):
        return _sentinel(key, value)
    raise CodecError(
        "wrong_type", "attribute wrong type", f"attribute {key!r}: {_json_type(value)} not allowed"
    )


def _sentinel(key: str, value: dict[str, Any]) -> int | bytes:
    if len(value) == 1 and _BIGINT in value:
        digits = value[_BIGINT]
        if not isinstance(digits, str) or not _BIGINT_DIGITS.match(digits) or len(digits) > 400:
            raise CodecError(
                "bad_sentinel", "bad __bigint", f"attribute {key!r}: {str(digits)[:40]!r}"
            )
        return int(digits)
    if len(value) == 1 and _BUFFER in value:
        text = value[_BUFFER]
        if not isinstance(text, str) or len(text) % 4 or not _BASE64.match(text):
            raise CodecError("bad_sentinel", "bad __buffer_b64", f"attribute {key!r}: not base64")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(
                "bad_sentinel", "bad __buffer_b64", f"attribute {key!r}: not base64"
            ) from None
    if any(name.startswith("__") for name in value):
        raise CodecError(
            "bad_sentinel", "unknown sentinel", f"attribute {key!r}: {sorted(value)[:3]}"
        )
    raise CodecError("wrong_type", "attribute wrong type", f"attribute {key!r}: object not allowed")


# --- storage and wire forms -------------------------------------------------------------------


def attributes_json(attributes: Attributes) -> str:
    """The JSONB text stored for `attributes`: big ints as exact JSON numbers, bytes as hex."""
    if not attributes:
        return "{}"
    try:  # the common case, no bytes and no integer beyond 64 bits: orjson takes it as it is
        return orjson.dumps(attributes).decode()
    except TypeError:
        pass
    stored = {
        key: value.hex() if isinstance(value, bytes) else value for key, value in attributes.items()
    }
    try:
        return orjson.dumps(stored).decode()
    except TypeError:  # an integer beyond 64 bits: the standard library writes any int exactly
        return json.dumps(stored, separators=(",", ":"), ensure_ascii=False)


def stored_attributes(attributes: Attributes) -> dict[str, Any]:
    """What reading `attributes` back from the database yields (bytes become lowercase hex).

    Numbers compare as JSON numbers: JSONB keeps a number's decimal value, not Python's int/float
    distinction, so a float such as 1e300 (written "1e300") reads back as the int 10**300.
    """
    return {
        key: value.hex() if isinstance(value, bytes) else value for key, value in attributes.items()
    }


def _wire_attribute(value: AttributeValue) -> Any:
    # Any integer a JSON reader's double cannot hold exactly (beyond 2**53) goes as a __bigint.
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -_SAFE_INT <= value <= _SAFE_INT else {_BIGINT: str(value)}
    if isinstance(value, bytes):
        return {_BUFFER: base64.b64encode(value).decode()}
    return value


def format_timestamp(ts: datetime) -> str:
    """ISO 8601 in UTC with microseconds and `Z`, the form upstream sends."""
    # Not strftime: glibc's %Y drops the zero padding of years before 1000.
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode_position(position: Position) -> bytes:
    """The stream payload for `position` (what tcp-ingestion writes): the inverse of decoding."""
    document: dict[str, Any] = {
        "device_id": position.device_id,
        "timestamp": format_timestamp(position.ts),
        "latitude": position.latitude,
        "longitude": position.longitude,
        "altitude": position.altitude,
        "angle": position.angle,
        "speed": position.speed,
        "satellites": position.satellites,
        "priority": position.priority,
        "attributes": {key: _wire_attribute(value) for key, value in position.attributes.items()},
    }
    return orjson.dumps(document)
