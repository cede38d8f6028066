"""Derived IO attributes (issue 12 item 3): the pure mapping, then live position frames."""

from __future__ import annotations

import psycopg
import trio

from processor.codecs.io_map import IoElement, build, derive, value_of
from tests.support import racing
from tests.support.fixes import fix
from tests.support.live import (
    LiveRig,
    live_client,
    receive,
    subscribe,
)
from tests.support.service import wait_until

FMB = build(
    [
        ("FMB920", 239, "ignition", 1, "bool"),
        ("FMB920", 240, "movement", 1, "bool"),
        ("FMB920", 16, "odometer_km", 0.001, "km"),
        ("FMB920", 66, "external_voltage_v", 0.001, "V"),
        (None, 1, "ignored", 1, None),
    ]
)["FMB920"]


def test_mapped_ids_are_named_and_scaled_unmapped_stay_raw() -> None:
    attributes = {"239": 1, "240": 0, "16": 1234567, "66": 12345, "1": 0, "78": b"\x01\xff"}
    assert derive(attributes, FMB) == {
        "ignition": True,
        "movement": False,
        "odometer_km": 1234.567,
        "external_voltage_v": 12.345,
        "1": 0,
        "78": "01ff",
    }
    assert value_of({"239": 0}, FMB, "ignition") is False
    assert value_of({"239": 0}, {}, "ignition") is None
    # a non-numeric value of a mapped id keeps its raw value under the name
    assert derive({"16": "n/a"}, FMB) == {"odometer_km": "n/a"}
    assert build([("M", 5, "x", None, None)]) == {"M": {"5": IoElement("x", 1.0, None)}}


async def test_position_frames_carry_io_for_mapped_models_only(live_rig: LiveRig) -> None:
    course = racing.live_course(live_rig, [("mapped", None), ("plain", None)])
    with psycopg.connect(live_rig.database_url) as conn:
        conn.execute(
            "UPDATE devices SET model = 'FMB920' WHERE imei = %s", (course.devices["mapped"],)
        )
        conn.execute(
            "INSERT INTO io_mappings (model, io_id, name, multiplier, unit) VALUES "
            "('FMB920', 239, 'ignition', 1, 'bool'), ('FMB920', 16, 'odometer_km', 0.001, 'km')"
        )
    attributes = {"239": 1, "16": 1234567, "21": 4}
    async with live_rig.service() as service:
        async with live_client(service.live_port) as ws:
            await subscribe(ws, course.event_id)
            live_rig.publish(
                [
                    fix(course.devices["mapped"], 10, attributes=attributes),
                    fix(course.devices["plain"], 11, attributes=attributes),
                ]
            )
            mapped = (await receive(ws, within=30))["position"]
            plain = (await receive(ws, within=30))["position"]
        assert mapped["io"] == {"ignition": True, "odometer_km": 1234.567, "21": 4}
        assert "io" not in plain
        # a later subscriber's snapshot carries the same derived values, from the stored row
        await wait_until(lambda: stored_attributes(live_rig.database_url, course.devices["plain"]))
        async with live_client(service.live_port) as ws:
            snapshot = {
                p["device_id"]: p for p in (await subscribe(ws, course.event_id))["snapshot"]
            }
        assert snapshot[course.devices["mapped"]]["io"] == mapped["io"]
        assert "io" not in snapshot[course.devices["plain"]]
        # the stored row keeps the raw IO
        await wait_until(lambda: stored_attributes(live_rig.database_url, course.devices["mapped"]))
        assert stored_attributes(live_rig.database_url, course.devices["mapped"]) == attributes
        # a mapping change applies at the next refresh
        with psycopg.connect(live_rig.database_url) as conn:
            conn.execute("UPDATE io_mappings SET name = 'ign' WHERE io_id = 239")
        assert service.live is not None
        live = service.live
        with trio.fail_after(30):
            assert await live.device_events.refresh()
        mapping = live.device_events.io_of(course.devices["mapped"])
        assert mapping is not None and mapping["239"].name == "ign"


def stored_attributes(database_url: str, device: str) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT attributes FROM positions WHERE device_id = %s", (device,)
        ).fetchone()
    return None if row is None else row[0]
