"""Database handles: one SQLAlchemy engine per database, used off the event loop.

Reads run on autocommit connections with no reset on return to the pool:
iRedAPD wraps every statement in BEGIN/COMMIT and a ROLLBACK on return, which
was 37% of its time.  Statements that must be atomic are single statements
(UPSERT, conditional UPDATE), so autocommit is all they need.

With ``backend = 'sqlite'`` (the embedded default) each database is a file
``<DATA_DIR>/<name>.sqlite``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.sql.compiler import SQLCompiler

from iredapd.config import Settings

__all__ = [
    "BackendUnavailable",
    "Database",
    "Outcome",
    "Prepared",
    "database_url",
    "engine_for",
    "is_statement_error",
    "open_database",
    "transaction",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

RunBlocking = Callable[..., Awaitable[Any]]

_DRIVERS = {"mysql": "mysql+pymysql", "pgsql": "postgresql+psycopg2"}


class BackendUnavailable(Exception):
    """A database or directory did not answer; never the same as "not found"."""


def database_url(name: str, settings: Settings) -> URL:
    """The URL of database ``name`` (vmail, amavisd, iredapd) from settings.

    Credentials are passed as URL parts, so any character in a password works
    (iRedAPD pastes them into a string).
    """
    backend = settings.backend
    if backend == "sqlite":
        path = Path(settings.DATA_DIR) / f"{name}.sqlite"
        return URL.create("sqlite", database=str(path))
    dialect = "pgsql" if backend == "pgsql" else "mysql"
    drivername = _DRIVERS[dialect]
    if settings.SQL_DB_DRIVER:
        drivername = drivername.split("+", 1)[0] + "+" + settings.SQL_DB_DRIVER
    query: dict[str, str] = {}
    if dialect == "mysql":
        query["charset"] = "utf8mb4"
    use_ssl = bool(settings.get(f"{name}_db_use_ssl"))
    if use_ssl and dialect == "pgsql":
        query["sslmode"] = "require"
    return URL.create(
        drivername,
        username=settings.get(f"{name}_db_user"),
        password=settings.get(f"{name}_db_password"),
        host=settings.get(f"{name}_db_server"),
        port=int(settings.get(f"{name}_db_port")),
        database=settings.get(f"{name}_db_name"),
        query=query,
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers and one writer work at once; busy_timeout makes a
    # writer wait for the lock instead of failing at once.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_engine(url: URL, settings: Settings, *, use_ssl: bool = False) -> Engine:
    """An engine with the pool settings and autocommit reads."""
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 5},
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "mysql":
        connect_args = {"connect_timeout": 5, "read_timeout": 30, "write_timeout": 30}
        # PyMySQL builds a TLS context at every connect unless told not to
        # (42 ms against 1 ms here); with <name>_db_use_ssl, TLS without
        # certificate checks, as iRedAPD's ssl_verify_cert=False.
        if use_ssl:
            connect_args["ssl"] = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}
        else:
            connect_args["ssl_disabled"] = True
    else:
        connect_args = {"connect_timeout": 5}
    return sa.create_engine(
        url,
        pool_size=settings.SQL_CONNECTION_POOL_SIZE,
        max_overflow=settings.SQL_CONNECTION_MAX_OVERFLOW,
        pool_recycle=settings.SQL_CONNECTION_POOL_RECYCLE,
        pool_pre_ping=False,
        pool_timeout=5,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        # no ROLLBACK round trip when an autocommit connection is released
        skip_autocommit_rollback=True,
        connect_args=connect_args,
    )


# MySQL errors that are about the statement, not the server, although PyMySQL
# reports them as OperationalError: 1267/1270/1271 "Illegal mix of collations"
# (a 4-byte UTF-8 character compared with a utf8mb3 column, as in iRedMail's
# vmail database), 1366 "Incorrect string value".  The caller sees the
# SQLAlchemy error, never BackendUnavailable: a hostile value must not make a
# healthy database look down.
_MYSQL_STATEMENT_ERRORS = frozenset({1267, 1270, 1271, 1366})


def _is_unavailable(e: sa.exc.DBAPIError) -> bool:
    """True when ``e`` means the server did not answer (down, unreachable, refusing)."""
    if not isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    args = getattr(e.orig, "args", ())
    code = args[0] if args else None
    return not (isinstance(code, int) and code in _MYSQL_STATEMENT_ERRORS)


def _is_read(stmt: sa.Executable) -> bool:
    """True for a plain SELECT (safe to run twice)."""
    return bool(getattr(stmt, "is_select", False))


def is_statement_error(e: BaseException) -> bool:
    """True for a MySQL error about a value the column cannot hold (see above).

    Readers treat it as "no row can match": a column that cannot store the
    value cannot contain it.
    """
    if not isinstance(e, sa.exc.DBAPIError):
        return False
    args: tuple[Any, ...] = getattr(e.orig, "args", ())
    return bool(args) and args[0] in _MYSQL_STATEMENT_ERRORS


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement's SQL for one dialect, and the values it binds itself."""

    sql: str
    fixed: dict[str, Any]  # literal values of the statement (LIMIT 1, passed = 1)
    returns_rows: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`Prepared.execute` returns: the rows (tuples) of a SELECT, or
    the row count of another statement (on MySQL, rows matched)."""

    rowcount: int
    rows: list[tuple[Any, ...]]

    def first(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


class Prepared:
    """A Core statement compiled once per dialect and run on the DBAPI cursor.

    For the few statements of the request path (counters, triplets).
    ``Connection.execute`` costs about twice the driver's own time per
    statement here (execution context, result object, parameter processing,
    even with SQLAlchemy's compiled cache hit), and in the thread pool every
    microsecond of it is held under the GIL the event loop needs.  The SQL
    still comes from SQLAlchemy (the statement compiled by the dialect, with
    bound parameters); only the execution is done by hand.  Errors are
    reported as SQLAlchemy reports them (a ``DBAPIError`` whose
    ``connection_invalidated`` says a disconnect), so :meth:`Database.run`
    maps them the same way.

    Statements that need SQLAlchemy's help (values converted on the way in
    or out, expanding IN lists, positional parameter styles such as
    SQLite's) simply run through ``Connection.execute``, as does every
    statement run on something else than a plain ``Connection``.
    """

    __slots__ = ("_compiled", "statement")

    statement: Any  # a ClauseElement that is Executable (mypy has no name for both)

    def __init__(self, statement: sa.Executable) -> None:
        if not isinstance(statement, sa.ClauseElement):
            raise TypeError(f"not a Core statement: {statement!r}")
        self.statement = statement
        self._compiled: dict[str, _Compiled | None] = {}

    def _compile(self, dialect: sa.Dialect) -> _Compiled | None:
        if dialect.paramstyle != "pyformat":
            return None
        compiled = self.statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler) or compiled.escaped_bind_names:
            return None
        fixed: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding or bind.type.dialect_impl(dialect).bind_processor(dialect):
                return None
            if not bind.required:
                fixed[name] = bind.effective_value
            elif name != bind.key:
                return None
        returns_rows = bool(getattr(self.statement, "is_select", False))
        if returns_rows:
            for column in getattr(self.statement, "selected_columns", ()):
                if column.type.dialect_impl(dialect).result_processor(dialect, None):
                    return None
        return _Compiled(compiled.string, fixed, returns_rows)

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Outcome:
        """Run the statement with ``params`` on ``conn``."""
        dialect = conn.dialect
        key = dialect.name
        try:
            compiled = self._compiled[key]
        except KeyError:
            compiled = self._compiled[key] = self._compile(dialect)
        # Anything but a plain Connection (a proxy that watches statements,
        # as the tests' race simulations) gets SQLAlchemy's own path.
        if compiled is None or type(conn) is not Connection:
            result = conn.execute(self.statement, dict(params or {}))
            if getattr(self.statement, "is_select", False):
                found = [tuple(r) for r in result]
                return Outcome(len(found), found)
            return Outcome(result.rowcount, [])
        values = {**compiled.fixed, **params} if params else compiled.fixed
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None  # a checked-out connection
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(compiled.sql, values)
            if compiled.returns_rows:
                found = list(cursor.fetchall())
                return Outcome(len(found), found)
            return Outcome(cursor.rowcount, [])
        except dialect.loaded_dbapi.Error as e:
            raise _driver_error(conn, e, compiled.sql, values, cursor) from e
        finally:
            cursor.close()


def _driver_error(
    conn: Connection, error: Any, sql: str, params: Any, cursor: Any
) -> sa.exc.DBAPIError:
    """The DBAPI error as SQLAlchemy reports it; a dead connection is invalidated."""
    dialect = conn.dialect
    disconnect = dialect.is_disconnect(error, conn.connection.dbapi_connection, cursor)
    if disconnect:
        conn.invalidate(error)
    wrapped = sa.exc.DBAPIError.instance(
        sql,
        params,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
    assert isinstance(wrapped, sa.exc.DBAPIError)
    return wrapped


class Database:
    """One database: a sync engine plus async helpers that run in the pool."""

    def __init__(self, name: str, engine: Engine, run_blocking: RunBlocking) -> None:
        self.name = name
        self.engine = engine
        self._run_blocking = run_blocking

    @property
    def dialect(self) -> str:
        """``sqlite``, ``mysql`` or ``postgresql``."""
        return self.engine.dialect.name

    def _call(self, func: Callable[[Connection], T], retry: bool = False) -> T:
        """Run ``func`` on a pooled connection; map "server not answering" errors.

        With ``retry``, a statement that failed because its pooled connection
        was dead (the server restarted since it was opened: SQLAlchemy sees a
        disconnect and invalidates the pool) is run once more on a new
        connection, so the first request after a restart does not fail.
        Only idempotent reads may ask for it: a write that failed on a dead
        connection may still have been applied, and a counter must not count
        twice.
        """
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with self.engine.connect() as conn:
                    return func(conn)
            except sa.exc.DBAPIError as e:
                if attempt + 1 < attempts and e.connection_invalidated:
                    log.info("%s database: connection lost (%s); retrying once", self.name, e.orig)
                    continue
                if _is_unavailable(e):
                    # a server that is down, restarting or unreachable
                    raise BackendUnavailable(f"{self.name} database: {e.orig}") from e
                raise
            except sa.exc.TimeoutError as e:
                raise BackendUnavailable(f"{self.name} database: connection pool timeout") from e
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self, func: Callable[[Connection], T], *, idempotent: bool = False) -> T:
        """Run ``func(connection)`` in the thread pool on an autocommit connection.

        ``idempotent=True`` (reads only): after a disconnect, run it once more
        on a fresh connection instead of failing (see :meth:`_call`).
        """
        result: T = await self._run_blocking(self._call, func, idempotent)
        return result

    async def execute(self, stmt: sa.Executable) -> sa.CursorResult[Any]:
        """Execute one statement; the result is buffered (safe after return)."""

        def _do(conn: Connection) -> sa.CursorResult[Any]:
            res = conn.execute(stmt)
            if res.returns_rows:
                res = res.freeze()  # type: ignore[assignment]
            return res

        return await self.run(_do)

    async def fetchall(self, stmt: sa.Executable) -> Sequence[sa.Row[Any]]:
        """Execute a SELECT and return all rows (a SELECT is retried after a disconnect)."""
        return await self.run(lambda conn: conn.execute(stmt).fetchall(), idempotent=_is_read(stmt))

    async def fetchone(self, stmt: sa.Executable) -> sa.Row[Any] | None:
        """Execute a SELECT and return the first row or None (retried like fetchall)."""
        return await self.run(lambda conn: conn.execute(stmt).first(), idempotent=_is_read(stmt))

    def create_schema(self) -> None:
        """Create missing tables and upgrade older iRedAPD ones (blocking; at startup)."""
        from iredapd.storage.migrate import upgrade

        try:
            upgrade(self.engine, self.name)  # logs each change it makes
        except sa.exc.OperationalError as e:
            raise BackendUnavailable(f"{self.name} database: {e.orig}") from e

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def engine_for(name: str, settings: Settings) -> Engine:
    """The engine of database ``name`` from settings, ``<name>_db_use_ssl`` included.

    No connection is made yet.
    """
    use_ssl = bool(settings.get(f"{name}_db_use_ssl"))
    return create_engine(database_url(name, settings), settings, use_ssl=use_ssl)


def open_database(name: str, settings: Settings, run_blocking: RunBlocking) -> Database:
    """The Database for ``name`` from settings (no connection is made yet)."""
    return Database(name, engine_for(name, settings), run_blocking)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection of ``engine`` in one transaction (the engines autocommit).

    For the tools, where several statements must take effect together.
    """
    level = "SERIALIZABLE" if engine.dialect.name == "sqlite" else "READ COMMITTED"
    with engine.execution_options(isolation_level=level).begin() as conn:
        yield conn
