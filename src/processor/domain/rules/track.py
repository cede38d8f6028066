"""An entry's track on a stage: its fixes inside the window, in fix-time order, one per instant.

Arrival order never matters: fixes are sorted and, of fixes sharing a time, the smallest by
(t, latitude, longitude, speed) is kept. Non-finite times or positions are ignored; a
non-finite or negative speed is absent. The track is parallel lists of plain floats, cut into
blocks of `BLOCK` segments whose bounding boxes a search may skip: exact, not a heuristic. Why
it is exact: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from processor.domain.rules.model import Fix

_INF = math.inf
BLOCK = 32

Box = tuple[float, float, float, float]  # lat_lo, lat_hi, lon_lo, lon_hi (degrees)


class Track:
    __slots__ = ("_boxes", "lat", "lon", "speed", "t")

    def __init__(self) -> None:
        self.t: list[float] = []
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.speed: list[float | None] = []  # km/h
        self._boxes: tuple[list[float], list[float], list[float], list[float]] | None = None

    def __len__(self) -> int:
        return len(self.t)

    def segment_at(self, t: float) -> int:
        """The index of the last fix at or before `t` (0 if none): where a search after `t`
        starts, since the segment from that fix may hold a point later than `t`."""
        return max(0, bisect.bisect_right(self.t, t) - 1)

    def next_near(self, k: int, box: Box | None) -> int:
        """The first segment index >= k whose block's box meets `box` (None: k itself); past the
        last segment when there is none."""
        if box is None:
            return k
        lat_lo, lat_hi, lon_lo, lon_hi = self._blocks()
        b = k // BLOCK
        first = b
        count = len(lat_lo)
        while b < count and (
            lat_hi[b] < box[0] or lat_lo[b] > box[1] or lon_hi[b] < box[2] or lon_lo[b] > box[3]
        ):
            b += 1
        return k if b == first else b * BLOCK

    def _blocks(self) -> tuple[list[float], list[float], list[float], list[float]]:
        if self._boxes is None:
            lats, lons = self.lat, self.lon
            lat_lo: list[float] = []
            lat_hi: list[float] = []
            lon_lo: list[float] = []
            lon_hi: list[float] = []
            for start in range(0, max(0, len(lats) - 1), BLOCK):
                # block b holds segments start .. start+BLOCK-1: fixes start .. start+BLOCK
                la = lats[start : start + BLOCK + 1]
                lo = lons[start : start + BLOCK + 1]
                lat_lo.append(min(la))
                lat_hi.append(max(la))
                low, high = min(lo), max(lo)
                if high - low > 180.0:
                    low, high = -_INF, _INF
                lon_lo.append(low)
                lon_hi.append(high)
            self._boxes = (lat_lo, lat_hi, lon_lo, lon_hi)
        return self._boxes


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
    # (t, lat, lon, has speed, speed): sorting these tuples is the deterministic choice among
    # fixes sharing a time, and one tuple per fix is all the per-fix allocation there is.
    rows = []
    for f in fixes:
        t, lat, lon, speed = f.t, f.latitude, f.longitude, f.speed_kmh
        if not (low <= t < high and isfinite(t) and isfinite(lat) and isfinite(lon)):
            continue
        if speed is not None and isfinite(speed) and speed >= 0.0:
            rows.append((t, lat, lon, True, speed))
        else:
            rows.append((t, lat, lon, False, 0.0))
    rows.sort()
    track = Track()
    ts, lats, lons, speeds = track.t, track.lat, track.lon, track.speed
    last = -_INF
    for t, lat, lon, has_speed, speed in rows:
        if t == last:
            continue
        last = t
        ts.append(t)
        lats.append(lat)
        lons.append(lon)
        speeds.append(speed if has_speed else None)
    return track
