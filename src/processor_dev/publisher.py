"""`processor simulate`: publish simulated telemetry to the stream at a steady rate.

The schedule does not drift: entry k is due at `start + k / rate`, so a slow round trip is made
up by the next chunk instead of lowering the rate for good. Due entries are sent in pipelined
chunks (one thread hop and one round trip per chunk, never per entry). Without a rate the
entries are sent as fast as Redis takes them (used to pre-load the benchmark).

Ctrl-C (or SIGTERM) stops the publisher between chunks; the command prints what it sent and
exits 0.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import attrs
import redis
import trio

from processor.config import Config
from processor.redaction import redact
from processor.store import redis as redis_store
from processor.store import retry
from processor_dev.rally_stage import RallyStage, StageSettings, StageSimulator, scenario_sql
from processor_dev.simulate import Entry, Quirks, Scenario, Simulator

MAX_CHUNK = 1000
MIN_TICK_S = 0.005  # at most 200 round trips per second however high the rate
# A chunk whose connection could not even be set up was not sent: it is sent again, this many
# times at most, with backoff from 0.2 s (a container removed beside the publisher makes the
# network's DNS fail for a moment while it is reconfigured).
SEND_ATTEMPTS = 10
PROGRESS_INTERVAL_S = 1.0


@attrs.define
class Progress:
    """A one-line progress report (rate and total), redrawn in place on a terminal."""

    stream: TextIO = attrs.field(factory=lambda: sys.stderr)
    label: str = "published"
    interval_s: float = PROGRESS_INTERVAL_S
    sent: int = attrs.field(init=False, default=0)
    _started: float = attrs.field(init=False, factory=time.monotonic)
    _shown_at: float = attrs.field(init=False, factory=time.monotonic)
    _shown_sent: int = attrs.field(init=False, default=0)

    def update(self, sent: int) -> None:
        self.sent = sent
        now = time.monotonic()
        if now - self._shown_at < self.interval_s:
            return
        rate = (sent - self._shown_sent) / (now - self._shown_at)
        self._shown_at, self._shown_sent = now, sent
        end = "\r" if self.stream.isatty() else "\n"
        print(f"{self.label} {sent:,} fixes, {rate:,.0f}/s", end=end, file=self.stream, flush=True)

    def finish(self) -> None:
        elapsed = time.monotonic() - self._started
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        print(
            f"{self.label} {self.sent:,} fixes in {elapsed:.1f}s ({rate:,.0f}/s)",
            file=self.stream,
            flush=True,
        )


@attrs.frozen
class Published:
    sent: int
    elapsed_s: float


def xadd_chunk(client: redis.Redis, stream: str, payloads: Sequence[bytes]) -> list[bytes]:
    """XADD each payload as the entry's `payload` field, in one pipelined round trip."""
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(stream, {"payload": payload})
    return list(pipe.execute())


async def _send(client: redis.Redis, stream: str, payloads: Sequence[bytes]) -> None:
    """`xadd_chunk` in a worker thread (store/retry.py's helper), sent again only when nothing
    can have been sent, at most SEND_ATTEMPTS times."""
    attempts = 0

    def retry_if_not_sent(exc: Exception) -> retry.Failure | None:
        nonlocal attempts
        attempts += 1
        if isinstance(exc, redis.ConnectionError) and _not_sent(exc) and attempts < SEND_ATTEMPTS:
            return retry.Failure(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return None  # raised unchanged

    await retry.retry_in_thread(
        "publish",
        functools.partial(xadd_chunk, client, stream, payloads),
        backoff=retry.Backoff(initial_s=0.2, max_s=2.0),
        classify_failure=retry_if_not_sent,
    )


def _not_sent(exc: redis.ConnectionError) -> bool:
    """The connection failed while being set up (the name did not resolve, or the server
    refused it): no command went out, so sending the chunk again cannot add it twice. Any other
    connection error may have come after the entries were added, and is raised."""
    return isinstance(exc.__context__, socket.gaierror | ConnectionRefusedError)


async def publish(
    client: redis.Redis,
    stream: str,
    entries: Iterable[Entry],
    *,
    rate: float | None,
    count: int | None = None,
    duration_s: float | None = None,
    on_progress: Callable[[int], None] = lambda _sent: None,
) -> Published:
    """Publish `entries` (at most `count`, for at most `duration_s`) at `rate` per second."""
    source = iter(entries if count is None else itertools.islice(entries, count))
    start = trio.current_time()
    stop_at = start + duration_s if duration_s is not None else float("inf")
    sent = 0
    while True:
        now = trio.current_time()
        if now >= stop_at:
            break
        if rate is None:
            want = MAX_CHUNK
        else:
            due = int((min(now, stop_at) - start) * rate) + 1
            want = min(MAX_CHUNK, due - sent)
            if want <= 0:
                await trio.sleep_until(max(start + (sent + 1) / rate, now + MIN_TICK_S))
                continue
        payloads = [entry.payload for entry in itertools.islice(source, want)]
        if payloads:
            await _send(client, stream, payloads)
            sent += len(payloads)
            on_progress(sent)
        if len(payloads) < want:
            break  # the entries (or the count) ran out
    return Published(sent, trio.current_time() - start)


# --- command line ----------------------------------------------------------------------------


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `simulate` and `demo`: the scenario and how long it runs."""
    defaults = Quirks()
    parser.add_argument("--devices", type=int, default=50, help="cars (default 50)")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="fixes per second overall (default 100)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after SECONDS (default: Ctrl-C)"
    )
    for field in attrs.fields(Quirks):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            type=float,
            default=getattr(defaults, field.name),
            metavar="SHARE",
            help=f"share of {field.name.replace('_', ' ')} quirks (default %(default)s)",
        )


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The shape of a simulated stage (`simulate --stage`, `demo`)."""
    defaults = StageSettings()
    parser.add_argument(
        "--stage-km", type=float, default=defaults.length_km, help="stage length (default 3)"
    )
    parser.add_argument(
        "--stage-controls",
        type=int,
        default=defaults.controls,
        help="waypoints and checkpoints between start and finish (default 6)",
    )
    parser.add_argument(
        "--start-interval",
        type=float,
        default=defaults.start_interval_s,
        metavar="SECONDS",
        help="seconds between two cars' starts (default 2)",
    )
    parser.add_argument(
        "--scenario-out",
        default=None,
        metavar="FILE",
        help="write the stage, its controls and entries as SQL to FILE ('-': stdout)",
    )


def stage_from(args: argparse.Namespace, scenario: Scenario) -> RallyStage:
    settings = StageSettings(
        length_km=args.stage_km, controls=args.stage_controls, start_interval_s=args.start_interval
    )
    stage = RallyStage.generate(scenario, settings)
    if args.scenario_out == "-":
        sys.stdout.write(scenario_sql(stage))
        sys.stdout.flush()
    elif args.scenario_out:
        Path(args.scenario_out).write_text(scenario_sql(stage), encoding="utf-8")
    return stage


def scenario_from(args: argparse.Namespace) -> Scenario:
    quirks = Quirks(**{f.name: getattr(args, f.name) for f in attrs.fields(Quirks)})
    seed = args.seed if args.seed is not None else int(time.time())
    start = datetime.now(UTC)
    if getattr(args, "unpaced", False) and getattr(args, "count", None):
        # Published faster than simulated time passes: end the timeline now instead of far in
        # the future, or every fix past FUTURE_TOLERANCE_S would be stored as faulty.
        start -= timedelta(seconds=args.count / args.rate)
    return Scenario(devices=args.devices, rate=args.rate, seed=seed, start=start, quirks=quirks)


def cmd_simulate(args: argparse.Namespace, config: Config) -> int:
    try:
        scenario = scenario_from(args)
    except ValueError as exc:
        print(f"processor simulate: {exc}", file=sys.stderr)
        return 2
    stream = args.stream or config.redis_stream
    rate = None if args.unpaced else scenario.rate
    simulator: Simulator = Simulator(scenario)
    if args.stage:
        try:
            stage = stage_from(args, scenario)
        except (ValueError, OSError) as exc:
            print(f"processor simulate: {exc}", file=sys.stderr)
            return 2
        simulator = StageSimulator(scenario, stage)
        print(
            f"stage {stage.stage_id}: {stage.route.length_m / 1000:.1f} km, "
            f"{len(stage.controls)} controls, {len(stage.entries)} entries"
            + (
                f"; scenario SQL in {args.scenario_out}"
                if args.scenario_out not in (None, "-")
                else ""
            ),
            file=sys.stderr,
        )
    client = redis_store.make_client(config.redis_url)
    progress = Progress()
    print(
        f"simulating {scenario.devices} devices at {scenario.rate:g} fixes/s "
        f"(seed {scenario.seed}) into {stream!r}; Ctrl-C stops",
        file=sys.stderr,
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
                await publish(
                    client,
                    stream,
                    simulator,
                    rate=rate,
                    count=args.count,
                    duration_s=args.duration,
                    on_progress=progress.update,
                )
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except redis_store.TRANSIENT_ERRORS as exc:
        print(f"processor simulate: Redis unavailable: {redact(str(exc))}", file=sys.stderr)
        return 1
    finally:
        client.close()
    progress.finish()
    return 0


async def cancel_on_signal(
    signals: AsyncIterator[int], scope: trio.CancelScope, message: str = ""
) -> None:
    """Cancel `scope` at the next signal (saying `message` first, if any)."""
    async for _ in signals:
        if message:
            print(message, file=sys.stderr, flush=True)
        scope.cancel()
        return


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "simulate",
        help="publish realistic synthetic rally telemetry to the stream",
        description="Publish simulated cars' GPS fixes (with late bursts, duplicates, "
        "zero-satellite fixes, event twins and sentinels) to REDIS_STREAM.",
    )
    add_scenario_arguments(parser)
    parser.add_argument("--count", type=int, default=None, help="stop after COUNT entries")
    parser.add_argument("--stream", default=None, help="stream key (default REDIS_STREAM)")
    parser.add_argument(
        "--unpaced", action="store_true", help="send as fast as Redis takes them (ignore --rate)"
    )
    parser.add_argument(
        "--stage",
        action="store_true",
        help="drive the cars over a generated stage with controls (see --scenario-out)",
    )
    add_stage_arguments(parser)
    parser.set_defaults(handler=cmd_simulate)
