"""Phase domain: the racing-domain engine's figures.

The corpus has the main corpus's shape (fixes, devices, rate, seed, quirks) driven over a
generated 40-control stage (`processor_dev.rally_stage`), so evaluation does a race's work:

1. rate: the corpus pre-loaded; one daemon ingests and evaluates it (`DOMAIN_YIELD_BACKLOG=0`),
   timed from "ready" until the domain group is caught up;
2. lag: the domain group's entries behind under the steady load, sampled, and its catch-up;
3. a finished entry that keeps reporting for an hour: fixes read and time per evaluated batch,
   first against last twenty minutes (target: no fix read at all in the last);
4. ingestion with the domain on vs off, rounds interleaved (`benchmarks.rounds`), medians.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from benchmarks.harness import Bench, behind, say
from benchmarks.rounds import round_order
from processor.domain.definitions import read_current
from processor.domain.evaluation import evaluate_pairs, rebuild_stage
from processor_dev.rally_stage import RallyStage, StageSettings, StageSimulator, scenario_sql
from processor_dev.simulate import Scenario

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
    runner.preload(stream, payloads)
    # ingestion and the engine together, the engine not yielding: its own speed, each fix
    # evaluated as its row appears (as in a race, not a replay of a fully stored backlog)
    daemon = runner.daemon(url, stream, {"DOMAIN_YIELD_BACKLOG": "0"})
    try:
        ready = daemon.wait_ready()
        started = daemon.wait_event(ENGINE_STARTED)
        finished = runner.wait_caught_up(stream, timeout_s=1800, group="domain")
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
        say(f"domain lag: {s.steady_rate:,.0f} fixes/s for {s.steady_s:g} s ...")
        published = runner.publish(
            stream, StageSimulator(scenario, stage), s.steady_rate, s.steady_s
        )
        stopped = time.time()
        done = runner.wait_caught_up(stream, timeout_s=600, group="domain")
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
            runner.preload(stream, payloads)
            daemon = runner.daemon(url, stream)
            try:
                ready = daemon.wait_ready()
                finished = runner.wait_caught_up(stream, timeout_s=600)
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
