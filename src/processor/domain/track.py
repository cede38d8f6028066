"""An entry's track on a stage: its fixes inside the window, in fix-time order, one per instant.

Arrival order must never matter (devices buffer and send late), so the fixes are sorted, and
when two fixes share a time — a duplicate, or two devices of one entry reporting the same
second — exactly one is kept: the smallest by (t, latitude, longitude, speed), whatever order
they came in. Fixes with a non-finite time or position are ignored (the pipeline stores none,
but a timing core must not be thrown by one); a non-finite or negative speed counts as absent.

The track is kept as parallel lists of plain floats: the search loops read them by index
without creating an object per fix.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from processor.domain.model import Fix

_INF = math.inf


class Track:
    __slots__ = ("lat", "lon", "speed", "t")

    def __init__(self) -> None:
        self.t: list[float] = []
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.speed: list[float | None] = []  # km/h

    def __len__(self) -> int:
        return len(self.t)

    def segment_at(self, t: float) -> int:
        """The index of the last fix at or before `t` (0 if none): where a search after `t`
        starts, since the segment from that fix may hold a point later than `t`."""
        return max(0, bisect.bisect_right(self.t, t) - 1)


def _speed(fix: Fix) -> float | None:
    speed = fix.speed_kmh
    return speed if speed is not None and math.isfinite(speed) and speed >= 0.0 else None


def _key(fix: Fix) -> tuple[float, float, float, bool, float]:
    speed = _speed(fix)
    return (fix.t, fix.latitude, fix.longitude, speed is not None, 0.0 if speed is None else speed)


def build_track(
    fixes: Iterable[Fix],
    opens_at: float | None = None,
    closes_at: float | None = None,
    since: float | None = None,
) -> Track:
    """The track of `fixes` within [opens_at, closes_at) and at or after `since`."""
    low = -_INF if opens_at is None else opens_at
    if since is not None and since > low:
        low = since
    high = _INF if closes_at is None else closes_at
    isfinite = math.isfinite
    chosen = [
        f
        for f in fixes
        if low <= f.t < high and isfinite(f.t) and isfinite(f.latitude) and isfinite(f.longitude)
    ]
    chosen.sort(key=_key)
    track = Track()
    ts, lats, lons, speeds = track.t, track.lat, track.lon, track.speed
    last = -_INF
    for f in chosen:
        if f.t == last:
            continue
        last = f.t
        ts.append(f.t)
        lats.append(f.latitude)
        lons.append(f.longitude)
        speeds.append(_speed(f))
    return track
