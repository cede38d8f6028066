"""Attacks on the live port of a real running processor (docs/pipeline.md, Isolation, issue 9).

Each test attacks at one level (TCP, HTTP upgrade, WebSocket, resources) and ends with the
liveness probe: a fix published afterwards is stored. In-process services unless the test
measures the daemon's memory, which needs a `processor run` subprocess of its own.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from wsproto.events import CloseConnection, TextMessage

from tests.support.daemon import Daemon
from tests.support.directus import add_event
from tests.support.fixes import fix
from tests.support.live import (
    TOKEN,
    LiveRig,
    live_client,
    receive,
    rejection_status,
    send,
)
from tests.support.metrics import live_connections, live_quiet, live_subscriptions, sample, value
from tests.support.raw import (
    BINARY,
    TEXT,
    RawWebSocket,
    connect,
    frame,
    read_until_closed,
    reset_on_close,
    upgrade_request,
)
from tests.support.scrape import scrape_sync
from tests.support.service import running_service, wait_until
from tests.support.upgrade_fuzz import UPGRADES

# 101 for the rare valid upgrade; 200/204/422 from the history endpoint on the same port
ACCEPTABLE = {101, 200, 204, 400, 401, 403, 404, 405, 422, 426, 429, 431, 501, 503}


def exchange_blocking(port: int, data: bytes) -> bytes:
    """Send `data`; read what comes within 0.5 s of silence, then half-close and read until the
    server closes (it must, at once: the peer is gone)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(0.5)
            while chunk := sock.recv(65536):
                received += chunk
            return received
        except TimeoutError:
            pass
        except OSError:  # reset: the server hung up on garbage, which is fine
            return received
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"socket open 5 s after the client left: {data[:80]!r}") from None
        except OSError:
            pass
    return received


# The fuzzer draws in a worker thread while the service runs in this one, and the service's
# libraries use the global `random` (psycopg_pool's connection-lifetime jitter, redis-py's
# backoff): hypothesis sees its state move during a draw and warns, though no draw depends on it.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
async def test_fuzzed_upgrades(live_rig: LiveRig) -> None:
    """A hypothesis fuzzer on the raw HTTP upgrade: whatever arrives, the answer is an HTTP
    refusal (or a closed socket, or 101 for the rare valid request), never a 500 or a hang, and
    ingestion carries on. 150 examples keep it well under a minute."""
    live_rig.directus.user(TOKEN)
    async with live_rig.service() as service:
        port = service.live_port
        assert port
        statuses: list[int | None] = []

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            database=None,
        )
        @given(data=UPGRADES)
        def fuzz(data: bytes) -> None:
            response = exchange_blocking(port, data)
            status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None
            assert status is None or status in ACCEPTABLE, (data[:200], response[:200])
            statuses.append(status)

        await trio.to_thread.run_sync(fuzz)
        await wait_until(lambda: live_quiet(service))
        assert any(s in (400, 401, 404) for s in statuses), statuses
        await live_rig.assert_ingesting()
        # and the live port still serves a well-behaved client
        async with live_client(port) as ws:
            assert ws.closed is None


async def test_hang_ups_at_every_stage(live_rig: LiveRig) -> None:
    """Resets before the request ends, during authentication, after accept, mid-frame."""
    live_rig.directus.user(TOKEN)
    live_rig.directus.user("tok-slow", "slow")
    live_rig.directus.slow_s = 2.0
    async with live_rig.service() as service:
        port = service.live_port
        assert port and service.live
        request = upgrade_request(extra=b"Authorization: Bearer " + TOKEN.encode() + b"\r\n")
        for cut in (1, 10, len(request) // 2, len(request) - 1):  # before the request ends
            stream = await connect(port)
            await stream.send_all(request[:cut])
            reset_on_close(stream)
            await stream.aclose()
        stream = await connect(port)  # during authentication
        await stream.send_all(upgrade_request(extra=b"Authorization: Bearer tok-slow\r\n"))
        await trio.sleep(0.1)
        reset_on_close(stream)
        await stream.aclose()
        client = await RawWebSocket.open(port, TOKEN)  # right after accept
        reset_on_close(client.stream)
        await client.aclose()
        client = await RawWebSocket.open(port, TOKEN)  # in the middle of a frame
        await client.send_raw(frame(TEXT, b'{"type":"subscribe","topic":"event:' + b"x" * 200)[:60])
        reset_on_close(client.stream)
        await client.aclose()
        client = await RawWebSocket.open(port, TOKEN)  # with a subscription in flight
        event = str(uuid.uuid4())
        live_rig.directus.allowed[TOKEN].add(event)
        await client.send_raw(
            frame(TEXT, orjson.dumps({"type": "subscribe", "topic": f"event:{event}"}))
        )
        reset_on_close(client.stream)
        await client.aclose()
        await wait_until(lambda: live_quiet(service))
        await live_rig.assert_ingesting()
        assert live_subscriptions(service) == 0  # nothing left behind


async def test_slow_upgrades_are_bounded_in_time_and_number(live_rig: LiveRig) -> None:
    """Sockets that never finish the upgrade (slowloris): at most LIVE_WS_MAX_PENDING_UPGRADES
    at once (more are closed at once), each dropped after LIVE_WS_HANDSHAKE_TIMEOUT_MS."""
    live_rig.directus.user(TOKEN)
    env = {
        **live_rig.env,
        "LIVE_WS_MAX_PENDING_UPGRADES": "5",
        "LIVE_WS_HANDSHAKE_TIMEOUT_MS": "1500",
    }
    async with running_service(env) as service:
        port = service.live_port
        assert port and service.live

        def dropped(reason: str) -> float:
            return sample(service, "processor_live_upgrades_dropped_total", reason=reason)

        holders = []
        for _ in range(5):
            stream = await connect(port)
            await stream.send_all(b"GET /live HTTP/1.1\r\nHost: x\r\n")  # never finished
            holders.append(stream)
        await wait_until(lambda: sample(service, "processor_live_pending_upgrades") == 5)
        extra = [await connect(port) for _ in range(5)]  # beyond the limit: closed at once
        for stream in extra:
            assert await read_until_closed(stream, within=5) == b""
            await stream.aclose()
        assert dropped("pending_limit") == 5
        for stream in holders:  # the slow ones are dropped at the handshake timeout
            assert await read_until_closed(stream, within=10) == b""
            await stream.aclose()
        assert dropped("handshake_timeout") == 5
        assert sample(service, "processor_live_pending_upgrades") == 0
        async with live_client(port) as ws:  # slots are free again
            assert ws.closed is None
        await live_rig.assert_ingesting()


async def test_garbage_after_a_good_handshake(live_rig: LiveRig) -> None:
    """Invalid UTF-8, binary frames, malformed JSON, oversized frames, a bad opcode, an
    unmasked frame, a huge declared length: each ends (at most) that connection."""
    live_rig.directus.user(TOKEN)
    env = {**live_rig.env, "LIVE_WS_MAX_PROTOCOL_ERRORS": "3"}
    attacks: list[list[bytes]] = [
        [frame(TEXT, b"\xff\xfe{")],  # invalid UTF-8 -> 1007
        [frame(BINARY, b"\x00\x01")] * 3,  # binary frames -> error frames, then 1008
        [frame(TEXT, b'{"type":')] * 3,  # malformed JSON -> 1008
        [frame(TEXT, b"[]"), frame(TEXT, b"x" * 10_000)],  # garbage then oversized -> 1009
        [frame(TEXT, b"x" * 5000, fin=False), frame(0x0, b"y" * 5000)],  # fragmented, too big
        [bytes([0x83, 0x80]) + b"\x00" * 4],  # reserved opcode
        [bytes([0x81, 0x05]) + b"hello"],  # unmasked client frame
        [bytes([0x81, 0xFF]) + (2**63 - 1).to_bytes(8, "big") + b"\x00" * 4 + b"z" * 10_000],
        [frame(0x8, b"\x03")],  # close frame with a 1-byte payload
        [frame(0x9, b"p" * 200)],  # control frame over 125 bytes
    ]
    async with running_service(env) as service:
        port = service.live_port
        assert port
        for attack in attacks:
            client = await RawWebSocket.open(port, TOKEN)
            try:
                for data in attack:
                    await client.send_raw(data)
                with trio.fail_after(10):
                    while True:
                        event = await client.next_event()
                        if isinstance(event, CloseConnection):
                            assert event.code in (1002, 1007, 1008, 1009), (attack, event)
                            break
                        assert isinstance(event, TextMessage), event
            finally:
                await client.aclose()
        await wait_until(lambda: live_quiet(service))
        await live_rig.assert_ingesting()


async def test_subscribe_floods_are_capped_and_paced(live_rig: LiveRig) -> None:
    """Distinct topics beyond LIVE_WS_MAX_SUBSCRIPTIONS are refused (`error bad_request`, the
    connection stays); authorization calls are paced to LIVE_WS_AUTHORIZATIONS_PER_S."""
    events = [str(uuid.uuid4()) for _ in range(30)]
    live_rig.directus.user(TOKEN, events=set(events))
    env = {**live_rig.env, "LIVE_WS_MAX_SUBSCRIPTIONS": "8", "LIVE_WS_AUTHORIZATIONS_PER_S": "20"}
    async with running_service(env) as service, live_client(service.live_port) as ws:
        for event in events:  # a flood: everything sent before anything is read
            await send(ws, {"type": "subscribe", "topic": f"event:{event}"})
        replies = [await receive(ws, within=20) for _ in events]
        subscribed = [r for r in replies if r["type"] == "subscribed"]
        refused = [r for r in replies if r["type"] == "error"]
        assert len(subscribed) == 8 and len(refused) == 22
        assert {r["code"] for r in refused} == {"bad_request"}
        assert "too many subscriptions" in refused[0]["message"]
        # pacing: 40 subscribes (each one Directus call; events this user may not read, so no
        # snapshot is involved) at 20/s with a burst of 20 take at least a second
        for event in events[:8]:
            await send(ws, {"type": "unsubscribe", "topic": f"event:{event}"})
        for _ in range(8):
            assert (await receive(ws, within=20))["type"] == "unsubscribed"
        calls_before = sum(1 for s in live_rig.directus.seen if s.path.startswith("/items/events/"))
        started = trio.current_time()
        for _ in range(40):
            await send(ws, {"type": "subscribe", "topic": f"event:{uuid.uuid4()}"})
        for _ in range(40):
            assert (await receive(ws, within=20))["code"] == "forbidden"
        elapsed = trio.current_time() - started
        calls = (
            sum(1 for s in live_rig.directus.seen if s.path.startswith("/items/events/"))
            - calls_before
        )
        assert calls == 40
        assert elapsed >= (40 - 20) / 20 * 0.9, elapsed  # cannot be faster than the rate
        await live_rig.assert_ingesting()


async def test_connections_per_user_are_capped_with_429(live_rig: LiveRig) -> None:
    live_rig.directus.user(TOKEN)
    live_rig.directus.user("bob")
    env = {**live_rig.env, "LIVE_WS_MAX_CONNECTIONS_PER_USER": "3"}
    async with running_service(env) as service:
        port = service.live_port
        assert service.live
        async with live_client(port) as one, live_client(port), live_client(port):
            assert await rejection_status(port) == 429
            assert await rejection_status(port) == 429
            async with live_client(port, token="bob") as other:  # another user is not affected
                assert other.closed is None
            await one.aclose()
            await wait_until(lambda: live_connections(service) == 2)
            async with live_client(port) as again:  # a closed connection frees its slot
                assert again.closed is None
        assert value(service.metrics.live_auth.labels("too_many_connections")) == 2
        await wait_until(lambda: live_quiet(service))
        await live_rig.assert_ingesting()


# --- resources: clients that never read -----------------------------------------------------

DEVICES = 3000
NON_READERS = 8
RSS_GROWTH_BOUND_MB = 64  # documented in OPERATIONS.md ("Live clients and memory")


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


async def non_reader(port: int, event_id: str, stop: trio.Event, codes: list[int | None]) -> None:
    """Resubscribe to the big event in a loop and never read, until told; then read to the
    end and record the close code the server sent (None: dropped without one)."""
    client = await RawWebSocket.open(port, TOKEN)
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    subscribe = frame(TEXT, orjson.dumps({"type": "subscribe", "topic": f"event:{event_id}"}))
    try:
        while not stop.is_set():
            with trio.move_on_after(0.05):
                try:
                    await client.send_raw(subscribe)
                except trio.BrokenResourceError:
                    break
                await stop.wait()
        code: int | None = None
        try:
            with trio.fail_after(30):
                while True:
                    event = await client.next_event(within=30)
                    if isinstance(event, CloseConnection):
                        code = event.code
                        break
        except (EOFError, trio.BrokenResourceError):
            pass
        codes.append(code)
    finally:
        await client.aclose()


async def test_non_reading_resubscribers_are_closed_with_4008_and_memory_stays_bounded(
    live_rig: LiveRig,
    tmp_path: Path,
) -> None:
    """8 authenticated clients resubscribe to an event of 3,000 devices (a ~0.5 MB snapshot)
    without ever reading: each is closed with 4008 once LIVE_WS_MAX_QUEUE_BYTES (default 8 MiB)
    is queued, the daemon's peak RSS grows by less than RSS_GROWTH_BOUND_MB, and fixes keep
    being stored throughout. (Before issue 9: 4 such clients grew the daemon by 210 MB.)"""
    imeis = [f"35{i:013d}" for i in range(DEVICES)]
    event_id = add_event(live_rig.database_url, imeis)
    live_rig.directus.user(TOKEN, events={event_id})
    env = {**live_rig.env, "LIVE_WS_MAX_CONNECTIONS_PER_USER": str(NON_READERS + 2)}
    daemon = Daemon(env, tmp_path / "processor.log")
    try:
        port = int((await daemon.wait_for("live broadcast listening"))["port"])
        http_port = await daemon.http_port()
        await daemon.wait_for("ready")
        live_rig.publish([fix(imei, 1) for imei in imeis])
        await wait_until(lambda: live_rig.rows() == DEVICES)
        async with live_client(port) as ws:  # warm up: one snapshot read and sent
            await send(ws, {"type": "subscribe", "topic": f"event:{event_id}"})
            first = await receive(ws, within=30)
            assert len(first["snapshot"]) == DEVICES
        baseline_kb = vm_kb(daemon.pid, "VmRSS")

        def slow_closes() -> float:
            return scrape_sync(http_port).value("processor_live_slow_consumer_closes_total")

        stop = trio.Event()
        codes: list[int | None] = []
        async with trio.open_nursery() as nursery:
            for _ in range(NON_READERS):
                nursery.start_soon(non_reader, port, event_id, stop, codes)
            # meanwhile, ingestion goes on
            await live_rig.assert_ingesting()
            await wait_until(lambda: slow_closes() >= NON_READERS, timeout=60)
            stop.set()
        peak_kb = vm_kb(daemon.pid, "VmHWM")
        growth_mb = (peak_kb - baseline_kb) / 1024
        print(f"baseline RSS {baseline_kb / 1024:.1f} MB, peak {peak_kb / 1024:.1f} MB")
        assert codes.count(4008) == NON_READERS, codes
        assert growth_mb < RSS_GROWTH_BOUND_MB, growth_mb
        await live_rig.assert_ingesting()
        async with live_client(port) as ws:  # the server still serves a good client
            await send(ws, {"type": "subscribe", "topic": f"event:{event_id}"})
            assert (await receive(ws, within=30))["type"] == "subscribed"
        assert daemon.alive()
    finally:
        daemon.close()
