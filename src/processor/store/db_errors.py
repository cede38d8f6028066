"""What a database error means for the pipeline: the one classification every caller uses.

Three kinds, by SQLSTATE (and, client-side, by exception type): `DATA` (classes 22/23, or a
value psycopg refuses: the writer isolates and dead-letters the refused records), `TRANSIENT`
(connection loss, 57P01-57P03, 40001, 40P01: retried with backoff) and `PERSISTENT` (anything
else: retried too, never dead-lettered or acked, and reported on `/readyz` once it repeats).
The codes, and why not "everything else is transient": docs/pipeline.md, Internals.
"""

from __future__ import annotations

import enum

import psycopg
from psycopg_pool import PoolTimeout


class Kind(enum.Enum):
    DATA = "data"
    TRANSIENT = "transient"
    PERSISTENT = "persistent"


# SQLSTATE classes/codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_DATA_CLASSES = frozenset({"22", "23"})
_TRANSIENT_CLASSES = frozenset({"08"})  # connection exception
_TRANSIENT_CODES = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
    }
)

# For `except` clauses: every exception a database call can raise for an outside reason.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, PoolTimeout)

# The exception types transient failures come as, for callers that only need a coarse split
# (e.g. a live snapshot answering "unavailable, retry" rather than "internal error"). Retry
# decisions use `classify`, which looks at the SQLSTATE too.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
)


def classify(exc: BaseException) -> Kind:
    """The kind of a failed database call's exception."""
    if isinstance(exc, PoolTimeout):
        return Kind.TRANSIENT  # no pooled connection in time: the server is unreachable
    if not isinstance(exc, psycopg.Error):
        return Kind.TRANSIENT if isinstance(exc, OSError) else Kind.PERSISTENT
    sqlstate = exc.sqlstate or ""
    if sqlstate[:2] in _DATA_CLASSES:
        return Kind.DATA
    if sqlstate[:2] in _TRANSIENT_CLASSES or sqlstate in _TRANSIENT_CODES:
        return Kind.TRANSIENT
    if not sqlstate:
        # Raised by the client, not the server: a value psycopg refuses to send (NUL in text)
        # is about the data; a broken or closed connection is transient.
        if isinstance(exc, psycopg.DataError):
            return Kind.DATA
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return Kind.TRANSIENT
    return Kind.PERSISTENT


def describe_cause(exc: BaseException) -> str:
    """`describe` without the row-specific parts (the DETAIL with the failing row's values):
    the same cause reads the same whichever row met it, so a problem is said once."""
    sqlstate = getattr(exc, "sqlstate", None)
    state = f" [{sqlstate}]" if sqlstate else ""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}{state}: {' '.join(primary.split())[:300]}"


def describe(exc: BaseException) -> str:
    """One line for logs and `/readyz`: the type, the SQLSTATE when there is one, the message."""
    sqlstate = getattr(exc, "sqlstate", None)
    state = f" [{sqlstate}]" if sqlstate else ""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}{state}: {text}"
