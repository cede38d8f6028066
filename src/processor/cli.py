"""Command line: `processor run | migrate | dlq | simulate | demo | bench | timing`.

Every command reads the same environment configuration; an invalid setting stops it with exit
code 2 and one line naming the variable (no traceback).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Sequence

import structlog
import trio

from processor.config import Config, ConfigError, load_config
from processor.observability.logging import configure_logging
from processor.store.retry import Unavailable

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1

log = structlog.get_logger("processor.cli")


def _refuse(exc: ConfigError) -> SystemExit:
    print(f"processor: configuration error: {exc}", file=sys.stderr)
    return SystemExit(EXIT_CONFIG)


def _load() -> Config:
    try:
        config = load_config()
    except ConfigError as exc:
        raise _refuse(exc) from None
    configure_logging(config.log_level, config.log_format)
    return config


def cmd_run(_args: argparse.Namespace) -> int:
    config = _load()
    # The first line comes before the pipeline's imports (psycopg, redis-py, prometheus; the
    # HTTP and live stacks later still, when they start): an operator sees at once that the
    # process runs and its configuration is valid.
    log.info("processor run: configuration valid", instance=config.instance_id, pid=os.getpid())
    from processor.app import run_until_signalled

    _tune_gc()
    try:
        return trio.run(run_until_signalled, config)
    except ConfigError as exc:  # found only once running, e.g. the live group is in use
        raise _refuse(exc) from None


# The pipeline allocates and frees a few containers per fix: with CPython's default threshold
# (700 net allocations) it ran ~600 young collections per 100,000 fixes, each promoting the
# batch in hand, and full collections then traversed every imported module again: 0.6 s of
# collector time per 100,000 fixes, ~16 % of the daemon's CPU (gc.callbacks, issue 15). A batch's
# objects are freed by reference counting; the collector is only needed for rare cycles.
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Freeze what start-up imported (it lives as long as the process) and collect young
    objects less often: per fix, the collector then costs next to nothing."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def cmd_migrate(_args: argparse.Namespace) -> int:
    config = _load()
    from processor.app import make_database, migrate

    async def main() -> None:
        database = make_database(config)
        await database.connect(deadline_s=config.startup_timeout_s)
        try:
            await migrate(config, database)
        finally:
            await database.aclose()

    trio.run(main)
    return 0


def build_parser(*, extra_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description="Telemetry processor: Redis Stream -> PostgreSQL, live WebSocket, metrics. "
        "Configured by environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.set_defaults(handler=cmd_run)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(handler=cmd_migrate)
    if extra_commands:
        for module in EXTRA_COMMANDS:
            importlib.import_module(module).register(commands)
    return parser


# Further commands register their sub-parsers here (each module has a `register`). They are
# imported only to parse a command line that may name one of them: the daemon's commands
# (`run`, `migrate`) do not pay for their imports (redis-py, the simulator) before logging.
EXTRA_COMMANDS = (
    "processor.dlq",
    "processor.publisher",
    "processor.demo",
    "processor.bench",
    "processor.timing_commands",
)
DAEMON_COMMANDS = ("run", "migrate")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(extra_commands=not argv or argv[0] not in DAEMON_COMMANDS)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except Unavailable as exc:  # start-up gave up on a server: one line, no traceback
        log.error("startup failed", error=str(exc))
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    raise SystemExit(main())
