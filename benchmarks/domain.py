"""The racing-domain engine's figures (phase `domain` of `benchmarks.run`).

The corpus: the bench corpus's shape (same number of fixes, devices, rate and seed) driven over
a generated stage with 40 controls (start, 38 alternating waypoints and checkpoints, finish),
so that evaluation does the work it does in a race (`processor_dev.rally_stage`), with the
simulator's usual quirks (late bursts, duplicates, zero-satellite fixes).

1. domain rate: the fixes pre-loaded into the stream; one daemon ingests them and evaluates
   them (`DOMAIN_YIELD_BACKLOG=0`: the engine runs alongside ingestion instead of waiting for
   it); timed from "ready" until the domain group has no lag and nothing pending. Not measured:
   re-reading a backlog whose rows are *all* stored already (a domain group reset), where each
   batch re-evaluates whole tracks (every new fix is "late" with respect to the stored passes):
   about 300 fixes/s for this corpus on the shared machine.
2. domain lag: the simulator publishes at 2,000 fixes/s for the steady duration; the domain
   group's entries behind (lag + pending) are sampled every 0.25 s: median, p99, max, and the
   seconds it needs to catch up once publishing stops.
3. a finished entry that keeps reporting: one car drives the stage, then its device reports at
   1 Hz for an hour after the finish (a car parked at the finish with its tracker on), stored
   in batches of 60 and each batch evaluated as the engine does (`evaluate_pairs`, no
   `closes_at`). Reported: fixes read per evaluation in the first and the last twenty minutes
   (target: none at all in the last, flat; the previous engine re-read the whole tail since the
   finish, ~4,000 -> ~7,000 fixes) and the evaluation time per batch, first and last twenty
   minutes (medians; about a millisecond, so on a shared machine mostly noise: no target).
4. ingestion with the domain on vs off: `processor` throughput as in the main benchmark (time
   from "ready" until the durable group is caught up) on a schema without the racing tables
   (the engine stays off) and on one with the stage (the engine runs alongside); rounds
   interleaved, off first in even rounds and on first in odd ones (`benchmarks.rounds`),
   medians; target on/off >= 0.9.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import redis
import trio

from benchmarks.rounds import round_order
from processor.domain.definitions import read_current
from processor.domain.evaluation import evaluate_pairs, rebuild_stage
from processor_dev.publisher import MAX_CHUNK, publish, xadd_chunk
from processor_dev.rally_stage import RallyStage, StageSettings, StageSimulator, scenario_sql
from processor_dev.simulate import Scenario

if TYPE_CHECKING:
    from benchmarks.run import Bench

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CONTROLS = 40
ENGINE_STARTED = "domain engine started"


def stage_for(scenario: Scenario, fixes: int) -> RallyStage:
    """A 40-control stage sized so the cars drive it during the corpus's simulated time."""
    seconds = fixes / scenario.rate
    settings = StageSettings(
        length_km=max(0.5, seconds * 25.0 / 1000),
        controls=CONTROLS - 2,
        start_interval_s=seconds / (4 * scenario.devices),
        first_start_s=0.0,
        lead_in_m=20.0,
    )
    return RallyStage.generate(scenario, settings)


def load_stage(url: str, stage: RallyStage) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((FIXTURES / "directus_schema.sql").read_text(encoding="utf-8"))
        conn.execute((FIXTURES / "racing_schema.sql").read_text(encoding="utf-8"))
        conn.execute(scenario_sql(stage, name="Bench rally"))


def corpus(runner: Bench, seed: int, start: datetime) -> tuple[RallyStage, list[bytes]]:
    s = runner.sizes
    scenario = Scenario(devices=s.devices, rate=s.steady_rate, seed=seed, start=start)
    stage = stage_for(scenario, s.fixes)
    payloads = [e.payload for e in itertools.islice(StageSimulator(scenario, stage), s.fixes)]
    return stage, payloads


def caught_up(client: redis.Redis, stream: str, group: str) -> bool:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info["pending"]) == 0 and int(info.get("lag") or 0) == 0
    return False


def wait(client: redis.Redis, stream: str, group: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not caught_up(client, stream, group):
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {group} did not catch up on {stream} in {timeout_s}s")
        time.sleep(0.01)
    return time.time()


def behind(client: redis.Redis, stream: str, group: str) -> int:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info.get("lag") or 0) + int(info["pending"])
    return 0


def run(runner: Bench, seed: int, start: datetime) -> None:
    domain_rate(runner, seed, start)
    domain_lag(runner, seed + 1)
    finished_cost(runner, seed + 2, start)
    ingest_on_off(runner, seed, start)


def finished_cost(runner: Bench, seed: int, start: datetime) -> None:
    scenario = Scenario(devices=1, rate=1.0, seed=seed, start=start)
    stage = RallyStage.generate(scenario, StageSettings(length_km=2, controls=6))
    car = stage.entries[0]
    url = runner.schema("domain_finished")
    load_stage(url, stage)
    drive = [e.position for e in itertools.islice(StageSimulator(scenario, stage), 3600)]
    with psycopg.connect(url) as conn:
        _store(conn, [(p.ts, p.latitude, p.longitude, p.speed) for p in drive], car.imei)
        definitions = read_current(conn)
        rebuild_stage(conn, definitions, stage.stage_id)
        definitions = read_current(conn)
        row = conn.execute(
            "SELECT finished_at FROM stage_results WHERE stage_id = %s", (stage.stage_id,)
        ).fetchone()
        if row is None or row[0] is None:
            raise RuntimeError("the bench car did not finish the stage")
        finished: datetime = row[0]
        last = drive[-1]
        parked = [
            (
                datetime.fromtimestamp(max(finished.timestamp(), last.ts.timestamp()) + 1 + k, UTC),
                last.latitude,
                last.longitude,
                0.0,
            )
            for k in range(3600)
        ]
        seconds: list[float] = []
        loaded: list[int] = []
        pair = (stage.stage_id, car.id)
        for offset in range(0, len(parked), 60):
            batch = parked[offset : offset + 60]
            _store(conn, batch, car.imei)
            started = time.perf_counter()
            result = evaluate_pairs(conn, definitions, {pair: batch[0][0].timestamp()})
            seconds.append(time.perf_counter() - started)
            loaded.append(result.outcome.fixes)
    first, last_ten = statistics.median(seconds[:20]), statistics.median(seconds[-20:])
    runner.results.update(
        domain_finished_fixes_loaded_first=max(loaded[:20]),
        domain_finished_fixes_loaded_last=max(loaded[-20:]),
        domain_finished_batch_ms_first=round(first * 1000, 2),
        domain_finished_batch_ms_last=round(last_ten * 1000, 2),
        domain_finished_cost_ratio=round(last_ten / first, 3),
    )
    say(
        "a finished entry reporting for an hour: {domain_finished_fixes_loaded_first} -> "
        "{domain_finished_fixes_loaded_last} fixes read per evaluation, "
        "{domain_finished_batch_ms_first} -> {domain_finished_batch_ms_last} ms per batch".format(
            **runner.results
        )
    )


def _store(
    conn: psycopg.Connection[Any],
    fixes: Sequence[tuple[datetime, float, float, float | None]],
    imei: str,
) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO positions (device_id, ts, latitude, longitude, speed, satellites)"
            " VALUES (%s, %s, %s, %s, %s, 10) ON CONFLICT DO NOTHING",
            [(imei, ts, lat, lon, speed) for ts, lat, lon, speed in fixes],
        )
    conn.commit()


def domain_rate(runner: Bench, seed: int, start: datetime) -> None:
    stage, payloads = corpus(runner, seed, start)
    url, stream = runner.schema("domain_rate"), runner.stream("domain_rate")
    load_stage(url, stage)
    for offset in range(0, len(payloads), MAX_CHUNK):
        xadd_chunk(runner.redis, stream, payloads[offset : offset + MAX_CHUNK])
    # ingestion and the engine together, the engine not yielding: its own speed, each fix
    # evaluated as its row appears (as in a race, not a replay of a fully stored backlog)
    daemon = runner.daemon(url, stream, {"DOMAIN_YIELD_BACKLOG": "0"})
    try:
        ready = daemon.wait_ready()
        started = daemon.wait_event(ENGINE_STARTED)
        finished = wait(runner.redis, stream, "domain", timeout_s=1800)
        evaluated = daemon.metrics().get("processor_domain_fixes_total", [({}, 0.0)])[0][1]
        daemon.terminate()
    finally:
        daemon.kill()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM timing_records").fetchone()
    rate = len(payloads) / (finished - ready)
    runner.results.update(
        domain_rate=round(rate),
        domain_fixes_evaluated=int(evaluated),
        domain_start_s=round(started - ready, 2),
        domain_timing_records=int(row[0]) if row else 0,
        domain_controls=len(stage.controls),
    )
    say(
        f"domain: {rate:,.0f} fixes/s evaluated ({len(payloads):,} entries ingested and "
        f"evaluated, {len(stage.controls)} controls)"
    )


def domain_lag(runner: Bench, seed: int) -> None:
    s = runner.sizes
    scenario = Scenario(devices=s.devices, rate=s.steady_rate, seed=seed, start=datetime.now(UTC))
    stage = stage_for(scenario, int(s.steady_rate * s.steady_s))
    url, stream = runner.schema("domain_lag"), runner.stream("domain_lag")
    load_stage(url, stage)
    daemon = runner.daemon(url, stream)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        client = redis.Redis.from_url(runner.redis_url, socket_timeout=30)
        while not stop.wait(0.25):
            try:
                samples.append(behind(client, stream, "domain"))
            except redis.ResponseError:  # the group is not there yet
                continue
        client.close()

    try:
        daemon.wait_ready()
        daemon.wait_event(ENGINE_STARTED)
        sampler = threading.Thread(target=sample)
        sampler.start()
        client = redis.Redis.from_url(runner.redis_url, socket_timeout=30)
        say(f"domain lag: {s.steady_rate:,.0f} fixes/s for {s.steady_s:g} s ...")
        published = trio.run(
            lambda: publish(
                client,
                stream,
                StageSimulator(scenario, stage),
                rate=s.steady_rate,
                duration_s=s.steady_s,
            )
        )
        client.close()
        stopped = time.time()
        done = wait(runner.redis, stream, "domain", timeout_s=600)
        stop.set()
        sampler.join()
        daemon.terminate()
    finally:
        stop.set()
        daemon.kill()
    ordered = sorted(samples) or [0]
    runner.results.update(
        domain_lag_rate=round(published.sent / published.elapsed_s),
        domain_lag_median=int(statistics.median(ordered)),
        domain_lag_p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        domain_lag_max=ordered[-1],
        domain_catch_up_s=round(done - stopped, 2),
    )
    say(
        "domain lag at {domain_lag_rate:,} fixes/s: median {domain_lag_median} entries, "
        "p99 {domain_lag_p99}, max {domain_lag_max}; caught up {domain_catch_up_s} s after "
        "the load stopped".format(**runner.results)
    )


def ingest_on_off(runner: Bench, seed: int, start: datetime) -> None:
    stage, payloads = corpus(runner, seed, start)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for attempt in range(runner.repeat):
        for mode in round_order(("off", "on"), attempt):
            url = runner.schema(f"ingest_{mode}{attempt}")
            stream = runner.stream(f"ingest_{mode}{attempt}")
            if mode == "on":
                load_stage(url, stage)
            for offset in range(0, len(payloads), MAX_CHUNK):
                xadd_chunk(runner.redis, stream, payloads[offset : offset + MAX_CHUNK])
            daemon = runner.daemon(url, stream)
            try:
                ready = daemon.wait_ready()
                finished = wait(runner.redis, stream, "processor", timeout_s=600)
                daemon.terminate()
            finally:
                daemon.kill()
            rates[mode].append(len(payloads) / (finished - ready))
            say(f"ingestion with the domain {mode}: {rates[mode][-1]:,.0f} fixes/s")
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    runner.results.update(
        ingest_domain_off_rate=round(off),
        ingest_domain_on_rate=round(on),
        ingest_domain_off_rates=[round(r) for r in rates["off"]],
        ingest_domain_on_rates=[round(r) for r in rates["on"]],
        domain_ingest_ratio=round(on / off, 3),
    )
    say(f"ingestion domain on / off: {on / off:.3f}")


def say(message: str) -> None:
    print(message, flush=True)
