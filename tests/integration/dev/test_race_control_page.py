"""The race-control page of `processor demo`, loaded by a real (headless) chromium.

1. `processor demo` prints the page's URL with a one-time token; chromium opens it, trades the
   token for the session cookie, and the page, a plain client of the live WebSocket protocol,
   draws the stage, at least CARS cars and at least one results row (read from the DOM). The
   screenshot is saved as a test artifact (`race-control.png` in the test's tmp dir).
   Then the page is reloaded: its trails come back from the live port's history endpoint, and a
   click on a car draws that car's whole track on the stage so far.
2. The page connects to the live server through a relay (`DEMO_PAGE_LIVE_PORT`); killing the
   relay cuts the WebSocket from the server side: the page must say "reconnecting", and "live"
   again once the relay listens again (the cookie session still works, the backoff retries).

Needs Debian's chromium (`apt-get install -y chromium`, as `.ci/run` does): a missing one fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from tests.support.browser import chromium, chromium_binary, open_page

DEVICES = 12
CARS = 10  # drawn on the map: most of the field (a car in a "tunnel" may not have sent yet)
TRAIL_POINTS = 40  # app.js: what a trail holds; a selected car's track has more
DEMO_ARGS = (
    "--page-port", "0", "--duration", "600", "--devices", str(DEVICES), "--rate", "120",
    "--stage-km", "2", "--start-interval", "1", "--seed", "13",
)  # fmt: skip
CARS_DRAWN = "document.querySelectorAll('#cars g.car').length"
RESULT_ROWS = "document.querySelectorAll('#results tbody tr').length"
CONNECTION = "(document.body && document.body.dataset.connection)"


@attrs.frozen
class Demo:
    url: str
    live_port: int
    output: Path


@contextlib.asynccontextmanager
async def running_demo(env: dict[str, str], tmp_path: Path, **extra: str) -> AsyncIterator[Demo]:
    """`processor demo` as a user runs it; yields once it printed the page's URL."""
    output = trio.Path(tmp_path / "demo.out")
    async with await output.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "processor.cli", "demo", *DEMO_ARGS],
            env={**os.environ, **env, **extra},
            stdout=out.wrapped,
            stderr=subprocess.STDOUT,
        )
    try:
        pattern = re.compile(
            r"race control: (http://127\.0\.0\.1:\d+/\?token=[\w-]+)\n.*ws://127\.0\.0\.1:(\d+)/live"
        )
        with trio.fail_after(120):
            while not (found := pattern.search(await output.read_text())):
                assert proc.poll() is None, (await output.read_text())[-3000:]
                await trio.sleep(0.2)
        yield Demo(found[1], int(found[2]), Path(output))
    finally:
        proc.send_signal(signal.SIGINT)  # the demo drains and stops its throwaway parts
        with trio.move_on_after(60):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_page_draws_live_cars_and_results(env: dict[str, str], tmp_path: Path) -> None:
    chromium_binary()  # fail first, with the install command, when chromium is missing
    async with running_demo(env, tmp_path) as demo:
        with chromium(tmp_path / "profile", tmp_path / "chromium.log") as devtools:
            async with open_page(devtools, demo.url) as page:
                await page.wait_for(f"{CONNECTION} === 'live'", timeout_s=90, what="live")
                # the stage: route, start and finish lines, waypoint radii to scale
                assert await page.evaluate("document.querySelectorAll('polyline.route').length")
                assert await page.evaluate("document.querySelectorAll('line.start').length") == 1
                assert await page.evaluate("document.querySelectorAll('line.finish').length") == 1
                assert await page.evaluate("document.querySelectorAll('circle.waypoint').length")
                # the demo's speed zone (80 km/h between the 2nd and 4th controls)
                assert await page.evaluate("document.querySelectorAll('polyline.zone').length") == 1
                await page.wait_for(f"{CARS_DRAWN} >= {CARS}", timeout_s=90, what="cars")
                await page.wait_for(f"{RESULT_ROWS} >= 1", timeout_s=120, what="a results row")
                numbers = await page.evaluate(
                    "[...document.querySelectorAll('#cars g.car')].map(g => g.dataset.number)"
                )
                assert set(numbers) <= {str(101 + k) for k in range(DEVICES)}, numbers
                row = await page.evaluate("document.querySelector('#results tbody tr').innerText")
                assert re.search(r"\b1\d\d\b", row), row  # a car number in the first row
                # the token was spent: the address bar no longer carries it, a reuse is refused
                assert await page.evaluate("location.search") == ""
                async with httpx.AsyncClient(trust_env=False) as http:
                    again = await http.get(demo.url, timeout=10)
                assert again.status_code == 401
                shot = tmp_path / "race-control.png"
                await page.screenshot(shot)
                assert shot.stat().st_size > 10_000
                print(f"screenshot: {shot}")
                await check_history(page)


async def check_history(page: Any) -> None:
    """A reload brings the trails back from /live/history (the cookie session, CORS), and a
    click on a car draws its whole track on the stage so far (docs/history.md)."""
    await page.evaluate("window.beforeReload = true")
    await page.call("Page.reload")
    await page.wait_for(
        f"!window.beforeReload && {CONNECTION} === 'live'", timeout_s=60, what="live after reload"
    )
    await page.wait_for(
        "Number(document.body.dataset.history) > 0 || document.body.dataset.historyError",
        timeout_s=30,
        what="trails from history",
    )
    assert await page.evaluate("document.body.dataset.historyError || ''") == ""
    restored = await page.evaluate(
        "[...document.querySelectorAll('polyline.trail')]"
        ".filter(p => Number(p.dataset.history) > 1).length"
    )
    assert restored >= CARS // 2, restored
    await page.evaluate(
        "document.querySelector('#cars g.car')"
        ".dispatchEvent(new MouseEvent('click', {bubbles: true})), true"
    )
    points = await page.wait_for(
        "(n => n && Number(n.dataset.points))(document.getElementById('selected-track'))",
        timeout_s=30,
        what="the selected car's whole track",
    )
    fixes = await page.evaluate("Number(document.getElementById('selected-track').dataset.fixes)")
    assert fixes >= points > TRAIL_POINTS, (fixes, points)


class Relay:
    """A TCP relay in front of the live server; `kill()` drops every connection at once."""

    def __init__(self) -> None:
        self.port = 0
        self._listeners: list[trio.SocketListener] = []
        self._scope = trio.CancelScope()

    async def bind(self) -> None:
        self._listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = self._listeners[0].socket.getsockname()[1]

    async def serve(self, upstream: int) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as handlers:
                await trio.serve_listeners(
                    partial(self._pipe, upstream), self._listeners, handler_nursery=handlers
                )

    def kill(self) -> None:
        self._scope.cancel()  # closes the listener and both sides of every relayed socket

    async def _pipe(self, upstream: int, client: trio.SocketStream) -> None:
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", upstream) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(_copy, client, server, nursery.cancel_scope)
            nursery.start_soon(_copy, server, client, nursery.cancel_scope)


async def _copy(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async for chunk in source:
            await sink.send_all(chunk)
    done.cancel()


async def test_page_reconnects_after_the_server_side_drops(
    env: dict[str, str], tmp_path: Path
) -> None:
    chromium_binary()
    relay = Relay()
    await relay.bind()
    async with (
        running_demo(env, tmp_path, DEMO_PAGE_LIVE_PORT=str(relay.port)) as demo,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(relay.serve, demo.live_port)
        with chromium(tmp_path / "profile", tmp_path / "chromium.log") as devtools:
            async with open_page(devtools, demo.url) as page:
                await page.wait_for(f"{CONNECTION} === 'live'", timeout_s=90, what="live")
                await page.wait_for(f"{CARS_DRAWN} >= 1", timeout_s=90, what="a car")
                relay.kill()
                await page.wait_for(
                    f"{CONNECTION} === 'reconnecting'", timeout_s=30, what="reconnecting"
                )
                shown = await page.evaluate("document.getElementById('connection-text').innerText")
                assert "reconnecting" in shown.lower(), shown
                await relay.bind()  # same port: the page's next attempt gets through
                nursery.start_soon(relay.serve, demo.live_port)
                await page.wait_for(f"{CONNECTION} === 'live'", timeout_s=60, what="live again")
                # and it is live for real: positions keep arriving after the reconnect
                before = await page.evaluate("document.getElementById('clock').textContent")
                await page.wait_for(
                    f"document.getElementById('clock').textContent !== {before!r}",
                    timeout_s=30,
                    what="a new fix after the reconnect",
                )
        relay.kill()
