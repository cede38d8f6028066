"""structlog setup: JSON lines in production, readable console output in development.

Only the synchronous logger methods are used: structlog's async ones hop through asyncio.
Libraries that log through the standard `logging` module (psycopg's pool, hypercorn) are
rendered by the same renderer, so production output stays one JSON object per line.

One shape for every line: `event`, `level`, `timestamp` and `logger` (the name given to
`structlog.get_logger(NAME)`, or the standard library logger's), so a collector can route and
filter by component whichever library wrote the line. JSON is rendered by orjson, as the
rest of the service encodes JSON.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import attrs
import orjson
import structlog

from processor.redaction import redact_event
from processor.store.db_errors import describe

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of writing.

    Binding the stream once would pin it for cached loggers: a test harness (or anything else)
    that swaps `sys.stderr` and closes the old one would then break every later log call.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


DEFAULT_LOGGER = "processor"  # for `structlog.get_logger()` called without a name


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that knows the name it was asked for, for `add_logger_name`."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file)
        self.name = name


def _named_print_logger(*args: Any) -> _NamedPrintLogger:
    """The logger factory: `structlog.get_logger("processor.app")` passes the name here."""
    name = args[0] if args and isinstance(args[0], str) else DEFAULT_LOGGER
    return _NamedPrintLogger(_CurrentStderr(), name)


def _add_logger_name(
    logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.setdefault("logger", getattr(logger, "name", None) or DEFAULT_LOGGER)
    return event_dict


def _orjson_text(obj: Any, default: Callable[[Any], Any] | None = None, **_kw: Any) -> str:
    """structlog's JSONRenderer serializer, by orjson (text: the loggers write str)."""
    return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_logger_name,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,  # last before rendering: nothing printed carries a password
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_named_print_logger,
        # Not cached: a cached logger keeps the configuration of its first use for good, so a
        # process that configures logging again (the test suite, a command run in-process)
        # would log through a stale renderer. The daemon logs per batch, not per fix, so the
        # lookup this saves would not show.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                timestamper,
                redact_event,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO))


@attrs.define
class FailureLog:
    """A periodic job's failures, said once: a warning when it starts failing, an info line when
    it works again, nothing in between (an outage would otherwise repeat a line every round)."""

    log: Any
    failed_event: str
    recovered_event: str
    failing: bool = False

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            self.log.warning(self.failed_event, error=describe(exc))
        self.failing = True

    def succeeded(self) -> None:
        if self.failing:
            self.log.info(self.recovered_event)
        self.failing = False
