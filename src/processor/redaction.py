"""Passwords never reach an error message or a log line.

`redact` masks the password of any `scheme://user:password@host` URL (the user is kept; the
password runs to the token's last `@`, so an unencoded `@` is masked too) and `password=...` /
`passwd=...` settings in key=value connection strings. Applied to the one-line configuration
error (exit 2), to `/readyz` bodies, and to every log line (a structlog processor, for our own
logs and the standard library's alike).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*):(?P<password>\S*)@")
_KEY_VALUE_PASSWORD = re.compile(
    r"(?P<prefix>\b(?:password|passwd)\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|[^\s'\"&;,]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every URL password and `password=` setting replaced by `***`."""
    if "@" in text:
        text = _URL_PASSWORD.sub(rf"\g<prefix>:{MASK}@", text)
    if "ass" in text.lower():
        text = _KEY_VALUE_PASSWORD.sub(rf"\g<prefix>{MASK}", text)
    return text


def redact_value(value: Any) -> Any:
    """Strings redacted; containers walked (log fields can be lists or dicts); others kept."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value


def redact_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    """structlog processor: redacts every field of the event, `event` and tracebacks included."""
    return {key: redact_value(value) for key, value in event_dict.items()}
