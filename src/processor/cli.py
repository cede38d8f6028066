"""Command line: `processor run | migrate | config | dlq | timing | simulate | demo`.

Every command reads the same environment configuration, loaded once here (`main`) and handed to
its handler as `handler(args, config)`; an invalid setting stops it with exit code 2 and one line
naming the variable. A command may declare defaults beneath the environment (`env_defaults`);
nothing edits `os.environ`. `simulate` and `demo` come from `processor_dev`, reached only through
`EXTRA_COMMANDS`. The benchmark is not a command (`just bench`, from a checkout).

Invariant: imports are lazy, so a bad setting is reported as soon as the environment is parsed;
a sub-command's module is imported only when it is chosen (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from processor.config import Config, ConfigError, load_config

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1

# argparse names its sub-parser collection only privately; `add_subparsers` returns one.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]  # noqa: SLF001
Handler = Callable[[argparse.Namespace, Config], int]


def configure_logging(level: str, log_format: str) -> None:
    """Logging set-up, imported only once the configuration is known to be valid (structlog)."""
    from processor.observability.logging import configure_logging as configure

    configure(level, log_format)


def _refuse(exc: ConfigError) -> SystemExit:
    print(f"processor: configuration error: {exc}", file=sys.stderr)
    return SystemExit(EXIT_CONFIG)


def _load(environ: Mapping[str, str]) -> Config:
    try:
        config = load_config(environ)
    except ConfigError as exc:
        raise _refuse(exc) from None
    configure_logging(config.log_level, config.log_format)
    return config


def cmd_run(_args: argparse.Namespace, config: Config) -> int:
    # The first line comes before the pipeline's imports (trio, psycopg, redis-py, prometheus;
    # the live stack later still, when it starts): an operator sees at once that the process
    # runs and its configuration is valid.
    import structlog

    structlog.get_logger("processor.cli").info(
        "processor run: configuration valid", instance=config.instance_id, pid=os.getpid()
    )
    gc.disable()  # until _tune_gc: the imports below make no garbage worth a collection
    import trio

    from processor.app import run_until_signalled

    _tune_gc()
    try:
        return trio.run(run_until_signalled, config)
    except ConfigError as exc:  # found only once running, e.g. the live group is in use
        raise _refuse(exc) from None


# A batch's objects are freed by reference counting; the collector is only needed for rare
# cycles, so young collections run far less often than CPython's default (docs/decisions.md).
GC_YOUNG_THRESHOLD = 200_000


def _tune_gc() -> None:
    """Freeze what start-up imported (it lives as long as the process) and collect young
    objects less often: per fix, the collector then costs next to nothing. No collection
    first: it finds next to nothing to free among the imported objects, yet takes a sizeable
    part of start-up (benchmarks/README.md)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    gc.enable()


def _without_rich() -> None:
    """structlog imports rich when it can, to draw console tracebacks. rich is no runtime
    dependency (the lint tools bring it into a development environment) and its import is a
    large share of start-up (benchmarks/README.md); so `processor run` starts the same
    everywhere, as in production, with plain tracebacks."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def cmd_migrate(_args: argparse.Namespace, config: Config) -> int:
    import trio  # after the configuration parsed (module docstring)

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


def build_parser(extras: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with `run`, `migrate` and the `extras` commands (default: all of them)."""
    parser = argparse.ArgumentParser(
        prog="processor",
        description="Telemetry processor: Redis Stream -> PostgreSQL, live WebSocket, metrics. "
        "Configured by environment variables (docs/configuration.md; `processor config`).",
    )
    parser.set_defaults(env_defaults={})
    from processor.version import VERSION

    parser.add_argument("--version", action="version", version=f"processor {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    run.set_defaults(handler=cmd_run)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    migrate.set_defaults(handler=cmd_migrate)
    for command in EXTRA_COMMANDS if extras is None else extras:
        register: Register = importlib.import_module(EXTRA_COMMANDS[command]).register
        register(commands)
    return parser


# Further commands: name -> the module whose `register` adds its sub-parser (imported on demand).
EXTRA_COMMANDS: dict[str, str] = {
    "config": "processor.commands.config",
    "dlq": "processor.commands.dlq",
    "timing": "processor.commands.timing",
    "simulate": "processor_dev.publisher",
    "demo": "processor_dev.demo",
}


def _chosen_extras(argv: Sequence[str]) -> Sequence[str] | None:
    """The extra commands worth importing for `argv`: none for `run`/`migrate`, the chosen one,
    or all (None) when no command is named yet (help, a typo) so the usage lists every command."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in ("run", "migrate"):
        return ()
    if command in EXTRA_COMMANDS:
        return (command,)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen_extras(argv))
    args = parser.parse_args(argv)
    if args.handler is cmd_run:
        _without_rich()
    # First: a bad setting is reported before the chosen command imports its machinery.
    config = _load({**args.env_defaults, **os.environ})
    handler: Handler = args.handler
    try:
        return handler(args, config)
    except Exception as exc:
        from processor.store.retry import Unavailable

        if not isinstance(exc, Unavailable):
            raise
        # start-up gave up on a server: one line, no traceback
        import structlog

        structlog.get_logger("processor.cli").error("startup failed", error=str(exc))
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    raise SystemExit(main())
