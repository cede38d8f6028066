"""The racing tables checked against what the engine needs (domain/schema.py), on a real
PostgreSQL: each slip a Directus admin can make is reported with its table, what is wrong and
the SQL that fixes it — and running that SQL makes the problem go away."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from processor.domain import schema
from tests.support import racing


def report(database_url: str) -> schema.SchemaReport:
    with psycopg.connect(database_url) as conn:
        return schema.check(schema.read_catalog(conn))


def details(found: schema.SchemaReport) -> list[tuple[str, str, str]]:
    return [(p.subject, p.detail, p.fix) for ps in found.problems.values() for p in ps]


def test_the_fixture_schema_is_what_the_engine_needs(database_url: str) -> None:
    assert report(database_url).absent == frozenset(schema.PARTS)  # nothing yet: all absent
    racing.create_tables(database_url)
    found = report(database_url)
    assert details(found) == []
    assert all(found.usable(part) for part in schema.PARTS)


SLIPS: dict[str, tuple[str, str, str, str]] = {
    # name: (SQL that breaks it, part, subject, detail)
    "a Directus Float coordinate": (
        "ALTER TABLE controls ALTER COLUMN lat1 TYPE real",
        "timing",
        "table controls",
        "column lat1 is real, needs double precision (nothing is timed)",
    ),
    "a timestamp without time zone": (
        "ALTER TABLE stages ALTER COLUMN opens_at TYPE timestamp",
        "timing",
        "table stages",
        (
            "column opens_at is timestamp without time zone, needs timestamp with time zone "
            "(nothing is timed)"
        ),
    ),
    "an integer millisecond total": (
        "ALTER TABLE stage_results ALTER COLUMN total_ms TYPE integer",
        "timing",
        "table stage_results",
        "column total_ms is integer, needs bigint (nothing is timed)",
    ),
    "the natural key left out": (
        (
            "ALTER TABLE timing_records"
            " DROP CONSTRAINT timing_records_stage_id_entry_id_control_id_key"
        ),
        "timing",
        "table timing_records",
        (
            "no unique constraint on (stage_id, entry_id, control_id) (its ON CONFLICT clause "
            "needs one) (nothing is timed)"
        ),
    ),
    "a column the processor does not write, NOT NULL without a default": (
        "ALTER TABLE speed_violations ADD COLUMN reviewed_by uuid NOT NULL",
        "zones",
        "table speed_violations",
        (
            "column reviewed_by is NOT NULL without a default, and the processor does not write "
            "it (speed zones off)"
        ),
    ),
    "the partial index on open alerts left out": (
        "DROP INDEX alerts_one_open",
        "alerts",
        "table alerts",
        (
            "no partial unique index on (entry_id, kind) WHERE cleared_at IS NULL (its ON CONFLICT "
            "clause needs one) (safety alerts off)"
        ),
    ),
    "a column missing": (
        "ALTER TABLE io_mappings DROP COLUMN multiplier",
        "io",
        "table io_mappings",
        "no column multiplier (ignition in alerts off)",
    ),
}


@pytest.mark.parametrize("slip", sorted(SLIPS))
def test_a_slip_is_reported_with_the_sql_that_fixes_it(database_url: str, slip: str) -> None:
    breaks, part, subject, detail = SLIPS[slip]
    racing.create_tables(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(breaks)
    found = report(database_url)
    [(got_subject, got_detail, fix)] = details(found)
    assert (got_subject, got_detail) == (subject, detail)
    assert not found.usable(part)
    assert all(found.usable(p) for p in schema.PARTS if p != part)  # the others are fine
    with psycopg.connect(database_url) as conn:
        conn.execute(fix)
    assert details(report(database_url)) == []


def test_the_composite_primary_key_of_earlier_versions_is_reported(database_url: str) -> None:
    """stage_results keyed (stage_id, entry_id) cannot be served by Directus."""
    racing.create_tables(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE stage_results DROP CONSTRAINT stage_results_pkey")
        conn.execute("ALTER TABLE stage_results ADD PRIMARY KEY (stage_id, entry_id)")
    [(subject, detail, _fix)] = details(report(database_url))
    assert subject == "table stage_results"
    assert detail.startswith("its primary key is not the single column id")


def test_a_privilege_not_granted_is_reported(database_url: str) -> None:
    racing.create_tables(database_url)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        schema_name: Any = conn.execute("SELECT current_schema()").fetchone()
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema_name[0]), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema_name[0]), sql.Identifier(role)
            )
        )
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            found = schema.check(schema.read_catalog(conn))
            conn.execute("RESET ROLE")
            problems = {(s, d) for s, d, _ in details(found)}
            assert (
                "table stage_results",
                "the processor's role lacks INSERT, UPDATE, DELETE (nothing is timed)",
            ) in problems
            assert (
                "table alerts",
                "the processor's role lacks INSERT, UPDATE (safety alerts off)",
            ) in (problems)
            fixes = [f for _s, _d, f in details(found)]
            assert (
                "GRANT INSERT, UPDATE, DELETE ON stage_results TO <the processor's role>;" in fixes
            )
        finally:
            conn.execute("RESET ROLE")
            conn.execute(
                sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
                    sql.Identifier(role), sql.Identifier(role)
                )
            )
