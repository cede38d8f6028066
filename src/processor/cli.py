"""Command line: `processor run | migrate | dlq | simulate | demo | bench | timing`.

Every command reads the same environment configuration; an invalid setting stops it with exit
code 2 and one line naming the variable (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import structlog
import trio

from processor import bench, demo, dlq, publisher, timing_commands
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
    config = _load()  # first: a bad setting is reported without importing the whole daemon
    from processor.app import run_until_signalled

    try:
        return trio.run(run_until_signalled, config)
    except ConfigError as exc:  # found only once running, e.g. the live group is in use
        raise _refuse(exc) from None


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


def build_parser() -> argparse.ArgumentParser:
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
    for register in EXTRA_COMMANDS:
        register(commands)
    return parser


# Further commands (dlq, simulate, demo, bench) register their sub-parsers here.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    dlq.register,
    publisher.register,
    demo.register,
    bench.register,
    timing_commands.register,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except Unavailable as exc:  # start-up gave up on a server: one line, no traceback
        log.error("startup failed", error=str(exc))
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    raise SystemExit(main())
