"""What the racing domain reads from the Directus tables: stages, controls, and who drives what.

The engine needs, for every incoming fix, the (stage, entry) pairs it can change: device ->
entry_devices -> entries -> event -> stages whose window holds the fix. Looking that up per fix
in the database would cost a round trip per batch for data that changes a few times a day, so
the whole mapping is read into one immutable `Course` snapshot, replaced every
`DOMAIN_REFRESH_MS` (like the live broadcast's device map).

Each stage also gets a *fingerprint*: a digest of its window, its controls, and the devices
and classes of its event's entries. When a fingerprint changes (a control moved, a device
re-linked, a class changed), the engine rebuilds that stage from the stored fixes;
fingerprints are remembered in Redis so a change made while no instance ran is still noticed
at the next start.

A stage the core refuses (`StageError`: a half-typed control, no finish, two starts...) is left
out of the snapshot and logged once per version: its stored rows stay as they were until it is
fixed in Directus; then its fingerprint is new and the stage is rebuilt. Other stages go on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
import psycopg
import structlog

from processor.domain.course import StageError, check_stage
from processor.domain.model import Control, ControlKind, Stage
from processor.domain.zones import Zone, ZoneError, check_zone, parse_brackets

log = structlog.get_logger("processor.domain.definitions")

TABLES = ("stages", "controls", "timing_records", "stage_results")

STAGES = "SELECT id::text, event_id::text, opens_at, closes_at FROM stages"
CONTROLS = """
SELECT id::text, stage_id::text, ordinal, kind, lat1, lon1, lat2, lon2,
       latitude, longitude, validate_radius_m, penalty_s
FROM controls WHERE stage_id IS NOT NULL
ORDER BY stage_id, ordinal, id
"""
ZONES = """
SELECT id::text, stage_id::text, start_control_id::text, end_control_id::text, limit_kmh,
       tolerance_kmh, min_duration_s, penalties
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


def epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def tables_exist(conn: psycopg.Connection[Any]) -> bool:
    """True when every racing table is visible on the connection's search_path."""
    row = conn.execute(
        "SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t", (list(TABLES),)
    ).fetchone()
    return bool(row and row[0])


@attrs.frozen
class StageDef:
    stage: Stage
    event_id: str | None
    fingerprint: str
    zones: tuple[Zone, ...] = ()


@attrs.frozen
class Course:
    """One consistent snapshot of the definitions (immutable; replaced whole on refresh)."""

    stages: Mapping[str, StageDef] = attrs.field(factory=dict)
    # device_id (IMEI) -> (entry_id, event_id) of every entry it is linked to
    device_entries: Mapping[str, tuple[tuple[str, str], ...]] = attrs.field(factory=dict)
    stages_by_event: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    # event_id -> its entries that have at least one device
    event_entries: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    # stages the core refuses (StageError): stage_id -> (fingerprint, why); not evaluated
    invalid: Mapping[str, tuple[str, str]] = attrs.field(factory=dict)
    zones_enabled: bool = False  # the speed_zones/speed_violations tables exist

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


def build_course(
    stage_rows: Iterable[tuple[Any, ...]],
    control_rows: Iterable[tuple[Any, ...]],
    device_rows: Iterable[tuple[Any, ...]],
    zone_rows: Iterable[tuple[Any, ...]] = (),
) -> Course:
    zones: dict[str, list[Zone | str]] = {}  # stage -> zones, or why one is refused
    for zid, zstage, start, end, limit, tolerance, min_duration, penalties in zone_rows:
        try:
            zones.setdefault(zstage, []).append(
                Zone(
                    id=zid,
                    start_control_id=start or "",
                    end_control_id=end or "",
                    limit_kmh=float(limit),
                    tolerance_kmh=float(tolerance or 0.0),
                    min_duration_s=float(min_duration or 0.0),
                    brackets=parse_brackets(penalties),
                )
            )
        except (ZoneError, TypeError, ValueError) as exc:
            zones.setdefault(zstage, []).append(f"zone {zid}: {exc}")
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
    invalid: dict[str, tuple[str, str]] = {}
    by_event: dict[str, list[str]] = {}
    for stage_id, event_id, opens_at, closes_at in stage_rows:
        stage = Stage(
            id=stage_id,
            controls=tuple(sorted(controls.get(stage_id, ()), key=lambda c: (c.ordinal, c.id))),
            opens_at=epoch(opens_at),
            closes_at=epoch(closes_at),
        )
        stage_zones = zones.get(stage_id, [])
        digest = hashlib.sha256(
            repr((stage, event_id, sorted(links.get(event_id or "", ())), stage_zones)).encode()
        ).hexdigest()[:32]
        try:
            if stage_id in broken:
                raise StageError(broken[stage_id])
            check_stage(stage)
            ordinals = {c.id: c.ordinal for c in stage.controls}
            for zone in stage_zones:
                if isinstance(zone, str):
                    raise StageError(zone)
                try:
                    check_zone(zone, ordinals)
                except ZoneError as exc:
                    raise StageError(str(exc)) from None
        except StageError as exc:
            invalid[stage_id] = (digest, str(exc))
            continue
        valid = tuple(z for z in stage_zones if isinstance(z, Zone))
        stages[stage_id] = StageDef(stage, event_id, digest, valid)
        if event_id is not None:
            by_event.setdefault(event_id, []).append(stage_id)
    return Course(
        stages=stages,
        device_entries={k: tuple(v) for k, v in device_entries.items()},
        stages_by_event={k: tuple(sorted(v)) for k, v in by_event.items()},
        event_entries={k: tuple(sorted(v)) for k, v in event_entries.items()},
        invalid=invalid,
    )


def read_course(conn: psycopg.Connection[Any]) -> Course:
    """The whole snapshot, read in one transaction so its parts agree."""
    with conn.transaction():
        stage_rows = conn.execute(STAGES).fetchall()
        control_rows = conn.execute(CONTROLS).fetchall()
        device_rows = conn.execute(ENTRY_DEVICES).fetchall()
        zone_rows: list[Any] = []
        enabled = conn.execute(
            "SELECT to_regclass('speed_zones') IS NOT NULL "
            "AND to_regclass('speed_violations') IS NOT NULL"
        ).fetchone() == (True,)
        if enabled:
            zone_rows = conn.execute(ZONES).fetchall()
    course = build_course(stage_rows, control_rows, device_rows, zone_rows)
    return attrs.evolve(course, zones_enabled=enabled)
