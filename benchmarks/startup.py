"""Phase startup: launch -> `/readyz` 200 of `processor run` against the bare import of the
libraries any daemon doing this job imports.

Both sides are launched in alternating order, round by round (`benchmarks.rounds`), and both
import from bytecode as installed software does: the daemon's package is compiled first and
one uncounted launch of each writes the libraries' caches (and creates the group). Medians of
both and their ratio are reported.
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import processor
from benchmarks.harness import Bench, say
from benchmarks.rounds import round_order

LAUNCHES = 5
# What any daemon doing this job must import: the baseline `processor run` is measured against.
UNAVOIDABLE_IMPORTS = "import trio, redis, psycopg, orjson"


def run(runner: Bench) -> None:
    url, stream = runner.schema("startup"), runner.stream("startup")
    compileall.compile_dir(Path(processor.__file__).parent, quiet=1)
    writing = {"PYTHONDONTWRITEBYTECODE": ""}  # empty: Python writes bytecode
    bare_import_s(writing)
    ready_s(runner, url, stream, writing)
    samples: dict[str, list[float]] = {"import": [], "ready": []}
    measure: dict[str, Callable[[], float]] = {
        "import": bare_import_s,
        "ready": lambda: ready_s(runner, url, stream),
    }
    for attempt in range(LAUNCHES):
        for name in round_order(list(samples), attempt):
            samples[name].append(measure[name]())
    results = runner.results
    for name, values in samples.items():
        results[f"startup_{name}_s"] = round(statistics.median(values), 3)
        results[f"startup_{name}_s_samples"] = [round(v, 3) for v in values]
    results["startup_ratio"] = round(results["startup_ready_s"] / results["startup_import_s"], 3)
    say(
        "startup: /readyz 200 after {startup_ready_s} s, bare imports {startup_import_s} s "
        "(medians), ratio {startup_ratio}".format(**results)
    )


def ready_s(runner: Bench, url: str, stream: str, extra: dict[str, str] | None = None) -> float:
    launched = time.time()
    daemon = runner.daemon(url, stream, extra)
    try:
        return daemon.wait_readyz() - launched
    finally:
        daemon.kill()


def bare_import_s(extra: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    env = {**os.environ, **(extra or {})}
    subprocess.run([sys.executable, "-c", UNAVOIDABLE_IMPORTS], check=True, env=env)
    return time.perf_counter() - started
