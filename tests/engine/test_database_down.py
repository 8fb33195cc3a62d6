"""Which database errors mean "the database did not answer" (retry the tick in 2 s) rather than a bug."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from canaryd.engine.driver import database_down


@dataclass
class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter puts in `DBAPIError.orig`: the error with its SQLSTATE."""

    sqlstate: str | None


def wrapped(sqlstate: str | None, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", None, DriverError(sqlstate), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("exc", "down"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (OperationalError("SELECT 1", None, sqlite3.OperationalError("database is locked")), True),
        (wrapped("57P03"), True),  # the database system is shutting down / starting up
        (wrapped("57P01"), True),  # terminating connection due to administrator command
        (wrapped("57P02"), True),  # crash shutdown
        (wrapped("08006"), True),  # connection failure
        (wrapped(None, invalidated=True), True),
        (wrapped("42P01"), False),  # undefined table: a bug, not an outage
        (wrapped(None), False),
        (IntegrityError("INSERT", None, DriverError("23505")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_database_down(exc: BaseException, down: bool) -> None:
    assert database_down(exc) is down
