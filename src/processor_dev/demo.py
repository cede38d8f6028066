"""`processor demo`: the whole pipeline working, in one command.

Without `REDIS_URL` / `DATABASE_URL` it starts throwaway servers (`processor_dev.devservers`),
deleted when the demo ends; with them set it uses those servers. One `trio.run` holds the
processor (`Service`), the simulator and a status line printed every second. By default the
cars drive a generated special stage (`processor_dev.rally_stage`) whose results the status
line shows; `--no-stage` drives random roads. Ctrl-C drains the processor (everything read is
stored and acked); a second one stops at once. Details: docs/race-control-page.md, Internals.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs
import psycopg
import redis
import trio
from trio import TaskStatus

from processor.config import Config
from processor.redaction import redact
from processor.store import redis as redis_store
from processor_dev.demo_page import DEFAULT_PORT
from processor_dev.publisher import (
    add_scenario_arguments,
    add_stage_arguments,
    publish,
    scenario_from,
    stage_from,
)
from processor_dev.rally_stage import RallyStage, StageSimulator, scenario_sql
from processor_dev.simulate import Scenario, Simulator

if TYPE_CHECKING:  # the CLI imports this module for its sub-parser: keep `--help` light
    from processor.app import Service
    from processor_dev.demo_page.serve import RaceControlPage

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
STAGE_STANDING = """
SELECT (SELECT en.number || ' ' || sr.total_ms FROM stage_results sr
        LEFT JOIN entries en ON en.id = sr.entry_id
        WHERE sr.stage_id = %(s)s AND sr.position = 1 ORDER BY en.number LIMIT 1),
       count(*) FILTER (WHERE status = 'finished'), count(*) FILTER (WHERE status = 'running')
FROM stage_results WHERE stage_id = %(s)s
"""
STATUS_INTERVAL_S = 1.0
# How long the demo waits at most, after the simulator's last publish, for the consumer to
# read it all (it returns as soon as the lag is 0): generous, so that a loaded machine's
# summary does not miss the last fixes.
CATCH_UP_S = 15.0
# Quiet defaults so that log lines do not scroll the status line away (overridable).
DEMO_ENV_DEFAULTS = {
    "LOG_LEVEL": "warning",
    "LOG_FORMAT": "console",
    "INSTANCE_ID": "demo",
    # The live server of the demo listens on the loopback only, on any free port (the page
    # learns it from /scenario.json); it authenticates against the Directus stand-in.
    "LIVE_WS_HOST": "127.0.0.1",
    "LIVE_WS_PORT": "0",
}


@contextlib.contextmanager
def servers(environ: Mapping[str, str], out: TextIO = sys.stderr) -> Iterator[tuple[str, str]]:
    """(redis_url, database_url): from `environ`, or throwaway servers started here."""
    from processor_dev import devservers  # noqa: PLC0415 - only needed when starting servers

    with contextlib.ExitStack() as stack:
        redis_url = environ.get("REDIS_URL")
        database_url = environ.get("DATABASE_URL")
        started = not (redis_url and database_url)
        if not redis_url:
            print("starting a throwaway Redis ...", file=out, flush=True)
            redis_url = stack.enter_context(devservers.throwaway_redis())
        if not database_url:
            print("starting a throwaway PostgreSQL ...", file=out, flush=True)
            database_url = stack.enter_context(devservers.throwaway_postgres())
        yield redis_url, database_url
        if started:
            print("stopping the throwaway servers (their data is deleted)", file=out, flush=True)


@attrs.define
class StopRequest:
    """The demo as `processor.app.stop_on_signals` sees it: `request_stop()` only records it;
    `_run_demo` then stops the simulator, lets the consumer catch up and drains the service."""

    ready: trio.Event = attrs.Factory(trio.Event)
    requested: trio.Event = attrs.Factory(trio.Event)

    def request_stop(self) -> None:
        self.requested.set()


@attrs.define
class StatusLine:
    """Reads the service's own metrics (and the group's lag) into one line per interval."""

    service: Service
    client: redis.Redis
    out: TextIO
    stage_id: str | None = None
    _records: float = 0.0
    _db: psycopg.Connection[Any] | None = None

    def stage_state(self) -> str:
        """`stage: leader #N H:MM:SS.mmm, F finished, R running` from stage_results."""
        from processor.commands.timing import duration  # noqa: PLC0415 - small, CLI-side

        if self.stage_id is None:
            return ""
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(self.service.config.database_url, autocommit=True)
        row = self._db.execute(STAGE_STANDING, {"s": self.stage_id}).fetchone()
        leader, finished, running = row or (None, 0, 0)
        shown = "none yet"
        if leader:
            number, total = str(leader).rsplit(" ", 1)
            shown = f"#{number} {duration(int(total))}"
        return f" | stage: leader {shown}, {finished} finished, {running} running"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def sample(self, name: str, **labels: str) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def total(self, name: str) -> float:
        """Sum of a labelled counter over all its label values."""
        registry = self.service.metrics.registry
        return sum(
            s.value for metric in registry.collect() for s in metric.samples if s.name == name
        )

    def group_state(self) -> tuple[int, int]:
        """(lag, pending) of the processor's consumer group."""
        config = self.service.config
        for group in self.client.xinfo_groups(config.redis_stream):
            if group["name"].decode() == config.redis_group:
                return int(group.get("lag") or 0), int(group["pending"])
        return 0, 0

    async def run(self, interval_s: float = STATUS_INTERVAL_S) -> None:
        tty = self.out.isatty()
        while True:
            await trio.sleep(interval_s)
            line = await self.line(interval_s)
            print(line, end="\r" if tty else "\n", file=self.out, flush=True)

    async def line(self, interval_s: float) -> str:
        records = self.sample("processor_consumer_records_total")
        rate, self._records = (records - self._records) / interval_s, records
        try:
            lag, pending = await trio.to_thread.run_sync(self.group_state)
            queue = f"lag {lag:,} | pending {pending:,}"
        except redis_store.TRANSIENT_ERRORS:
            queue = "lag ? | pending ?"
        stored = self.sample("processor_position_writes_total", status="inserted")
        merged = self.sample("processor_position_writes_total", status="merged")
        dead = self.total("processor_dead_letters_total")
        try:
            stage = await trio.to_thread.run_sync(self.stage_state)
        except psycopg.Error:
            stage = " | stage: ?"
        return (
            f"in {rate:,.0f} fixes/s | stored {stored:,.0f} rows (+{merged:,.0f} merged) | "
            f"{queue} | dead letters {dead:,.0f}{stage}   "
        )

    def summary(self) -> str:
        def writes(status: str) -> float:
            return self.sample("processor_position_writes_total", status=status)

        return (
            f"done: {self.sample('processor_consumer_records_total'):,.0f} fixes read, "
            f"{writes('inserted'):,.0f} rows stored, {writes('merged'):,.0f} merged, "
            f"{writes('duplicate'):,.0f} duplicates, "
            f"{self.total('processor_dead_letters_total'):,.0f} dead letters, "
            f"{self.sample('processor_acks_total'):,.0f} acked"
        )


def prepare_stage(database_url: str, stage: RallyStage) -> None:
    """Create the Directus and racing tables where missing (fixture files), load the stage."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table, fixture in (("events", "directus_schema.sql"), ("stages", "racing_schema.sql")):
            row = conn.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone()
            if row and row[0]:
                conn.execute((FIXTURES / fixture).read_text(encoding="utf-8"))
        conn.execute(scenario_sql(stage, name="Demo rally"))


async def run_demo(
    config: Config,
    scenario: Scenario,
    *,
    duration_s: float | None,
    out: TextIO,
    stage: RallyStage | None = None,
    page_port: int | None = None,
) -> int:
    """`page_port` (with a stage): also serve the race-control page (`processor_dev.demo_page`)."""
    from processor_dev.demo_page.serve import start_page  # noqa: PLC0415 - keep the CLI light

    async with trio.open_nursery() as page_nursery:
        page = None
        if stage is not None and page_port is not None:
            page = await start_page(page_nursery, stage, config.database_url, port=page_port)
            config = attrs.evolve(
                config, directus_url=page.directus_url, live_ws_allowed_origins=page.origins
            )
        try:
            return await _run_demo(
                config, scenario, duration_s=duration_s, out=out, stage=stage, page=page
            )
        finally:
            if page is not None:
                page.close()
            page_nursery.cancel_scope.cancel()


async def _run_demo(
    config: Config,
    scenario: Scenario,
    *,
    duration_s: float | None,
    out: TextIO,
    stage: RallyStage | None,
    page: RaceControlPage | None,
) -> int:
    from processor.app import Service, stop_on_signals  # noqa: PLC0415 - see TYPE_CHECKING

    service = Service(config)
    client = redis_store.make_client(config.redis_url)
    status = StatusLine(service, client, out, None if stage is None else stage.stage_id)
    stopped = trio.Event()
    request = StopRequest()

    async def serve(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await service.run(task_status=task_status)
        finally:
            stopped.set()

    try:
        with (
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            trio.CancelScope() as demo_scope,
        ):
            async with trio.open_nursery() as nursery:
                # The daemon's signal rule: the first Ctrl-C drains (the catch-up included in
                # the deadline), a second one stops at once.
                nursery.start_soon(
                    stop_on_signals,
                    signals,
                    request,
                    demo_scope,
                    CATCH_UP_S + config.shutdown_timeout_s,
                )
                await nursery.start(serve)
                request.ready.set()
                port = service.http_port if service.http_port is not None else config.http_port
                print(
                    f"processor running: metrics at http://127.0.0.1:{port}/metrics\n"
                    f"simulating {scenario.devices} cars at {scenario.rate:g} fixes/s "
                    f"(seed {scenario.seed}); Ctrl-C stops",
                    file=out,
                    flush=True,
                )
                if page is not None:
                    page.live_port = service.live_port
                    print(
                        f"race control: {page.url()}\n"
                        f"  (open it once: the token is traded for a session cookie; "
                        f"live WebSocket at ws://127.0.0.1:{service.live_port}/live)",
                        file=out,
                        flush=True,
                    )
                nursery.start_soon(status.run)
                simulator = trio.CancelScope()
                simulator_done = trio.Event()
                source = Simulator(scenario) if stage is None else StageSimulator(scenario, stage)
                nursery.start_soon(_simulate, client, config, source, simulator, simulator_done)
                with trio.move_on_after(duration_s if duration_s is not None else math.inf):
                    await request.requested.wait()
                # Let a publish already in Redis' hands finish before the processor stops
                # reading, so that the summary's "read" is everything that was published.
                simulator.cancel()
                await simulator_done.wait()
                await _until_caught_up(status, CATCH_UP_S)
                print("\nstopping: draining the processor ...", file=out, flush=True)
                service.request_stop()
                with trio.move_on_after(config.shutdown_timeout_s):
                    await stopped.wait()
                print(status.summary(), file=out, flush=True)
                if stage is not None:
                    standing = await trio.to_thread.run_sync(status.stage_state)
                    print(standing.removeprefix(" | "), file=out, flush=True)
                nursery.cancel_scope.cancel()
        if demo_scope.cancelled_caught:
            print("stopped at once: un-acked entries stay pending", file=out, flush=True)
    finally:
        client.close()
        status.close()
    return 0


async def _simulate(
    client: redis.Redis,
    config: Config,
    source: Simulator,
    scope: trio.CancelScope,
    done: trio.Event,
) -> None:
    try:
        with scope:
            await publish(client, config.redis_stream, source, rate=source.scenario.rate)
    finally:
        done.set()


async def _until_caught_up(status: StatusLine, within_s: float) -> None:
    """Give the consumer a moment to read what the simulator published last (bounded): the
    drain stores what was read; anything unread would simply wait in the stream."""
    with trio.move_on_after(within_s):
        while True:
            try:
                lag, _pending = await trio.to_thread.run_sync(status.group_state)
            except redis_store.TRANSIENT_ERRORS:
                return
            if lag == 0:
                return
            await trio.sleep(0.05)


def cmd_demo(args: argparse.Namespace, config: Config) -> int:
    """`config` comes from the environment over `DEMO_ENV_DEFAULTS` (the CLI loads it); the
    servers' URLs are filled in here when the environment names none."""
    try:
        scenario = scenario_from(args)
    except ValueError as exc:
        print(f"processor demo: {redact(str(exc))}", file=sys.stderr)
        return 2
    stage = None
    if not args.no_stage:
        if not FIXTURES.is_dir():
            print(f"stage off: no fixture files in {FIXTURES} (run from a clone)", file=sys.stderr)
        else:
            try:
                stage = stage_from(args, scenario)
            except (ValueError, OSError) as exc:
                print(f"processor demo: {exc}", file=sys.stderr)
                return 2
    with servers(os.environ) as (redis_url, database_url):
        config = attrs.evolve(config, redis_url=redis_url, database_url=database_url)
        if stage is not None:
            prepare_stage(config.database_url, stage)
        return trio.run(
            lambda: run_demo(
                config,
                scenario,
                duration_s=args.duration,
                out=sys.stdout,
                stage=stage,
                page_port=None if args.no_page else args.page_port,
            )
        )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the processor and the simulator together, with throwaway servers",
        description="Processor + simulator + a live status line. Without REDIS_URL / "
        "DATABASE_URL, throwaway servers are started and deleted afterwards.",
    )
    add_scenario_arguments(parser)
    parser.add_argument(
        "--no-stage", action="store_true", help="random roads instead of a timed stage"
    )
    add_stage_arguments(parser)
    parser.add_argument(
        "--page-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the race-control page on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free)",
    )
    parser.add_argument("--no-page", action="store_true", help="no race-control page")
    parser.set_defaults(handler=cmd_demo, env_defaults=DEMO_ENV_DEFAULTS)
