"""`processor dlq list | replay` against a real dead-letter stream (docs/pipeline.md; OPERATIONS.md
section 6).

Dead letters are produced by the running pipeline itself (undecodable payloads and a record the
database refuses), so the CLI is tested on exactly what the daemon writes.
"""

from __future__ import annotations

import contextlib
import io

import orjson
import psycopg
import pytest
import redis
import trio

from processor.cli import main
from tests.support.fixes import fix, key_of, pending_count, publish, row_count, stored_keys
from tests.support.schema import migrate_and_forbid
from tests.support.service import running_service, wait_until


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`processor <argv>` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The commands under test log nothing; keep them from re-pointing the process-wide structlog
    # configuration at this test's captured (and soon closed) stderr.
    monkeypatch.setattr("processor.cli.configure_logging", lambda *_args: None)
    return env


@pytest.fixture
async def dead_ids(  # an async fixture: tests must request it by name (pytest-trio)
    cli_env: dict[str, str], redis_client: redis.Redis, stream_key: str, database_url: str
) -> list[str]:
    """Published entry IDs; the pipeline has dead-lettered 3 invalid-JSON entries, 1 missing
    device_id and 2 refused by the database, and stored the 4 good ones."""
    migrate_and_forbid(database_url, "blocked")
    documents: list[object] = [
        fix("dev1", 1),
        b"{not json",
        fix("blocked", 2),
        fix("dev1", 3),
        b"[1,",
        {k: v for k, v in fix("dev2", 4).items() if k != "device_id"},
        fix("blocked", 5),
        b"",
        fix("dev1", 6),
        fix("dev2", 7),
    ]
    ids = publish(redis_client, stream_key, documents)
    async with running_service(cli_env):
        await wait_until(lambda: redis_client.xlen(f"{stream_key}:dead") == 6)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
    assert row_count(database_url) == 4
    return ids


async def test_list_shows_reasons_newest_first_as_table_and_json(
    dead_ids: list[str],
    cli_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
) -> None:
    ids = dead_ids

    code, out, _ = await trio.to_thread.run_sync(run_cli, ["dlq", "list", "--json"])
    assert code == 0
    listed = orjson.loads(out)
    dead_ids = [i.decode() for i, _ in redis_client.xrange(f"{stream_key}:dead")]
    assert [d["id"] for d in listed] == dead_ids[::-1]  # newest first
    reasons = {d["source_id"]: d["reason"] for d in listed}
    assert reasons == {
        ids[1]: "invalid JSON",
        ids[2]: "database refused record",
        ids[4]: "invalid JSON",
        ids[5]: "missing device_id",
        ids[6]: "database refused record",
        ids[7]: "invalid JSON",
    }
    refused = next(d for d in listed if d["source_id"] == ids[6])
    assert "no_poison" in refused["error"]
    assert refused["consumer"] == cli_env["INSTANCE_ID"]
    assert orjson.loads(refused["fields"]["payload"])["device_id"] == "blocked"
    assert set(refused) == {"id", "reason", "error", "source_id", "consumer", "failed_at", "fields"}

    code, out, err = await trio.to_thread.run_sync(run_cli, ["dlq", "list", "--limit", "2"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "FAILED_AT", "REASON", "DEVICE", "SOURCE_ID", "CONSUMER", "ERROR"
    ]  # fmt: skip
    assert len(lines) == 3
    for line, shown in zip(lines[1:], listed[:2], strict=True):
        assert line.startswith(shown["id"]) and shown["reason"] in line
        assert shown["source_id"] in line
    assert "2 shown of 6" in err

    refused_only = ["dlq", "list", "--reason", "database refused record"]
    code, out, _ = await trio.to_thread.run_sync(run_cli, [*refused_only, "--json"])
    assert code == 0
    assert {d["source_id"] for d in orjson.loads(out)} == {ids[6], ids[2]}
    code, out, _ = await trio.to_thread.run_sync(run_cli, refused_only)
    assert code == 0
    rows = out.splitlines()[1:]
    assert len(rows) == 2 and all(" blocked " in row for row in rows)  # the DEVICE column


async def test_replay_by_reason_reinjects_and_removes_only_after_append(
    dead_ids: list[str],
    cli_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:  # the operator fixes the cause
        conn.execute("ALTER TABLE positions DROP CONSTRAINT no_poison")
    length_before = redis_client.xlen(stream_key)

    code, out, err = await trio.to_thread.run_sync(
        run_cli, ["dlq", "replay", "--all", "--reason", "database refused record"]
    )
    assert code == 0, err
    assert out.count("replayed ") == 2
    assert "replayed=2 skipped=0 failed=0 not_found=0" in err
    assert redis_client.xlen(stream_key) == length_before + 2
    remaining = redis_client.xrange(f"{stream_key}:dead")
    assert len(remaining) == 4
    assert {fields[b"reason"] for _, fields in remaining} == {b"invalid JSON", b"missing device_id"}
    # The re-appended entries carry only the original fields.
    for _, fields in redis_client.xrange(stream_key)[-2:]:
        assert set(fields) == {b"payload"}

    async with running_service(cli_env):
        await wait_until(lambda: row_count(database_url) == 6)
        await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
    assert {("blocked", "2026-05-12T10:00:02Z"), ("blocked", "2026-05-12T10:00:05Z")} <= (
        stored_keys(database_url)
    )
    assert key_of(fix("blocked", 2)) in stored_keys(database_url)


async def test_replay_by_id_reports_unknown_ids_and_exits_1(
    dead_ids: list[str],
    redis_client: redis.Redis,
    stream_key: str,
) -> None:
    dead = redis_client.xrange(f"{stream_key}:dead")
    chosen = dead[0][0].decode()

    code, out, err = await trio.to_thread.run_sync(run_cli, ["dlq", "replay", chosen, "0-1"])
    assert code == 1
    assert f"replayed {chosen} -> {stream_key} " in out
    assert "not found: 0-1" in err
    assert [i.decode() for i, _ in redis_client.xrange(f"{stream_key}:dead")] == [
        i.decode() for i, _ in dead[1:]
    ]
    replayed = redis_client.xrange(stream_key)[-1][1]
    assert replayed == {b"payload": dead[0][1][b"payload"]}


@pytest.mark.usefixtures("cli_env")
def test_replay_needs_ids_or_all() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dlq", "replay"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["dlq", "replay", "--all", "1-1"])


async def test_replay_all_replays_what_existed_when_it_started(
    cli_env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While `replay --all` pages through the dead letters, a running pipeline dead-letters the
    replayed entries again (they still fail): those new letters are not replayed again, and the
    summary says how many were."""
    from processor.core import dead_letters

    dead = f"{stream_key}:dead"
    existing = 1200  # several pages
    pipe = redis_client.pipeline(transaction=False)
    for i in range(existing):
        pipe.xadd(dead, {"payload": b"{not json", "reason": "invalid JSON", "source_id": f"{i}-0"})
    pipe.execute()
    replay = dead_letters.replay

    def replay_and_fail_again(
        client: redis.Redis, stream: str, dead_stream: str, letters: list[dead_letters.DeadLetter]
    ) -> dead_letters.ReplayReport:
        report = replay(client, stream, dead_stream, letters)
        for letter in letters:  # what the pipeline does with a replayed entry that still fails
            client.xadd(dead_stream, {**letter.fields, "source_id": "again"})
        return report

    monkeypatch.setattr(dead_letters, "replay", replay_and_fail_again)
    code, _out, err = await trio.to_thread.run_sync(run_cli, ["dlq", "replay", "--all"])
    assert code == 0, err
    assert "the newest when the replay started" in err
    assert f"replayed={existing} skipped=0 failed=0 not_found=0" in err
    assert redis_client.xlen(stream_key) == existing
    assert redis_client.xlen(dead) == existing  # the letters that failed again, for next time
