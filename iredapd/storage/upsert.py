"""Idempotent INSERT and UPSERT statements on SQLite, MySQL/MariaDB and PostgreSQL.

One place for the dialect-specific forms the storage modules, plugins and
tools write with, so that concurrent writers never fail on a duplicate key and
nothing relies on catching duplicate-key errors:

* :func:`insert_ignore`: insert unless a unique key already holds the row.
  PostgreSQL/SQLite ``ON CONFLICT DO NOTHING``; MySQL/MariaDB ``ON DUPLICATE
  KEY UPDATE <pk> = <pk>``, a no-op.  Not ``INSERT IGNORE``: IGNORE turns
  every error into a warning, so a value the column cannot hold (too long, a
  character outside its charset) would be stored mangled and a row that
  breaks a foreign key silently dropped; strict mode must still refuse them.
  (The throttle counters keep ``INSERT IGNORE``, see ``skip_errors``.)
* :func:`inserted`: whether such a statement created its row.
* :func:`insert_if_absent`: the two for one row.
* :func:`upsert`: insert, or overwrite some columns of the row with the same keys.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult

__all__ = ["dialect_insert", "insert_if_absent", "insert_ignore", "inserted", "upsert"]

_MYSQL = ("mysql", "mariadb")


def dialect_insert(table: sa.Table, dialect: str) -> Any:
    """``INSERT INTO table`` of ``dialect``, with its ON CONFLICT / ON DUPLICATE KEY methods."""
    if dialect in _MYSQL:
        return mysql.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported database dialect {dialect!r}")


def insert_ignore(
    table: sa.Table,
    dialect: str,
    *,
    index_elements: Sequence[str] | None = None,
    skip_errors: bool = False,
) -> sa.Insert:
    """An INSERT that does nothing when a unique key already holds the row.

    Execute it with one or many parameter sets, or add ``.values()``.  Whether
    it inserted: :func:`inserted`.

    Args:
        table: the table; on MySQL its (first) primary key column is the one
            the no-op ``ON DUPLICATE KEY UPDATE`` assigns to itself.
        dialect: ``conn.dialect.name``.
        index_elements: PostgreSQL/SQLite: only a conflict on this unique key
            is ignored (default: any).
        skip_errors: MySQL: ``INSERT IGNORE`` instead, which also skips a row
            that fails for another reason (a foreign key) and stores a too
            long value truncated.  Only for callers written around that.
    """
    stmt = dialect_insert(table, dialect)
    if dialect in _MYSQL:
        if skip_errors:
            ignore: sa.Insert = stmt.prefix_with("IGNORE")
            return ignore
        pk = next(iter(table.primary_key.columns))
        no_op: sa.Insert = stmt.on_duplicate_key_update({pk.name: pk})
        return no_op
    nothing: sa.Insert = stmt.on_conflict_do_nothing(index_elements=index_elements)
    return nothing


def inserted(dialect: str, result: CursorResult[Any]) -> bool:
    """True if an :func:`insert_ignore` of one row created it.

    MySQL's no-op ``ON DUPLICATE KEY UPDATE`` reports a row count of 1 either
    way (SQLAlchemy's connections count matched rows); there the new row's
    auto-increment id tells an insert, 0 a duplicate, so the table needs one.
    Everywhere else the row count tells (also for ``skip_errors``' INSERT
    IGNORE, whose callers check ``rowcount == 1`` themselves).
    """
    if dialect in _MYSQL:
        return bool(result.lastrowid)
    return result.rowcount == 1


def insert_if_absent(conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> bool:
    """Insert one row unless a unique key already holds it; True if inserted.

    One atomic statement: concurrent callers create exactly one row and
    exactly one of them sees True.  On MySQL ``table`` needs an
    auto-increment primary key (see :func:`inserted`).
    """
    dialect = conn.dialect.name
    result = conn.execute(_insert_ignore_cached(table, dialect), dict(values))
    return inserted(dialect, result)


@functools.lru_cache(maxsize=256)
def _insert_ignore_cached(table: sa.Table, dialect: str) -> sa.Insert:
    """:func:`insert_ignore` built once per table and dialect (the values are bound)."""
    return insert_ignore(table, dialect)


def upsert(table: sa.Table, dialect: str, keys: Sequence[str], update: Sequence[str]) -> sa.Insert:
    """An INSERT that overwrites the ``update`` columns when ``keys`` already exist.

    The new values are the ones the INSERT proposed (``excluded.<col>``, on
    MySQL ``VALUES(<col>)``).  Execute it with one or many parameter sets.
    """
    stmt = dialect_insert(table, dialect)
    if dialect in _MYSQL:
        result: sa.Insert = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update})
        return result
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=list(keys), set_={c: stmt.excluded[c] for c in update}
    )
