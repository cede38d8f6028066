"""Database errors are classified in one place, and a lasting refusal is loud (issue 10, item 4).

Before, every error outside SQLSTATE classes 22/23 counted as transient: a revoked privilege, a
compressed chunk refusing writes or a missing table stalled the pipeline forever while `/readyz`
said ready. Now connection loss and serialization/deadlock failures are transient; anything else
that repeats past a bound fails `/readyz` naming the error, is logged at error, and is still
retried: nothing is acked, nothing is lost, and the writes resume once the cause is gone.
"""

from __future__ import annotations

import orjson
import psycopg
import pytest
import redis
import trio

from processor.store import db_errors, retry
from tests.integration.core.test_dead_letter_outage import FAST_RETRY, wait_for_readyz
from tests.support.fixes import fix, pending_count, publish, row_count
from tests.support.metrics import value
from tests.support.service import running_service, wait_until


def test_describe_cause_leaves_out_the_failing_row(database_url: str) -> None:
    """Two rows refused for one reason read the same: the problem is said once."""
    import psycopg

    texts = set()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int CHECK (v < 0))")
        for number in (1, 2):
            try:
                conn.execute("INSERT INTO t VALUES (%s)", (number,))
            except psycopg.errors.CheckViolation as exc:
                assert "Failing row contains" in db_errors.describe(exc)
                texts.add(db_errors.describe_cause(exc))
    assert texts == {
        'CheckViolation [23514]: new row for relation "t" violates check constraint "t_v_check"'
    }


REFUSE_INSERTS = """
CREATE FUNCTION refuse_positions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'permission denied for table positions' USING ERRCODE = '42501';
END $$;
CREATE TRIGGER refuse_positions BEFORE INSERT ON positions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_positions();
"""


async def test_a_lasting_refusal_fails_readiness_is_retried_and_loses_nothing(
    env: dict[str, str],
    redis_client: redis.Redis,
    stream_key: str,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A permissions error (42501, from a trigger: the test role is a superuser whom a REVOKE
    would not stop) is not a data error: nothing is dead-lettered or acked, /readyz names it."""
    documents = [fix(f"dev{i % 3}", i) for i in range(30)]
    with trio.fail_after(60):
        async with running_service(env | FAST_RETRY | {"LOG_FORMAT": "json"}) as service:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(REFUSE_INSERTS)
            publish(redis_client, stream_key, documents)

            body = await wait_for_readyz(service, 503)
            assert body["failing"] == ["postgres_writes"], body
            error = body["checks"]["postgres_writes"]["error"]
            assert "InsufficientPrivilege [42501]" in error, body
            assert body["checks"]["postgres"]["ok"] is True  # SELECT 1 still works
            retries = value(service.metrics.write_retries)
            await wait_until(lambda: value(service.metrics.write_retries) > retries + 2)
            assert pending_count(redis_client, stream_key) == len(documents)
            assert row_count(database_url) == 0
            assert redis_client.xlen(f"{stream_key}:dead") == 0

            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute("DROP TRIGGER refuse_positions ON positions")
            await wait_until(lambda: row_count(database_url) == len(documents))
            await wait_until(lambda: pending_count(redis_client, stream_key) == 0)
            await wait_for_readyz(service, 200)

    assert redis_client.xlen(f"{stream_key}:dead") == 0
    assert value(service.metrics.acks) == len(documents)
    logged = [
        orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    stalled = [line for line in logged if line["event"] == retry.STALLED]
    assert stalled, logged[-5:]
    assert {line["operation"] for line in stalled} == {"write"}
    assert {line["level"] for line in stalled} == {"error"}
    assert all("[42501]" in line["error"] for line in stalled)
