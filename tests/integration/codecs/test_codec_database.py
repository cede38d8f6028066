"""Codec and storage together: stream payload -> Position -> `positions` row, read back unchanged.

A generated Position is encoded as upstream would send it, decoded, written through the real
batch writer into a migrated schema, and read back column by column. Attributes must equal
`stored_attributes(...)`: 64-bit (and larger) integers as exact JSON numbers, bytes as lowercase
hex. The writer's outcomes (inserted / merged / duplicate) are checked here at the unit level.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codecs.position import Position, decode_payload, encode_position, stored_attributes
from processor.store.migrations import apply_migrations, default_directory, load_migrations
from processor.store.positions import (
    DUPLICATE,
    INSERTED,
    MERGED,
    Row,
    prepare_connection,
    write_rows,
)
from processor.store.postgres import connection_kwargs
from tests.support.strategies import I64_MIN, U64_MAX, json_number_equal, positions, strict

COLUMNS = "device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority"
TS = datetime(2026, 5, 12, 10, 0, 0, 123_456, tzinfo=UTC)


class Store:
    """A migrated schema with a writer connection set up as the pool sets up its own, and an
    autocommit reader (so no read ever leaves a transaction open on the writer)."""

    def __init__(self, database_url: str) -> None:
        kwargs = connection_kwargs(database_url, statement_timeout_ms=15_000)
        self.reader = psycopg.connect(database_url, autocommit=True, **kwargs)
        apply_migrations(self.reader, load_migrations(default_directory()))
        self.writer = psycopg.connect(database_url, **kwargs)
        prepare_connection(self.writer)

    def write(self, positions: Sequence[Position], *, faulty: bool = False) -> list[str]:
        return write_rows(self.writer, [Row(p, faulty) for p in positions])

    def row(self, device_id: str, ts: datetime) -> tuple[Any, ...]:
        found = self.reader.execute(
            f"SELECT {COLUMNS}, attributes, faulty FROM positions WHERE device_id = %s AND ts = %s",
            (device_id, ts),
        ).fetchall()
        assert len(found) == 1
        return tuple(found[0])

    def count(self) -> int:
        row = self.reader.execute("SELECT count(*) FROM positions").fetchone()
        return int(row[0]) if row else -1

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    yield opened
    opened.close()


def through_the_stream(position: Position) -> Position:
    """What the writer receives for `position`: upstream's encoding, decoded by the consumer."""
    return decode_payload(encode_position(position))


def assert_stored(store: Store, position: Position, *, faulty: bool) -> None:
    stored = store.row(position.device_id, position.ts)
    columns, attributes, stored_faulty = stored[:-2], stored[-2], stored[-1]
    expected = (
        position.device_id,
        position.ts,
        position.latitude,
        position.longitude,
        position.altitude,
        position.angle,
        position.speed,
        position.satellites,
        position.priority,
    )
    assert strict(columns) == strict(expected)
    assert columns[1].microsecond == position.ts.microsecond
    assert stored_faulty is faulty
    assert json_number_equal(stored_attributes(position.attributes), attributes), attributes


@settings(
    max_examples=60,
    deadline=None,
    # One migrated schema for all examples: each example empties the table first.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batch=st.lists(positions, min_size=1, max_size=4, unique_by=lambda p: (p.device_id, p.ts)),
    faulty=st.booleans(),
)
def test_generated_positions_survive_stream_and_database(
    store: Store, batch: list[Position], faulty: bool
) -> None:
    with store.writer.transaction():
        store.writer.execute("DELETE FROM positions")
    received = [through_the_stream(p) for p in batch]
    assert strict(received) == strict(batch)
    assert store.write(received, faulty=faulty) == [INSERTED] * len(batch)
    assert store.count() == len(batch)
    for position in batch:
        assert_stored(store, position, faulty=faulty)


def test_big_integers_and_bytes_are_exact_in_jsonb(store: Store) -> None:
    original = Position(
        device_id="356307042441013",
        ts=TS,
        latitude=41.327546,
        longitude=19.818698,
        attributes={
            "u64": U64_MAX,
            "neg_u64": -U64_MAX,
            "i64_min": I64_MIN,
            "beyond": 2**70,
            "plain": 12850,
            "bytes": b"\xde\xad\xbe\xef\x00\x7f\x80\xff",
            "all_bytes": bytes(range(256)),
            "empty_bytes": b"",
            "flag": True,
            "none": None,
            "half": 0.5,
            "text": "Tiranë",
        },
    )
    position = through_the_stream(original)
    assert strict(position) == strict(original)
    assert store.write([position]) == [INSERTED]

    texts = dict(
        store.reader.execute(
            "SELECT key, value::text FROM positions, jsonb_each(attributes)"
        ).fetchall()
    )
    assert texts == {
        "u64": "18446744073709551615",
        "neg_u64": "-18446744073709551615",
        "i64_min": "-9223372036854775808",
        "beyond": "1180591620717411303424",
        "plain": "12850",
        "bytes": '"deadbeef007f80ff"',
        "all_bytes": '"' + bytes(range(256)).hex() + '"',
        "empty_bytes": '""',
        "flag": "true",
        "none": "null",
        "half": "0.5",
        "text": '"Tiranë"',
    }
    types = dict(
        store.reader.execute(
            "SELECT key, jsonb_typeof(value) FROM positions, jsonb_each(attributes)"
        ).fetchall()
    )
    assert {key: types[key] for key in ("u64", "neg_u64", "i64_min", "beyond")} == dict.fromkeys(
        ("u64", "neg_u64", "i64_min", "beyond"), "number"
    )
    stored = store.row(position.device_id, position.ts)[-2]
    assert strict(stored) == strict(stored_attributes(original.attributes))
    assert stored["bytes"] == "deadbeef007f80ff"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_become_lowercase_hex(store: Store, data: bytes) -> None:
    position = Position("bytes-device", TS, 1.0, 2.0, attributes={"11": data})
    with store.writer.transaction():
        store.writer.execute("DELETE FROM positions")
    assert store.write([through_the_stream(position)]) == [INSERTED]
    text = store.reader.execute("SELECT attributes->>'11' FROM positions").fetchone()
    assert text == (data.hex(),)


def fix_at(attributes: dict[str, Any], *, latitude: float = 41.0) -> Position:
    return Position("356307042441013", TS, latitude, 19.0, 100.0, 90.0, 50.0, 10, 0, attributes)


def test_same_key_twice_in_one_call_with_new_io_is_inserted_then_merged(store: Store) -> None:
    event = fix_at({"239": 1, "66": 12850})
    periodic = fix_at({"66": 99, "16": U64_MAX}, latitude=42.0)
    assert store.write([event, periodic]) == [INSERTED, MERGED]
    assert store.count() == 1
    # The stored values of a key present in both win; only the new key is added; the row's
    # other columns are the first record's.
    assert_stored(store, fix_at({"239": 1, "66": 12850, "16": U64_MAX}), faulty=False)

    # A redelivery of both adds nothing: both are duplicates, nothing is written.
    assert store.write([event, periodic]) == [DUPLICATE, DUPLICATE]
    assert_stored(store, fix_at({"239": 1, "66": 12850, "16": U64_MAX}), faulty=False)


def test_outcomes_across_calls(store: Store) -> None:
    assert store.write([fix_at({"1": 1})]) == [INSERTED]
    assert store.write([fix_at({"1": 2, "2": 2})]) == [MERGED]
    assert store.write([fix_at({"2": 3})]) == [DUPLICATE]
    assert store.write([fix_at({})]) == [DUPLICATE]
    assert store.write([fix_at({"1": 1}), fix_at({"3": b"\x01"}), fix_at({"3": b"\x02"})]) == [
        DUPLICATE,
        MERGED,
        DUPLICATE,
    ]
    assert store.count() == 1
    assert_stored(store, fix_at({"1": 1, "2": 2, "3": b"\x01"}), faulty=False)


def test_one_call_mixes_new_and_known_keys(store: Store) -> None:
    assert store.write([fix_at({"1": 1})]) == [INSERTED]
    other = Position("other-device", TS, 1.0, 2.0)
    assert store.write([other, fix_at({"1": 1}), other, fix_at({"9": 9})]) == [
        INSERTED,
        DUPLICATE,
        DUPLICATE,
        MERGED,
    ]
    assert store.count() == 2
