"""Database errors are classified in one place (processor.store.db_errors): data errors are the
record's fault, connection loss and serialization/deadlock failures are transient, anything else
is persistent; the end-to-end consequences are in tests/integration/core/test_database_errors.py.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from processor.store import db_errors
from processor.store.db_errors import Kind, classify


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errors.lookup("22P02")("bad text"), Kind.DATA),  # invalid_text_representation
        (errors.lookup("22003")("out of range"), Kind.DATA),  # numeric_value_out_of_range
        (errors.lookup("23505")("duplicate"), Kind.DATA),  # unique_violation
        (psycopg.DataError("NUL in text, refused client-side"), Kind.DATA),
        (errors.lookup("08006")("connection failure"), Kind.TRANSIENT),
        (errors.lookup("08001")("cannot connect"), Kind.TRANSIENT),
        (psycopg.OperationalError("server closed the connection unexpectedly"), Kind.TRANSIENT),
        (psycopg.InterfaceError("the connection is closed"), Kind.TRANSIENT),
        (PoolTimeout("couldn't get a connection"), Kind.TRANSIENT),
        (errors.lookup("57P01")("admin shutdown"), Kind.TRANSIENT),
        (errors.lookup("57P03")("starting up"), Kind.TRANSIENT),
        (errors.lookup("40001")("serialization failure"), Kind.TRANSIENT),
        (errors.lookup("40P01")("deadlock"), Kind.TRANSIENT),
        (ConnectionResetError("reset by peer"), Kind.TRANSIENT),
        (errors.lookup("42501")("permission denied for table positions"), Kind.PERSISTENT),
        (errors.lookup("42P01")('relation "positions" does not exist'), Kind.PERSISTENT),
        (errors.lookup("0A000")("cannot insert into compressed chunk"), Kind.PERSISTENT),
        (errors.lookup("57014")("statement timeout"), Kind.PERSISTENT),
        (errors.lookup("53100")("disk full"), Kind.PERSISTENT),
        (errors.lookup("P0001")("raised by a trigger"), Kind.PERSISTENT),
    ],
    ids=lambda value: value.name if isinstance(value, Kind) else type(value).__name__,
)
def test_classification(error: Exception, kind: Kind) -> None:
    assert classify(error) is kind


def test_the_snapshot_path_shares_the_classification() -> None:
    """store/postgres.py re-exports the one list instead of keeping its own."""
    from processor.store import postgres

    assert postgres.TRANSIENT_ERRORS is db_errors.TRANSIENT_ERRORS


def test_describe_names_the_sqlstate() -> None:
    text = db_errors.describe(errors.lookup("42501")("permission denied\n for table positions"))
    assert text == "InsufficientPrivilege [42501]: permission denied for table positions"
