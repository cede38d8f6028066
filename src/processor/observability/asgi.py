"""A quart-trio app whose keep-alive connections hypercorn can still close (a workaround).

quart-trio runs each request as two tasks, one sending the response and one waiting for
`http.disconnect`, and cancels both as soon as the disconnect arrives. hypercorn emits that
disconnect while the last body chunk is still being sent, from inside the very `send` call in
which it (re)starts the connection's keep-alive idle timer, so the cancel kills the timer as it
starts. Such a connection is then never closed for being idle: not after `keep_alive_timeout`,
and not when the server shuts down, which then waits out the whole graceful timeout for a
scraper that merely kept its connection open (measured with quart-trio 0.12 / hypercorn 0.18).

Here the disconnect waiter lets a response that is already being sent finish (the sender cancels
the pair right after, as before); a client that disconnects before its response starts is still
cancelled at once.
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import ASGIHTTPConnection
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection


class _HttpConnection(TrioASGIHTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sending = False
        self._sent = trio.Event()

    async def _send_response(self, send: ASGISendCallable, response: Any) -> None:
        self._sending = True
        try:
            await super()._send_response(send, response)
        finally:
            self._sent.set()

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Any, receive: ASGIReceiveCallable
    ) -> None:
        await ASGIHTTPConnection.handle_messages(self, request, receive)
        if self._sending:
            await self._sent.wait()
        nursery.cancel_scope.cancel()


class KeepAliveSafeQuartTrio(QuartTrio):
    asgi_http_class = _HttpConnection
