"""Create missing tables and bring an older iRedAPD database up to date.

Idempotent: run at every start; a second run changes nothing.  Only adds
(tables, columns, indexes); never drops, retypes or rewrites what an admin's
database holds, with one exception needed for atomic counters: before the
unique indexes ``throttle(account, kind)`` and ``throttle_tracking(tid,
account)`` are created on a database that lacks them (iRedAPD's PostgreSQL
schema, core-and-stateful.md §16.1, §16.2, §17.9), duplicate rows are removed:

* ``throttle``: per (account, kind) the row with the largest id (the newest
  setting) is kept.  iRedAPD read such duplicates in undefined order (equal
  priorities, §17.4 item 29), so no older row had a defined effect.  Each
  removed row is logged in full at WARNING so an admin can restore it; the
  ``throttle_tracking`` rows of removed settings are deleted with them (they
  only hold counters; the window restarts).
* ``throttle_tracking``: per (tid, account) the row with the largest id is kept
  with its counters, the others are deleted (nothing is summed: duplicates come
  from racing first inserts and iRedAPD's wildcard re-inserts, §9.6 [BUG], and
  the newest row is the one iRedAPD's last update most likely touched).
  Rows with a NULL tid (allowed by iRedAPD's PostgreSQL) are left alone: NULLs
  never conflict in a unique index.

On SQLite (the embedded default, which iRedAPD never used, so only this
daemon's own) the search indexes of ``smtp_sessions`` are not kept (see
schema.SQLITE_SKIPS): the ones an earlier version created are dropped.

Transactions and concurrency: on PostgreSQL and SQLite the whole upgrade is
one transaction (their DDL is transactional), serialised between daemons by
``pg_advisory_xact_lock`` / ``BEGIN IMMEDIATE``; on PostgreSQL the de-duplicated
tables are also locked against writers (old daemons still running) until the
index exists.  MySQL commits each DDL statement implicitly, so there each
de-duplication is its own transaction, daemons are serialised by ``GET_LOCK``,
and the index creation is retried when a racing writer adds a duplicate.

Only the daemon's own database (``iredapd``) is upgraded.  ``vmail`` and
``amavisd`` belong to iRedMail: their tables are created on SQLite (the
embedded default), or on an empty MySQL/PostgreSQL database when the caller
asks (``create_foreign=True``, for tests), and never altered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from iredapd.storage.schema import METADATA, SQLITE_SKIPS

__all__ = ["OWN_DATABASES", "upgrade"]

log = logging.getLogger(__name__)

# Databases whose schema this project owns and upgrades.
OWN_DATABASES = frozenset({"iredapd"})

# PostgreSQL advisory lock key (any constant bigint; "iRedAPD" in ASCII).
_PG_LOCK_KEY = 0x6952_6564_4150_44
_MYSQL_LOCK_TIMEOUT = 60  # seconds to wait for another daemon's upgrade
_MYSQL_INDEX_ATTEMPTS = 3
_CHUNK = 500  # ids per DELETE ... WHERE id IN (...)


def upgrade(engine: Engine, name: str, *, create_foreign: bool = False) -> list[str]:
    """Create or upgrade the tables of database ``name``; return what changed.

    Args:
        engine: the database's engine (any isolation level; the upgrade picks
            its own on the connection it uses).
        name: ``iredapd``, ``amavisd`` or ``vmail`` (other names: nothing).
        create_foreign: for ``vmail``/``amavisd`` on MySQL/PostgreSQL, create
            the tables when the database has none of them (tests, fresh setups).

    Returns:
        One line per change (``created table smtp_sessions``, ...); empty when
        the database was already up to date.
    """
    metadata = METADATA.get(name)
    if metadata is None:
        return []
    dialect = engine.dialect.name
    if name not in OWN_DATABASES and dialect != "sqlite" and not create_foreign:
        return []
    with _upgrade_session(engine) as conn:
        if name in OWN_DATABASES:
            changes = _upgrade_own(conn, metadata)
        else:
            changes = _create_foreign(conn, metadata, only_if_empty=dialect != "sqlite")
    for change in changes:
        log.info("database %s: %s", name, change)
    return changes


# ---------------------------------------------------------------------------
# Sessions: one connection, a lock against concurrent upgrades, transactions
# ---------------------------------------------------------------------------


@contextmanager
def _upgrade_session(engine: Engine) -> Iterator[Connection]:
    dialect = engine.dialect.name
    if dialect == "sqlite":
        # pysqlite would not open a transaction before DDL: drive it by hand.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
    elif dialect == "postgresql":
        with (
            engine.connect().execution_options(isolation_level="READ COMMITTED") as conn,
            conn.begin(),
        ):
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
            yield conn
    else:
        with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
            lock_name = f"iredapd-schema:{engine.url.database or ''}"[:64]
            got = conn.execute(sa.select(sa.func.get_lock(lock_name, _MYSQL_LOCK_TIMEOUT))).scalar()
            conn.commit()
            if got != 1:
                raise RuntimeError("timed out waiting for another schema upgrade")
            try:
                yield conn
                conn.commit()
            finally:
                conn.rollback()
                conn.execute(sa.select(sa.func.release_lock(lock_name)))
                conn.commit()


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _checkpoint(conn: Connection) -> None:
    """End a step's transaction where the dialect cannot hold DDL in one (MySQL)."""
    if _is_mysql(conn):
        conn.commit()


# ---------------------------------------------------------------------------
# What the database has
# ---------------------------------------------------------------------------


def _existing_indexes(
    conn: Connection, table: str
) -> tuple[set[frozenset[str]], list[tuple[str, ...]]]:
    """(column sets of unique keys incl. the primary key, column tuples of all indexes)."""
    insp = sa.inspect(conn)
    unique: set[frozenset[str]] = set()
    ordered: list[tuple[str, ...]] = []
    pk = insp.get_pk_constraint(table).get("constrained_columns") or []
    if pk:
        unique.add(frozenset(pk))
        ordered.append(tuple(pk))
    for ix in insp.get_indexes(table):
        cols = tuple(c for c in ix.get("column_names", []) if c is not None)
        if not cols or len(cols) != len(ix.get("column_names", [])):
            continue  # an expression index
        ordered.append(cols)
        if ix.get("unique"):
            unique.add(frozenset(cols))
    for uc in insp.get_unique_constraints(table):
        cols = tuple(uc.get("column_names", []))
        if cols:
            unique.add(frozenset(cols))
            ordered.append(cols)
    return unique, ordered


def _index_names(conn: Connection, table: str) -> set[str]:
    insp = sa.inspect(conn)
    names = {ix["name"] for ix in insp.get_indexes(table) if ix.get("name")}
    names |= {uc["name"] for uc in insp.get_unique_constraints(table) if uc.get("name")}
    return {n for n in names if n}


def _covered(index: sa.Index, unique: set[frozenset[str]], ordered: list[tuple[str, ...]]) -> bool:
    """True when an existing index does the job of ``index``.

    A unique index is covered by any unique key on the same column set; a plain
    index by any index whose leading columns are the same, in order.
    """
    cols = tuple(c.name for c in index.columns)
    if index.unique:
        return frozenset(cols) in unique
    return any(have[: len(cols)] == cols for have in ordered)


# ---------------------------------------------------------------------------
# vmail / amavisd: create only
# ---------------------------------------------------------------------------


def _create_foreign(conn: Connection, metadata: sa.MetaData, *, only_if_empty: bool) -> list[str]:
    existing = set(sa.inspect(conn).get_table_names())
    present = [t for t in metadata.sorted_tables if t.name in existing]
    if only_if_empty and present:
        return []
    missing = [t for t in metadata.sorted_tables if t.name not in existing]
    metadata.create_all(conn, tables=missing, checkfirst=False)
    return [f"created table {t.name}" for t in missing]


# ---------------------------------------------------------------------------
# iredapd: create, add columns, add indexes
# ---------------------------------------------------------------------------


def _upgrade_own(conn: Connection, metadata: sa.MetaData) -> list[str]:
    changes: list[str] = []
    existing = set(sa.inspect(conn).get_table_names())
    missing = [t for t in metadata.sorted_tables if t.name not in existing]
    if missing:
        metadata.create_all(conn, tables=missing, checkfirst=False)
        changes.extend(f"created table {t.name}" for t in missing)
        _checkpoint(conn)
    for table in metadata.sorted_tables:
        if table.name in existing:
            changes.extend(_add_missing_columns(conn, table))
    for table in metadata.sorted_tables:
        if table.name in existing:
            changes.extend(_add_missing_indexes(conn, table))
    return changes


def _add_missing_columns(conn: Connection, table: sa.Table) -> list[str]:
    """Add columns newer iRedAPD versions introduced (last_notify_time in 2.3,
    max_rcpts in 5.0), with their defaults, so existing rows get them."""
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    changes: list[str] = []
    for col in table.columns:
        if col.name in have:
            continue
        if not col.nullable and col.server_default is None:
            log.error(
                "table %s lacks column %s, which cannot be added without a default",
                table.name,
                col.name,
            )
            continue
        prep = conn.dialect.identifier_preparer
        ddl = sa.schema.CreateColumn(col).compile(dialect=conn.dialect)
        # DDL built from our own metadata's identifiers and types, no values.
        conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(table)} ADD COLUMN {ddl}")
        _checkpoint(conn)
        changes.append(f"added column {table.name}.{col.name}")
    return changes


def _add_missing_indexes(conn: Connection, table: sa.Table) -> list[str]:
    changes: list[str] = []
    unique, ordered = _existing_indexes(conn, table.name)
    names = _index_names(conn, table.name)
    sqlite = conn.dialect.name == "sqlite"
    for index in sorted(table.indexes, key=lambda i: (not i.unique, i.name or "")):
        if sqlite and index.info.get(SQLITE_SKIPS):
            if index.name in names:
                # (index.drop() would obey the index's ddl_if and do nothing here)
                name = conn.dialect.identifier_preparer.quote(index.name)
                conn.exec_driver_sql(f"DROP INDEX {name}")
                _checkpoint(conn)
                changes.append(f"dropped index {index.name} on {table.name} (not used on SQLite)")
            continue
        if _covered(index, unique, ordered):
            continue
        if index.name in names:
            log.warning(
                "table %s has an index named %s on other columns; not adding ours",
                table.name,
                index.name,
            )
            continue
        if index.unique:
            added = _add_unique_index(conn, table, index)
        else:
            index.create(conn)
            _checkpoint(conn)
            added = [f"created index {index.name} on {table.name}"]
        changes.extend(added)
        if added:
            unique, ordered = _existing_indexes(conn, table.name)
    return changes


def _add_unique_index(conn: Connection, table: sa.Table, index: sa.Index) -> list[str]:
    """De-duplicate (where we have a rule), then create the unique index."""
    dedup = _DEDUP.get(table.name)
    cols = [c.name for c in index.columns]
    changes: list[str] = []
    for attempt in range(1, _MYSQL_INDEX_ATTEMPTS + 1):
        if conn.dialect.name == "postgresql":
            _lock_for_dedup(conn, table)
        if dedup is not None:
            changes.extend(dedup(conn))
            _checkpoint(conn)
        elif _has_duplicates(conn, table, cols):
            log.error(
                "table %s holds duplicate %s rows; not creating unique index %s "
                "(remove the duplicates by hand)",
                table.name,
                ", ".join(cols),
                index.name,
            )
            return []
        try:
            index.create(conn)
        except sa.exc.IntegrityError:
            # MySQL only (elsewhere the table is locked): a writer raced us.
            if not _is_mysql(conn) or attempt == _MYSQL_INDEX_ATTEMPTS:
                raise
            conn.rollback()
            continue
        _checkpoint(conn)
        changes.append(f"created unique index {index.name} on {table.name}")
        return changes
    return []  # pragma: no cover - the loop returns or raises


def _lock_for_dedup(conn: Connection, table: sa.Table) -> None:
    """PostgreSQL: keep writers out until the transaction (and index) is done."""
    names = [table.name]
    if table.name == "throttle":
        names.append("throttle_tracking")  # its rows are deleted with settings
    prep = conn.dialect.identifier_preparer
    quoted = ", ".join(prep.quote(n) for n in names)
    # Identifiers from our own metadata; LOCK has no bound-parameter form.
    conn.exec_driver_sql(f"LOCK TABLE {quoted} IN SHARE ROW EXCLUSIVE MODE")


def _has_duplicates(conn: Connection, table: sa.Table, cols: Sequence[str]) -> bool:
    keys = [table.c[c] for c in cols]
    stmt = sa.select(*keys).group_by(*keys).having(sa.func.count() > 1).limit(1)
    return conn.execute(stmt).first() is not None


def _chunks(ids: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _dedup_throttle(conn: Connection) -> list[str]:
    """Keep the newest row per (account, kind); log and delete the others."""
    t = METADATA["iredapd"].tables["throttle"]
    tt = METADATA["iredapd"].tables["throttle_tracking"]
    groups = conn.execute(
        sa.select(t.c.account, t.c.kind, sa.func.max(t.c.id))
        .group_by(t.c.account, t.c.kind)
        .having(sa.func.count() > 1)
    ).all()
    removed: list[int] = []
    for account, kind, keep in groups:
        rows = conn.execute(
            sa.select(t).where(t.c.account == account, t.c.kind == kind, t.c.id != keep)
        ).all()
        for row in rows:
            log.warning(
                "removing duplicate throttle setting (keeping id=%s): %s", keep, dict(row._mapping)
            )
            removed.append(row.id)
    for ids in _chunks(removed):
        conn.execute(sa.delete(tt).where(tt.c.tid.in_(ids)))
        conn.execute(sa.delete(t).where(t.c.id.in_(ids)))
    return [f"removed {len(removed)} duplicate throttle rows"] if removed else []


def _dedup_throttle_tracking(conn: Connection) -> list[str]:
    """Keep the newest row per (tid, account) with its counters; delete the others."""
    tt = METADATA["iredapd"].tables["throttle_tracking"]
    groups = conn.execute(
        sa.select(tt.c.tid, tt.c.account, sa.func.max(tt.c.id))
        .where(tt.c.tid.is_not(None))
        .group_by(tt.c.tid, tt.c.account)
        .having(sa.func.count() > 1)
    ).all()
    removed = 0
    for tid, account, keep in groups:
        res = conn.execute(
            sa.delete(tt).where(tt.c.tid == tid, tt.c.account == account, tt.c.id != keep)
        )
        removed += res.rowcount
    if removed:
        log.warning("removed %d duplicate throttle_tracking rows", removed)
        return [f"removed {removed} duplicate throttle_tracking rows"]
    return []


_DEDUP: dict[str, Callable[[Connection], list[str]]] = {
    "throttle": _dedup_throttle,
    "throttle_tracking": _dedup_throttle_tracking,
}
