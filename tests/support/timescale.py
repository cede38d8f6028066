"""A real TimescaleDB for the hypertable path (docs/storage.md), beside the plain PostgreSQL suite.

`TIMESCALEDB_URL` when set (a CI service running a TimescaleDB image). When the session's
PostgreSQL is a TimescaleDB container (tests/support/servers.py, the containers path), that
server. Otherwise a throwaway
PostgreSQL 15 cluster is started for the session from the machine's binaries
(`/usr/lib/postgresql/15/bin`, or `TIMESCALEDB_PG_BINDIR`) with
`-c shared_preload_libraries=timescaledb`, on a free port, as an unprivileged account when we are
root (`processor_dev.devservers`). The machine's shared cluster is never restarted or reconfigured.

TimescaleDB missing is a failure naming the command that installs it, never a skip: the
hypertable path must run in CI.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support import servers

INSTALL = "sudo ../shared/timescaledb/install.sh (TimescaleDB files for PostgreSQL 15)"
DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def timescaledb_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("TIMESCALEDB_URL")
    if not url and servers.session_paths()["postgres"] == "containers":
        url = request.getfixturevalue("postgres_server_url")
    with contextlib.ExitStack() as stack:
        if not url:
            from processor_dev.devservers import throwaway_postgres

            bindir = Path(os.environ.get("TIMESCALEDB_PG_BINDIR", DEFAULT_BINDIR))
            if not (bindir / "postgres").is_file():
                pytest.fail(
                    f"no PostgreSQL 15 server binaries in {bindir} for the TimescaleDB tests: "
                    "install postgresql-15 (or set TIMESCALEDB_URL / TIMESCALEDB_PG_BINDIR), "
                    f"then {INSTALL}"
                )
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
