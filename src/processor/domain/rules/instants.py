"""Instants: float seconds since the epoch, and the microsecond the database stores.

The pure core computes with float seconds; the database stores microseconds. Every instant that
is stored, compared with a stored one or turned into `elapsed_ms` goes through `micros` here —
the nearest microsecond, halves up — so an incremental evaluation (whose kept passes come back
from the database) and a from-scratch one agree to the last digit.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(t: float) -> int:
    """`t` in whole microseconds, rounded to the nearest, halves up."""
    return math.floor(t * 1_000_000.0 + 0.5)


def on_microsecond(t: float) -> float:
    """`t` rounded to the microsecond: the double `datetime.timestamp()` gives for the stored
    value (both divide an integer of microseconds)."""
    return micros(t) / 1_000_000.0


def to_datetime(t: float) -> datetime:
    """The stored `timestamptz` for `t`."""
    return EPOCH + timedelta(microseconds=micros(t))


def to_datetime_or_none(t: float | None) -> datetime | None:
    return None if t is None else to_datetime(t)


def to_ms(started_at: float, finished_at: float) -> int:
    """Milliseconds between two instants, each first rounded to the stored microsecond, the
    difference rounded to the nearest millisecond, halves up: what anyone recomputing it from
    the stored `started_at`/`finished_at` gets."""
    return (micros(finished_at) - micros(started_at) + 500) // 1000
