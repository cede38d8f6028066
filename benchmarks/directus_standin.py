"""The Directus side of the phases with live broadcast on: a stand-in that says yes to
everything, and its tables with one event.

The benchmark measures the cost of the live port, not authorization: every credential is a
user, every event and collection is readable. A thread of the benchmark's process serves it.
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import psycopg

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "directus_schema.sql"


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
