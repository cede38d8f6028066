"""The simulator: repeatable, realistic, with each quirk at its configured share."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from processor.codecs.position import decode_payload
from processor.codecs.quality import implied_speed_kmh
from processor_dev.simulate import Entry, Quirks, Scenario, Simulator

START = datetime(2026, 5, 12, 10, 0, tzinfo=UTC)
QUIRKS = Quirks(late=0.05, duplicate=0.03, zero_satellites=0.02, event=0.04, sentinels=0.10)


def entries(
    count: int, *, seed: int = 7, devices: int = 100, quirks: Quirks = QUIRKS
) -> list[Entry]:
    # 100 cars at 50 fixes/s: one fix per car every 2 s, as a tracker in rally mode sends them
    scenario = Scenario(devices=devices, rate=50.0, seed=seed, start=START, quirks=quirks)
    return list(itertools.islice(Simulator(scenario), count))


@pytest.fixture(scope="module")
def sample() -> list[Entry]:
    return entries(40_000)


def test_same_seed_same_entries_other_seed_other_entries() -> None:
    first = [e.payload for e in entries(3000, seed=11)]
    assert first == [e.payload for e in entries(3000, seed=11)]
    assert first != [e.payload for e in entries(3000, seed=12)]


def test_every_payload_decodes_to_its_position(sample: list[Entry]) -> None:
    for entry in sample:
        assert decode_payload(entry.payload) == entry.position


def test_quirk_shares_are_within_tolerance(sample: list[Entry]) -> None:
    kinds = Counter(entry.kind for entry in sample)
    base = [entry for entry in sample if entry.kind == "fix"]
    originals = kinds["fix"] + kinds["event"]
    late = sum(entry.late for entry in base) / len(base)
    zero = sum(entry.position.satellites == 0 for entry in base) / len(base)
    sentinels = sum(
        b"__bigint" in entry.payload and b"__buffer_b64" in entry.payload for entry in base
    ) / len(base)
    assert kinds["event"] / len(base) == pytest.approx(QUIRKS.event, rel=0.15)
    assert kinds["duplicate"] / originals == pytest.approx(QUIRKS.duplicate, rel=0.15)
    assert zero == pytest.approx(QUIRKS.zero_satellites, rel=0.2)
    assert sentinels == pytest.approx(QUIRKS.sentinels, rel=0.1)
    assert late == pytest.approx(QUIRKS.late, rel=0.25)


def test_no_quirks_means_only_good_in_order_fixes() -> None:
    none = Quirks(late=0, duplicate=0, zero_satellites=0, event=0, sentinels=0)
    sample = entries(5000, quirks=none)
    assert {e.kind for e in sample} == {"fix"}
    assert not any(e.late or e.position.satellites == 0 for e in sample)
    assert not any(b"__" in e.payload for e in sample)
    timestamps = [e.position.ts for e in sample]
    assert timestamps == sorted(timestamps)


def test_duplicates_repeat_an_earlier_entry_byte_for_byte(sample: list[Entry]) -> None:
    seen: set[bytes] = set()
    duplicates = 0
    for entry in sample:
        if entry.kind == "duplicate":
            assert entry.payload in seen
            duplicates += 1
        else:
            assert entry.payload not in seen
        seen.add(entry.payload)
    assert duplicates > 0


def test_event_records_share_the_key_and_add_io(sample: list[Entry]) -> None:
    periodic = {
        (e.position.device_id, e.position.ts): e.position for e in sample if e.kind == "fix"
    }
    events = [e.position for e in sample if e.kind == "event"]
    assert events
    for event in events:
        fix = periodic[(event.device_id, event.ts)]
        assert event.priority == 1
        assert set(event.attributes) - set(fix.attributes), "an event adds IO elements"
        assert event.latitude == fix.latitude


def test_late_fixes_arrive_after_newer_ones_of_their_device(sample: list[Entry]) -> None:
    newest: dict[str, datetime] = {}
    late_and_older = 0
    for entry in sample:
        p = entry.position
        if entry.late and p.ts < newest.get(p.device_id, p.ts):
            late_and_older += 1
        if not entry.late and entry.kind != "duplicate":
            assert p.ts >= newest.get(p.device_id, p.ts), "only late fixes (and copies) go back"
        newest[p.device_id] = max(newest.get(p.device_id, p.ts), p.ts)
    assert late_and_older == sum(e.late for e in sample)


def test_speeds_between_consecutive_good_fixes_are_plausible(sample: list[Entry]) -> None:
    tracks: dict[str, list[Entry]] = defaultdict(list)
    for entry in sample:
        if entry.kind == "fix" and entry.position.satellites:
            tracks[entry.position.device_id].append(entry)
    implied: list[float] = []
    gaps: list[float] = []
    for track in tracks.values():
        track.sort(key=lambda e: e.position.ts)
        for before, after in itertools.pairwise(track):
            speed = implied_speed_kmh(before.position, after.position)
            assert speed is not None
            assert after.position.speed is not None
            assert speed <= 181.0  # the cars' top speed, far below MAX_PLAUSIBLE_SPEED_KMH
            implied.append(speed)
            gaps.append(abs(speed - after.position.speed))
    assert 40.0 < sum(implied) / len(implied) < 130.0
    # the reported speed is the speed the fixes imply (the chord is barely shorter than the road)
    assert sorted(gaps)[len(gaps) // 2] < 2.0
    coords = {(e.position.latitude, e.position.longitude) for e in sample}
    assert all(40.0 < lat < 43.0 and 18.5 < lon < 21.5 for lat, lon in coords)
