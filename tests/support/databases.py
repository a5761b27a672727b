"""Throw-away databases on the real MariaDB and PostgreSQL servers, and SQLite.

Other people run tests on the same servers at the same time, so every test
database gets a unique random name, is created here and dropped afterwards,
and nothing else on the servers is touched.

* :func:`require_service` (``"mariadb"`` / ``"pgsql"``): skip the test when the
  server does not answer, or fail it under ``REQUIRE_ALL_BACKENDS=1`` (CI).
* :func:`temporary_database`: a context manager yielding the URL of a new,
  empty database; dropped on exit.
* fixtures, imported into a test module to use them:
  ``backend`` (parametrised: sqlite, mariadb, pgsql, with the ``mariadb`` /
  ``pgsql`` markers), ``make_database`` (call it for each database you need)
  and ``db_url`` (one database).

Servers: MariaDB as root without password on 127.0.0.1:3306; PostgreSQL on
127.0.0.1:5432 as ``postgres`` or, failing that, the current OS user (trust
authentication).  Engines a test creates must be disposed before the end of
the test, or dropping the database waits for them.
"""

from __future__ import annotations

import functools
import getpass
import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.support.services import missing, scaled

__all__ = [
    "BACKENDS",
    "backend",
    "backend_params",
    "db_url",
    "make_database",
    "require_service",
    "temporary_database",
]

BACKENDS = ("sqlite", "mariadb", "pgsql")

MARIADB_HOST, MARIADB_PORT, MARIADB_USER = "127.0.0.1", 3306, "root"
PGSQL_HOST, PGSQL_PORT = "127.0.0.1", 5432

_ALIASES = {"mysql": "mariadb", "postgresql": "pgsql", "postgres": "pgsql"}


def _mariadb_url(database: str | None = None) -> URL:
    return URL.create(
        "mysql+pymysql",
        username=MARIADB_USER,
        host=MARIADB_HOST,
        port=MARIADB_PORT,
        database=database,
        query={"charset": "utf8mb4"},
    )


def _pgsql_url(user: str, database: str = "postgres") -> URL:
    return URL.create(
        "postgresql+psycopg2", username=user, host=PGSQL_HOST, port=PGSQL_PORT, database=database
    )


def _try_connect(url: URL) -> str | None:
    """None when ``url`` answers ``SELECT 1``, else the error text."""
    timeout = max(1, round(scaled(3)))
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        return str(exc.orig).strip().splitlines()[0]
    finally:
        engine.dispose()
    return None


@functools.cache
def _admin_url(service: str) -> URL | str:
    """The server-level URL for ``service``, or why it is not reachable (cached)."""
    if service == "mariadb":
        error = _try_connect(_mariadb_url())
        return _mariadb_url() if error is None else f"MariaDB: {error}"
    errors = []
    for user in dict.fromkeys(("postgres", getpass.getuser())):
        error = _try_connect(_pgsql_url(user))
        if error is None:
            return _pgsql_url(user)
        errors.append(f"as {user}: {error}")
    return "PostgreSQL: " + "; ".join(errors)


def require_service(name: str) -> URL:
    """The admin URL of ``mariadb`` or ``pgsql``; skip (or fail in CI) if it is down."""
    service = _ALIASES.get(name, name)
    if service not in ("mariadb", "pgsql"):
        raise ValueError(f"unknown database service {name!r}")
    url = _admin_url(service)
    if isinstance(url, str):
        host, port = (
            (MARIADB_HOST, MARIADB_PORT) if service == "mariadb" else (PGSQL_HOST, PGSQL_PORT)
        )
        missing(f"{service} is not reachable on {host}:{port}: {url}")
    return url


def _new_name() -> str:
    # Lower-case letters, digits and '_' only: safe as an unquoted identifier.
    return f"iredapd_test_{secrets.token_hex(6)}"


@contextmanager
def temporary_database(backend: str, directory: Path | None = None) -> Iterator[URL]:
    """Create an empty, uniquely named database; yield its URL; drop it.

    Args:
        backend: ``sqlite``, ``mariadb`` or ``pgsql``.
        directory: where the SQLite file goes (required for ``sqlite``).
    """
    backend = _ALIASES.get(backend, backend)
    name = _new_name()
    if backend == "sqlite":
        if directory is None:
            raise ValueError("sqlite needs a directory")
        path = directory / f"{name}.sqlite"
        yield URL.create("sqlite", database=str(path))
        path.unlink(missing_ok=True)
        return
    admin_url = require_service(backend)
    admin = sa.create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    prep = admin.dialect.identifier_preparer
    try:
        with admin.connect() as conn:
            # The name is ours (see _new_name); CREATE DATABASE takes no parameters.
            if backend == "mariadb":
                conn.exec_driver_sql(f"CREATE DATABASE {prep.quote(name)} CHARACTER SET utf8mb4")
                url = _mariadb_url(name)
            else:
                # template0 never has sessions, so concurrent CREATEs cannot clash.
                conn.exec_driver_sql(
                    f"CREATE DATABASE {prep.quote(name)} TEMPLATE template0 ENCODING 'UTF8'"
                )
                url = _pgsql_url(admin_url.username or "postgres", name)
        try:
            yield url
        finally:
            with admin.connect() as conn:
                if backend == "mariadb":
                    conn.exec_driver_sql("SET SESSION lock_wait_timeout = 30")
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {prep.quote(name)}")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {prep.quote(name)} WITH (FORCE)")
    finally:
        admin.dispose()


def backend_params(*backends: str) -> list[object]:
    """``pytest.param`` entries for ``backends`` (default all), with their markers."""
    marks = {"mariadb": pytest.mark.mariadb, "pgsql": pytest.mark.pgsql}
    return [
        pytest.param(b, marks=[marks[b]] if b in marks else [], id=b)
        for b in (backends or BACKENDS)
    ]


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test; skips (or fails in CI) when it is down."""
    name: str = request.param
    if name != "sqlite":
        require_service(name)
    return name


@pytest.fixture
def make_database(backend: str, tmp_path: Path) -> Iterator[Callable[[], URL]]:
    """A factory: each call creates another empty database; all dropped afterwards."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(temporary_database(backend, tmp_path))


@pytest.fixture
def db_url(make_database: Callable[[], URL]) -> URL:
    """The URL of one empty database on the backend under test."""
    return make_database()
