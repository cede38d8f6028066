"""Malformed entries go to the dead-letter stream with their reason; the records behind them flow.

One entry of each malformed kind is published between valid fixes, the service runs in-process,
and once every valid fix is stored and nothing is pending, the dead-letter stream must hold
exactly the malformed entries: their original fields plus `reason`, `error`, `source_id`,
`consumer` and `failed_at` (docs/pipeline.md), counted by reason in the metrics (docs/metrics.md).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import trio

from processor.codecs.position import CodecError, decode_payload
from tests.support.fixes import fix, key_of, pending_count, publish, row_count, stored_keys
from tests.support.service import running_service, wait_until

BOOKKEEPING = {b"reason", b"error", b"source_id", b"consumer", b"failed_at"}


def without(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != name}


# (entry fields as XADDed, expected reason, expected kind = decode_errors_total label)
MALFORMED: list[tuple[dict[bytes, bytes], str, str]] = [
    ({b"payload": b"{not json"}, "invalid JSON", "invalid_json"),
    ({b"payload": b"\xff\xfe{}"}, "invalid JSON", "invalid_json"),
    ({b"payload": b"[1, 2, 3]"}, "payload not an object", "not_object"),
    (
        {b"payload": orjson.dumps(without(fix("bad-1", 1), "device_id"))},
        "missing device_id",
        "missing_field",
    ),
    (
        {b"payload": orjson.dumps(fix("bad-2", 2, latitude="41.3"))},
        "latitude wrong type",
        "wrong_type",
    ),
    ({b"payload": orjson.dumps(fix("bad-3", 3, speed=True))}, "speed wrong type", "wrong_type"),
    (
        {b"payload": orjson.dumps(fix("bad-4", 4, lat=90.5))},
        "latitude out of range",
        "out_of_range",
    ),
    (
        {b"payload": orjson.dumps(fix("bad-5", 5, timestamp="2026-05-12T10:00:05"))},
        "timestamp without offset",
        "bad_timestamp",
    ),
    (
        {b"payload": orjson.dumps(fix("bad-6", 6, attributes={"16": {"__bigint": "12x"}}))},
        "bad __bigint",
        "bad_sentinel",
    ),
    (
        {b"payload": orjson.dumps(fix("bad-7", 7, attributes={"11": {"__buffer_b64": "!!"}}))},
        "bad __buffer_b64",
        "bad_sentinel",
    ),
    # No `payload` field at all: the other fields are still carried to the dead-letter stream.
    ({b"data": b"\x01\x02", b"source": b"tcp-ingestion-1"}, "payload missing", "missing_payload"),
    # Fields beside a bad payload are kept too.
    ({b"payload": b"{", b"source": b"tcp-ingestion-2"}, "invalid JSON", "invalid_json"),
]
VALID_PER_GAP = 3


def expected_error(fields: dict[bytes, bytes]) -> str:
    try:
        decode_payload(fields.get(b"payload"))
    except CodecError as exc:
        return exc.detail
    raise AssertionError(f"{fields!r} decoded")


def publish_interleaved(client: redis.Redis, stream: str) -> tuple[dict[str, int], list[Any]]:
    """Valid fixes before, between and after the malformed entries, in one stream order.

    Returns (entry id -> index into MALFORMED, the valid documents).
    """
    malformed_ids: dict[str, int] = {}
    valid: list[dict[str, Any]] = []
    for index in range(len(MALFORMED) + 1):
        batch = [fix(f"good-{index}", second) for second in range(VALID_PER_GAP)]
        publish(client, stream, batch)
        valid.extend(batch)
        if index < len(MALFORMED):
            fields = MALFORMED[index][0]
            if set(fields) == {b"payload"}:
                (entry_id,) = publish(client, stream, [fields[b"payload"]])
            else:
                entry_id = client.xadd(stream, fields).decode()  # type: ignore[arg-type,union-attr]
            malformed_ids[entry_id] = index
    return malformed_ids, valid


def metric(service: Any, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def test_each_malformed_kind_is_dead_lettered_and_later_records_are_stored(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    dead_stream = f"{stream_key}:dead"
    started = datetime.now(UTC)
    with trio.fail_after(60):
        async with running_service(env) as service:
            malformed_ids, valid = publish_interleaved(redis_client, stream_key)
            await wait_until(lambda: row_count(database_url) == len(valid))
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            await wait_until(lambda: redis_client.xlen(dead_stream) >= len(MALFORMED))
    finished = datetime.now(UTC)

    assert stored_keys(database_url) == {key_of(document) for document in valid}
    assert pending_count(redis_client, stream_key) == 0

    letters: list[tuple[bytes, dict[bytes, bytes]]] = redis_client.xrange(dead_stream)  # type: ignore[assignment]
    by_source = {fields[b"source_id"].decode(): fields for _id, fields in letters}
    assert len(letters) == len(MALFORMED)
    assert set(by_source) == set(malformed_ids)
    for source_id, index in malformed_ids.items():
        original, reason, _kind = MALFORMED[index]
        letter = by_source[source_id]
        assert {k: v for k, v in letter.items() if k not in BOOKKEEPING} == original
        assert letter[b"reason"].decode() == reason
        assert letter[b"error"].decode() == expected_error(original)
        assert letter[b"consumer"].decode() == env["INSTANCE_ID"]
        failed_at = datetime.fromisoformat(letter[b"failed_at"].decode())
        assert failed_at.tzinfo is not None
        assert started <= failed_at <= finished

    kinds = Counter(kind for _fields, _reason, kind in MALFORMED)
    for kind, count in kinds.items():
        assert metric(service, "processor_decode_errors_total", reason=kind) == count, kind
    assert sum(
        sample.value
        for family in service.metrics.registry.collect()
        if family.name == "processor_decode_errors"
        for sample in family.samples
        if sample.name.endswith("_total")
    ) == len(MALFORMED)
    dead_letter_samples = {
        sample.labels["reason"]: sample.value
        for family in service.metrics.registry.collect()
        if family.name == "processor_dead_letters"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    }
    assert dead_letter_samples == {"decode_error": len(MALFORMED)}
    assert metric(service, "processor_position_writes_total", status="inserted") == len(valid)
    assert metric(service, "processor_acks_total") == len(valid) + len(MALFORMED)
