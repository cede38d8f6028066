"""A Writer driven directly by a test (no consumer): deliveries go straight into its channel."""

from __future__ import annotations

import redis

from processor.config import Config
from processor.core.consumer import decode_entries
from processor.core.device_state import DeviceStates
from processor.core.inflight import InFlight
from processor.core.records import Delivery
from processor.core.stream_names import StreamNames
from processor.core.writer import Writer, WriterSettings
from processor.observability.metrics import Metrics
from processor.store.group_reader import stream_entries
from processor.store.postgres import Database


def direct_writer(
    config: Config,
    *,
    database: Database,
    control: redis.Redis,
    stream: str,
    metrics: Metrics,
    batch_size: int,
) -> Writer:
    """One lane, short retries (20-100 ms), consumer `test`."""
    return Writer(
        database=database,
        control=control,
        names=StreamNames(stream, config.redis_group, "test", f"{stream}:dead", 100),
        settings=WriterSettings(
            batch_size=batch_size,
            flush_interval_s=0.02,
            concurrency=1,
            retry_initial_s=0.02,
            retry_max_s=0.1,
            rules=config.quality_rules,
        ),
        states=DeviceStates(10),
        metrics=metrics,
        in_flight=InFlight(),
    )


def read_delivery(config: Config, stream: str, count: int, metrics: Metrics) -> Delivery:
    """The next `count` entries of the group, read and decoded as the consumer does it."""
    reader = redis.Redis.from_url(config.redis_url, socket_timeout=5)
    reader.set_response_callback("XREADGROUP", lambda reply, **_: reply)  # as the consumer reads
    reply = reader.xreadgroup(config.redis_group, "test", {stream: ">"}, count=count)
    reader.close()
    delivery = decode_entries(stream_entries(reply), metrics)
    assert len(delivery.records) == count
    return delivery
