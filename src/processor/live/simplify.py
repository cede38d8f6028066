"""Track simplification for the history endpoint: Douglas-Peucker ranks, one tolerance for all.

Pure code. Each track is projected to local metres and every point ranked by Douglas-Peucker;
ranks nest, so keeping every point above a tolerance is Douglas-Peucker at that tolerance. One
tolerance serves the whole response: the highest rank that must go for at most `max_points` to
stay. Kept whatever their rank: each track's first and last fix and the fixes that bracket a
control pass. Bounded: at most `WORK_PER_POINT` visits per point on average, then segments are
split at their middle. The ranking and its bounds: docs/history.md, Internals.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection, Sequence

METRES_PER_DEGREE = 111_320.0
WORK_PER_POINT = 64
PINNED = math.inf


def project(
    latitudes: Sequence[float], longitudes: Sequence[float]
) -> tuple[list[float], list[float]]:
    """East/north metres around the first point."""
    if not latitudes:
        return [], []
    lat0, lon0 = latitudes[0], longitudes[0]
    east = METRES_PER_DEGREE * math.cos(math.radians(lat0))
    return (
        [(lon - lon0) * east for lon in longitudes],
        [(lat - lat0) * METRES_PER_DEGREE for lat in latitudes],
    )


def significances(xs: Sequence[float], ys: Sequence[float], pinned: Collection[int]) -> list[float]:
    """Each point's Douglas-Peucker rank in metres (PINNED for the ends and `pinned`)."""
    n = len(xs)
    ranks = [0.0] * n
    if n == 0:
        return ranks
    breaks = sorted({0, n - 1, *(i for i in pinned if 0 <= i < n)})
    for i in breaks:
        ranks[i] = PINNED
    budget = WORK_PER_POINT * n
    stack = [(a, b, PINNED) for a, b in itertools.pairwise(breaks) if b - a > 1]
    while stack:
        a, b, cap = stack.pop()
        ax, ay = xs[a], ys[a]
        dx, dy = xs[b] - ax, ys[b] - ay
        length = math.hypot(dx, dy)
        if b - a == 2:  # one point between: half of all segments, no search needed
            k = a + 1
            ranks[k] = min(_distance(xs[k] - ax, ys[k] - ay, dx, dy, length), cap)
            continue
        if budget > 0:
            budget -= b - a - 1
            k, distance = _farthest(xs, ys, a, b, dx=dx, dy=dy, length=length)
        else:
            k = (a + b) // 2
            distance = _distance(xs[k] - ax, ys[k] - ay, dx, dy, length)
        rank = min(distance, cap)
        ranks[k] = rank
        if k - a > 1:
            stack.append((a, k, rank))
        if b - k > 1:
            stack.append((k, b, rank))
    return ranks


def _farthest(
    xs: Sequence[float], ys: Sequence[float], a: int, b: int, *, dx: float, dy: float, length: float
) -> tuple[int, float]:
    """The point of (a, b) farthest from the segment a-b, and its distance."""
    ax, ay = xs[a], ys[a]
    inner_x, inner_y = xs[a + 1 : b], ys[a + 1 : b]
    if length * length > 0:  # (a length whose square underflows is a point)
        # Where each point projects along the chord: all within it (the usual case), the
        # distance to the segment is the distance to its line, |cross product| / length.
        along = [x * dx + y * dy for x, y in zip(inner_x, inner_y, strict=True)]
        start = ax * dx + ay * dy
        if min(along) >= start and max(along) <= start + length * length:
            cross = [x * dy - y * dx for x, y in zip(inner_x, inner_y, strict=True)]
            offset = ax * dy - ay * dx
            high, low = max(cross), min(cross)
            far = high if high - offset >= offset - low else low
            return a + 1 + cross.index(far), abs(far - offset) / length
    # Points beyond an end (a car that turned back along its way, or a loop): exact distances.
    spans = [
        _distance(x - ax, y - ay, dx, dy, length) for x, y in zip(inner_x, inner_y, strict=True)
    ]
    distance = max(spans)
    return a + 1 + spans.index(distance), distance


def _distance(px: float, py: float, dx: float, dy: float, length: float) -> float:
    """Distance from p (relative to a) to the segment from a to a + d."""
    if length * length == 0:
        return math.hypot(px, py)
    t = max(0.0, min(1.0, (px * dx + py * dy) / (length * length)))
    return math.hypot(px - t * dx, py - t * dy)


def threshold(ranks: Sequence[Sequence[float]], max_points: int) -> float | None:
    """The tolerance: the highest rank that must be dropped for at most `max_points` to stay
    (keeping every point ranked above it); None when everything fits, PINNED when only the
    pinned points fit (then they are all kept, even past `max_points`)."""
    total = sum(len(r) for r in ranks)
    if total <= max_points:
        return None
    pinned = sum(1 for r in ranks for value in r if value == PINNED)
    room = max_points - pinned
    if room <= 0:
        return PINNED
    return heapq.nlargest(room + 1, (value for r in ranks for value in r if value != PINNED))[-1]


def keep(ranks: Sequence[Sequence[float]], limit: float | None) -> list[list[int]]:
    """The indices kept per track: all of them without a limit, else those ranked above it
    (and the pinned ones). Exactly Douglas-Peucker at tolerance `limit`: every dropped point
    lies within `limit` of the segment between the kept points around it."""
    if limit is None:
        return [list(range(len(r))) for r in ranks]
    return [[i for i, value in enumerate(r) if value > limit or value == PINNED] for r in ranks]
