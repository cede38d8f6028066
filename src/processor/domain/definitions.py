"""What the racing domain reads from the Directus tables: stages, controls, zones, who drives what.

The whole device -> entry -> event -> stages mapping is read into one immutable `Definitions`
snapshot, replaced every `DOMAIN_REFRESH_MS`, so no fix costs a database round trip. Each stage
gets a fingerprint of its definitions; a stage whose fingerprint differs from the one
`domain_stages` holds is rebuilt. A stage the core refuses is left out and reported as its own
problem; other stages go on. Details: docs/racing-domain.md, Engine internals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
import psycopg

from processor.domain.health import Problem
from processor.domain.rules.course import StageError, check_stage
from processor.domain.rules.model import Control, ControlKind, Stage
from processor.domain.rules.zones import Zone, ZoneError, check_zone, parse_brackets
from processor.domain.schema import SchemaReport, check, read_catalog
from processor.domain.timing_store import StageVersion, stage_versions

STAGES = "SELECT id::text, event_id::text, opens_at, closes_at FROM stages"
CONTROLS = """
SELECT id::text, stage_id::text, ordinal, kind, lat1, lon1, lat2, lon2,
       latitude, longitude, validate_radius_m, penalty_s
FROM controls WHERE stage_id IS NOT NULL
ORDER BY stage_id, ordinal, id
"""
ZONES = """
SELECT id::text, stage_id::text, start_control_id::text, end_control_id::text,
       limit_kmh::float8, tolerance_kmh::float8, min_duration_s::float8, penalties
FROM speed_zones WHERE stage_id IS NOT NULL ORDER BY stage_id, id
"""
ENTRY_DEVICES = """
SELECT DISTINCT d.imei, en.id::text, en.event_id::text, en.class
FROM devices d
JOIN entry_devices ed ON ed.device_id = d.id
JOIN entries en ON en.id = ed.entry_id
WHERE d.imei IS NOT NULL AND en.event_id IS NOT NULL
ORDER BY 1, 2
"""

ZONES_UNAVAILABLE = "zones unavailable"


def epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@attrs.frozen
class StageDef:
    stage: Stage
    event_id: str | None
    fingerprint: str
    zones: tuple[Zone, ...] = ()


@attrs.frozen
class Definitions:
    """One consistent snapshot of the definitions (immutable; replaced whole on refresh)."""

    stages: Mapping[str, StageDef] = attrs.field(factory=dict)
    # device_id (IMEI) -> (entry_id, event_id) of every entry it is linked to
    device_entries: Mapping[str, tuple[tuple[str, str], ...]] = attrs.field(factory=dict)
    stages_by_event: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    # event_id -> its entries that have at least one device
    event_entries: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    # stages the core refuses: stage_id -> (fingerprint, the problem); not evaluated
    invalid: Mapping[str, tuple[str, Problem]] = attrs.field(factory=dict)
    # what `domain_stages` held when this snapshot was read (stage_id -> version)
    versions: Mapping[str, StageVersion] = attrs.field(factory=dict)
    zones_enabled: bool = False  # the zone tables exist and are as the engine needs them

    def pairs_for(self, device_id: str, t: float) -> list[tuple[str, str]]:
        """(stage_id, entry_id) pairs a fix of `device_id` at `t` can change."""
        pairs: list[tuple[str, str]] = []
        for entry_id, event_id in self.device_entries.get(device_id, ()):
            for stage_id in self.stages_by_event.get(event_id, ()):
                stage = self.stages[stage_id].stage
                if stage.opens_at is not None and t < stage.opens_at:
                    continue
                if stage.closes_at is not None and t >= stage.closes_at:
                    continue
                pairs.append((stage_id, entry_id))
        return pairs

    def entries_of_stage(self, stage_id: str) -> tuple[str, ...]:
        definition = self.stages.get(stage_id)
        if definition is None or definition.event_id is None:
            return ()
        return self.event_entries.get(definition.event_id, ())

    def current(self, stage_id: str) -> bool:
        """The stage's stored rows were rebuilt from these very definitions (as of the read)."""
        definition = self.stages.get(stage_id)
        version = self.versions.get(stage_id)
        return (
            definition is not None
            and version is not None
            and (version.fingerprint == definition.fingerprint)
        )


def _control(stage_id: str, row: tuple[Any, ...]) -> Control:
    (cid, _stage, ordinal, kind, lat1, lon1, lat2, lon2, lat, lon, radius, penalty) = row
    try:
        control_kind = ControlKind(kind)
    except ValueError:
        raise StageError(f"stage {stage_id}: control {cid} has an unknown kind {kind!r}") from None
    return Control(
        id=cid,
        ordinal=int(ordinal),
        kind=control_kind,
        lat1=lat1,
        lon1=lon1,
        lat2=lat2,
        lon2=lon2,
        latitude=lat,
        longitude=lon,
        validate_radius_m=radius,
        penalty_s=int(penalty or 0),
    )


def _zone(row: tuple[Any, ...]) -> Zone:
    zid, _stage, start, end, limit, tolerance, min_duration, penalties = row
    if limit is None:
        raise ZoneError(f"zone {zid}: limit_kmh is missing")
    return Zone(
        id=zid,
        start_control_id=start or "",
        end_control_id=end or "",
        limit_kmh=float(limit),
        tolerance_kmh=float(0.0 if tolerance is None else tolerance),
        min_duration_s=float(0.0 if min_duration is None else min_duration),
        brackets=parse_brackets(penalties),
    )


def build_definitions(
    stage_rows: Iterable[tuple[Any, ...]],
    control_rows: Iterable[tuple[Any, ...]],
    device_rows: Iterable[tuple[Any, ...]],
    zone_rows: Iterable[tuple[Any, ...]] = (),
    versions: Mapping[str, StageVersion] | None = None,
    *,
    zones_state: str = "usable",
) -> Definitions:
    """The snapshot from the tables' rows. `zones_state`: `usable` (zone rows given),
    `absent` (no zone tables: no zones) or `unavailable` (their tables exist but are not as
    the engine needs them), which is part of every stage's fingerprint, so stages are rebuilt
    with their zones once the tables are fixed."""
    zones: dict[str, list[Zone | str]] = {}  # stage -> zones, or why one is refused
    for row in zone_rows if zones_state == "usable" else ():
        try:
            zones.setdefault(row[1], []).append(_zone(row))
        except (ZoneError, TypeError, ValueError, OverflowError) as exc:
            zones.setdefault(row[1], []).append(f"zone {row[0]}: {exc}")
    controls: dict[str, list[Control]] = {}
    broken: dict[str, str] = {}
    for row in control_rows:
        try:
            controls.setdefault(row[1], []).append(_control(row[1], row))
        except StageError as exc:
            broken[row[1]] = str(exc)
    device_entries: dict[str, list[tuple[str, str]]] = {}
    event_entries: dict[str, set[str]] = {}
    # event -> (entry, imei, class), for fingerprints: a relinked device changes the tracks, a
    # changed class the class positions; either rebuilds the stage
    links: dict[str, list[tuple[str, str, str]]] = {}
    for imei, entry_id, event_id, klass in device_rows:
        device_entries.setdefault(imei, []).append((entry_id, event_id))
        event_entries.setdefault(event_id, set()).add(entry_id)
        links.setdefault(event_id, []).append((entry_id, imei, klass or ""))
    stages: dict[str, StageDef] = {}
    invalid: dict[str, tuple[str, Problem]] = {}
    by_event: dict[str, list[str]] = {}
    for stage_id, event_id, opens_at, closes_at in stage_rows:
        stage = Stage(
            id=stage_id,
            controls=tuple(sorted(controls.get(stage_id, ()), key=lambda c: (c.ordinal, c.id))),
            opens_at=epoch(opens_at),
            closes_at=epoch(closes_at),
        )
        stage_zones: list[Zone | str] | str = (
            ZONES_UNAVAILABLE if zones_state == "unavailable" else zones.get(stage_id, [])
        )
        digest = hashlib.sha256(
            repr((stage, event_id, sorted(links.get(event_id or "", ())), stage_zones)).encode()
        ).hexdigest()[:32]
        try:
            _check(stage, broken.get(stage_id), stage_zones)
        except StageError as exc:
            invalid[stage_id] = (digest, stage_problem(stage_id, "definition", str(exc)))
            continue
        valid = tuple(z for z in stage_zones if isinstance(z, Zone))
        stages[stage_id] = StageDef(stage, event_id, digest, valid)
        if event_id is not None:
            by_event.setdefault(event_id, []).append(stage_id)
    return Definitions(
        stages=stages,
        device_entries={k: tuple(v) for k, v in device_entries.items()},
        stages_by_event={k: tuple(sorted(v)) for k, v in by_event.items()},
        event_entries={k: tuple(sorted(v)) for k, v in event_entries.items()},
        invalid=invalid,
        versions=dict(versions or {}),
        zones_enabled=zones_state == "usable",
    )


def _check(stage: Stage, broken: str | None, stage_zones: list[Zone | str] | str) -> None:
    if broken is not None:
        raise StageError(broken)
    check_stage(stage)
    ordinals = {c.id: c.ordinal for c in stage.controls}
    for zone in stage_zones if isinstance(stage_zones, list) else ():
        if isinstance(zone, str):
            raise StageError(zone)
        try:
            check_zone(zone, ordinals)
        except ZoneError as exc:
            raise StageError(str(exc)) from None


def stage_problem(stage_id: str, reason: str, detail: str) -> Problem:
    fix = {
        "definition": "correct the stage, its controls or its speed zones in Directus",
        "data": "the database refused a value derived from this stage's data",
    }.get(reason, "see the error; the stage is retried with backoff and rebuilt when fixed")
    return Problem(subject=f"stage {stage_id}", reason=reason, detail=detail, fix=fix)


def read_definitions(conn: psycopg.Connection[Any], report: SchemaReport) -> Definitions:
    """The whole snapshot and the stage versions, read in one transaction so its parts agree.
    Zones are read only when the schema report says their tables are usable."""
    zones_state = zones_state_of(report)
    with conn.transaction():
        stage_rows = conn.execute(STAGES).fetchall()
        control_rows = conn.execute(CONTROLS).fetchall()
        device_rows = conn.execute(ENTRY_DEVICES).fetchall()
        zone_rows = conn.execute(ZONES).fetchall() if zones_state == "usable" else []
        versions = stage_versions(conn)
    return build_definitions(
        stage_rows, control_rows, device_rows, zone_rows, versions, zones_state=zones_state
    )


def zones_state_of(report: SchemaReport) -> str:
    if "zones" in report.absent:
        return "absent"
    return "usable" if report.usable("zones") else "unavailable"


def read_current(conn: psycopg.Connection[Any]) -> Definitions:
    """The definitions as the engine would read them now (the schema checked first): for
    commands and tests."""
    return read_definitions(conn, check(read_catalog(conn)))
