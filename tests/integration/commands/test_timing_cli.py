"""`processor timing rebuild | results` as an operator runs them (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

import orjson
import psycopg
import pytest
import redis

from processor.codecs.race_feed import feed_key
from processor.commands.timing import duration
from processor.store.migrations import apply_migrations, default_directory, load_migrations
from tests.support import racing

CARS = [("steady", "T1"), ("cutter", "T2"), ("dnf", "T1")]


def timing(
    servers: tuple[str, str], *args: str, stream: str = "positions-cli-test"
) -> subprocess.CompletedProcess[str]:
    """`processor timing ARGS` against the harness's own servers: `servers` is (database URL,
    Redis URL). Both are always passed, so the command never falls back to whatever
    `REDIS_URL` the calling shell has (or the default), which is not where the test looks."""
    database_url, redis_url = servers
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_FORMAT": "console",
        "REDIS_STREAM": stream,
    }
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", "timing", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cli(database_url: str, redis_server_url: str) -> tuple[str, str]:
    """The servers a `processor timing` subprocess must use: this test's schema and Redis."""
    return database_url, redis_server_url


def store(database_url: str, documents: list[dict[str, Any]]) -> None:
    """Rows as the durable pipeline would have written them (no daemon needed here)."""
    with psycopg.connect(database_url) as conn:
        racing.store_fixes(conn, documents)


def prepared(database_url: str) -> racing.Course:
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
    racing.create_tables(database_url)
    course = racing.add_course(database_url, CARS)
    d = course.devices
    store(database_url, racing.track(d["steady"], racing.constant(20), 160))
    store(database_url, racing.track(d["cutter"], racing.constant(25, y=40), 130))
    store(database_url, racing.track(d["dnf"], racing.constant(20), 60))  # stops at x=1200
    return course


def test_rebuild_prints_what_changed_then_no_change(
    cli: tuple[str, str], database_url: str, redis_client: redis.Redis, stream_key: str
) -> None:
    course = prepared(database_url)
    first = timing(cli, "rebuild", course.stage_id, stream=stream_key)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].split() == ["control", "entry", "old", "new"]
    assert "1 start" in first.stdout and "4 finish" in first.stdout and "101" in first.stdout
    assert lines[-1] == "9 record(s) changed"  # 4 + 3 (cutter misses the waypoint) + 2 (dnf)
    # live clients are told: 9 timing changes and one results notice on the race feed
    feed = [f[b"kind"] for _id, f in redis_client.xrange(feed_key(stream_key))]
    assert Counter(feed) == {b"timing": 9, b"results": 1}
    second = timing(cli, "rebuild", course.stage_id, stream=stream_key)
    assert (second.returncode, second.stdout.strip()) == (0, "no change")
    assert redis_client.xlen(feed_key(stream_key)) == 10  # nothing changed: nothing announced

    # a control moved 40 m north: the waypoint now suits the cutter, not the others
    lat, lon = racing.to_latlon(racing.WAYPOINT_X, 40)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE controls SET latitude = %s, longitude = %s WHERE id = %s",
            (lat, lon, course.controls["waypoint"]),
        )
    third = timing(cli, "rebuild", course.stage_id)
    assert third.returncode == 0, third.stderr
    changed = [line.split() for line in third.stdout.splitlines()[1:-1]]
    assert sorted(row[2] for row in changed) == ["101", "102", "103"]
    moved = {row[2]: row for row in changed}
    assert moved["102"][3] == "-" and moved["101"][-1] == "-"  # appeared / vanished


def test_results_table_and_json(cli: tuple[str, str], database_url: str, stream_key: str) -> None:
    course = prepared(database_url)
    assert timing(cli, "rebuild", course.stage_id, stream=stream_key).returncode == 0
    table = timing(cli, "results", course.stage_id)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["pos", "number", "class", "status", "elapsed", "penalties", "total", "gap"]
    assert rows[1] == ["1", "101", "T1", "finished", "0:02:25.000", "0:00:00.000",
                       "0:02:25.000", "+0:00:00.000"]  # fmt: skip
    assert rows[2][:2] == ["2", "102"] and rows[2][5] == "0:05:00.000"
    assert rows[3][:4] == ["-", "103", "T1", "running"]

    as_json = timing(cli, "results", course.stage_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    document = orjson.loads(as_json.stdout)
    assert [r["number"] for r in document] == ["101", "102", "103"]
    assert document[1]["total_ms"] == 116_000 + 300_000 and document[1]["gap_ms"] == 271_000
    assert document[1]["class_position"] == 1 and document[2]["position"] is None


def test_unknown_stage_bad_id_and_missing_tables_exit_1(
    cli: tuple[str, str], database_url: str
) -> None:
    with psycopg.connect(database_url) as conn:
        apply_migrations(conn, load_migrations(default_directory()))
    missing = timing(cli, "results", str(uuid.uuid4()))
    assert missing.returncode == 1 and "racing tables" in missing.stderr
    racing.create_tables(database_url)
    unknown = timing(cli, "rebuild", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no stage" in unknown.stderr
    bad = timing(cli, "results", "not-a-uuid")
    assert bad.returncode == 1 and "not a stage id" in bad.stderr


def test_rebuild_of_a_stage_it_cannot_evaluate_exits_3_with_the_reason(
    cli: tuple[str, str], database_url: str, stream_key: str
) -> None:
    """An invalid stage (here: its waypoint has no radius yet) is not evaluated: the command
    says why and exits 3, leaving the stored rows as they were; a broken timing table exits 1
    with the SQL that fixes it."""
    course = prepared(database_url)
    assert timing(cli, "rebuild", course.stage_id, stream=stream_key).returncode == 0
    before = racing.stored(database_url, course.stage_id)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE controls SET validate_radius_m = NULL WHERE id = %s",
            (course.controls["waypoint"],),
        )
    refused = timing(cli, "rebuild", course.stage_id, stream=stream_key)
    assert refused.returncode == 3, refused.stdout
    assert refused.stdout == ""
    assert f"stage {course.stage_id} is not evaluated: " in refused.stderr
    assert "needs validate_radius_m > 0, has None" in refused.stderr
    assert "stored rows are left as they were" in refused.stderr
    assert racing.stored(database_url, course.stage_id) == before

    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE controls SET validate_radius_m = 30")
        conn.execute(
            "ALTER TABLE stage_results DROP CONSTRAINT stage_results_stage_id_entry_id_key"
        )
    broken = timing(cli, "rebuild", course.stage_id, stream=stream_key)
    assert broken.returncode == 1
    assert "no unique constraint on (stage_id, entry_id)" in broken.stderr
    assert (
        "ALTER TABLE stage_results ADD CONSTRAINT stage_results_stage_id_entry_id_key UNIQUE"
        " (stage_id, entry_id);" in broken.stderr
    )


def test_duration_notation() -> None:
    assert duration(None) == "-"
    assert duration(0) == "0:00:00.000"
    assert duration(3_723_004) == "1:02:03.004"
    assert duration(-1_500) == "-0:00:01.500"
