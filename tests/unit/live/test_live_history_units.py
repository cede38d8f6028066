"""The history endpoint's pure parts: the query string, the simplification, the two formats."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.live.history_query import HistoryQuery, QueryError, parse
from processor.live.simplify import PINNED, keep, significances, threshold
from processor.live.track_formats import Simplification, Track, geojson, gpx
from tests.support.history import check_contract, check_gpx, check_rfc7946

NOW = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
EVENT = "6F1F8D8E-1C8A-4A8E-9A53-3B8D8E2F0C11"


def query(text: str) -> HistoryQuery:
    return parse(text, now=NOW, max_window=timedelta(hours=24), max_points=1000)


def test_a_full_query() -> None:
    q = query(
        f"event={EVENT}&device=356307042441013&from=2026-05-12T10:00:00.5Z"
        "&to=2026-05-12T11:30:00%2B01:00&format=gpx&faulty=true&max_points=50"
    )
    assert q.event_id == EVENT.lower()
    assert q.device_id == "356307042441013"
    assert q.start == datetime(2026, 5, 12, 10, 0, 0, 500_000, tzinfo=UTC)
    assert q.end == datetime(2026, 5, 12, 10, 30, tzinfo=UTC)
    assert (q.format, q.include_faulty, q.max_points) == ("gpx", True, 50)
    assert q.document()["from"] == "2026-05-12T10:00:00.500000Z"


def test_defaults() -> None:
    q = query(f"event={EVENT}&from=2026-05-12T11:00:00Z")
    assert (q.end, q.format, q.include_faulty, q.max_points) == (NOW, "geojson", False, 1000)
    assert q.device_id is None


@given(st.text(max_size=300))
def test_any_query_string_is_a_query_or_a_named_refusal(text: str) -> None:
    try:
        query(text)
    except QueryError as exc:
        assert str(exc)
        assert ":" in str(exc) or "malformed" in str(exc)


# --- simplification -----------------------------------------------------------------------------


def segment_distance(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0
    if length2:
        t = max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / length2))
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)


COORDINATE = st.floats(-5_000, 5_000, allow_nan=False, allow_infinity=False)
TRACK = st.lists(st.tuples(COORDINATE, COORDINATE), min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(tracks=st.lists(TRACK, min_size=1, max_size=4), budget=st.integers(2, 200), data=st.data())
def test_simplification_keeps_ends_pins_and_stays_within_tolerance(
    tracks: list[list[tuple[float, float]]], budget: int, data: st.DataObject
) -> None:
    pins = [data.draw(st.sets(st.integers(0, len(track) - 1), max_size=3)) for track in tracks]
    ranks = [
        significances([x for x, _ in t], [y for _, y in t], p)
        for t, p in zip(tracks, pins, strict=True)
    ]
    limit = threshold(ranks, budget)
    kept = keep(ranks, limit)
    total = sum(len(t) for t in tracks)
    fixed = sum(len({0, len(t) - 1} | p) for t, p in zip(tracks, pins, strict=True))
    assert sum(len(k) for k in kept) <= max(budget, fixed)
    if limit is None:
        assert sum(len(k) for k in kept) == total
    for track, indices, pin in zip(tracks, kept, pins, strict=True):
        assert indices == sorted(set(indices))
        assert {0, len(track) - 1} | pin <= set(indices)
        if limit is None or limit == PINNED:
            continue
        for left, right in itertools.pairwise(indices):  # the shape: within the tolerance
            for i in range(left + 1, right):
                assert segment_distance(track[i], track[left], track[right]) <= limit + 1e-6


def test_straight_stretches_give_their_points_first() -> None:
    # a straight line with one corner: the corner survives the tightest budget
    xs = [float(i) for i in range(50)] + [49.0] * 50
    ys = [0.0] * 50 + [float(i) for i in range(1, 51)]
    ranks = significances(xs, ys, [])
    assert keep([ranks], threshold([ranks], 3)) == [[0, 49, 99]]


# --- formats ------------------------------------------------------------------------------------


def track(device: str, count: int) -> Track:
    t = Track(device)
    for i in range(count):
        t.times.append(f"2026-05-12T10:00:{i:02d}.000000Z")
        t.latitudes.append(41.0 + i / 1000)
        t.longitudes.append(19.0 - i / 1000)
        t.altitudes.append(None if i % 2 else 1e-7)
        t.speeds.append(None if i == 1 else 36.0)
        t.faulty.append(i == 2)
    t.fixes = count
    return t


def test_geojson_and_gpx_of_the_same_tracks() -> None:
    tracks = [track("a", 4), track("b\x00<", 1), track("empty", 0)]
    request = {
        "event_id": EVENT.lower(),
        "device_id": None,
        "from": "2026-05-12T10:00:00.000000Z",
        "to": "2026-05-12T11:00:00.000000Z",
        "faulty": True,
    }
    simplification = Simplification(max_points=5, tolerance_m=1.5, fixes=9, points=5)
    document = orjson.loads(
        geojson(tracks, request=request, include_faulty=True, simplification=simplification)
    )
    check_rfc7946(document)
    check_contract(document, "History")
    assert [f["geometry"]["type"] for f in document["features"]] == ["LineString", "Point"]
    assert document["features"][0]["properties"]["faulty"] == [False, False, True, False]
    tree = check_gpx(
        gpx(tracks, name="e", generated_at=request["to"], simplification=simplification)
    )
    points = tree.findall(".//{http://www.topografix.com/GPX/1/1}trkpt")
    assert len(points) == 5
    assert points[0].get("lon") == "19.0"
    assert points[0].findtext("{http://www.topografix.com/GPX/1/1}ele") == "0.000000100"
    assert points[2].findtext("{http://www.topografix.com/GPX/1/1}type") == "faulty"


@pytest.mark.parametrize("name", ["", "\x00", "]]>", "&amp;", "\ud800", "é" * 64])
def test_any_device_id_makes_a_valid_gpx(name: str) -> None:
    check_gpx(
        gpx([track(name, 2)], name=name, generated_at="2026-05-12T10:00:00Z", simplification=None)
    )
