"""`processor bench`: run the benchmark (`benchmarks/run.py`) from a source checkout.

The benchmark lives beside `src/` (it is not part of the installed package: it drives the
daemon from outside, like an operator would), so this command finds the checkout and runs
`benchmarks.run` with the remaining arguments (`processor bench --help` shows its options).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    return root if (root / "benchmarks" / "run.py").is_file() else None


def cmd_bench(args: argparse.Namespace) -> int:
    root = checkout_root()
    if root is None:
        print(
            "processor bench: benchmarks/ not found (run from a source checkout)", file=sys.stderr
        )
        return 2
    sys.path.insert(0, str(root))
    run = importlib.import_module("benchmarks.run")
    code: int = run.main(args.arguments)
    return code


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Every argument (even --help) belongs to benchmarks.run: no options of our own.
    parser = commands.add_parser(
        "bench",
        help="benchmark: raw COPY vs seed design vs processor, latency, RSS, drain",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=cmd_bench)
