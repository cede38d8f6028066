"""`processor demo` runs the processor and the simulator together and ends cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import redis

from tests.support.fixes import pending_count, row_count


def test_demo_stores_simulated_fixes_and_exits_zero(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "processor.cli", "demo", "--duration", "5", "--rate", "200"],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        timeout=60,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert re.search(r"metrics at http://127\.0\.0\.1:\d+/metrics", out)
    assert len(re.findall(r"^in [\d,]+ fixes/s \| stored [\d,]+ rows", out, re.MULTILINE)) >= 3
    done = re.search(r"done: ([\d,]+) fixes read, ([\d,]+) rows stored.*?([\d,]+) acked", out)
    assert done, out
    read, stored, acked = (int(g.replace(",", "")) for g in done.groups())
    # 5 s at 200/s, less what tunnels still held back when the simulator stopped
    assert 700 <= read <= 1001
    assert read == acked
    assert redis_client.xlen(stream_key) == read  # everything published was read and acked
    assert pending_count(redis_client, stream_key) == 0
    assert row_count(database_url) == stored
    assert stored > 600
    # the cars drive a timed stage: the status line carries its standing
    assert re.search(r"\| stage: leader (none yet|#\d+ [\d:.]+), \d+ finished, \d+ running", out)
    standing = re.search(r"^stage: leader .*, \d+ finished, \d+ running$", out, re.MULTILINE)
    assert standing, out[-500:]


def _start_demo(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "processor.cli", "demo", "--rate", "200", "--no-page"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_line(proc: subprocess.Popen[bytes], pattern: str) -> str:
    """Read stdout until a line matches (bounded by the test's timeout)."""
    assert proc.stdout is not None
    seen = []
    for raw in proc.stdout:
        line = raw.decode()
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError("demo ended before " + pattern + ":\n" + "".join(seen)[-2000:])


def test_ctrl_c_drains_the_demo_like_the_daemon(
    env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> None:
    """The demo shares the daemon's signal rule (processor.app.stop_on_signals): the first
    SIGINT drains — everything read is stored and acked — and exits 0."""
    proc = _start_demo(env)
    try:
        _wait_for_line(proc, r"^in [\d,]+ fixes/s \| stored [1-9]")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    done = re.search(
        r"done: ([\d,]+) fixes read, ([\d,]+) rows stored.*?([\d,]+) acked", out.decode()
    )
    assert done, out.decode()[-2000:]
    read, stored, acked = (int(g.replace(",", "")) for g in done.groups())
    assert read == acked > 0
    assert redis_client.xlen(stream_key) == read
    assert pending_count(redis_client, stream_key) == 0
    assert row_count(database_url) == stored


def test_second_ctrl_c_stops_the_demo_at_once(env: dict[str, str]) -> None:
    """A second signal during the drain cancels everything (as the daemon's does): the demo says
    so and ends without its summary, well before the drain deadline."""
    proc = _start_demo({**env, "SHUTDOWN_TIMEOUT_S": "120"})
    try:
        _wait_for_line(proc, r"^in [\d,]+ fixes/s \| stored [1-9]")
        # Two different signals back to back (trio coalesces repeats of one signal that arrive
        # before it reads them): the second lands while the first one's drain has barely begun.
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "stopped at once" in out.decode(), (out + err).decode()[-2000:]
    assert "done:" not in out.decode()
