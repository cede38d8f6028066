"""A process of live clients for the fan-out measurement
(tests/integration/live/test_live_fanout.py).

    python -m tests.support.fanout_client PORT TOKEN EVENT_ID CLIENTS EXPECTED TIMEOUT_S

Opens CLIENTS connections, subscribes each to EVENT_ID, prints "ready" once all are subscribed,
then reads until each has EXPECTED positions (or TIMEOUT_S). The publisher stamps each fix with
its publish time, so receipt time minus the fix's `ts` is the delay from stream entry to client.
Prints one JSON line: positions received per client and every delay in milliseconds.
Clients run in their own process so their CPU does not count against the server's.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

import orjson
import trio
from trio_websocket import open_websocket_url


async def client(
    port: int,
    token: str,
    event_id: str,
    expected: int,
    counts: list[int],
    delays: list[float],
    subscribed: trio.MemorySendChannel[None],
) -> None:
    async with open_websocket_url(
        f"ws://127.0.0.1:{port}/live",
        extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
        message_queue_size=1024,
    ) as ws:
        await ws.send_message(
            orjson.dumps({"type": "subscribe", "topic": f"event:{event_id}"}).decode()
        )
        reply = orjson.loads(await ws.get_message())
        assert reply["type"] == "subscribed", reply
        await subscribed.send(None)
        count = 0
        while count < expected:
            message = await ws.get_message()
            now = time.time()
            document = orjson.loads(message)
            ts = datetime.fromisoformat(document["position"]["ts"])
            delays.append((now - ts.timestamp()) * 1000)
            count += 1
        counts.append(count)


async def main(
    port: int, token: str, event_id: str, clients: int, expected: int, seconds: float
) -> None:
    counts: list[int] = []
    delays: list[float] = []
    send, receive = trio.open_memory_channel[None](clients)
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client, port, token, event_id, expected, counts, delays, send)
            for _ in range(clients):
                await receive.receive()
            print("ready", flush=True)
    print(orjson.dumps({"counts": counts, "delays": delays}).decode(), flush=True)


if __name__ == "__main__":
    port, token, event_id, clients, expected, seconds = sys.argv[1:7]
    trio.run(main, int(port), token, event_id, int(clients), int(expected), float(seconds))
