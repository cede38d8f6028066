"""The live JSON protocol's parsing (processor.live.protocol): what a client may send, and the
one-line reason each malformed frame is refused with."""

from __future__ import annotations

import pytest

from processor.live.protocol import ClientFrame, ProtocolError, parse_client_frame

EVENT = "6f1f8d8e-1c8a-4a8e-9a53-3b8d8e2f0c11"


def test_valid_requests() -> None:
    assert parse_client_frame(f'{{"type":"subscribe","topic":"event:{EVENT}"}}') == ClientFrame(
        "subscribe", EVENT
    )
    assert parse_client_frame(
        f'{{"type":"unsubscribe","topic":"event:{EVENT.upper()}","extra":1}}'
    ) == ClientFrame("unsubscribe", EVENT)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "invalid JSON"),
        ("", "invalid JSON"),
        ("[1, 2]", "message must be a JSON object"),
        ('"subscribe"', "message must be a JSON object"),
        ("{}", "missing 'type'"),
        ('{"type": 7}', "'type' must be a string"),
        ('{"type": "publish"}', "unknown type 'publish': expected subscribe or unsubscribe"),
        ('{"type": "subscribe"}', "subscribe: missing 'topic'"),
        ('{"type": "subscribe", "topic": 12}', "subscribe: 'topic' must be a string"),
        ('{"type": "subscribe", "topic": "device:1"}', "subscribe: 'topic' must be event:<uuid>"),
        ('{"type": "subscribe", "topic": "event:123"}', "subscribe: 'topic' must be event:<uuid>"),
        (b'{"type": "subscribe"}', "binary frames are not supported: send JSON text frames"),
    ],
)
def test_malformed_frames(frame: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame)
    assert caught.value.message == message
