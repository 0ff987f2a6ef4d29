from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.agent.fleet.pg_helpers import Postgres, pg_bindir

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    missing = pg_bindir() is None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = True
    if missing:
        msg = ("PostgreSQL or psycopg is missing: the fleet tests need Debian's `postgresql` package and the "
               "`fleet` extra (bash .ci/run installs both)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def fleet_db(postgres: Postgres) -> str:
    """A fresh, empty database on the session's server: its DSN."""
    return postgres.create_db(f"fleet_{os.getpid()}_{next(_names)}")
