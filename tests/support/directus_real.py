"""A real Directus (the npm package of deploy/directus/package-lock.json) for the tests.

`real_directus` (session-scoped): deploy/directus/install.sh installs it once per lock file into
a cache directory outside the repository; then a database of its own is created on the suite's
PostgreSQL, `directus bootstrap` sets it up, `directus schema apply` applies
deploy/directus/snapshot.json, deploy/directus/racing.sql runs, and `directus start` serves it
on a free port until the session ends (then the database is dropped). Exactly what
docs/racing-domain.md tells a deployment to do, so the tests check what deployments get.

The CLI runs as `node .../@directus/api/dist/cli/run.js`, which is what `npx directus` runs
after an update check against the npm registry (up to 8 s per command, and nothing to test).
Without Node.js or npm the fixture fails with the command that installs them (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "directus"
INSTALL = DEPLOY / "install.sh"
SNAPSHOT = DEPLOY / "snapshot.json"
RACING_SQL = DEPLOY / "racing.sql"
# The processor's own tables in the Directus database: `directus schema apply` deletes every
# table its snapshot lacks, so a deployment applies with `--ignoreRules` naming these
# (docs/racing-domain.md).
PROCESSOR_TABLES = ("positions", "schema_migrations", "domain_stages")
# The role racing.sql creates (fixed id, so that a deployment and the tests can name it).
RACE_CONTROL_ROLE = "7e16da81-d0d0-40c4-b37f-599d7fbe4b47"
ADMIN_EMAIL = "admin@example.com"
NEEDS_NODE = "the real-Directus tests need Node.js and npm: apt-get install -y nodejs npm"
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 180.0
INSTALL_TIMEOUT_S = 1500.0  # a first install downloads ~1,100 packages and compiles isolated-vm


@attrs.frozen
class RealDirectus:
    """A running Directus: its URL, its database, and how to run its CLI on that database."""

    url: str
    database_url: str
    admin_password: str
    env: dict[str, str]
    cli: tuple[str, ...]
    log: Path

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`directus ARGS` on this Directus's database; fails the test on a non-zero exit."""
        done = subprocess.run(
            [*self.cli, *args],
            env=self.env,
            cwd=self.log.parent,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"directus {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


async def login(directus: RealDirectus, email: str, password: str) -> str:
    """An access token (`POST /auth/login`, the default JSON mode)."""
    async with directus.client() as client:
        reply = await client.post("/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    token: str = reply.json()["data"]["access_token"]
    return token


async def session_cookie(directus: RealDirectus, email: str, password: str) -> str:
    """The `directus_session_token` cookie an SPA gets from `POST /auth/login` in session
    mode (the browser keeps it; the live WebSocket's upgrade carries it)."""
    async with directus.client() as client:
        reply = await client.post(
            "/auth/login", json={"email": email, "password": password, "mode": "session"}
        )
    assert reply.status_code == 200, reply.text
    cookie = reply.cookies.get("directus_session_token")
    assert cookie, f"no session cookie in {reply.headers.get_list('set-cookie')}"
    return cookie


async def request(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """`data` of a successful Directus call; any other status fails with Directus's answer."""
    reply = await client.request(method, path, **kwargs)
    assert reply.is_success, f"{method} {path}: {reply.status_code} {reply.text}"
    return reply.json()["data"] if reply.content else None


def install() -> Path:
    """deploy/directus/install.sh (cached per lock file); the directory it installed into."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(NEEDS_NODE)
    done = subprocess.run(
        ["bash", str(INSTALL)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"installing Directus failed (bash deploy/directus/install.sh exited "
            f"{done.returncode}):\n{done.stderr[-4000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def directus_env(server_url: str, database: str, port: int, workdir: Path) -> dict[str, str]:
    """Directus's configuration (environment variables) for `database` on the suite's server."""
    given = conninfo_to_dict(server_url)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(workdir)),
        "DB_CLIENT": "pg",
        "DB_HOST": str(given.get("host") or "127.0.0.1"),
        "DB_PORT": str(given.get("port") or 5432),
        "DB_DATABASE": database,
        "DB_USER": str(given.get("user") or "postgres"),
        "DB_PASSWORD": str(given.get("password") or ""),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SECRET": secrets.token_hex(32),
        "ADMIN_EMAIL": ADMIN_EMAIL,
        "ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "TELEMETRY": "false",
        "LOG_LEVEL": "info",  # the CLI reports its results at info
        "LOG_STYLE": "raw",
        "STORAGE_LOCAL_ROOT": str(workdir / "uploads"),
        "EXTENSIONS_PATH": str(workdir / "extensions"),
    }


def _database_url(server_url: str, database: str) -> str:
    """`server_url` (a postgresql:// URL, as the suite's servers give) for `database`."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}", query=""))


@contextlib.contextmanager
def _database(server_url: str) -> Iterator[str]:
    """A fresh database on the suite's server (Directus works in its `public` schema)."""
    name = f"directus_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _serving(process: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    """Wait until Directus answers (True), or exits because its port was taken meanwhile
    (False: the caller tries another); any other end fails the test with Directus's log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            if "is already in use" in output:  # Directus's words for EADDRINUSE
                return False
            pytest.fail(f"directus start exited {process.returncode}:\n{output[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/server/ping", timeout=2).status_code == 200:
                return True
        time.sleep(0.2)  # polling a starting server: nothing to wait on instead
    pytest.fail(f"directus did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def real_directus(
    postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealDirectus]:
    home = install()
    workdir = tmp_path_factory.mktemp("directus")
    for folder in ("uploads", "extensions"):
        (workdir / folder).mkdir()
    with _database(postgres_server_url) as database:
        env = directus_env(postgres_server_url, database, 0, workdir)
        directus = RealDirectus(
            url="",
            database_url=_database_url(postgres_server_url, database),
            admin_password=env["ADMIN_PASSWORD"],
            env=env,
            cli=("node", str(home / "node_modules/@directus/api/dist/cli/run.js")),
            log=workdir / "directus.log",
        )
        directus.run_cli("bootstrap")
        directus.run_cli("schema", "apply", "--yes", str(SNAPSHOT))
        with psycopg.connect(directus.database_url, autocommit=True) as conn:
            conn.execute(RACING_SQL.read_text())
        for _ in range(3):  # a free port can be taken before Directus binds it
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            directus = attrs.evolve(
                directus, url=url, env={**env, "PORT": str(port), "PUBLIC_URL": url}
            )
            with directus.log.open("wb") as output:
                process = subprocess.Popen(
                    [*directus.cli, "start"],
                    env=directus.env,
                    cwd=workdir,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            try:
                if _serving(process, url, directus.log):
                    yield directus
                    return
            finally:
                _stop(process)
        pytest.fail("directus start found its port taken three times")
