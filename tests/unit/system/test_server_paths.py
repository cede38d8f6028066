"""The harness's choice of where Redis and PostgreSQL come from (tests/support/servers.py).

`choose` is given every combination of environment and probe answers: the URL, `TEST_SERVERS`,
`PROCESSOR_DEVSERVERS`, local binaries found or not, an engine answering or not, for both
servers. The probes are recorded, so the test also proves that a decided case never pings the
engine (the ping is the slow part of a session's start). The real engine probe is checked
against sockets that are not an engine: it says no, within its bound.
"""

from __future__ import annotations

import itertools
import socket
import tempfile
import time
from pathlib import Path as FsPath

import pytest

from tests.support import servers
from tests.support.servers import PathUnavailableError, Server, choose

URLS = {"redis": "redis://127.0.0.1:6379/0", "postgres": "postgresql://postgres@127.0.0.1/test"}
URL_VALUES = [None, "", "  ", "set"]
FORCES = [None, "", "environment", "local", "containers", "wheels"]
DEVSERVERS = [None, "auto", "local", "wheels"]


class Probes:
    """Injected probes with fixed answers that record what was asked."""

    def __init__(self, *, local: bool, engine: bool) -> None:
        self.local, self.engine = local, engine
        self.local_asked: list[Server] = []
        self.engine_asked = 0

    def local_binaries(self, server: Server) -> bool:
        self.local_asked.append(server)
        return self.local

    def engine_answers(self) -> bool:
        self.engine_asked += 1
        return self.engine


def environment(
    server: Server, url: str | None, force: str | None, devservers: str | None
) -> dict[str, str]:
    env = {"DOCKER_HOST": "unix:///nowhere.sock"}
    if url is not None:
        env[servers.URL_VARIABLE[server]] = URLS[server] if url == "set" else url
    if force is not None:
        env[servers.FORCE_VARIABLE] = force
    if devservers is not None:
        env[servers.DEVSERVERS_VARIABLE] = devservers
    return env


CASES = list(
    itertools.product(servers.SERVERS, URL_VALUES, FORCES, DEVSERVERS, [True, False], [True, False])
)


@pytest.mark.parametrize(("server", "url", "force", "devservers", "local", "engine"), CASES)
def test_every_combination_follows_the_documented_order(
    server: Server,
    url: str | None,
    force: str | None,
    devservers: str | None,
    local: bool,
    engine: bool,
) -> None:
    probes = Probes(local=local, engine=engine)
    env = environment(server, url, force, devservers)
    has_url = url == "set"

    def decide() -> str:
        return choose(
            server, env, local_binaries=probes.local_binaries, engine_answers=probes.engine_answers
        )

    if force:
        # Forced: that path or an error saying why not; the URL and the devservers pin are
        # irrelevant except that `environment` needs the URL.
        available = {
            "environment": has_url,
            "local": local,
            "containers": engine,
            "wheels": True,
        }[force]
        if not available:
            with pytest.raises(PathUnavailableError, match=servers.FORCE_VARIABLE):
                decide()
            return
        assert decide() == servers.FORCED[force]
        assert probes.engine_asked == (1 if force == "containers" else 0)
        assert probes.local_asked == ([server] if force == "local" else [])
        return

    chosen = decide()
    if has_url:
        assert chosen == "environment"
        assert (probes.local_asked, probes.engine_asked) == ([], 0)
    elif devservers in ("local", "wheels"):
        assert chosen == {"local": "local binaries", "wheels": "wheels"}[devservers]
        assert (probes.local_asked, probes.engine_asked) == ([], 0)
    elif local:
        assert chosen == "local binaries"
        assert (probes.local_asked, probes.engine_asked) == ([server], 0)
    elif engine:
        assert chosen == "containers"
        assert (probes.local_asked, probes.engine_asked) == ([server], 1)
    else:
        assert chosen == "wheels"
        assert (probes.local_asked, probes.engine_asked) == ([server], 1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REDIS_URL": URLS["redis"]}, "environment"),
        ({}, "containers"),  # the Gitea runner: no URL, no binaries, Docker
        ({"TEST_SERVERS": "containers", "REDIS_URL": URLS["redis"]}, "containers"),
        ({"PROCESSOR_DEVSERVERS": "wheels"}, "wheels"),
        ({"PROCESSOR_DEVSERVERS": "wheels", "REDIS_URL": URLS["redis"]}, "environment"),
    ],
)
def test_examples_read_as_the_readme_says(env: dict[str, str], expected: str) -> None:
    probes = Probes(local=False, engine=True)
    chosen = choose(
        "redis", env, local_binaries=probes.local_binaries, engine_answers=probes.engine_answers
    )
    assert chosen == expected


def test_an_unknown_forced_path_is_an_error_naming_the_choices() -> None:
    probes = Probes(local=True, engine=True)
    with pytest.raises(PathUnavailableError, match="environment, local, containers, wheels"):
        choose(
            "postgres",
            {"TEST_SERVERS": "docker"},
            local_binaries=probes.local_binaries,
            engine_answers=probes.engine_answers,
        )


def test_the_header_names_each_path_and_a_container_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_TIMESCALEDB_IMAGE", "localhost/timescaledb:ci")
    line = servers.describe({"redis": PathUnavailableError("no engine"), "postgres": "containers"})
    assert line == (
        "servers: redis=unavailable (no engine), postgres=containers (localhost/timescaledb:ci)"
    )
    assert servers.describe({"redis": "environment", "postgres": "wheels"}) == (
        "servers: redis=environment, postgres=wheels"
    )


def test_no_engine_at_a_missing_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{FsPath(tmp) / 'absent.sock'}")
        assert servers.engine_answers(timeout=1.0) is False


def test_a_silent_socket_is_no_engine_and_the_ping_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that accepts but never answers (a hung engine) costs the bound, not forever."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener,
    ):
        path = FsPath(tmp) / "silent.sock"
        listener.bind(str(path))
        listener.listen(8)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        started = time.monotonic()
        assert servers.engine_answers(timeout=1.0) is False
        assert time.monotonic() - started < 10
