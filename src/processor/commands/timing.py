"""`processor timing rebuild | results`: the timekeeper's view of a stage.

    processor timing rebuild STAGE_ID     re-evaluate the stage from the stored fixes
    processor timing results STAGE_ID [--json]

`rebuild` evaluates every entry from scratch under the engine's own locks (safe while it runs),
records the definitions it used and prints each timing record that changed. Exit codes: 1 for
a missing stage or racing tables not as the engine needs them, 3 for a stage that cannot be
evaluated or rows the database refused (docs/racing-domain.md, Operations).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import psycopg
import redis

from processor.codecs.race_feed import RACE_FEED_MAXLEN, RaceChange, feed_key
from processor.config import Config
from processor.domain import schema
from processor.domain.definitions import read_definitions
from processor.domain.evaluation import Change, database_problem, rebuild_stage
from processor.store import db_errors
from processor.store.postgres import connection_kwargs

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_NOT_EVALUATED = 3

RESULTS = """
SELECT sr.position, en.number, en.class, sr.status, sr.elapsed_ms, sr.penalty_ms, sr.total_ms,
       sr.gap_ms, sr.class_position, sr.controls_passed, sr.controls_missed,
       sr.started_at, sr.finished_at, sr.entry_id::text
FROM stage_results sr LEFT JOIN entries en ON en.id = sr.entry_id
WHERE sr.stage_id = %s::uuid
ORDER BY sr.position NULLS LAST, sr.controls_passed DESC, sr.started_at, en.number
"""

LABELS = """
SELECT 'c', c.id::text, c.ordinal::text || ' ' || c.kind FROM controls c WHERE c.stage_id = %(s)s
UNION ALL
SELECT 'e', en.id::text, coalesce(en.number, left(en.id::text, 8))
FROM entries en JOIN stages s ON s.event_id = en.event_id WHERE s.id = %(s)s
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    timing = commands.add_parser("timing", help="stage timing: rebuild and results")
    actions = timing.add_subparsers(dest="timing_command", required=True, metavar="ACTION")
    rebuild = actions.add_parser("rebuild", help="re-evaluate a stage from the stored fixes")
    rebuild.add_argument("stage_id", metavar="STAGE_ID")
    rebuild.set_defaults(handler=cmd_rebuild)
    results = actions.add_parser("results", help="print a stage's results")
    results.add_argument("stage_id", metavar="STAGE_ID")
    results.add_argument("--json", action="store_true", help="print a JSON array")
    results.set_defaults(handler=cmd_results)


def _connect(config: Config) -> psycopg.Connection[Any]:
    return psycopg.connect(config.database_url, **connection_kwargs(config.database_url, 600_000))


def _check(conn: psycopg.Connection[Any], stage_id: str) -> str | None:
    """An error message, or None when the stage can be worked on."""
    report = schema.check(schema.read_catalog(conn))
    if report.timing_absent:
        return "the racing tables (stages, controls, ...) do not exist"
    if not report.usable("timing"):
        lines = [f"{p.detail}; fix: {p.fix}" for p in report.problems["timing"]]
        return "the racing tables are not as the engine needs them:\n  " + "\n  ".join(lines)
    try:
        with conn.transaction():
            row = conn.execute("SELECT 1 FROM stages WHERE id = %s::uuid", (stage_id,)).fetchone()
    except psycopg.errors.InvalidTextRepresentation:
        return f"not a stage id: {stage_id!r}"
    if row is None:
        return f"no stage {stage_id}"
    return None


class NotEvaluated(Exception):
    """The stage cannot be rebuilt: the message says why (one line an operator reads)."""


def rebuild(
    conn: psycopg.Connection[Any], stage_id: str, feed: list[RaceChange] | None = None
) -> list[Change]:
    """Rebuild (forced: even when the engine has already); the changes to announce on the
    race feed are appended to `feed`. NotEvaluated when the stage is invalid as defined or the
    database refuses its rows."""
    report = schema.check(schema.read_catalog(conn))
    definitions = read_definitions(conn, report)
    if stage_id in definitions.invalid:
        problem = definitions.invalid[stage_id][1]
        raise NotEvaluated(f"stage {stage_id} is not evaluated: {problem.detail}")
    if stage_id not in definitions.stages:
        raise NotEvaluated(f"no stage {stage_id}")
    try:
        outcome = rebuild_stage(conn, definitions, stage_id, force=True)
    except db_errors.DATABASE_ERRORS as exc:
        refused = database_problem(stage_id, exc)
        if refused is None:
            raise
        raise NotEvaluated(f"the database refused stage {stage_id}: {refused.detail}") from exc
    assert outcome is not None  # forced
    if feed is not None:
        feed.extend(outcome.feed)
    return outcome.changes


def announce(config: Config, feed: Sequence[RaceChange]) -> None:
    """Best effort: tell live clients what the rebuild changed (the race feed). A failure is
    reported, not fatal: the tables are right, and clients see them at their next subscribe."""
    if not feed:
        return
    client = redis.Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for change in feed:
            pipe.xadd(
                feed_key(config.redis_stream),
                change.fields(),  # type: ignore[arg-type]
                maxlen=RACE_FEED_MAXLEN,
                approximate=True,
            )
        pipe.execute()
    except redis.RedisError as exc:
        print(f"processor: live clients not told (race feed): {exc}", file=sys.stderr)
    finally:
        client.close()


def cmd_rebuild(args: argparse.Namespace, config: Config) -> int:
    with _connect(config) as conn:
        error = _check(conn, args.stage_id)
        if error is not None:
            print(f"processor: {error}", file=sys.stderr)
            return EXIT_NOT_FOUND
        feed: list[RaceChange] = []
        try:
            changes = rebuild(conn, args.stage_id, feed)
        except NotEvaluated as exc:
            print(f"processor: {exc} (its stored rows are left as they were)", file=sys.stderr)
            return EXIT_NOT_EVALUATED
        labels = {
            (kind, key): label for kind, key, label in conn.execute(LABELS, {"s": args.stage_id})
        }
    announce(config, feed)
    print(format_changes(changes, labels))
    return EXIT_OK


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="milliseconds")


def format_changes(changes: Sequence[Change], labels: dict[tuple[str, str], str]) -> str:
    if not changes:
        return "no change"
    rows = [("control", "entry", "old", "new")]
    rows.extend(
        (
            labels.get(("c", change.control_id), change.control_id[:8]),
            labels.get(("e", change.entry_id), change.entry_id[:8]),
            _time(change.old),
            "-> " + _time(change.new),
        )
        for change in sorted(changes, key=lambda c: (c.entry_id, c.control_id))
    )
    return _table(rows) + f"\n{len(changes)} record(s) changed"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def duration(ms: int | None) -> str:
    """H:MM:SS.mmm (rally timekeepers' notation); '-' for none."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{sign}{hours}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def results(conn: psycopg.Connection[Any], stage_id: str) -> list[dict[str, Any]]:
    keys = (
        "position", "number", "class", "status", "elapsed_ms", "penalty_ms", "total_ms",
        "gap_ms", "class_position", "controls_passed", "controls_missed", "started_at",
        "finished_at", "entry_id",
    )  # fmt: skip
    with conn.transaction():
        return [dict(zip(keys, row, strict=True)) for row in conn.execute(RESULTS, (stage_id,))]


def format_results(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "no results yet"
    table = [("pos", "number", "class", "status", "elapsed", "penalties", "total", "gap")]
    table.extend(
        (
            "-" if r["position"] is None else str(r["position"]),
            r["number"] or "-",
            r["class"] or "-",
            r["status"],
            duration(r["elapsed_ms"]),
            duration(r["penalty_ms"]),
            duration(r["total_ms"]),
            "-" if r["gap_ms"] is None else "+" + duration(r["gap_ms"]),
        )
        for r in rows
    )
    return _table(table)


def cmd_results(args: argparse.Namespace, config: Config) -> int:
    with _connect(config) as conn:
        error = _check(conn, args.stage_id)
        if error is not None:
            print(f"processor: {error}", file=sys.stderr)
            return EXIT_NOT_FOUND
        rows = results(conn, args.stage_id)
    if args.json:
        sys.stdout.write(orjson.dumps(rows, default=str).decode() + "\n")
    else:
        print(format_results(rows))
    return EXIT_OK
