"""Speed zones, the pure rule (processor.domain.rules.zones): one violation per run over the
limit, penalised by the bracket of its peak, and brackets that make no sense refused.
On a running daemon: tests/integration/domain/test_race_zones.py."""

from __future__ import annotations

import random
from typing import Any

import pytest

from processor.domain.rules.model import Fix
from processor.domain.rules.zones import Bracket, Zone, ZoneError, parse_brackets, violations
from tests.support.racing import BRACKETS

ZONE = Zone("z", "a", "b", 50.0, 0.0, 3.0, parse_brackets(BRACKETS))


def fixes(speeds: list[float | None], t0: float = 0.0) -> list[Fix]:
    return [Fix(t0 + i, 41.3, 19.8 + i * 1e-4, s) for i, s in enumerate(speeds)]


def test_one_violation_per_run_with_the_bracket_of_its_peak() -> None:
    track = fixes([40, 55, 60, 58, 52, 40, 69.9, 70, 70.5, 71, 40, 95, 99, 91, 95, 40])
    found = violations(ZONE, track, 0, 100)
    assert [(v.started_at, v.ended_at, v.max_speed_kmh, v.penalty_s) for v in found] == [
        (1, 4, 60, 60),
        (6, 9, 71, 120),
        (11, 14, 99, 180),
    ]
    assert found[0].excess_kmh == 10 and found[0].distance_m > 0


def test_below_min_duration_none_and_the_window_bounds_the_run() -> None:
    assert violations(ZONE, fixes([40, 100, 100, 100, 40]), 0, 100) == []  # 2 s < 3 s
    # the same run cut by the zone's exit: too short inside the zone
    assert violations(ZONE, fixes([40, 90, 90, 90, 90, 90, 40]), 0, 3.5) == []
    # a fix without a speed breaks a run
    assert violations(ZONE, fixes([40, 90, 90, None, 90, 90, 40]), 0, 100) == []
    # over the limit but within the tolerance: none
    tolerant = Zone("z", "a", "b", 50.0, 10.0, 0.0, (Bracket(None, 30),))
    assert violations(tolerant, fixes([40, 59, 59, 40]), 0, 100) == []
    assert [v.penalty_s for v in violations(tolerant, fixes([40, 61, 40]), 0, 100)] == [30]


def test_order_of_the_input_does_not_matter_once_sorted() -> None:
    track = fixes([40, 90, 90, 90, 90, 40])
    shuffled = list(track)
    random.Random(3).shuffle(shuffled)
    assert violations(ZONE, sorted(shuffled, key=lambda f: f.t), 0, 100) == violations(
        ZONE, track, 0, 100
    )


@pytest.mark.parametrize(
    "value",
    [
        [],
        "60",
        [{"up_to_kmh": 20}],
        [{"penalty_s": 60}, {"up_to_kmh": 20, "penalty_s": 120}],
        [{"up_to_kmh": 40, "penalty_s": 60}, {"up_to_kmh": 20, "penalty_s": 120}],
        [{"up_to_kmh": -1, "penalty_s": 60}],
        [{"penalty_s": -5}],
        [{"penalty_s": True}],
    ],
)
def test_bad_brackets_are_refused(value: Any) -> None:
    with pytest.raises(ZoneError):
        parse_brackets(value)
