"""The live phase's resubscribing clients, in a process of their own.

    python benchmarks/live_clients.py PORT EVENT_ID CLIENTS SECONDS

Their own process so that their CPU and their GIL are not the daemon's or the benchmark's.
Each client sends the next subscribe as soon as it has read the reply to the last; the counts
of completed resubscribes are printed as one JSON line. Imports nothing of the checkout: it is
run by its path.
"""

from __future__ import annotations

import sys

import orjson
import trio
from trio_websocket import open_websocket_url

REPLY_GRACE_S = 30.0  # how long past the storm window a client waits for its last reply


async def _client(port: int, event_id: str, until: float, counts: list[int]) -> None:
    subscribe = orjson.dumps({"type": "subscribe", "topic": f"event:{event_id}"}).decode()
    async with open_websocket_url(
        f"ws://127.0.0.1:{port}/live",
        extra_headers=[(b"Authorization", b"Bearer bench")],
        max_message_size=2**26,
        receive_buffer_size=2**20,  # 0.5 MB frames: few reads, so the clients' CPU stays small
    ) as ws:
        done = 0
        # An `error` reply (e.g. `unavailable` when the snapshot could not be read on a busy
        # machine) ends the attempt too: waiting for a `subscribed` that never comes hung the
        # clients' process. The deadline bounds a reply that never comes at all.
        with trio.move_on_after(max(0.0, until - trio.current_time()) + REPLY_GRACE_S):
            while trio.current_time() < until:
                await ws.send_message(subscribe)
                while True:
                    reply = str(await ws.get_message())
                    if reply.startswith(('{"type":"subscribed"', '{"type":"error"')):
                        break
                done += reply.startswith('{"type":"subscribed"')
        counts.append(done)


async def _clients(port: int, event_id: str, clients: int, seconds: float) -> None:
    counts: list[int] = []
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(_client, port, event_id, until, counts)
    print(orjson.dumps({"resubscribes": counts}).decode(), flush=True)


if __name__ == "__main__":
    port_, event_, clients_, seconds_ = sys.argv[1:5]
    trio.run(_clients, int(port_), event_, int(clients_), float(seconds_))
