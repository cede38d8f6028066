"""The writer's batcher on memory channels and a virtual clock: no servers.

The batcher's only I/O is `_judge` (device-state rehydration from PostgreSQL), replaced here by
a function that judges every fix good, so what is tested is collecting, chunking and the
dispatch of devices to lanes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import trio
import trio.testing

from processor.codecs.quality import QualityRules
from processor.core.device_state import DeviceStates
from processor.core.inflight import InFlight
from processor.core.records import Delivery, Records, Rejected
from processor.core.writer import Batch, Writer, WriterSettings
from processor.observability.metrics import Metrics

FLUSH_S = 1.0
BATCH = 3


class JudgeFree(Writer):
    async def _judge(self, records: Records) -> list[str | None]:
        return [None] * len(records)


def writer(concurrency: int) -> JudgeFree:
    return JudgeFree(
        database=cast("Any", None),
        control=cast("Any", None),
        names=cast("Any", None),
        settings=WriterSettings(
            batch_size=BATCH,
            flush_interval_s=FLUSH_S,
            concurrency=concurrency,
            retry_initial_s=0.1,
            retry_max_s=1.0,
            rules=QualityRules(future_tolerance=timedelta(seconds=300), max_speed_kmh=400.0),
        ),
        states=DeviceStates(10),
        metrics=Metrics(),
        in_flight=InFlight(),
    )


def delivery(*fixes: tuple[str, str], rejected: int = 0) -> Delivery:
    """Records from (entry id, device id) pairs, plus `rejected` rejected entries."""
    records = Records()
    for entry_id, device in fixes:
        records.ids.append(entry_id)
        records.rows.append(cast("Any", (device, entry_id)))
        records.fields.append({})
    gone = [Rejected(f"r{i}", {}, "bad", "bad", "decode_error:json") for i in range(rejected)]
    return Delivery(records, gone)


async def run_batcher(concurrency: int, feed: Any) -> tuple[list[list[tuple[float, Batch]]], float]:
    """Run the batcher over `feed(send)`; return what each lane received (with the virtual
    time it was received) and when the batcher finished."""
    w = writer(concurrency)
    send, receive = trio.open_memory_channel[Delivery](10)
    lanes = [trio.open_memory_channel[Batch](100) for _ in range(concurrency)]
    received: list[list[tuple[float, Batch]]] = [[] for _ in range(concurrency)]

    async def drain(index: int, lane: trio.MemoryReceiveChannel[Batch]) -> None:
        async for batch in lane:
            received[index].append((trio.current_time(), batch))

    async with trio.open_nursery() as nursery:
        for index, (_, lane_receive) in enumerate(lanes):
            nursery.start_soon(drain, index, lane_receive)
        nursery.start_soon(w._batcher, receive, [lane_send for lane_send, _ in lanes])
        async with send:
            await feed(send)
        finished = trio.current_time()
    return received, finished


async def test_a_partial_batch_waits_the_flush_interval_a_full_one_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def feed(send: trio.MemorySendChannel[Delivery]) -> None:
        await send.send(delivery(("1-0", "a")))
        await trio.sleep(10)  # well past the flush interval
        await send.send(delivery(("2-0", "a"), ("2-1", "a"), ("2-2", "a"), ("2-3", "a")))
        await trio.sleep(10)

    start = trio.current_time()
    received, _ = await run_batcher(1, feed)
    [lane] = received
    times = [at - start for at, _ in lane]
    ids = [batch.records.ids for _, batch in lane]
    # The lone fix waited for company for exactly the flush interval, then went alone.
    assert ids[0] == ["1-0"] and times[0] == FLUSH_S
    # Four fixes arrived at once: a full batch of three is cut at once, the rest rides along
    # in the same collection (the last read may overshoot and is chunked), no waiting.
    assert ids[1:] == [["2-0", "2-1", "2-2"], ["2-3"]]
    assert times[1] == times[2] == 10


async def test_close_flushes_what_is_collected_and_closes_the_lanes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def feed(send: trio.MemorySendChannel[Delivery]) -> None:
        await send.send(delivery(("1-0", "a"), rejected=2))
        await send.send(delivery(rejected=1))  # a read of only rejected entries

    start = trio.current_time()
    received, finished = await run_batcher(2, feed)
    batches = [batch for lane in received for _, batch in lane]
    assert sorted(i for b in batches for i in b.records.ids) == ["1-0"]
    assert sorted(r.entry_id for b in batches for r in b.rejected) == ["r0", "r0", "r1"]
    # The close ended the collection at once: no flush interval was waited out, and the
    # lanes were closed (the drains returned), so the flushers would finish too.
    assert finished - start < FLUSH_S


async def test_a_device_always_goes_to_the_same_lane_in_stream_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    devices = [f"dev{i}" for i in range(12)]

    async def feed(send: trio.MemorySendChannel[Delivery]) -> None:
        for n in range(20):
            fixes = [(f"{n}-{i}", device) for i, device in enumerate(devices)]
            await send.send(delivery(*fixes, rejected=1))
            await trio.sleep(0.1)

    received, _ = await run_batcher(3, feed)
    lanes_of: dict[str, set[int]] = {}
    order: dict[str, list[str]] = {}
    for index, lane in enumerate(received):
        for _, batch in lane:
            assert len(batch.records) <= BATCH * len(devices)  # one collection, split by lane
            for entry_id, row in zip(batch.records.ids, batch.records.rows, strict=True):
                lanes_of.setdefault(row[0], set()).add(index)
                order.setdefault(row[0], []).append(entry_id)
    assert all(len(lanes) == 1 for lanes in lanes_of.values()), lanes_of
    assert len({lane for lanes in lanes_of.values() for lane in lanes}) > 1  # work was spread
    for device, ids in order.items():
        assert ids == [f"{n}-{devices.index(device)}" for n in range(20)], device
    # Every rejected entry is dispatched exactly once, on some lane.
    assert sum(len(b.rejected) for lane in received for _, b in lane) == 20
