"""The live-isolation figure: does a resubscribe storm slow ingestion? (issue 9)

    python -m benchmarks.run --phases live          # about 1.5 minutes (--quick: 30 s)

One `processor run` with live broadcast on (a minimal Directus stand-in that accepts every
credential and every event), an event of 3,000 devices each with a stored fix (a ~0.5 MB
snapshot), and the steady load of the latency phase (the simulator's cars, not in the event,
so the clients get snapshots and no fan-out: the figure isolates the cost of subscribes):

1. quiet:  stream -> commit latency under the steady load alone;
2. storm:  the same load while 8 clients (their own process) resubscribe to the event in a
           loop, each sending the next subscribe as soon as it has read the last snapshot;

p99 of each window from the daemon's `processor_e2e_latency_seconds` histogram (the difference
of two scrapes), and `live_p99_ratio` = storm / quiet (target <= 1.5). Also reported: how many
resubscribes the clients completed and how many snapshot queries they cost.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import psycopg
import trio
from trio_websocket import open_websocket_url

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "directus_schema.sql"
CLIENTS = 8
EVENT_DEVICES = 3000


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        data: Any = {"id": "bench-user"}  # /users/me, /items/events/<id>
        if path == "/items/events":  # a session re-check: every requested event is readable
            wanted = orjson.loads(parse_qs(query)["filter"][0])["id"]["_in"]
            data = [{"id": event_id} for event_id in wanted]
        elif path.startswith("/items/") and path.count("/") == 2:  # a collection: readable
            data = []
        body = orjson.dumps({"data": data})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


class DirectusStandIn:
    """Says yes to everything (the benchmark measures cost, not authorization)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def create_event(url: str, imeis: list[str]) -> str:
    """The Directus tables and one event linking every device; returns the event id."""
    event_id = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        conn.execute(FIXTURE.read_text())
        conn.execute("INSERT INTO events (id, name) VALUES (%s, 'bench')", (event_id,))
        with conn.cursor().copy("COPY entries (id, event_id, number) FROM STDIN") as copy:
            entries = [uuid.uuid4() for _ in imeis]
            for number, entry_id in enumerate(entries):
                copy.write_row((entry_id, event_id, str(number)))
        devices = [uuid.uuid4() for _ in imeis]
        with conn.cursor().copy("COPY devices (id, imei) FROM STDIN") as copy:
            for device_id, imei in zip(devices, imeis, strict=True):
                copy.write_row((device_id, imei))
        with conn.cursor().copy("COPY entry_devices (entry_id, device_id) FROM STDIN") as copy:
            for entry_id, device_id in zip(entries, devices, strict=True):
                copy.write_row((entry_id, device_id))
    return event_id


def start_clients(port: int, event_id: str, seconds: float) -> subprocess.Popen[bytes]:
    """The clients in a process of their own (their CPU is not the daemon's, their GIL either)."""
    return subprocess.Popen(
        [sys.executable, __file__, str(port), event_id, str(CLIENTS), str(seconds)],
        stdout=subprocess.PIPE,
    )


# --- the clients' process ----------------------------------------------------------------------


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
