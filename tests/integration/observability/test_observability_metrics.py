"""/metrics over real HTTP: every number equals what happened, counted per record.

The batch size is set well below the number of records, so a counter incremented once per batch
(or never) cannot match the expected per-record totals.
"""

from __future__ import annotations

import time

import httpx
import orjson
import redis
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.support.expected import expected_state
from tests.support.fixes import fix, pending_count, publish, row_count, rows
from tests.support.promtool import promtool
from tests.support.scrape import Scrape, base_url, scrape, scrape_sync
from tests.support.service import running_service, wait_until

BATCH = 25
DEVICES = 10
UNIQUE = 300
ZERO_SATELLITES = 5  # of the unique fixes
DUPLICATES = 40  # exact redeliveries of stored fixes
MERGES = 25  # same key, one new IO element

MALFORMED: list[bytes | str] = [
    b"not json",
    orjson.dumps({"device_id": "x", "timestamp": "2026-05-12T10:00:00Z"}),  # no latitude
    orjson.dumps(fix(lat=91.0)),  # out of range
    orjson.dumps(fix(latitude="41.3")),  # numeric string
    orjson.dumps(fix(attributes={"16": {"__bigint": "12x"}})),  # bad sentinel
    orjson.dumps([1, 2, 3]),  # not an object
    "",  # empty payload
]

# Every pipeline metric of docs/metrics.md (sample-name stems; counters gain `_total`).
PIPELINE_METRICS = {
    "processor_consumer_reads": "counter",
    "processor_consumer_records": "counter",
    "processor_consumer_lag": "gauge",
    "processor_pending_entries": "gauge",
    "processor_decode_errors": "counter",
    "processor_position_writes": "counter",
    "processor_write_duration_seconds": "histogram",
    "processor_write_batch_size": "histogram",
    "processor_acks": "counter",
    "processor_dead_letters": "counter",
    "processor_reclaimed": "counter",
    "processor_faulty_positions": "counter",
    "processor_device_state_size": "gauge",
    "processor_device_state_evictions": "counter",
    "processor_e2e_latency_seconds": "histogram",
    "processor_ready": "gauge",
}


def documents() -> list[dict[str, object]]:
    unique = [
        fix(f"dev{i % DEVICES}", i, satellites=0 if i < ZERO_SATELLITES else 10)
        for i in range(UNIQUE)
    ]
    duplicates = [dict(unique[i]) for i in range(100, 100 + DUPLICATES)]
    merges = [
        fix(f"dev{i % DEVICES}", i, attributes={"66": 12850}) for i in range(200, 200 + MERGES)
    ]
    return unique + duplicates + merges


async def test_counters_equal_what_happened(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    valid = documents()
    expected = expected_state(valid)
    assert (expected.inserted, expected.duplicate, expected.merged) == (UNIQUE, DUPLICATES, MERGES)
    entries = len(valid) + len(MALFORMED)
    env |= {"WRITE_BATCH_SIZE": str(BATCH), "READ_COUNT": "50", "LAG_SAMPLE_INTERVAL_S": "0.1"}

    async with running_service(env) as service:
        publish(redis_client, stream_key, valid[:UNIQUE])
        publish(redis_client, stream_key, MALFORMED)
        publish(redis_client, stream_key, valid[UNIQUE:])
        await wait_until(lambda: row_count(database_url) == UNIQUE)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)

        def settled() -> bool:
            m = scrape_sync(service.http_port)
            return m.value("processor_acks_total") == entries and (
                m.value("processor_consumer_lag"),
                m.value("processor_pending_entries"),
            ) == (0, 0)

        await wait_until(settled, timeout=10)
        m = await scrape(service.http_port)

    stored = UNIQUE + DUPLICATES + MERGES
    assert row_count(database_url) == UNIQUE
    assert m.value("processor_position_writes_total", status="inserted") == UNIQUE
    assert m.value("processor_position_writes_total", status="merged") == MERGES
    assert m.value("processor_position_writes_total", status="duplicate") == DUPLICATES
    assert m.value("processor_position_writes_total", status="failed") == 0
    assert m.value("processor_acks_total") == entries
    assert m.value("processor_consumer_records_total") == entries
    assert m.total("processor_dead_letters_total") == len(MALFORMED)
    assert m.value("processor_dead_letters_total", reason="decode_error") == len(MALFORMED)
    assert m.total("processor_decode_errors_total") == len(MALFORMED)
    assert redis_client.xlen(f"{stream_key}:dead") == len(MALFORMED)
    assert m.value("processor_faulty_positions_total", reason="zero_satellites") == ZERO_SATELLITES
    faulty_rows = rows(database_url, "SELECT count(*) FROM positions WHERE faulty")[0][0]
    assert faulty_rows == ZERO_SATELLITES
    assert m.value("processor_device_state_size") == DEVICES

    # One e2e sample per stored record (inserted, merged or duplicate), none per batch.
    assert m.value("processor_e2e_latency_seconds_count") == stored
    assert 0 < m.value("processor_e2e_latency_seconds_sum") < stored * 30
    # Batches: their sizes add up to the records written, and there are fewer of them.
    batches = m.value("processor_write_batch_size_count")
    assert m.value("processor_write_batch_size_sum") == stored
    assert stored / BATCH <= batches < stored
    assert m.value("processor_write_duration_seconds_count") == batches
    reads = m.value("processor_consumer_reads_total", result="entries")
    assert entries / 50 <= reads < entries
    assert m.value("processor_reclaimed_total") == 0
    assert m.value("processor_ready") == 1


async def test_e2e_latency_is_commit_time_minus_the_entry_time(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    """Entries whose IDs say they were appended 45 s ago land in the (30 s, 60 s] bucket."""
    age_s, count = 45, 20
    appended_ms = int(time.time() * 1000) - age_s * 1000
    for i in range(count):
        redis_client.xadd(
            stream_key, {"payload": orjson.dumps(fix("dev", i))}, id=f"{appended_ms}-{i}"
        )
    async with running_service(env) as service:
        await wait_until(lambda: row_count(database_url) == count)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
        m = await scrape(service.http_port)
    assert m.value("processor_e2e_latency_seconds_count") == count
    assert m.value("processor_e2e_latency_seconds_bucket", le="30.0") == 0
    assert m.value("processor_e2e_latency_seconds_bucket", le="60.0") == count
    mean = m.value("processor_e2e_latency_seconds_sum") / count
    assert age_s <= mean < age_s + 10


async def test_exposition_is_valid_and_complete(env: dict[str, str]) -> None:
    async with (
        running_service(env) as service,
        httpx.AsyncClient(base_url=base_url(service.http_port), timeout=5) as client,
    ):
        text = await client.get("/metrics")
        om = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert text.status_code == 200
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    m = Scrape(text.text)
    for name, kind in PIPELINE_METRICS.items():
        family = m.families.get(name)
        assert family is not None, f"{name} missing from /metrics"
        assert family.type == kind, (name, family.type)
        assert family.documentation, f"{name} has no help text"
        assert f"# HELP {name}" in text.text
    assert om.status_code == 200
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    assert {f.name for f in openmetrics_families(om.text)} >= set(PIPELINE_METRICS)
    with trio.fail_after(30):
        check = await trio.run_process(
            [promtool(), "check", "metrics"],
            stdin=text.content,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_observe_many_equals_repeated_observe() -> None:
    """The writer's bulk histogram update must expose exactly what one observe per value would,
    including values on bucket bounds, beyond the last bound, and zero."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from processor.observability.metrics import LATENCY_BUCKETS, observe_many

    values = [0.0, 0.005, 0.0051, 0.1, 0.1, 0.25, 0.3, 59.9, 60.0, 61.0, 3600.0] * 3
    exposed = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)
        if bulk:
            observe_many(histogram, values)
            observe_many(histogram, [])
        else:
            for value in values:
                histogram.observe(value)
        text = generate_latest(registry).decode()
        exposed.append("\n".join(x for x in text.splitlines() if not x.startswith("h_created")))
    assert exposed[0] == exposed[1]
    assert "h_count 33.0" in exposed[1]
