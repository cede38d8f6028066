"""Local metric projection: east/north metres around a control, so that distances are metres.

Every control gets its own frame centred on it (a line's midpoint, a waypoint's centre): an
equirectangular projection on a sphere of the mean Earth radius. Within the few hundred metres
that matter around a control it differs from the great-circle distance by far less than a
centimetre, and — because it is an affine map of (longitude, latitude) — which side of a line a
fix is on, and where along a segment the line is crossed, do not depend on the frame's centre at
all; only lengths do, and those are measured around the control where they are exact enough.
Longitude differences are wrapped into [-180, 180] so a stage across the antimeridian works.
"""

from __future__ import annotations

import math

import attrs

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def wrap_lon(delta: float) -> float:
    """A longitude difference brought into [-180, 180] (exact when no wrap is needed)."""
    if delta > 180.0:
        return delta - 360.0
    if delta < -180.0:
        return delta + 360.0
    return delta


@attrs.frozen(slots=True)
class LocalFrame:
    """East/north metres around (lat0, lon0)."""

    lat0: float
    lon0: float
    kx: float  # metres per degree of longitude at lat0
    ky: float  # metres per degree of latitude

    @classmethod
    def at(cls, lat0: float, lon0: float) -> LocalFrame:
        return cls(lat0, lon0, M_PER_DEG * math.cos(math.radians(lat0)), M_PER_DEG)

    def project(self, lat: float, lon: float) -> tuple[float, float]:
        return wrap_lon(lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def unproject(self, x: float, y: float) -> tuple[float, float]:
        """The inverse of `project` (for generating tracks in tests and the simulator)."""
        lon = self.lon0 + x / self.kx
        if lon > 180.0:
            lon -= 360.0
        elif lon < -180.0:
            lon += 360.0
        return self.lat0 + y / self.ky, lon


def midpoint(lat1: float, lon1: float, lat2: float, lon2: float) -> tuple[float, float]:
    """The midpoint in degrees (across the antimeridian too): a line's frame centre."""
    lon = lon1 + wrap_lon(lon2 - lon1) / 2.0
    return (lat1 + lat2) / 2.0, wrap_lon(lon) if abs(lon) > 180.0 else lon


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres, exact on a sphere at any distance: a zone's distance
    along the fixes (a stage's own geometry works in its `LocalFrame`)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point `distance_m` along the great circle leaving (lat, lon) at `bearing_deg` (compass,
    clockwise from north); a negative distance goes backwards. Used to generate exact tracks."""
    p1 = math.radians(lat)
    l1 = math.radians(lon)
    b = math.radians(bearing_deg)
    d = distance_m / EARTH_RADIUS_M
    sin_p2 = math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b)
    p2 = math.asin(max(-1.0, min(1.0, sin_p2)))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * sin_p2
    )
    lon2 = math.degrees(l2)
    lon2 = (lon2 + 540.0) % 360.0 - 180.0
    return math.degrees(p2), lon2
