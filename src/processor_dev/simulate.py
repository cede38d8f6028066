"""Synthetic rally telemetry: cars driving generated routes, with the quirks real trackers have.

Pure and deterministic: everything random comes from one seeded `random.Random` and the clock is
simulated, so the same scenario always yields the same entries, byte for byte (the Trio
publisher that paces them into Redis is `processor_dev.publisher`). Routes are generated as the
cars drive, so memory per car is constant; the quirks (`late`, `duplicate`, `zero_satellites`,
`event`, `sentinels`) are shares of the cars' fixes. The schedule, the driving model and each
quirk: docs/race-control-page.md, Internals.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

import attrs

from processor.codecs.position import Position, encode_position

EntryKind = Literal["fix", "event", "duplicate"]

# The rally area (central Albania) in which routes start and stay.
AREA_LAT = (40.6, 41.8)
AREA_LON = (19.5, 20.4)
METRES_PER_DEGREE = 111_320.0
SEGMENT_M = (150.0, 600.0)
TURN_SIGMA_DEG = 20.0
CRUISE_KMH = (60.0, 130.0)
SPEED_LIMITS_KMH = (5.0, 180.0)
ACCELERATION_KMH_PER_S = 10.0
TUNNEL_FIXES = (5, 30)
REDELIVERY_DELAY = (1, 50)
ICCID_RANGE = (8_935_500_000_000_000_000, 8_935_599_999_999_999_999)  # > 2**63: a __bigint
IMEI_BASE = 356_307_040_000_000
# Teltonika IO ids: 239 ignition, 240 movement, 21 GSM signal, 66 external voltage (mV),
# 67 battery voltage (mV), 69 GNSS status, 181 PDOP, 182 HDOP, 16 total odometer (m),
# 11 ICCID, 385 beacon data (bytes), 253/254 green-driving event type/value, 247 crash detection.
EVENT_IO = ("253", "254", "247")


@attrs.frozen(kw_only=True)
class Quirks:
    """Share of each quirk (0..1); see the module docstring for what each counts."""

    late: float = 0.03
    duplicate: float = 0.02
    zero_satellites: float = 0.01
    event: float = 0.02
    sentinels: float = 0.05

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Quirks):
            value = getattr(self, field.name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"quirk share {field.name}={value} not in [0, 1)")


@attrs.frozen(kw_only=True)
class Scenario:
    devices: int = 50
    rate: float = 100.0  # fixes per simulated second, all cars together
    seed: int = 1
    start: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    quirks: Quirks = Quirks()

    def __attrs_post_init__(self) -> None:
        if self.devices < 1 or self.rate <= 0:
            raise ValueError("a scenario needs at least one device and a positive rate")


@attrs.frozen(slots=True)
class Entry:
    """One stream entry to publish: its payload and what the simulator made it."""

    position: Position
    payload: bytes
    kind: EntryKind = "fix"
    late: bool = False  # held back by a tunnel and sent in a burst


@attrs.define(slots=True)
class _Car:
    device_id: str
    origin: tuple[float, float]  # where the current segment starts
    heading: float  # of the current segment, degrees clockwise from north
    length_m: float  # of the current segment
    offset_m: float  # driven along the current segment
    speed_kmh: float
    cruise_kmh: float
    altitude: float
    odometer_m: float
    iccid: int
    clock_s: float  # simulated time of the last move
    tunnel_left: int = 0
    held: list[Entry] = attrs.field(factory=list)

    def at(self, metres: float) -> tuple[float, float]:
        """The point `metres` along the current segment (equirectangular: fine over 600 m)."""
        lat, lon = self.origin
        north = metres * math.cos(math.radians(self.heading)) / METRES_PER_DEGREE
        east = metres * math.sin(math.radians(self.heading)) / METRES_PER_DEGREE
        return lat + north, lon + east / math.cos(math.radians(lat))


def _next_segment(rng: random.Random, car: _Car) -> None:
    """The road goes on from the end of the current segment, turning a little."""
    car.origin = lat, lon = car.at(car.length_m)
    heading = car.heading + rng.gauss(0.0, TURN_SIGMA_DEG)
    if not (AREA_LAT[0] < lat < AREA_LAT[1] and AREA_LON[0] < lon < AREA_LON[1]):
        centre = (sum(AREA_LAT) / 2 - lat, (sum(AREA_LON) / 2 - lon) * math.cos(math.radians(lat)))
        home = math.degrees(math.atan2(centre[1], centre[0]))
        turn = (home - heading + 180.0) % 360.0 - 180.0
        heading += max(-30.0, min(30.0, turn))  # steer back into the area, smoothly
    car.heading = heading % 360.0
    car.length_m = rng.uniform(*SEGMENT_M)
    car.offset_m = 0.0


def _draw(rng: random.Random, low: int, high: int) -> int:
    """An int in [low, high]: `randint` is several times slower and this runs per IO value."""
    return low + int(rng.random() * (high - low + 1))


class Simulator:
    """An endless, deterministic sequence of stream entries for a scenario."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._rng = random.Random(scenario.seed)
        self._start = scenario.start.astimezone(UTC)
        self._period_s = scenario.devices / scenario.rate
        q = scenario.quirks
        mean_tunnel = sum(TUNNEL_FIXES) / 2
        # A tunnel of K fixes starts after a geometric run of normal fixes: solving
        # late = pK / (pK + 1 - p) for p gives the chance to enter a tunnel.
        self._tunnel_chance = q.late / (mean_tunnel * (1 - q.late) + q.late)
        self._cars = [self._new_car(index) for index in range(scenario.devices)]
        self._schedule = [
            (self._rng.uniform(0.0, self._period_s), index) for index in range(scenario.devices)
        ]
        heapq.heapify(self._schedule)
        self._outbox: deque[Entry] = deque()
        self._redeliveries: list[tuple[int, int, Entry]] = []
        self._sent = 0

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        while True:
            if self._redeliveries and self._redeliveries[0][0] <= self._sent:
                entry = heapq.heappop(self._redeliveries)[2]
                self._sent += 1
                return attrs.evolve(entry, kind="duplicate", late=False)
            if self._outbox:
                entry = self._outbox.popleft()
                self._sent += 1
                if self._rng.random() < self.scenario.quirks.duplicate:
                    due = self._sent + self._rng.randint(*REDELIVERY_DELAY)
                    heapq.heappush(self._redeliveries, (due, self._sent, entry))
                return entry
            self._outbox.extend(self._next_fix())

    # --- cars --------------------------------------------------------------------------------

    def _new_car(self, index: int) -> _Car:
        rng = self._rng
        cruise = rng.uniform(*CRUISE_KMH)
        return _Car(
            device_id=str(IMEI_BASE + index),
            origin=(rng.uniform(*AREA_LAT), rng.uniform(*AREA_LON)),
            heading=rng.uniform(0.0, 360.0),
            length_m=rng.uniform(*SEGMENT_M),
            offset_m=0.0,
            speed_kmh=cruise * rng.uniform(0.3, 1.0),
            cruise_kmh=cruise,
            altitude=rng.uniform(50.0, 900.0),
            odometer_m=rng.uniform(10_000.0, 300_000_000.0),
            iccid=rng.randint(*ICCID_RANGE),
            clock_s=0.0,
        )

    def _drive(self, car: _Car, now_s: float) -> None:
        """Move the car along its route from its last fix to `now_s`."""
        rng = self._rng
        dt = now_s - car.clock_s
        car.clock_s = now_s
        limit = ACCELERATION_KMH_PER_S * dt
        step = max(-limit, min(limit, car.cruise_kmh - car.speed_kmh))
        car.speed_kmh = min(
            SPEED_LIMITS_KMH[1],
            max(SPEED_LIMITS_KMH[0], car.speed_kmh + step + rng.gauss(0.0, 1.0)),
        )
        remaining = car.speed_kmh / 3.6 * dt
        car.odometer_m += remaining
        while remaining >= car.length_m - car.offset_m:
            remaining -= car.length_m - car.offset_m
            _next_segment(rng, car)
        car.offset_m += remaining
        car.altitude = min(2500.0, max(0.0, car.altitude + rng.gauss(0.0, 0.5)))

    def _next_fix(self) -> list[Entry]:
        """The next car's fix (and event twin), or nothing while it is in a tunnel."""
        now_s, index = heapq.heappop(self._schedule)
        heapq.heappush(self._schedule, (now_s + self._period_s, index))
        car = self._cars[index]
        self._drive(car, now_s)
        entries = self._fix_entries(car, now_s)
        if car.tunnel_left > 0:
            car.held.extend(entries)
            car.tunnel_left -= 1
            return []
        if car.held:  # out of the tunnel: the live fix, then the backlog, oldest first
            burst = [attrs.evolve(entry, late=True) for entry in car.held]
            car.held = []
            return entries + burst
        if self._rng.random() < self._tunnel_chance:
            car.held.extend(entries)
            car.tunnel_left = self._rng.randint(*TUNNEL_FIXES) - 1
            return []
        return entries

    def _fix_entries(self, car: _Car, now_s: float) -> list[Entry]:
        rng = self._rng
        q = self.scenario.quirks
        ts = self._start + timedelta(milliseconds=round(now_s * 1000))
        no_fix = rng.random() < q.zero_satellites
        moving = car.speed_kmh > 3.0 and not no_fix
        attributes: dict[str, int | float | str | bool | bytes | None] = {
            "239": 1,
            "240": int(moving),
            "21": _draw(rng, 2, 5),
            "66": _draw(rng, 12_000, 14_400),
            "67": _draw(rng, 3_900, 4_100),
            "69": 0 if no_fix else 1,
            "181": _draw(rng, 5, 20),
            "182": _draw(rng, 5, 15),
            "16": int(car.odometer_m),
        }
        if rng.random() < q.sentinels:
            attributes["11"] = car.iccid
            attributes["385"] = rng.randbytes(_draw(rng, 4, 16))
        lat, lon = car.at(car.offset_m)
        position = Position(
            device_id=car.device_id,
            ts=ts,
            latitude=round(lat, 7),
            longitude=round(lon, 7),
            altitude=float(round(car.altitude)),
            angle=float(round(car.heading)),
            speed=0.0 if no_fix else float(round(car.speed_kmh)),
            satellites=0 if no_fix else _draw(rng, 7, 16),
            priority=0,
            attributes=attributes,
        )
        entries = [Entry(position, encode_position(position))]
        if rng.random() < q.event:
            event = attrs.evolve(
                position,
                priority=1,
                attributes={
                    "239": 1,
                    "240": int(moving),
                    EVENT_IO[0]: _draw(rng, 1, 3),
                    EVENT_IO[1]: _draw(rng, 10, 250),
                    EVENT_IO[2]: 0,
                },
            )
            entries.append(Entry(event, encode_position(event), kind="event"))
        return entries
