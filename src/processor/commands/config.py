"""`processor config`: the effective configuration, as this process would run with it.

Operators ask "what does the instance really use?" after layering image defaults, env files and
secrets. This prints every setting (`NAME=value`, in the order of `processor.config.Config`, or
a JSON object with `--json`) with the defaults resolved the way the daemon resolves them
(`INSTANCE_ID` from the host name, `REDIS_CONSUMER` from it, `DLQ_STREAM` from the stream), and
every password masked (`processor.redaction`). An invalid configuration exits 2 with the same
one line as `processor run`, before anything is printed (the CLI loads it first).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from processor.config import ENV, Config, settings
from processor.redaction import redact


def effective(config: Config) -> dict[str, str]:
    """Every setting's effective value as text (lists comma-joined), passwords masked."""
    resolved: dict[str, Any] = {
        "redis_consumer": config.consumer_name,
        "dlq_stream": config.dead_letter_stream,
    }
    values: dict[str, str] = {}
    for field in settings():
        value = resolved.get(field.name, getattr(config, field.name))
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        values[field.metadata[ENV]] = redact(text)
    return values


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    values = effective(config)
    if args.json:
        sys.stdout.write(orjson.dumps(values, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.writelines(f"{name}={value}\n" for name, value in values.items())
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "config",
        help="print the effective configuration (passwords masked); exit 2 when invalid",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.set_defaults(handler=cmd_config)
