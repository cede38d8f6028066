"""Headless Debian chromium driven over the DevTools protocol (CDP) with trio-websocket.

No extra dependency: chromium writes its DevTools port into `<user-data-dir>/DevToolsActivePort`,
`/json/list` names the page's debugger WebSocket, and `Runtime.evaluate` reads the DOM. A missing
chromium is a failure naming the install command (the project's `.ci/run` installs it).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

INSTALL = "apt-get install -y chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,900",
    "--remote-debugging-port=0",
)


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(f"chromium is not installed: run `{INSTALL}` (.ci/run does)", pytrace=False)
    return binary


@contextlib.contextmanager
def chromium(profile: Path, log: Path) -> Iterator[str]:
    """Start chromium with a fresh profile; yields its DevTools HTTP address."""
    profile.mkdir(parents=True)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 60 s"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Page:
    """One page target: navigate, evaluate JavaScript, wait for a condition, screenshot."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        request = {"id": call_id, "method": method, "params": params}
        await self._ws.send_message(orjson.dumps(request).decode())  # text frame
        while True:  # events (no "id") and stale answers are skipped
            message = orjson.loads(await self._ws.get_message())
            if message.get("id") == call_id:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout_s: float, what: str) -> Any:
        """Poll `expression` until it is truthy (generous bounds: the machine is shared)."""
        with trio.move_on_after(timeout_s):
            while True:
                # mid-navigation the document may not exist yet: an exception counts as "not yet"
                result = await self.call(
                    "Runtime.evaluate", expression=expression, returnByValue=True
                )
                value = None if "exceptionDetails" in result else result["result"].get("value")
                if value:
                    return value
                await trio.sleep(0.2)
        state = await self.evaluate("document.body ? document.body.innerText.slice(0, 800) : ''")
        raise AssertionError(f"not within {timeout_s} s: {what}; the page shows: {state!r}")

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        await trio.Path(path).write_bytes(base64.b64decode(result["data"]))


@contextlib.asynccontextmanager
async def open_page(devtools: str, url: str) -> AsyncIterator[Page]:
    """Attach to chromium's first page target and navigate it to `url`."""
    async with httpx.AsyncClient(trust_env=False) as http:
        targets = (await http.get(f"{devtools}/json/list", timeout=10)).json()
    target = next(t for t in targets if t["type"] == "page")
    async with open_websocket_url(
        target["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024
    ) as ws:
        page = Page(ws)
        # a fixed viewport, so screenshots compare from run to run
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1600,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.call("Page.navigate", url=url)
        yield page
