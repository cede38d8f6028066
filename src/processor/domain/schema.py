"""Are the Directus-owned racing tables what the engine needs? Checked at every refresh.

The catalog is read once per refresh and compared with what the engine reads and writes; every
difference becomes a `Problem` that names the table, says what is wrong and gives the SQL that
fixes it. The tables come in parts: timing all absent means the domain is not set up, timing
present and wrong means nothing is timed; an optional part (zones, alerts, io) that is wrong
switches that feature alone off. The parts and the types checked: docs/racing-domain.md, Engine
internals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import psycopg

from processor.domain.health import Problem

UUID = frozenset({"uuid"})
TEXT = frozenset({"text", "character varying", "character"})
INT4 = frozenset({"integer", "bigint"})  # written as int4: a wider column is fine
INT8 = frozenset({"bigint"})
ANY_INT = frozenset({"integer", "bigint", "smallint"})
FLOAT8 = frozenset({"double precision"})
NUMBER = frozenset({"double precision", "real", "numeric", "integer", "bigint", "smallint"})
TIMESTAMPTZ = frozenset({"timestamp with time zone"})
JSON = frozenset({"jsonb", "json"})
JSONB = frozenset({"jsonb"})

_PREFERRED = {
    UUID: "uuid",
    TEXT: "text",
    INT4: "integer",
    INT8: "bigint",
    ANY_INT: "integer",
    FLOAT8: "double precision",
    NUMBER: "double precision",
    TIMESTAMPTZ: "timestamptz",
    JSON: "jsonb",
    JSONB: "jsonb",
}


@attrs.frozen
class Table:
    """What the engine needs of one table: columns (name -> accepted types), the column sets
    its `ON CONFLICT` clauses infer a unique index from (with the partial predicate, if any),
    and privileges."""

    name: str
    columns: Mapping[str, frozenset[str]]
    unique: tuple[tuple[tuple[str, ...], str | None], ...] = ()
    privileges: tuple[str, ...] = ("SELECT",)
    written: bool = False  # the processor inserts rows: its NOT NULL columns must be supplied


def _table(
    name: str,
    columns: Mapping[str, frozenset[str]],
    *,
    unique: Iterable[tuple[tuple[str, ...], str | None]] = (),
    privileges: Sequence[str] = ("SELECT",),
) -> Table:
    written = "INSERT" in privileges
    return Table(name, dict(columns), tuple(unique), tuple(privileges), written)


WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")

TIMING = (
    _table("events", {"id": UUID}),
    _table("entries", {"id": UUID, "event_id": UUID, "number": TEXT, "class": TEXT}),
    _table("devices", {"id": UUID, "imei": TEXT}),
    _table("entry_devices", {"entry_id": UUID, "device_id": UUID}),
    _table(
        "stages", {"id": UUID, "event_id": UUID, "opens_at": TIMESTAMPTZ, "closes_at": TIMESTAMPTZ}
    ),
    _table(
        "controls",
        {
            "id": UUID,
            "stage_id": UUID,
            "ordinal": ANY_INT,
            "kind": TEXT,
            **dict.fromkeys(
                ("lat1", "lon1", "lat2", "lon2", "latitude", "longitude", "validate_radius_m"),
                FLOAT8,
            ),
            "penalty_s": ANY_INT,
        },
    ),
    _table(
        "timing_records",
        {
            "id": UUID,
            "stage_id": UUID,
            "entry_id": UUID,
            "control_id": UUID,
            "device_id": TEXT,
            "passed_at": TIMESTAMPTZ,
            "speed_kmh": FLOAT8,
            "distance_m": FLOAT8,
            "fix_before": TIMESTAMPTZ,
            "fix_after": TIMESTAMPTZ,
            "updated_at": TIMESTAMPTZ,
        },
        unique=[(("stage_id", "entry_id", "control_id"), None)],
        privileges=WRITE,
    ),
    _table(
        "stage_results",
        {
            "id": UUID,
            "stage_id": UUID,
            "entry_id": UUID,
            "status": TEXT,
            "started_at": TIMESTAMPTZ,
            "finished_at": TIMESTAMPTZ,
            "elapsed_ms": INT8,
            "penalty_ms": INT8,
            "total_ms": INT8,
            "controls_passed": INT4,
            "controls_missed": INT4,
            "position": INT4,
            "class_position": INT4,
            "gap_ms": INT8,
            "updated_at": TIMESTAMPTZ,
        },
        unique=[(("stage_id", "entry_id"), None)],
        privileges=WRITE,
    ),
)

ZONES = (
    _table(
        "speed_zones",
        {
            "id": UUID,
            "stage_id": UUID,
            "start_control_id": UUID,
            "end_control_id": UUID,
            "limit_kmh": NUMBER,
            "tolerance_kmh": NUMBER,
            "min_duration_s": NUMBER,
            "penalties": JSON,
        },
    ),
    _table(
        "speed_violations",
        {
            "id": UUID,
            "stage_id": UUID,
            "entry_id": UUID,
            "zone_id": UUID,
            "started_at": TIMESTAMPTZ,
            "ended_at": TIMESTAMPTZ,
            "max_speed_kmh": FLOAT8,
            "excess_kmh": FLOAT8,
            "distance_m": FLOAT8,
            "penalty_s": INT4,
            "updated_at": TIMESTAMPTZ,
        },
        unique=[(("stage_id", "entry_id", "zone_id", "started_at"), None)],
        privileges=WRITE,
    ),
)

OPEN_ALERT = "cleared_at IS NULL"
ALERTS = (
    _table(
        "alerts",
        {
            "id": UUID,
            "event_id": UUID,
            "stage_id": UUID,
            "entry_id": UUID,
            "kind": TEXT,
            "raised_at": TIMESTAMPTZ,
            "cleared_at": TIMESTAMPTZ,
            "latitude": FLOAT8,
            "longitude": FLOAT8,
            "details": JSONB,
        },
        unique=[(("entry_id", "kind"), OPEN_ALERT)],
        privileges=("SELECT", "INSERT", "UPDATE"),
    ),
)

IO = (
    _table(
        "io_mappings",
        {"model": TEXT, "io_id": ANY_INT, "name": TEXT, "multiplier": NUMBER, "unit": TEXT},
    ),
    _table("devices", {"model": TEXT}),
)

PARTS: Mapping[str, tuple[Table, ...]] = {
    "timing": TIMING,
    "zones": ZONES,
    "alerts": ALERTS,
    "io": IO,
}

COLUMNS = """
SELECT c.relname, a.attname, a.atttypid::regtype::text, a.attnotnull,
       a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
FROM unnest(%s::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
"""

INDEXES = """
SELECT c.relname, i.indisprimary,
       array(SELECT a.attname FROM unnest(i.indkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n),
       pg_get_expr(i.indpred, i.indrelid), i.indexprs IS NOT NULL
FROM unnest(%s::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_index i ON i.indrelid = c.oid
WHERE i.indisunique AND i.indisvalid
"""

PRIVILEGES = """
SELECT t.name, p.privilege, has_table_privilege(to_regclass(t.name), p.privilege)
FROM unnest(%s::text[]) AS t(name), unnest(%s::text[]) AS p(privilege)
WHERE to_regclass(t.name) IS NOT NULL
"""


@attrs.frozen
class Catalog:
    """What the database has: columns (table -> column -> (type, not null, has default)),
    unique indexes (table -> [(columns, predicate, primary)]), privileges held."""

    columns: Mapping[str, Mapping[str, tuple[str, bool, bool]]]
    unique: Mapping[str, list[tuple[frozenset[str], str | None, bool]]]
    privileges: frozenset[tuple[str, str]]

    def has(self, table: str) -> bool:
        return table in self.columns


def read_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    """One transaction, three catalog queries, for every table of every part."""
    names = sorted({t.name for tables in PARTS.values() for t in tables})
    privileges = sorted({p for tables in PARTS.values() for t in tables for p in t.privileges})
    columns: dict[str, dict[str, tuple[str, bool, bool]]] = {}
    unique: dict[str, list[tuple[frozenset[str], str | None, bool]]] = {}
    with conn.transaction():
        for table, column, kind, not_null, default in conn.execute(COLUMNS, (names,)):
            columns.setdefault(table, {})[column] = (kind, bool(not_null), bool(default))
        for table, primary, index_columns, predicate, expressions in conn.execute(
            INDEXES, (names,)
        ):
            if not expressions:
                unique.setdefault(table, []).append(
                    (frozenset(index_columns), predicate, bool(primary))
                )
        held = frozenset(
            (table, privilege)
            for table, privilege, ok in conn.execute(PRIVILEGES, (names, privileges))
            if ok
        )
    return Catalog(columns, unique, held)


@attrs.frozen
class SchemaReport:
    """The verdict per part: `absent` (none of its tables), `ok`, or its problems."""

    absent: frozenset[str]
    problems: Mapping[str, tuple[Problem, ...]]

    def usable(self, part: str) -> bool:
        return part not in self.absent and not self.problems.get(part)

    @property
    def timing_absent(self) -> bool:
        return "timing" in self.absent


def check(catalog: Catalog) -> SchemaReport:
    absent: set[str] = set()
    problems: dict[str, tuple[Problem, ...]] = {}
    for part, tables in PARTS.items():
        # a part is absent when its own tables are (io's `devices` belongs to timing)
        own = [t for t in tables if not _shared(part, t)]
        if not any(catalog.has(t.name) for t in own):
            absent.add(part)
            continue
        found: list[Problem] = []
        for table in tables:
            found.extend(_check_table(part, table, catalog))
        if found:
            problems[part] = tuple(found)
    return SchemaReport(frozenset(absent), problems)


def _shared(part: str, table: Table) -> bool:
    return part != "timing" and any(t.name == table.name for t in TIMING)


EFFECT = {
    "timing": "nothing is timed",
    "zones": "speed zones off",
    "alerts": "safety alerts off",
    "io": "ignition in alerts off",
}


def _problem(part: str, table: str, detail: str, fix: str) -> Problem:
    return Problem(
        subject=f"table {table}", reason="schema", detail=f"{detail} ({EFFECT[part]})", fix=fix
    )


def _check_table(part: str, table: Table, catalog: Catalog) -> list[Problem]:
    name = table.name
    columns = catalog.columns.get(name)
    if columns is None:
        return [
            _problem(
                part,
                name,
                "missing",
                "create it as docs/racing-domain.md says",
            )
        ]
    found: list[Problem] = []
    for column, accepted in table.columns.items():
        if column not in columns:
            kind = _PREFERRED[accepted]
            found.append(
                _problem(
                    part,
                    name,
                    f"no column {column}",
                    f"ALTER TABLE {name} ADD COLUMN {_quote(column)} {kind};",
                )
            )
            continue
        kind = columns[column][0]
        if kind not in accepted:
            wanted = _PREFERRED[accepted]
            found.append(
                _problem(
                    part,
                    name,
                    f"column {column} is {kind}, needs {' or '.join(sorted(accepted))}",
                    f"ALTER TABLE {name} ALTER COLUMN {_quote(column)} TYPE {wanted}"
                    f" USING {_quote(column)}::{wanted};",
                )
            )
    if table.written:
        for column, (_kind, not_null, has_default) in sorted(columns.items()):
            if not_null and not has_default and column not in table.columns:
                found.append(
                    _problem(
                        part,
                        name,
                        f"column {column} is NOT NULL without a default, and the processor "
                        "does not write it",
                        f"ALTER TABLE {name} ALTER COLUMN {_quote(column)} DROP NOT NULL;",
                    )
                )
        primary = [cols for cols, _pred, is_primary in catalog.unique.get(name, []) if is_primary]
        if primary != [frozenset({"id"})]:
            found.append(
                _problem(
                    part,
                    name,
                    "its primary key is not the single column id (Directus serves only tables "
                    "with a single-column primary key)",
                    f"ALTER TABLE {name} ADD PRIMARY KEY (id);  -- after dropping the old one",
                )
            )
    for wanted_columns, predicate in table.unique:
        if not _has_unique(catalog, name, frozenset(wanted_columns), predicate):
            where = f" WHERE {predicate}" if predicate else ""
            what = "partial unique index" if predicate else "unique constraint"
            index = f"{name}_{'_'.join(wanted_columns)}_key"
            fix = (
                f"CREATE UNIQUE INDEX {index} ON {name} ({', '.join(wanted_columns)}){where};"
                if predicate
                else f"ALTER TABLE {name} ADD CONSTRAINT {index} UNIQUE"
                f" ({', '.join(wanted_columns)});"
            )
            found.append(
                _problem(
                    part,
                    name,
                    f"no {what} on ({', '.join(wanted_columns)}){where} (its ON CONFLICT "
                    "clause needs one)",
                    fix,
                )
            )
    missing = [p for p in table.privileges if (name, p) not in catalog.privileges]
    if missing:
        found.append(
            _problem(
                part,
                name,
                f"the processor's role lacks {', '.join(missing)}",
                f"GRANT {', '.join(missing)} ON {name} TO <the processor's role>;",
            )
        )
    return found


def _has_unique(
    catalog: Catalog, table: str, columns: frozenset[str], predicate: str | None
) -> bool:
    for index_columns, index_predicate, _primary in catalog.unique.get(table, []):
        if index_columns != columns:
            continue
        if predicate is None and index_predicate is None:
            return True
        if predicate is not None and _same_predicate(index_predicate, predicate):
            return True
    return False


def _same_predicate(found: str | None, wanted: str) -> bool:
    """`pg_get_expr` prints `(cleared_at IS NULL)`: compare without parentheses and case."""
    if found is None:
        return False

    def norm(text: str) -> str:
        return " ".join(text.replace("(", " ").replace(")", " ").split()).lower()

    return norm(found) == norm(wanted)


def _quote(column: str) -> str:
    return f'"{column}"' if column in {"class", "position"} else column
