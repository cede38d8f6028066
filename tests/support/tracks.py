"""Exact synthetic tracks for the timing core: a car on a great circle, at constant acceleration.

The car leaves `origin` at `bearing` at time `t_origin` with speed `v0` (m/s) and constant
acceleration `accel` (m/s²), so it is `s(t) = v0·τ + accel·τ²/2` metres along the great circle
at τ = t - t_origin, with speed v0 + accel·τ. Fixes are taken at 1 Hz with a chosen phase and
carry that exact speed (km/h), no noise: the device-reported speeds are the true ones.

Controls are placed *on the sphere* relative to the great circle, so the truth is known without
any projection: a line through the track point at arc length `s` crosses it exactly there (two
great circles meet in that point); a waypoint centre at distance `d` perpendicular to the track
from the point at arc length `s` has its closest approach exactly there, at distance `d`. The
code under test uses its own local projection and straight segments; the difference to this
truth is what the accuracy tests measure.
"""

from __future__ import annotations

import math

import attrs

from processor.domain.rules.geometry import LocalFrame, destination
from processor.domain.rules.model import Control, ControlKind, Fix, Stage, Status
from processor.domain.rules.timing import evaluate_entry

T_BASE = 1_767_225_600.0  # 2026-01-01T00:00:00Z: realistic magnitudes for float epoch times


@attrs.frozen
class Motion:
    origin_lat: float
    origin_lon: float
    bearing: float  # compass degrees
    v0: float  # m/s at t_origin
    accel: float  # m/s²
    t_origin: float = T_BASE

    def arc(self, t: float) -> float:
        tau = t - self.t_origin
        return self.v0 * tau + 0.5 * self.accel * tau * tau

    def speed(self, t: float) -> float:
        return self.v0 + self.accel * (t - self.t_origin)

    def point(self, s: float) -> tuple[float, float]:
        return destination(self.origin_lat, self.origin_lon, self.bearing, s)

    def time_at(self, s: float) -> float:
        """When the car is `s` metres along (s >= 0, reached while the speed is positive)."""
        if self.accel == 0.0:
            return self.t_origin + s / self.v0
        root = math.sqrt(self.v0 * self.v0 + 2.0 * self.accel * s)
        return self.t_origin + 2.0 * s / (self.v0 + root)

    def fixes(self, phase: float, count: int) -> list[Fix]:
        """`count` fixes at 1 Hz, the first `phase` seconds after t_origin."""
        out = []
        for k in range(count):
            t = self.t_origin + phase + k
            lat, lon = self.point(self.arc(t))
            out.append(Fix(t, lat, lon, self.speed(t) * 3.6))
        return out

    def line(
        self,
        control_id: str,
        ordinal: int,
        kind: ControlKind,
        s: float,
        angle: float,
        left_m: float,
        right_m: float,
        penalty_s: int = 0,
    ) -> Control:
        """A line crossed forward at arc length `s`, the track heading `angle` degrees (0, 180)
        clockwise from the line's direction; point 1 `left_m` behind, point 2 `right_m` ahead."""
        lat, lon = self.point(s)
        heading = self._heading_at(s)
        direction = heading - angle
        lat1, lon1 = destination(lat, lon, direction + 180.0, left_m)
        lat2, lon2 = destination(lat, lon, direction, right_m)
        return Control(
            control_id,
            ordinal,
            kind,
            lat1=lat1,
            lon1=lon1,
            lat2=lat2,
            lon2=lon2,
            penalty_s=penalty_s,
        )

    def waypoint(
        self,
        control_id: str,
        ordinal: int,
        s: float,
        offset_m: float,
        radius_m: float,
        penalty_s: int = 0,
    ) -> Control:
        """A waypoint `offset_m` to the right (negative: left) of the track point at `s`."""
        lat, lon = self.point(s)
        side = 90.0 if offset_m >= 0 else -90.0
        clat, clon = destination(lat, lon, self._heading_at(s) + side, abs(offset_m))
        return Control(
            control_id,
            ordinal,
            ControlKind.WAYPOINT,
            latitude=clat,
            longitude=clon,
            validate_radius_m=radius_m,
            penalty_s=penalty_s,
        )

    def _heading_at(self, s: float) -> float:
        """The great circle's compass bearing at arc length `s` (it changes along the way)."""
        lat, lon = self.point(s)
        # the bearing from the point to a point a little further, measured exactly backwards
        blat, blon = self.point(s - 1.0)
        p1, p2 = math.radians(lat), math.radians(blat)
        dl = math.radians(blon - lon)
        y = math.sin(dl) * math.cos(p2)
        x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
        return math.degrees(math.atan2(y, x)) + 180.0


def stage_of(
    *controls: Control, opens_at: float | None = None, closes_at: float | None = None
) -> Stage:
    return Stage("stage", tuple(controls), opens_at, closes_at)


@attrs.frozen
class Scenario:
    """A start line, a waypoint, a checkpoint line and a finish line along one `Motion`."""

    motion: Motion
    phase: float
    s_start: float
    s_waypoint: float
    s_checkpoint: float
    s_finish: float
    offset: float
    radius: float
    angles: tuple[float, float, float]
    halves: tuple[float, ...]


@attrs.frozen
class Errors:
    start: float
    checkpoint: float
    finish: float
    waypoint_s: float
    waypoint_m: float

    @property
    def line(self) -> float:
        return max(self.start, self.checkpoint, self.finish)


def errors_of(sc: Scenario) -> Errors:
    """Evaluate the scenario's stage and return the absolute errors against the truth."""
    m = sc.motion
    h = sc.halves
    stage = stage_of(
        m.line("S", 1, ControlKind.START, sc.s_start, sc.angles[0], h[0], h[1]),
        m.waypoint("W", 2, sc.s_waypoint, sc.offset, sc.radius),
        m.line("C", 3, ControlKind.CHECKPOINT, sc.s_checkpoint, sc.angles[1], h[2], h[3]),
        m.line("F", 4, ControlKind.FINISH, sc.s_finish, sc.angles[2], h[4], h[5]),
    )
    count = math.ceil(m.time_at(sc.s_finish + 50.0) - m.t_origin) + 2
    result = evaluate_entry(stage, m.fixes(sc.phase, count))
    assert result.status is Status.FINISHED, result
    assert [p.control_id for p in result.passes] == ["S", "W", "C", "F"], result
    start, waypoint, checkpoint, finish = result.passes
    return Errors(
        start=abs(start.passed_at - m.time_at(sc.s_start)),
        checkpoint=abs(checkpoint.passed_at - m.time_at(sc.s_checkpoint)),
        finish=abs(finish.passed_at - m.time_at(sc.s_finish)),
        waypoint_s=abs(waypoint.passed_at - m.time_at(sc.s_waypoint)),
        waypoint_m=abs(waypoint.distance_m - abs(sc.offset)),
    )


@attrs.frozen
class Plane:
    """Hand-made scenarios in east/north metres around a point. Line geometry is exact (the
    code's projection around any control is an affine map of degrees, so sides and crossing
    fractions are the same in every frame); distances to a waypoint centred elsewhere differ by
    ~1e-5 relative (the east scale is taken at another latitude)."""

    lat0: float = 45.0
    lon0: float = 7.0

    @property
    def frame(self) -> LocalFrame:
        return LocalFrame.at(self.lat0, self.lon0)

    def fix(self, t: float, x: float, y: float, speed_kmh: float | None = None) -> Fix:
        lat, lon = self.frame.unproject(x, y)
        return Fix(T_BASE + t, lat, lon, speed_kmh)

    def line(
        self,
        control_id: str,
        ordinal: int,
        kind: ControlKind,
        p1: tuple[float, float],
        p2: tuple[float, float],
        penalty_s: int = 0,
    ) -> Control:
        lat1, lon1 = self.frame.unproject(*p1)
        lat2, lon2 = self.frame.unproject(*p2)
        return Control(
            control_id,
            ordinal,
            kind,
            lat1=lat1,
            lon1=lon1,
            lat2=lat2,
            lon2=lon2,
            penalty_s=penalty_s,
        )

    def waypoint(
        self,
        control_id: str,
        ordinal: int,
        centre: tuple[float, float],
        radius_m: float,
        penalty_s: int = 0,
    ) -> Control:
        lat, lon = self.frame.unproject(*centre)
        return Control(
            control_id,
            ordinal,
            ControlKind.WAYPOINT,
            latitude=lat,
            longitude=lon,
            validate_radius_m=radius_m,
            penalty_s=penalty_s,
        )
