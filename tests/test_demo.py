"""`processor demo` runs the processor and the simulator together and ends cleanly."""

from __future__ import annotations

import os
import re
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
    assert len(re.findall(r"^in [\d,]+ fixes/s \| stored [\d,]+ rows", out, re.M)) >= 3
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
    assert re.search(r"^stage: leader .*, \d+ finished, \d+ running$", out, re.M), out[-500:]
