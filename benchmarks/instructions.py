"""Instructions per fix of the stream contenders, counted by valgrind's callgrind.

    python -m benchmarks.instructions [--fixes 20000] [--contenders processor,minimal]
                                      [--set NAME=VALUE ...]

Steady where CPU seconds are not (why, and how counting is switched on and off around a full
backlog: benchmarks/README.md, "instructions per fix"). User-space instructions only, so
`just bench` remains the judge of the end result.

Needs `valgrind` (Debian: `apt-get install valgrind`), REDIS_URL and DATABASE_URL.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import FULL, SEED, START, Bench
from benchmarks.throughput import STREAM_CONTENDERS
from processor.codecs.position import decode_payload
from processor_dev.simulate import Scenario, Simulator

QUIET = {
    "RECLAIM_INTERVAL_S": "3600",
    "RECLAIM_MIN_IDLE_MS": "86400000",
    "PROBE_INTERVAL_S": "3600",
    "LAG_SAMPLE_INTERVAL_S": "3600",
    "DOMAIN_REFRESH_MS": "3600000",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.instructions", description=__doc__)
    parser.add_argument("--fixes", type=int, default=20_000)
    parser.add_argument("--contenders", default="processor,minimal")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    settings = {**QUIET, **dict(item.split("=", 1) for item in args.set)}
    bench = Bench(os.environ["REDIS_URL"], os.environ["DATABASE_URL"], FULL, settings)
    devices = 1_000 if args.fixes >= 100_000 else 100  # the corpora of `just bench` / --quick
    scenario = Scenario(devices=devices, rate=2_000.0, seed=SEED, start=START)
    payloads = [e.payload for e in itertools.islice(Simulator(scenario), args.fixes)]
    rows = len({(p.device_id, p.ts) for p in map(decode_payload, payloads)})
    try:
        with tempfile.TemporaryDirectory() as out:
            for name in args.contenders.split(","):
                per_fix = count(bench, name, payloads, rows, Path(out))
                print(f"{name}: {per_fix:,.0f} instructions per fix", flush=True)
    finally:
        bench.cleanup()
    return 0


def count(bench: Bench, name: str, payloads: list[bytes], rows: int, out: Path) -> float:
    url, stream = bench.schema(f"ir_{name}"), bench.stream(f"ir_{name}")
    bench.redis.xgroup_create(stream, "processor", id="0", mkstream=True)
    prefix = (
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/{name}.%p",
    )
    # a fixed hash seed: the writer's split over lanes by device (hash) is the same every run
    extra = {"PYTHONHASHSEED": "0"}
    daemon = bench.daemon(url, stream, extra, module=STREAM_CONTENDERS[name], prefix=prefix)
    pid = str(daemon.proc.pid)
    try:
        daemon.wait_ready(timeout_s=600)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        time.sleep(2)  # whatever start-up left running settles before the fixes arrive
        pipe = bench.redis.pipeline(transaction=True)
        for payload in payloads:
            pipe.xadd(stream, {"payload": payload})
        pipe.execute()
        bench.wait_caught_up(stream, timeout_s=1_800, interval_s=0.2, daemon=daemon)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        daemon.kill()
    bench.check_rows(name, url, rows)
    return max(map(totals, out.glob(f"{name}.{pid}*"))) / len(payloads)


def totals(dump: Path) -> int:
    """The instruction count of one callgrind dump (its `totals:` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
