"""A real TimescaleDB for the hypertable path (docs/storage.md), beside the plain PostgreSQL suite.

`TIMESCALEDB_URL` when set (a CI service running a TimescaleDB image). When the session's
PostgreSQL is a TimescaleDB container (tests/support/servers.py, the containers path), that
server. Otherwise a throwaway
PostgreSQL 15 cluster is started for the session from the machine's binaries
(`/usr/lib/postgresql/15/bin`, or `TIMESCALEDB_PG_BINDIR`) with
`-c shared_preload_libraries=timescaledb`, on a free port, as an unprivileged account when we are
root (`processor_dev.devservers`). The machine's shared cluster is never restarted or reconfigured.

Where TimescaleDB cannot be had at all (no `TIMESCALEDB_URL`, no container engine, no PostgreSQL
15 with the TimescaleDB files on this machine: a bare laptop) its tests are *not run*: reported
in the loud block at the end of the session with what would run them (`tests/support/
not_run.py`), never silently. Under `TEST_ENGINES_REQUIRED=1` (`.ci/run` sets it) they fail
instead, so CI cannot go green without them. Files that are there but do not work (a server
that does not start, an extension that does not load) are a failure either way.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support import servers
from tests.support.not_run import not_run

INSTALL = (
    "install TimescaleDB for PostgreSQL 15 (the timescaledb extension files in "
    "`pg_config --sharedir`/extension and --pkglibdir; CI's .ci/run does)"
)
HOW_TO_RUN = (
    "set TIMESCALEDB_URL to a TimescaleDB server, or TEST_SERVERS=containers with a container "
    f"engine (DOCKER_HOST), or install postgresql-15 and {INSTALL}"
)
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")


def missing_locally(bindir: Path) -> str | None:
    """Why this machine cannot start a TimescaleDB of its own from `bindir`, or None."""
    if not (bindir / "postgres").is_file():
        return f"no PostgreSQL 15 server binaries in {bindir}"
    sharedir = bindir.parent.parent.parent.parent / "share" / "postgresql" / bindir.parent.name
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        found = subprocess.run(
            [str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30, check=False
        )
        if found.returncode == 0 and found.stdout.strip():
            sharedir = Path(found.stdout.strip())
    if not (sharedir / "extension" / "timescaledb.control").is_file():
        return f"no TimescaleDB extension files in {sharedir / 'extension'}"
    return None


@pytest.fixture(scope="session")
def timescaledb_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("TIMESCALEDB_URL")
    if not url and servers.session_paths()["postgres"] == "containers":
        url = request.getfixturevalue("postgres_server_url")
    with contextlib.ExitStack() as stack:
        if not url:
            from processor_dev.devservers import throwaway_postgres

            bindir = Path(os.environ.get("TIMESCALEDB_PG_BINDIR", DEFAULT_BINDIR))
            missing = missing_locally(bindir)
            if missing is not None:
                not_run("TimescaleDB", missing, HOW_TO_RUN)
            try:
                url = stack.enter_context(
                    throwaway_postgres(
                        bindir=bindir,
                        settings=[("shared_preload_libraries", "timescaledb")],
                        timeout=60,
                    )
                )
            except RuntimeError as exc:
                pytest.fail(
                    f"could not start PostgreSQL with TimescaleDB preloaded; install it with: "
                    f"{INSTALL}\n{exc}"
                )
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
            preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        if row is None or "timescaledb" not in str(preload):
            pytest.fail(f"TimescaleDB is not available at {url}; install it with: {INSTALL}")
        yield url


@pytest.fixture
def timescaledb_url(timescaledb_server_url: str) -> Iterator[str]:
    """A fresh database of its own: the migration creates the extension there itself, as it
    does on a new production database, and nothing is shared between tests."""
    name = f"processor_tsdb_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(timescaledb_server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(timescaledb_server_url)._replace(path=f"/{name}"))
    with psycopg.connect(timescaledb_server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
