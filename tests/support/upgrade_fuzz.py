"""Hypothesis strategies for raw HTTP upgrade requests
(tests/integration/live/test_live_attacks.py).

What an attacker on the network can put in front of the live port: random and mutated request
lines, paths, header names and values (non-ASCII, NUL, CR/LF, very long, thousands of headers),
random bytes, a TLS ClientHello (a browser speaking wss:// to a plain port), HTTP/1.0, a plain
GET without `Upgrade`, and requests for the history endpoint on the same port.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.support.live import TOKEN
from tests.support.raw import GOOD_HEADERS, tls_client_hello, upgrade_request

_NASTY = [b"", b"\x00", b"\xff\xfe", "café".encode(), b"\r", b"\n", b"\r\n", b" ", b":", b"%00"]
_NASTY_BYTES = st.sampled_from(_NASTY)
_SOME_BYTES = st.binary(max_size=40)
_TEXT = st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))


def _pieces() -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(_NASTY_BYTES, _SOME_BYTES, _TEXT), max_size=4).map(b"".join)


METHODS = st.one_of(
    st.sampled_from([b"GET", b"get", b"POST", b"OPTIONS", b"G\x00T", b""]), _pieces()
)
PATHS = st.one_of(
    st.sampled_from(
        [
            b"/live",
            b"//[/live",
            b"/live?x=1",
            b"/live#f",
            b"*",
            b"http://[::1",
            b"/li\xffve",
            b"/" + b"a" * 20_000,
            b"/live/../live",
            b"//",
            b"",
            b"/live/history",
            b"/live/history?event=6f1f8d8e-1c8a-4a8e-9a53-3b8d8e2f0c11&from=2026-05-12T10:00:00Z",
            b"/live/history?event=%ff&from=\x00",
            b"/live/history?" + b"&" * 5000,
            b"/live/history?max_points=99999999999999999999&faulty=maybe",
        ]
    ),
    _pieces().map(lambda p: b"/" + p),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra", b"", b"HTTP/9"]
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Upgrade",
            b"Connection",
            b"Sec-WebSocket-Key",
            b"Sec-WebSocket-Version",
            b"Authorization",
            b"Cookie",
            b"Origin",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Sec-WebSocket-Extensions",
            b"Sec-WebSocket-Protocol",
        ]
    ),
    _pieces(),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"Upgrade",
            b"13",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"Bearer caf\xe9",
            b"Bearer " + TOKEN.encode(),
            b"Bearer a\x00b",
            b"directus_session_token=\xff",
            b"https://race.example",
            b"permessage-deflate; client_max_window_bits",
            b"chunked",
            b"-1",
            b"99999999999999999999",
            b"x" * 70_000,
        ]
    ),
    _pieces(),
)
HEADERS = st.lists(
    st.tuples(HEADER_NAMES, HEADER_VALUES).map(lambda nv: nv[0] + b": " + nv[1] + b"\r\n"),
    max_size=8,
).map(b"".join)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A request line and headers, each part valid or not."""
    line = draw(METHODS) + b" " + draw(PATHS) + b" " + draw(VERSIONS) + b"\r\n"
    good = draw(st.booleans())
    return line + (GOOD_HEADERS if good else b"") + draw(HEADERS) + b"\r\n"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid authenticated upgrade with a few bytes flipped, inserted or cut."""
    data = bytearray(upgrade_request(extra=b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


def many_headers(count: int) -> bytes:
    return upgrade_request(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(count)))


UPGRADES = st.one_of(
    structured(),
    mutated(),
    st.binary(max_size=4096),
    st.just(tls_client_hello()),
    st.sampled_from(
        [
            many_headers(5_000),
            many_headers(200),
            upgrade_request(version=b"HTTP/1.0"),
            b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n",  # plain GET, no Upgrade
            b"GET /live HTTP/1.0\r\n\r\n",
            upgrade_request(extra=b"Authorization: Bearer " + b"t" * 100_000 + b"\r\n"),
        ]
    ),
)
