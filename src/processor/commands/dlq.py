"""`processor dlq list | replay`: the operator's view of the dead-letter stream.

    processor dlq list [--limit N] [--reason R] [--json]
    processor dlq replay ID [ID ...] [--reason R]
    processor dlq replay --all [--reason R]

`list` prints the newest dead letters first, as a table (or one JSON array with `--json`).
`replay` puts entries back on the main stream (see core/dead_letters.py for the ordering that
makes it safe) and exits 1 when an ID was not found or an append failed, so scripts notice.
Reasons are matched exactly, as `list` shows them (e.g. `max_deliveries`, `invalid JSON`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from processor.config import Config
from processor.core import dead_letters
from processor.core.dead_letters import DeadLetter, ReplayReport
from processor.store import redis as redis_store

EXIT_OK = 0
EXIT_INCOMPLETE = 1
ERROR_WIDTH = 60


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="inspect and replay the dead-letter stream")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="show dead letters, newest first")
    listing.add_argument("--limit", type=_positive, default=50, help="at most N (default 50)")
    listing.add_argument("--reason", help="only dead letters with exactly this reason")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(handler=cmd_list)

    replaying = actions.add_parser(
        "replay", help="re-append dead letters to the main stream, then remove them"
    )
    which = replaying.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="dead-letter IDs")
    which.add_argument("--all", action="store_true", help="every dead letter (see --reason)")
    replaying.add_argument("--reason", help="only dead letters with exactly this reason")
    replaying.set_defaults(handler=cmd_replay)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    client = redis_store.make_client(config.redis_url)
    try:
        stream = config.dead_letter_stream
        letters = dead_letters.newest(client, stream, limit=args.limit, reason=args.reason)
        total = dead_letters.count(client, stream)
    finally:
        client.close()
    if args.json:
        print(orjson.dumps([d.as_json() for d in letters], option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(letters))
        print(f"{len(letters)} shown of {total} in {stream}", file=sys.stderr)
    return EXIT_OK


def format_table(letters: Sequence[DeadLetter]) -> str:
    header = ("ID", "FAILED_AT", "REASON", "DEVICE", "SOURCE_ID", "CONSUMER", "ERROR")
    rows = [
        (
            d.id,
            d.text("failed_at")[:23],
            d.reason,
            d.device_id,
            d.text("source_id"),
            d.text("consumer"),
            _shorten(d.text("error")),
        )
        for d in letters
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= ERROR_WIDTH else flat[: ERROR_WIDTH - 1] + "…"


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    client = redis_store.make_client(config.redis_url)
    stream, dead = config.redis_stream, config.dead_letter_stream
    total = ReplayReport()
    missing: list[str] = []
    try:
        if args.all:
            # what exists now, not what the running pipeline dead-letters meanwhile (a
            # replayed entry that fails again would otherwise be replayed again, and so on)
            until = dead_letters.newest_id(client, dead)
            if until is not None:
                print(
                    f"replaying the dead letters up to {until}, the newest when the replay started",
                    file=sys.stderr,
                )
                for page in dead_letters.oldest_first(
                    client, dead, reason=args.reason, until=until
                ):
                    _merge(total, dead_letters.replay(client, stream, dead, page))
        else:
            found = dead_letters.by_ids(client, dead, args.ids)
            found_ids = {d.id for d in found}
            missing = [i for i in args.ids if i not in found_ids]
            chosen = [d for d in found if args.reason is None or d.reason == args.reason]
            _merge(total, dead_letters.replay(client, stream, dead, chosen))
    finally:
        client.close()
    _report(total, missing, stream)
    return EXIT_INCOMPLETE if missing or total.failed else EXIT_OK


def _merge(total: ReplayReport, part: ReplayReport) -> None:
    total.replayed.extend(part.replayed)
    total.skipped.extend(part.skipped)
    total.failed.extend(part.failed)


def _report(report: ReplayReport, missing: Sequence[str], stream: str) -> None:
    for old, new in report.replayed:
        print(f"replayed {old} -> {stream} {new}")
    for entry_id in report.skipped:
        print(f"skipped {entry_id}: no original fields (trimmed before it failed)", file=sys.stderr)
    for entry_id, error in report.failed:
        print(f"failed {entry_id}: {error} (kept in the dead-letter stream)", file=sys.stderr)
    for entry_id in missing:
        print(f"not found: {entry_id}", file=sys.stderr)
    summary: dict[str, Any] = {
        "replayed": len(report.replayed),
        "skipped": len(report.skipped),
        "failed": len(report.failed),
        "not_found": len(missing),
    }
    print(" ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
