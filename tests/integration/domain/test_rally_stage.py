"""The simulated stage: its SQL loads into the Directus tables, and the timing core finds every
car's passes on it (lines drawn to be crossed forward; the swerving car misses a waypoint)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from processor.domain import definitions
from processor.domain.rules.model import Fix, Status
from processor.domain.rules.timing import evaluate_entry
from processor_dev.rally_stage import RallyStage, StageSettings, StageSimulator, distance_at
from processor_dev.simulate import Quirks, Scenario
from tests.support import racing

START = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)
NO_QUIRKS = Quirks(late=0, duplicate=0, zero_satellites=0, event=0, sentinels=0)


def scenario(devices: int = 8) -> Scenario:
    return Scenario(devices=devices, rate=devices, seed=5, start=START, quirks=NO_QUIRKS)


def test_every_car_is_timed_on_the_generated_stage(database_url: str) -> None:
    from processor_dev.rally_stage import scenario_sql

    stage = RallyStage.generate(scenario(), StageSettings(length_km=3, controls=6))
    racing.create_tables(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(scenario_sql(stage))
        course = definitions.read_current(conn)
    assert not course.invalid and stage.stage_id in course.stages
    timed = course.stages[stage.stage_id].stage
    assert [c.kind.value for c in timed.controls] == [
        "start", "waypoint", "checkpoint", "waypoint", "checkpoint", "waypoint", "checkpoint",
        "finish",
    ]  # fmt: skip

    tracks: dict[str, list[Fix]] = {}
    for entry in itertools.islice(StageSimulator(scenario(), stage), 8 * 320):
        p = entry.position
        tracks.setdefault(p.device_id, []).append(
            Fix(t=p.ts.timestamp(), latitude=p.latitude, longitude=p.longitude, speed_kmh=p.speed)
        )
    for car in stage.entries:
        result = evaluate_entry(timed, tracks[car.imei])
        assert result.status is Status.FINISHED, car.number
        swerved = car.swerve_at_m is not None
        assert result.controls_missed == (1 if swerved else 0), car.number
        assert result.penalty_ms == (300_000 if swerved else 0)
        # the start pass is where the analytic motion crosses 100 m (fixes are to 1e-7 deg)
        assert result.started_at is not None
        t_start = result.started_at - START.timestamp()
        metres, _speed = distance_at(car, t_start)
        assert metres == pytest.approx(100.0, abs=1.0), car.number


def test_simulate_writes_the_scenario_sql(tmp_path: Path, database_url: str) -> None:
    out = tmp_path / "stage.sql"
    done = subprocess.run(
        [sys.executable, "-m", "processor.cli", "simulate", "--stage", "--devices", "3",
         "--count", "0", "--unpaced", "--scenario-out", str(out), "--stream", "test:none"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    racing.create_tables(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(out.read_text(encoding="utf-8"))
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM entries WHERE number IS NOT NULL), "
            "(SELECT count(*) FROM controls), (SELECT count(*) FROM stages)"
        ).fetchone()
    assert counts == (3, 8, 1)


def test_stage_settings_are_bounded() -> None:
    with pytest.raises(ValueError, match="stage-km"):
        StageSettings(length_km=0.1)
    with pytest.raises(ValueError, match="stage-controls"):
        StageSettings(controls=-1)
