"""Timing accuracy (docs/racing-domain.md) on exact 1 Hz tracks with no noise: line crossings within
0.01 s at constant speed and 0.1 s under constant acceleration; waypoint closest approach within 0.1
s and 1 m.

Random: where on Earth (|latitude| <= 70°), heading, speed (5-60 m/s), acceleration (±0.3-3 m/s²,
bounded so the car never stops), phase (where in the second each control falls), line angle
(15-165° to the track) and lengths, waypoint radius and offset. The truth comes from the sphere
(`tests/support/tracks.py`), not from the code's projection.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.domain.rules.model import ControlKind
from processor.domain.rules.timing import evaluate_entry
from tests.support.tracks import Motion, Scenario, errors_of, stage_of


@st.composite
def scenarios(draw: st.DrawFn, accelerating: bool) -> Scenario:
    v0 = draw(st.floats(5.0, 60.0))
    radius = draw(st.floats(10.0, 200.0))
    offset = draw(st.floats(-0.95, 0.95)) * radius
    s_start = 2.0 * v0 + draw(st.floats(5.0, 30.0))
    s_waypoint = s_start + radius + draw(st.floats(10.0, 80.0))
    s_checkpoint = s_waypoint + radius + draw(st.floats(10.0, 80.0))
    s_finish = s_checkpoint + draw(st.floats(10.0, 80.0))
    accel = 0.0
    if accelerating:
        accel = draw(st.floats(0.3, 3.0)) * draw(st.sampled_from((-1.0, 1.0)))
        # never below 2 m/s before the end of the track: v² = v0² + 2·a·s
        accel = max(accel, (4.0 - v0 * v0) / (2.0 * (s_finish + 100.0)))
    motion = Motion(
        origin_lat=draw(st.floats(-70.0, 70.0)),
        origin_lon=draw(st.floats(-180.0, 180.0)),
        bearing=draw(st.floats(0.0, 360.0, exclude_max=True)),
        v0=v0,
        accel=accel,
    )
    angles = tuple(draw(st.floats(15.0, 165.0)) for _ in range(3))
    halves = tuple(draw(st.floats(3.0, 40.0)) for _ in range(6))
    return Scenario(
        motion,
        draw(st.floats(0.0, 1.0, exclude_max=True)),
        s_start,
        s_waypoint,
        s_checkpoint,
        s_finish,
        offset,
        radius,
        angles,  # type: ignore[arg-type]
        halves,
    )


@settings(max_examples=300, deadline=None)
@given(scenarios(accelerating=False))
def test_constant_speed_line_crossings_within_10_ms(sc: Scenario) -> None:
    e = errors_of(sc)
    assert e.line <= 0.01, e
    assert e.waypoint_s <= 0.1 and e.waypoint_m <= 1.0, e


@settings(max_examples=300, deadline=None)
@given(scenarios(accelerating=True))
def test_accelerating_line_crossings_within_100_ms(sc: Scenario) -> None:
    e = errors_of(sc)
    assert e.line <= 0.1, e
    assert e.waypoint_s <= 0.1 and e.waypoint_m <= 1.0, e


def test_the_speed_at_a_crossing_is_interpolated() -> None:
    """Accelerating from 36 to ~72 km/h: the speed at the line is the true speed there."""
    m = Motion(45.0, 7.0, 80.0, v0=10.0, accel=2.0)
    stage = stage_of(
        m.line("S", 1, ControlKind.START, 33.3, 90.0, 10.0, 10.0),
        m.line("F", 2, ControlKind.FINISH, 75.0, 90.0, 10.0, 10.0),
    )
    result = evaluate_entry(stage, m.fixes(0.37, 12))
    start = result.passes[0]
    true_t = m.time_at(33.3)
    assert start.speed_kmh is not None
    assert abs(start.speed_kmh - m.speed(true_t) * 3.6) < 0.05
    assert abs(start.passed_at - true_t) < 0.01
