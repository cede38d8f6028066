"""docs/websocket.schema.json: a valid draft 2020-12 schema that every frame really sent matches.

The live tests check every frame they receive against it (tests/support/live.py); here: the
recorded race-control session of docs/examples/, every frame kind the server can send, the
frames the protocol module builds, and frames the schema must refuse (it would be no contract
if it accepted anything).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from processor.codecs import race_feed
from processor.codecs.position import Position
from processor.live import protocol
from processor.observability.metrics import LIVE_MESSAGES_OUT
from tests.support.paths import ROOT
from tests.support.wire_schema import problems, schema

RECORDING = ROOT / "docs" / "examples" / "race-control-session.jsonl"
EVENT = "4b1c2f9e-0d7a-4e55-9a57-1f0f3c8d2a11"
TOPIC = f"event:{EVENT}"
ID = "0b8414aa-ca8a-494f-acbc-2581550812c7"
TS = datetime(2026, 5, 12, 10, 0, 0, 500_000, tzinfo=UTC)


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_recorded_session_matches() -> None:
    """Every frame of docs/examples/race-control-session.jsonl (a `_note` line is the
    recorder's own annotation, not a frame)."""
    frames = [orjson.loads(line) for line in RECORDING.read_text().splitlines() if line]
    frames = [f for f in frames if f["type"] != "_note"]
    assert {f["type"] for f in frames} >= {"subscribed", "position", "timing", "results", "alert"}
    for frame in frames:
        assert problems(frame) == [], frame


def test_the_example_session_in_the_guide_matches() -> None:
    """docs/websocket.md's example session: each `→` line is a client frame (but the one that
    shows a bad_request), each `←` JSON line a server frame."""
    lines = (ROOT / "docs" / "websocket.md").read_text().splitlines()
    sent = [orjson.loads(line[2:]) for line in lines if line.startswith("→ {")]
    received = [orjson.loads(line[2:]) for line in lines if line.startswith("← {")]
    assert len(sent) == 3
    assert len(received) == 4
    for frame in sent:  # the example's malformed subscribe is refused by the schema too
        assert bool(problems(frame, "clientFrame")) == ("not-a-uuid" in frame["topic"]), frame
    for frame in received:
        assert problems(frame) == [], frame


def test_every_kind_the_server_sends_has_a_schema() -> None:
    kinds = {
        definition["properties"]["type"]["const"]
        for definition in (
            schema()["$defs"][ref["$ref"].rsplit("/", 1)[1]]
            for ref in schema()["$defs"]["serverFrame"]["oneOf"]
        )
        if "properties" in definition
    } | {"timing"}  # timing: one of two shapes (record, removed)
    assert kinds == set(LIVE_MESSAGES_OUT)


def position(**overrides: Any) -> Position:
    values: dict[str, Any] = {
        "device_id": "356307042441013",
        "ts": TS,
        "latitude": 41.327546,
        "longitude": 19.818698,
        "altitude": 112.0,
        "angle": 271.0,
        "speed": 84.0,
        "satellites": 12,
    }
    values.update(overrides)
    return Position(**values)


def built_frames() -> list[str]:
    """One of each server frame, built by the code that builds the real ones."""
    fix = protocol.encode_position_object(position())
    bare = protocol.encode_position_object(position(altitude=None, angle=None, speed=None))
    with_io = protocol.encode_position_object(
        position(satellites=None), {"ignition": True, "odometer_km": 1234.5, "21": 4, "x": "0a"}
    )
    record = race_feed.record_object(
        entry_id=ID,
        control_id=ID,
        control_ordinal=2,
        kind="waypoint",
        device_id=None,
        passed_at=TS,
        speed_kmh=None,
        distance_m=None,
        fix_before=TS,
        fix_after=None,
    )
    violation = {
        "stage_id": ID,
        "entry_id": ID,
        "number": None,
        "zone_id": ID,
        "started_at": race_feed.timestamp(TS),
        "ended_at": race_feed.timestamp(TS),
        "max_speed_kmh": 100.0,
        "excess_kmh": 20.0,
        "distance_m": 150.0,
        "penalty_s": 60,
    }
    alert = {
        "id": ID,
        "event_id": EVENT,
        "stage_id": None,
        "entry_id": ID,
        "number": "7",
        "kind": "no_signal",
        "raised_at": race_feed.timestamp(TS),
        "cleared_at": None,
        "latitude": None,
        "longitude": None,
        "details": {"last_fix_at": race_feed.timestamp(TS)},
    }
    topic = protocol.topic_json(TOPIC)
    return [
        protocol.subscribed_frame(
            topic, f"[{fix},{bare},{with_io}]", "[]", orjson.dumps([alert]).decode()
        ),
        protocol.unsubscribed_frame(TOPIC),
        protocol.position_frame(topic, fix),
        protocol.error_frame(protocol.BAD_REQUEST, "invalid JSON"),
        protocol.error_frame(protocol.BAD_REQUEST, "bad topic", "event:not-a-uuid"),
        protocol.error_frame(protocol.FORBIDDEN, "no longer allowed to read this event", TOPIC),
        race_feed.frame(TOPIC, race_feed.timing_change(EVENT, ID, record)),
        race_feed.frame(TOPIC, race_feed.removed_change(EVENT, ID, ID, ID)),
        race_feed.results_frame(TOPIC, ID, []),
        race_feed.frame(TOPIC, race_feed.alert_change(EVENT, alert)),
        race_feed.frame(TOPIC, race_feed.violation_change(EVENT, violation)),
    ]


def test_frames_built_by_the_server_code_match() -> None:
    for frame in built_frames():
        assert problems(orjson.loads(frame)) == [], frame


def test_client_frames() -> None:
    for kind in ("subscribe", "unsubscribe"):
        assert (
            problems(
                {"type": kind, "topic": TOPIC.upper().replace("EVENT", "event")}, "clientFrame"
            )
            == []
        )
        assert problems({"type": kind, "topic": TOPIC, "extra": 1}, "clientFrame") == []
        assert problems({"type": kind}, "clientFrame")
        assert problems({"type": kind, "topic": "event:x"}, "clientFrame")
    assert problems({"type": "publish", "topic": TOPIC}, "clientFrame")


def _mutations() -> list[tuple[str, dict[str, Any]]]:
    position_frame = orjson.loads(built_frames()[2])
    cases: list[tuple[str, dict[str, Any]]] = []

    def case(name: str, change: Any) -> None:
        frame = orjson.loads(orjson.dumps(position_frame))
        change(frame)
        cases.append((name, frame))

    case("undocumented field", lambda f: f.update(extra=1))
    case("uppercase topic", lambda f: f.update(topic=TOPIC.upper()))
    case("missing position", lambda f: f.pop("position"))
    case("latitude as text", lambda f: f["position"].update(latitude="41.3"))
    case("latitude out of range", lambda f: f["position"].update(latitude=91.0))
    case("null latitude", lambda f: f["position"].update(latitude=None))
    case("timestamp without Z", lambda f: f["position"].update(ts="2026-05-12T10:00:00.000000"))
    case("timestamp in milliseconds", lambda f: f["position"].update(ts="2026-05-12T10:00:00.000Z"))
    case("satellites as a float", lambda f: f["position"].update(satellites=1.5))
    case("unknown type", lambda f: f.update(type="positions"))
    case("io with a nested object", lambda f: f["position"].update(io={"a": {"b": 1}}))
    return cases


@pytest.mark.parametrize(("name", "frame"), _mutations(), ids=[n for n, _f in _mutations()])
def test_the_schema_refuses_what_the_server_never_sends(name: str, frame: dict[str, Any]) -> None:
    assert problems(frame), name


def test_race_frames_are_refused_when_malformed() -> None:
    timing, removed, results, alert, violation = (orjson.loads(f) for f in built_frames()[6:])
    timing["record"]["kind"] = "split"
    assert problems(timing)
    removed["record"] = removed.pop("removed")
    assert problems(removed)  # a removal is not a record
    results["results"] = [{"entry_id": ID}]
    assert problems(results)
    alert["alert"]["kind"] = "fire"
    assert problems(alert)
    violation["violation"]["penalty_s"] = "60"
    assert problems(violation)
