"""The Position codec (docs/stream-input.md): whatever arrives, a Position or a CodecError naming
the field.

Property tests feed arbitrary bytes, arbitrary JSON and well-shaped objects with random-typed
values; table tests pin the `reason` of each malformed kind (it is the dead-letter reason and must
stay stable); round-trip tests check that sentinels come back byte-exact.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codecs.position import (
    CodecError,
    Position,
    attributes_json,
    decode_payload,
    encode_position,
    format_timestamp,
    position_from_dict,
    stored_attributes,
)
from tests.support.fixes import fix
from tests.support.strategies import (
    EDGE_INTEGERS,
    I64_MIN,
    U64_MAX,
    json_values,
    non_rfc3339_timestamps,
    positions,
    rfc3339_timestamps,
    strict,
)

FIELDS = (
    "device_id",
    "timestamp",
    "latitude",
    "longitude",
    "altitude",
    "angle",
    "speed",
    "satellites",
    "priority",
    "attributes",
)

SPEC_EXAMPLE = b"""{
  "device_id": "356307042441013",
  "timestamp": "2026-05-12T10:00:00.000Z",
  "latitude": 41.327546, "longitude": 19.818698,
  "altitude": 112.0, "angle": 271, "speed": 84, "satellites": 12, "priority": 0,
  "attributes": {"239": 1, "240": 1, "66": 12850,
                 "16": {"__bigint": "18446744073709551615"},
                 "11": {"__buffer_b64": "AQIDBA=="}}
}"""


def decode_or_error(payload: bytes | str | None) -> Position | CodecError:
    try:
        return decode_payload(payload)
    except CodecError as exc:
        return exc


def payload(**changes: Any) -> bytes:
    """A valid fix with some fields replaced (a value of `...` removes the field)."""
    document = fix()
    for name, value in changes.items():
        if value is ...:
            del document[name]
        else:
            document[name] = value
    return orjson.dumps(document)


def with_attribute(value: Any, key: str = "16") -> bytes:
    return payload(attributes={"1": 1, key: value})


def assert_reencodes(position: Position) -> None:
    """Anything the codec accepts, it can write back and read again unchanged."""
    assert strict(decode_payload(encode_position(position))) == strict(position)


# --- properties ------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_position_or_a_codec_error(data: bytes) -> None:
    result = decode_or_error(data)
    assert isinstance(result, Position | CodecError)


@given(json_values)
def test_arbitrary_json_gives_a_position_or_a_codec_error(value: Any) -> None:
    # The standard library writes integers of any size, which orjson then reads as floats.
    result = decode_or_error(json.dumps(value))
    assert isinstance(result, Position | CodecError)
    if not isinstance(value, dict):
        assert isinstance(result, CodecError)
        assert result.reason == "payload not an object"


HUGE = 10**400  # beyond the double range: float() of it overflows


def near_valid(name: str) -> st.SearchStrategy[Any]:
    """Values for one field: mostly wrong types, sometimes right, sometimes at a boundary."""
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "device_id": st.text(max_size=70),
        "timestamp": st.one_of(
            st.datetimes(timezones=st.sampled_from([UTC, None])).map(str),
            st.datetimes().map(lambda t: t.isoformat() + "Z"),
            st.text(max_size=30),
        ),
        "latitude": st.floats(-100, 100) | st.integers(-100, 100),
        "longitude": st.floats(-200, 200) | st.integers(-200, 200),
        "altitude": st.floats() | st.integers(-HUGE, HUGE),
        "angle": st.floats(-10, 400),
        "speed": st.floats(-10, 1000),
        "satellites": st.integers(-5, 2**32) | st.floats(0, 40),
        "priority": st.integers(-2, 5),
        "attributes": st.dictionaries(st.text(max_size=4), json_values, max_size=4)
        | st.dictionaries(st.text(max_size=4), st.floats() | st.integers(-HUGE, HUGE), max_size=3)
        | st.dictionaries(
            st.text(max_size=4),
            st.fixed_dictionaries(
                {}, optional={"__bigint": json_values, "__buffer_b64": json_values}
            ),
            max_size=2,
        ),
    }
    return st.one_of(plausible[name], json_values)


random_typed_documents = st.fixed_dictionaries(
    {}, optional={name: near_valid(name) for name in FIELDS}
)


@settings(max_examples=150)
@given(random_typed_documents)
def test_random_typed_fields_through_json_give_a_position_or_a_codec_error(
    document: dict[str, Any],
) -> None:
    # NaN and infinity become the non-JSON literals NaN / Infinity: input the codec must refuse.
    result = decode_or_error(json.dumps(document))
    assert isinstance(result, Position | CodecError)
    if isinstance(result, Position):
        assert_reencodes(result)


@settings(max_examples=150)
@given(random_typed_documents)
def test_random_typed_python_values_give_a_position_or_a_codec_error(
    document: dict[str, Any],
) -> None:
    """`position_from_dict` also holds for values JSON cannot carry (huge ints, inf, NaN)."""
    try:
        result: Position | CodecError = position_from_dict(document)
    except CodecError as exc:
        result = exc
    assert isinstance(result, Position | CodecError)
    if isinstance(result, Position):
        assert_reencodes(result)


@settings(max_examples=300)
@given(positions)
def test_generated_positions_survive_encode_and_decode(position: Position) -> None:
    assert_reencodes(position)


# --- malformed kinds -------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes | str | None, str, str]] = [
    # (case id, payload, reason, kind)
    ("no payload field", None, "payload missing", "missing_payload"),
    ("invalid JSON", b"{not json", "invalid JSON", "invalid_json"),
    ("empty payload", b"", "invalid JSON", "invalid_json"),
    ("invalid UTF-8", b'{"device_id": "\xff"}', "invalid JSON", "invalid_json"),
    ("NaN literal", b'{"latitude": NaN}', "invalid JSON", "invalid_json"),
    (
        "number beyond double",
        payload().replace(b'"latitude":41.3', b'"latitude":1e400'),
        "invalid JSON",
        "invalid_json",
    ),
    ("array", b"[1, 2]", "payload not an object", "not_object"),
    ("string", b'"x"', "payload not an object", "not_object"),
    ("number", b"42", "payload not an object", "not_object"),
    ("null", b"null", "payload not an object", "not_object"),
    ("missing device_id", payload(device_id=...), "missing device_id", "missing_field"),
    ("null device_id", payload(device_id=None), "missing device_id", "missing_field"),
    ("missing timestamp", payload(timestamp=...), "missing timestamp", "missing_field"),
    ("missing latitude", payload(latitude=...), "missing latitude", "missing_field"),
    ("null longitude", payload(longitude=None), "missing longitude", "missing_field"),
    ("numeric device_id", payload(device_id=356307042441013), "device_id wrong type", "wrong_type"),
    ("empty device_id", payload(device_id=""), "device_id length out of range", "out_of_range"),
    (
        "65-char device_id",
        payload(device_id="x" * 65),
        "device_id length out of range",
        "out_of_range",
    ),
    ("NUL in device_id", payload(device_id="35630\x00"), "device_id contains NUL", "bad_text"),
    ("numeric timestamp", payload(timestamp=1_778_580_000), "timestamp wrong type", "wrong_type"),
    ("prose timestamp", payload(timestamp="yesterday"), "timestamp invalid", "bad_timestamp"),
    ("month 13", payload(timestamp="2026-13-01T00:00:00Z"), "timestamp invalid", "bad_timestamp"),
    (
        "naive timestamp",
        payload(timestamp="2026-05-12T10:00:00"),
        "timestamp without offset",
        "bad_timestamp",
    ),
    ("date only", payload(timestamp="2026-05-12"), "timestamp without offset", "bad_timestamp"),
    (
        "after year 9999 in UTC",
        payload(timestamp="9999-12-31T23:30:00-01:00"),
        "timestamp out of range",
        "bad_timestamp",
    ),
    ("latitude 90.000001", payload(latitude=90.000001), "latitude out of range", "out_of_range"),
    ("latitude -91", payload(latitude=-91), "latitude out of range", "out_of_range"),
    ("longitude 180.5", payload(longitude=180.5), "longitude out of range", "out_of_range"),
    ("longitude huge int", payload(longitude=2**63), "longitude out of range", "out_of_range"),
    ("angle 360.1", payload(angle=360.1), "angle out of range", "out_of_range"),
    ("angle -1", payload(angle=-1), "angle out of range", "out_of_range"),
    ("negative speed", payload(speed=-0.1), "speed out of range", "out_of_range"),
    ("negative satellites", payload(satellites=-1), "satellites out of range", "out_of_range"),
    (
        "satellites beyond int4",
        payload(satellites=2**31),
        "satellites out of range",
        "out_of_range",
    ),
    ("priority 3", payload(priority=3), "priority out of range", "out_of_range"),
    ("latitude numeric string", payload(latitude="41.3"), "latitude wrong type", "wrong_type"),
    ("longitude boolean", payload(longitude=True), "longitude wrong type", "wrong_type"),
    ("altitude numeric string", payload(altitude="112"), "altitude wrong type", "wrong_type"),
    ("angle boolean", payload(angle=False), "angle wrong type", "wrong_type"),
    ("speed numeric string", payload(speed="84"), "speed wrong type", "wrong_type"),
    ("speed array", payload(speed=[84]), "speed wrong type", "wrong_type"),
    ("satellites fraction", payload(satellites=12.5), "satellites wrong type", "wrong_type"),
    ("satellites string", payload(satellites="12"), "satellites wrong type", "wrong_type"),
    ("priority boolean", payload(priority=True), "priority wrong type", "wrong_type"),
    ("attributes array", payload(attributes=[1, 2]), "attributes wrong type", "wrong_type"),
    ("attributes string", payload(attributes="{}"), "attributes wrong type", "wrong_type"),
    ("attribute array", with_attribute([1, 2]), "attribute wrong type", "wrong_type"),
    ("attribute plain object", with_attribute({"a": 1}), "attribute wrong type", "wrong_type"),
    ("attribute NUL value", with_attribute("a\x00b"), "attribute contains NUL", "bad_text"),
    ("attribute NUL key", with_attribute(1, key="1\x00"), "attribute contains NUL", "bad_text"),
    ("bigint letters", with_attribute({"__bigint": "12a"}), "bad __bigint", "bad_sentinel"),
    ("bigint empty", with_attribute({"__bigint": ""}), "bad __bigint", "bad_sentinel"),
    ("bigint plus sign", with_attribute({"__bigint": "+5"}), "bad __bigint", "bad_sentinel"),
    ("bigint spaces", with_attribute({"__bigint": " 5"}), "bad __bigint", "bad_sentinel"),
    ("bigint fraction", with_attribute({"__bigint": "1.5"}), "bad __bigint", "bad_sentinel"),
    ("bigint newline", with_attribute({"__bigint": "5\n"}), "bad __bigint", "bad_sentinel"),
    ("bigint number", with_attribute({"__bigint": 5}), "bad __bigint", "bad_sentinel"),
    ("bigint 401 digits", with_attribute({"__bigint": "9" * 401}), "bad __bigint", "bad_sentinel"),
    ("bigint unicode digits", with_attribute({"__bigint": "١٢"}), "bad __bigint", "bad_sentinel"),
    (
        "buffer not base64",
        with_attribute({"__buffer_b64": "###="}),
        "bad __buffer_b64",
        "bad_sentinel",
    ),
    (
        "buffer bad padding",
        with_attribute({"__buffer_b64": "AQI"}),
        "bad __buffer_b64",
        "bad_sentinel",
    ),
    (
        "buffer excess padding",
        with_attribute({"__buffer_b64": "A==="}),
        "bad __buffer_b64",
        "bad_sentinel",
    ),
    (
        "buffer url-safe",
        with_attribute({"__buffer_b64": "-_8="}),
        "bad __buffer_b64",
        "bad_sentinel",
    ),
    ("buffer number", with_attribute({"__buffer_b64": 1}), "bad __buffer_b64", "bad_sentinel"),
    ("unknown sentinel", with_attribute({"__date": "2026"}), "unknown sentinel", "bad_sentinel"),
    (
        "sentinel with extra key",
        with_attribute({"__bigint": "1", "x": 1}),
        "unknown sentinel",
        "bad_sentinel",
    ),
]


@pytest.mark.parametrize(
    ("data", "reason", "kind"),
    [pytest.param(data, reason, kind, id=case) for case, data, reason, kind in MALFORMED],
)
def test_malformed_payload_names_its_reason(
    data: bytes | str | None, reason: str, kind: str
) -> None:
    with pytest.raises(CodecError) as caught:
        decode_payload(data)
    assert (caught.value.reason, caught.value.kind) == (reason, kind)
    assert caught.value.detail
    assert "\n" not in caught.value.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"latitude": 10**400}, "latitude out of range"),
        ({"altitude": -(10**400)}, "altitude out of range"),
        ({"speed": float("inf")}, "speed out of range"),
        ({"angle": float("nan")}, "angle out of range"),
        ({"attributes": {"1": float("inf")}}, "attribute out of range"),
        ({"attributes": {"1": float("nan")}}, "attribute out of range"),
    ],
)
def test_values_json_cannot_carry_are_codec_errors(changes: dict[str, Any], reason: str) -> None:
    """`position_from_dict` takes any parsed mapping; JSONB could not store these either."""
    with pytest.raises(CodecError) as caught:
        position_from_dict({**fix(), **changes})
    assert (caught.value.reason, caught.value.kind) == (reason, "out_of_range")


def test_codec_error_message_carries_reason_and_detail() -> None:
    with pytest.raises(CodecError) as caught:
        decode_payload(payload(latitude=91))
    assert str(caught.value) == "latitude out of range: 91 not in -90.0..90.0"


# --- accepted forms --------------------------------------------------------------------------


def test_spec_example_decodes_with_sentinels_reversed() -> None:
    position = decode_payload(SPEC_EXAMPLE)
    assert strict(position) == strict(
        Position(
            device_id="356307042441013",
            ts=datetime(2026, 5, 12, 10, 0, tzinfo=UTC),
            latitude=41.327546,
            longitude=19.818698,
            altitude=112.0,
            angle=271.0,
            speed=84.0,
            satellites=12,
            priority=0,
            attributes={"239": 1, "240": 1, "66": 12850, "16": U64_MAX, "11": b"\x01\x02\x03\x04"},
        )
    )


def test_unknown_top_level_fields_are_ignored() -> None:
    plain = decode_payload(payload())
    extended = decode_payload(payload(event_io=239, codec="8E", extra={"nested": [1, None]}))
    assert strict(extended) == strict(plain)


def test_optional_fields_absent_or_null_are_none() -> None:
    for absent in (..., None):
        position = decode_payload(
            payload(
                altitude=absent,
                angle=absent,
                speed=absent,
                satellites=absent,
                priority=absent,
                attributes=absent,
            )
        )
        assert (position.altitude, position.angle, position.speed) == (None, None, None)
        assert (position.satellites, position.priority, position.attributes) == (None, None, {})


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-05-12T10:00:00Z",
        "2026-05-12T10:00:00.000Z",
        "2026-05-12T10:00:00+00:00",
        "2026-05-12T12:00:00+02:00",
        "2026-05-12T05:30:00-04:30",
        "2026-05-12T10:00:00.000000+00:00",
    ],
)
def test_z_and_offsets_are_accepted_and_normalised_to_utc(timestamp: str) -> None:
    ts = decode_payload(payload(timestamp=timestamp)).ts
    assert ts == datetime(2026, 5, 12, 10, 0, tzinfo=UTC)
    assert ts.tzinfo is UTC


def test_microseconds_are_kept() -> None:
    position = decode_payload(payload(timestamp="2026-05-12T12:00:00.123456+02:00"))
    assert position.ts == datetime(2026, 5, 12, 10, 0, 0, 123_456, tzinfo=UTC)
    assert format_timestamp(position.ts) == "2026-05-12T10:00:00.123456Z"
    assert decode_payload(encode_position(position)).ts.microsecond == 123_456


def test_format_timestamp_pads_early_years() -> None:
    early = datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert format_timestamp(early) == "0005-01-02T03:04:05.000006Z"
    assert decode_payload(payload(timestamp=format_timestamp(early))).ts == early


def test_format_timestamp_converts_to_utc() -> None:
    local = datetime(2026, 5, 12, 14, 30, tzinfo=timezone(timedelta(hours=2, minutes=30)))
    assert format_timestamp(local) == "2026-05-12T12:00:00.000000Z"


def test_boundaries_are_accepted() -> None:
    for lat, lon in ((90, 180), (-90, -180), (0.0, -0.0)):
        position = decode_payload(payload(latitude=lat, longitude=lon, angle=360, speed=0))
        assert strict((position.latitude, position.longitude)) == strict((float(lat), float(lon)))
    assert decode_payload(payload(angle=0, satellites=0, priority=2)).angle == 0.0
    assert decode_payload(payload(satellites=2**31 - 1)).satellites == 2**31 - 1
    assert decode_payload(payload(device_id="x" * 64)).device_id == "x" * 64


def test_integer_numbers_become_floats() -> None:
    position = decode_payload(payload(latitude=41, longitude=19, altitude=-5, angle=271, speed=84))
    assert strict(
        (position.latitude, position.longitude, position.altitude, position.angle, position.speed)
    ) == strict((41.0, 19.0, -5.0, 271.0, 84.0))


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        ({"__bigint": "18446744073709551615"}, U64_MAX),
        ({"__bigint": "-18446744073709551615"}, -U64_MAX),
        ({"__bigint": "-9223372036854775808"}, I64_MIN),
        ({"__bigint": "1180591620717411303424"}, 2**70),
        ({"__bigint": "0"}, 0),
        ({"__bigint": "-0"}, 0),
        ({"__bigint": "007"}, 7),
        ({"__bigint": "9" * 400}, int("9" * 400)),
        ({"__buffer_b64": ""}, b""),
        ({"__buffer_b64": "AQIDBA=="}, b"\x01\x02\x03\x04"),
        ({"__buffer_b64": "3q2+7w=="}, b"\xde\xad\xbe\xef"),
        ({"__buffer_b64": base64.b64encode(bytes(range(256))).decode()}, bytes(range(256))),
        (18446744073709551615, U64_MAX),
        (-9223372036854775808, I64_MIN),
        (True, True),
        (None, None),
        (1.5, 1.5),
        ("text", "text"),
    ],
)
def test_attribute_values_are_reversed_exactly(wire: Any, value: Any) -> None:
    attributes = decode_payload(with_attribute(wire)).attributes
    assert strict(attributes) == strict({"1": 1, "16": value})


def test_sentinels_are_written_back_for_values_json_cannot_carry() -> None:
    position = decode_payload(payload())
    position = attrs.evolve(
        position,
        attributes={
            "small": 2**53,
            "big": 2**53 + 1,
            "u64": U64_MAX,
            "i64": I64_MIN,
            "beyond": 2**70,
            "bytes": b"\xde\xad\xbe\xef",
            "flag": True,
        },
    )
    wire = orjson.loads(encode_position(position))["attributes"]
    assert wire == {
        "small": 2**53,
        "big": {"__bigint": str(2**53 + 1)},
        "u64": {"__bigint": "18446744073709551615"},
        "i64": {"__bigint": "-9223372036854775808"},
        "beyond": {"__bigint": "1180591620717411303424"},
        "bytes": {"__buffer_b64": "3q2+7w=="},
        "flag": True,
    }


def test_stored_attributes_keep_big_integers_as_exact_json_numbers_and_bytes_as_hex() -> None:
    attributes = {
        "u64": U64_MAX,
        "neg": -U64_MAX,
        "i64": I64_MIN,
        "beyond": 2**70,
        "bytes": b"\xde\xad\xbe\xef\x00",
        "f": 0.5,
        "s": "ü",
        "n": None,
        "b": False,
    }
    text = attributes_json(attributes)
    assert '"u64":18446744073709551615' in text
    assert '"neg":-18446744073709551615' in text
    assert '"i64":-9223372036854775808' in text
    assert '"beyond":1180591620717411303424' in text
    assert '"bytes":"deadbeef00"' in text
    assert strict(json.loads(text)) == strict(stored_attributes(attributes))
    assert attributes_json({}) == "{}"
    assert strict(json.loads(attributes_json({"u64": U64_MAX}))) == strict({"u64": U64_MAX})


def test_position_is_frozen_and_slotted() -> None:
    position = decode_payload(payload())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        position.latitude = 0.0  # type: ignore[misc]
    assert not hasattr(position, "__dict__")


def test_payload_may_be_str() -> None:
    assert strict(decode_payload(payload().decode())) == strict(decode_payload(payload()))


# --- RFC 3339 timestamps only (issue 10, item 6) ----------------------------------------------


@settings(max_examples=300)
@given(rfc3339_timestamps())
def test_every_rfc3339_spelling_is_accepted_exactly(case: tuple[str, datetime]) -> None:
    text, expected = case
    ts = decode_payload(payload(timestamp=text)).ts
    assert ts == expected
    assert ts.tzinfo is UTC


@settings(max_examples=300)
@given(non_rfc3339_timestamps())
def test_iso_8601_spellings_that_are_not_rfc3339_are_refused(text: str) -> None:
    """`fromisoformat` takes most of these (week dates, any separator, offsets with seconds,
    non-ASCII digits ...): the codec must not."""
    with pytest.raises(CodecError) as caught:
        decode_payload(payload(timestamp=text))
    assert caught.value.kind == "bad_timestamp"


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        ("2026-05-12x10:00:00Z", "timestamp invalid"),
        ("2026-W20-2T10:00:00Z", "timestamp invalid"),
        ("2026-132T10:00:00Z", "timestamp invalid"),
        ("20260512T100000Z", "timestamp invalid"),
        ("2026-05-12T10:00:00+01:00:30", "timestamp invalid"),
        ("2026-05-12T10:00:00+0100", "timestamp invalid"),
        ("٢٠٢٦-05-12T10:00:00Z", "timestamp invalid"),
        ("2026-05-12 10:00:00Z", "timestamp invalid"),
        ("2026-05-12T10:00Z", "timestamp invalid"),
        ("2026-05-12T10:00:00,5Z", "timestamp invalid"),
        ("2026-05-12T24:00:00Z", "timestamp invalid"),
        ("2016-12-31T23:59:60Z", "timestamp invalid"),  # leap second: see README "Decisions"
        ("2026-02-30T10:00:00Z", "timestamp invalid"),
        ("0000-01-01T00:00:00Z", "timestamp out of range"),
        ("2026-05-12T10:00:00.000", "timestamp without offset"),
    ],
)
def test_non_rfc3339_timestamps_name_their_reason(timestamp: str, reason: str) -> None:
    with pytest.raises(CodecError) as caught:
        decode_payload(payload(timestamp=timestamp))
    assert (caught.value.reason, caught.value.kind) == (reason, "bad_timestamp")


def test_lowercase_t_and_z_and_nanoseconds_are_accepted() -> None:
    ts = decode_payload(payload(timestamp="2026-05-12t10:00:00.123456789z")).ts
    assert ts == datetime(2026, 5, 12, 10, 0, 0, 123_456, tzinfo=UTC)  # truncated, not rounded
    ts = decode_payload(payload(timestamp="2026-05-12T23:59:59.9999999Z")).ts
    assert ts == datetime(2026, 5, 12, 23, 59, 59, 999_999, tzinfo=UTC)


# --- integers stay exact, whatever their size (issue 10, item 6) ------------------------------


@settings(max_examples=300)
@given(
    st.dictionaries(st.integers(0, 300).map(str), st.integers() | st.sampled_from(EDGE_INTEGERS))
)
def test_plain_json_integers_of_any_size_stay_exact_integers(attributes: dict[str, int]) -> None:
    """orjson reads integers beyond 64 bits as floats: the codec must not let one through."""
    text = json.dumps({**fix(), "attributes": attributes})
    decoded = decode_payload(text.encode()).attributes
    assert strict(decoded) == strict(attributes)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("18446744073709551616", 2**64),
        ("-9223372036854775809", -(2**63) - 1),
        ("18446744073709551615", U64_MAX),
        ("1180591620717411303424", 2**70),
        ("1e19", 1e19),
        ("18446744073709551616.0", 2.0**64),
    ],
)
def test_big_integer_literals_are_exact_and_float_literals_stay_floats(
    literal: str, value: float
) -> None:
    text = payload(attributes={"1": 1}).decode()
    text = text.replace('"attributes":{', '"attributes":{"99":' + literal + ",")
    attributes = decode_payload(text.encode()).attributes
    assert strict(attributes["99"]) == strict(value)
    stored = json.loads(attributes_json(attributes))["99"]
    assert strict(stored) == strict(value)
