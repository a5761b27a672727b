"""Schema creation and in-place upgrade, on SQLite, MariaDB and PostgreSQL.

Each test gets its own freshly created database (tests.support.databases).
The "old" databases are written here from iRedAPD's DDL as the spec records it
(core-and-stateful.md §16): a 2.x-era iredapd database without
``throttle_tracking.last_notify_time`` (2.3), ``throttle.max_rcpts`` (5.0) and
the tables added later; on PostgreSQL without the unique indexes and holding
duplicate rows.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Engine

from iredapd.storage import schema
from iredapd.storage.migrate import upgrade
from iredapd.storage.schema import METADATA
from tests.support import databases
from tests.support.databases import backend, backend_params, db_url, make_database  # noqa: F401

IREDAPD_TABLES = set(METADATA["iredapd"].tables)
ADDED_AFTER_2_0 = {
    "greylisting_whitelist_domain_spf",
    "wblist_rdns",
    "srs_exclude_domains",
    "senderscore_cache",
    "smtp_sessions",
}


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:  # noqa: F811
    """An engine like the daemon's: autocommit, no reset on return."""
    yield from _engine(db_url)


def _engine(url: URL) -> Iterator[Engine]:
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    try:
        yield eng
    finally:
        eng.dispose()


def snapshot(eng: Engine) -> dict[str, Any]:
    """Tables, columns (name, type, nullable, default) and indexes, comparable."""
    insp = sa.inspect(eng)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        cols = [
            (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
            for c in insp.get_columns(table)
        ]
        idx = sorted(
            (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
            for i in insp.get_indexes(table)
        )
        out[table] = (cols, idx)
    return out


def unique_keys(eng: Engine, table: str) -> set[frozenset[str]]:
    insp = sa.inspect(eng)
    keys = {frozenset(i["column_names"]) for i in insp.get_indexes(table) if i["unique"]}
    keys |= {frozenset(u["column_names"]) for u in insp.get_unique_constraints(table)}
    return keys


def column_type(eng: Engine, table: str, column: str) -> str:
    for c in sa.inspect(eng).get_columns(table):
        if c["name"] == column:
            return str(c["type"].compile(dialect=eng.dialect)).upper()
    raise AssertionError(f"no column {table}.{column}")


def upsert_tracking(conn: Connection, tid: int, account: str, msgs: int) -> None:
    """INSERT ... ON CONFLICT / ON DUPLICATE KEY on (tid, account), as the throttle does."""
    tt = schema.throttle_tracking
    values = {"tid": tid, "account": account, "period": 60, "cur_msgs": msgs, "init_time": 1}
    dialect = conn.dialect.name
    if dialect in ("mysql", "mariadb"):
        my = mysql_dialect.insert(tt).values(**values)
        stmt: Any = my.on_duplicate_key_update(cur_msgs=tt.c.cur_msgs + my.inserted.cur_msgs)
    else:
        ins = (
            (pg_dialect if dialect == "postgresql" else sqlite_dialect).insert(tt).values(**values)
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[tt.c.tid, tt.c.account],
            set_={"cur_msgs": tt.c.cur_msgs + ins.excluded.cur_msgs},
        )
    conn.execute(stmt)


def tracking_msgs(conn: Connection, tid: int, account: str) -> list[int]:
    tt = schema.throttle_tracking
    rows = conn.execute(
        sa.select(tt.c.cur_msgs).where(tt.c.tid == tid, tt.c.account == account)
    ).scalars()
    return list(rows)


# ---------------------------------------------------------------------------
# A fresh database
# ---------------------------------------------------------------------------


def test_create_on_empty_database_then_nothing_changes(engine: Engine) -> None:
    changes = upgrade(engine, "iredapd")
    assert sorted(changes) == sorted(f"created table {t}" for t in IREDAPD_TABLES)
    before = snapshot(engine)
    assert set(before) == IREDAPD_TABLES
    for name, table in METADATA["iredapd"].tables.items():
        assert [c[0] for c in before[name][0]] == [c.name for c in table.columns]

    assert upgrade(engine, "iredapd") == []
    assert snapshot(engine) == before


def test_unique_indexes_on_every_dialect(engine: Engine) -> None:
    upgrade(engine, "iredapd")
    assert frozenset({"account", "kind"}) in unique_keys(engine, "throttle")
    assert frozenset({"tid", "account"}) in unique_keys(engine, "throttle_tracking")
    assert frozenset({"account", "sender"}) in unique_keys(engine, "greylisting")
    assert frozenset({"sender", "recipient", "client_address"}) in unique_keys(
        engine, "greylisting_tracking"
    )
    assert frozenset({"domain"}) in unique_keys(engine, "srs_exclude_domains")
    assert frozenset({"rdns"}) in unique_keys(engine, "wblist_rdns")


def test_session_log_search_indexes_only_where_iredadmin_searches(engine: Engine) -> None:
    """iRedAdmin searches smtp_sessions on MySQL/PostgreSQL: every column is indexed
    there, as by iRedAPD; on SQLite only time_num (the cleanup tool's key)."""
    upgrade(engine, "iredapd")
    indexed = {tuple(i["column_names"]) for i in sa.inspect(engine).get_indexes("smtp_sessions")}
    every = {(c.name,) for c in schema.smtp_sessions.columns if c.name != "id"}
    assert len(every) == 19
    if engine.dialect.name == "sqlite":
        assert indexed == {("time_num",)}
    else:
        assert indexed == every


def test_sqlite_drops_the_session_search_indexes_of_an_earlier_version(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/old.db", isolation_level="AUTOCOMMIT")
    try:
        upgrade(eng, "iredapd")
        with eng.connect() as conn:  # what an earlier version of this daemon created
            for col in ("sender", "recipient", "client_address"):
                conn.exec_driver_sql(
                    f"CREATE INDEX idx_smtp_sessions_{col} ON smtp_sessions ({col})"
                )
        changes = upgrade(eng, "iredapd")
        assert sorted(changes) == [
            f"dropped index idx_smtp_sessions_{col} on smtp_sessions (not used on SQLite)"
            for col in ("client_address", "recipient", "sender")
        ]
        names = {i["name"] for i in sa.inspect(eng).get_indexes("smtp_sessions")}
        assert names == {"idx_smtp_sessions_time_num"}
        assert upgrade(eng, "iredapd") == []
    finally:
        eng.dispose()


def test_column_types_per_dialect(engine: Engine) -> None:
    upgrade(engine, "iredapd")
    dialect = engine.dialect.name
    assert column_type(engine, "smtp_sessions", "reason") == "VARCHAR(255)"
    assert column_type(engine, "greylisting", "sender") == "VARCHAR(255)"
    if dialect == "mysql":
        assert column_type(engine, "throttle", "id") == "BIGINT(20) UNSIGNED"
        assert column_type(engine, "throttle", "priority") == "TINYINT(1) UNSIGNED"
        assert column_type(engine, "throttle_tracking", "cur_msgs") == "BIGINT(20)"
        assert column_type(engine, "throttle_tracking", "cur_quota") == "BIGINT(20)"
        assert column_type(engine, "throttle_tracking", "init_time") == "INTEGER(10) UNSIGNED"
        assert column_type(engine, "greylisting", "priority") == "TINYINT(2)"
        assert column_type(engine, "smtp_sessions", "time") == "TIMESTAMP"
    elif dialect == "postgresql":
        assert column_type(engine, "throttle", "id") == "BIGINT"
        assert column_type(engine, "throttle_tracking", "cur_msgs") == "BIGINT"
        assert column_type(engine, "greylisting", "priority") == "SMALLINT"
    else:
        assert column_type(engine, "throttle", "id") == "INTEGER"  # the rowid
    tid = next(c for c in sa.inspect(engine).get_columns("throttle_tracking") if c["name"] == "tid")
    assert tid["nullable"] is False


def test_server_defaults(engine: Engine) -> None:
    upgrade(engine, "iredapd")
    with engine.connect() as conn:
        conn.execute(sa.insert(schema.throttle).values(account="@."))
        row = conn.execute(sa.select(schema.throttle)).one()
        assert (row.kind, row.priority, row.period) == ("outbound", 0, 0)
        assert (row.msg_size, row.max_msgs, row.max_quota, row.max_rcpts) == (-1, -1, -1, -1)
        assert isinstance(row.max_rcpts, int)
        conn.execute(sa.insert(schema.smtp_sessions).values(action="REJECT"))
        session = conn.execute(sa.select(schema.smtp_sessions)).one()
        assert isinstance(session.time, datetime.datetime)
        assert (session.time_num, session.reason) == (0, "")
        conn.execute(sa.insert(schema.senderscore_cache).values(client_address="192.0.2.1"))
        cached = conn.execute(sa.select(schema.senderscore_cache)).one()
        assert (cached.score, cached.time) == (0, 0)
        conn.execute(sa.insert(schema.greylisting).values(account="@.", sender="@."))
        grey = conn.execute(sa.select(schema.greylisting)).one()
        assert (grey.priority, grey.sender_priority, grey.active, grey.comment) == (0, 0, 1, "")


def test_upsert_on_tid_account(engine: Engine) -> None:
    upgrade(engine, "iredapd")
    with engine.connect() as conn:
        tid = conn.execute(
            sa.insert(schema.throttle).values(account="@.", period=60, max_msgs=100)
        ).inserted_primary_key[0]
        for n in (1, 2, 3):
            upsert_tracking(conn, tid, "user@example.com", n)
        upsert_tracking(conn, tid, "192.0.2.1", 5)
        assert tracking_msgs(conn, tid, "user@example.com") == [6]
        assert tracking_msgs(conn, tid, "192.0.2.1") == [5]


@pytest.mark.mariadb
def test_mariadb_dialect_name_gets_the_mysql_types(tmp_path: Path) -> None:
    """``mariadb+pymysql://`` URLs name the dialect "mariadb", not "mysql"."""
    with databases.temporary_database("mariadb", tmp_path) as url:
        for eng in _engine(url.set(drivername="mariadb+pymysql")):
            assert eng.dialect.name == "mariadb"
            upgrade(eng, "iredapd")
            upgrade(eng, "amavisd", create_foreign=True)
            assert column_type(eng, "throttle", "priority") == "TINYINT(1) UNSIGNED"
            assert column_type(eng, "users", "email") == "VARBINARY(255)"
            with eng.connect() as conn:
                engine_name = conn.execute(
                    sa.text(
                        "SELECT engine FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name = 'throttle'"
                    )
                ).scalar()
                assert engine_name == "InnoDB"
                tid = conn.execute(
                    sa.insert(schema.throttle).values(account="@.", period=60)
                ).inserted_primary_key[0]
                upsert_tracking(conn, tid, "u@example.com", 2)
                upsert_tracking(conn, tid, "u@example.com", 3)
                assert tracking_msgs(conn, tid, "u@example.com") == [5]


def test_concurrent_upgrades_create_each_table_once(db_url: URL) -> None:  # noqa: F811
    engines = [sa.create_engine(db_url, pool_reset_on_return=None) for _ in range(3)]
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(eng: Engine) -> None:
        try:
            results.append(upgrade(eng, "iredapd"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for e in engines:
            e.dispose()
    assert errors == []
    changes = sorted(c for r in results for c in r)
    assert changes == sorted(f"created table {t}" for t in IREDAPD_TABLES)


# ---------------------------------------------------------------------------
# An older iRedAPD database
# ---------------------------------------------------------------------------

_MYSQL_2X = [
    """CREATE TABLE throttle (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        account VARCHAR(255) NOT NULL,
        kind VARCHAR(10) NOT NULL DEFAULT 'outbound',
        priority TINYINT(1) UNSIGNED NOT NULL DEFAULT 0,
        period INT(10) UNSIGNED NOT NULL DEFAULT 0,
        msg_size BIGINT(20) NOT NULL DEFAULT -1,
        max_msgs BIGINT(20) NOT NULL DEFAULT -1,
        max_quota BIGINT(20) NOT NULL DEFAULT -1,
        PRIMARY KEY (id),
        UNIQUE INDEX account_kind (account, kind)
    ) ENGINE=InnoDB""",
    """CREATE TABLE throttle_tracking (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        tid BIGINT(20) UNSIGNED NOT NULL DEFAULT 0,
        account VARCHAR(255) NOT NULL DEFAULT '',
        period INT(10) UNSIGNED NOT NULL DEFAULT 0,
        cur_msgs MEDIUMINT(8) UNSIGNED NOT NULL DEFAULT 0,
        cur_quota INT(10) UNSIGNED NOT NULL DEFAULT 0,
        init_time INT(10) UNSIGNED NOT NULL DEFAULT 0,
        last_time INT(10) UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        FOREIGN KEY (tid) REFERENCES throttle (id),
        UNIQUE INDEX tid_account (tid, account)
    ) ENGINE=InnoDB""",
    """CREATE TABLE greylisting (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        account VARCHAR(100) NOT NULL DEFAULT '',
        priority TINYINT(2) NOT NULL DEFAULT 0,
        sender VARCHAR(100) NOT NULL DEFAULT '',
        sender_priority TINYINT(2) NOT NULL DEFAULT 0,
        comment VARCHAR(255) NOT NULL DEFAULT '',
        active TINYINT(1) NOT NULL DEFAULT 1,
        PRIMARY KEY (id),
        UNIQUE INDEX (account, sender),
        INDEX (comment)
    ) ENGINE=InnoDB""",
    """CREATE TABLE greylisting_whitelists (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        account VARCHAR(100) NOT NULL DEFAULT '',
        sender VARCHAR(100) NOT NULL DEFAULT '',
        comment VARCHAR(255) NOT NULL DEFAULT '',
        PRIMARY KEY (id),
        UNIQUE INDEX (account, sender),
        INDEX (comment)
    ) ENGINE=InnoDB""",
    """CREATE TABLE greylisting_whitelist_domains (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        domain VARCHAR(255) NOT NULL DEFAULT '',
        PRIMARY KEY (id),
        UNIQUE INDEX (domain)
    ) ENGINE=InnoDB""",
    """CREATE TABLE greylisting_tracking (
        id BIGINT(20) UNSIGNED AUTO_INCREMENT,
        sender VARCHAR(255) NOT NULL,
        recipient VARCHAR(255) NOT NULL,
        client_address VARCHAR(40) NOT NULL,
        sender_domain VARCHAR(255) NOT NULL DEFAULT '',
        rcpt_domain VARCHAR(255) NOT NULL DEFAULT '',
        init_time INT(10) UNSIGNED NOT NULL DEFAULT 0,
        block_expired INT(10) UNSIGNED NOT NULL DEFAULT 0,
        record_expired INT(10) UNSIGNED NOT NULL DEFAULT 0,
        blocked_count BIGINT(20) NOT NULL DEFAULT 0,
        passed TINYINT(1) NOT NULL DEFAULT 0,
        PRIMARY KEY (id),
        UNIQUE INDEX (sender, recipient, client_address),
        INDEX (sender_domain),
        INDEX (rcpt_domain),
        INDEX (client_address, passed)
    ) ENGINE=InnoDB""",
]

_PGSQL_2X = [
    """CREATE TABLE throttle (
        id SERIAL PRIMARY KEY,
        account VARCHAR(255) NOT NULL,
        kind VARCHAR(10) NOT NULL DEFAULT 'outbound',
        priority BIGINT NOT NULL DEFAULT 0,
        period BIGINT NOT NULL DEFAULT 0,
        msg_size BIGINT NOT NULL DEFAULT -1,
        max_msgs BIGINT NOT NULL DEFAULT -1,
        max_quota BIGINT NOT NULL DEFAULT -1
    )""",
    "CREATE INDEX idx_account ON throttle (account)",
    """CREATE TABLE throttle_tracking (
        id SERIAL PRIMARY KEY,
        tid BIGINT REFERENCES throttle (id),
        account VARCHAR(255) NOT NULL DEFAULT '',
        period BIGINT NOT NULL DEFAULT 0,
        cur_msgs BIGINT NOT NULL DEFAULT 0,
        cur_quota BIGINT NOT NULL DEFAULT 0,
        init_time BIGINT NOT NULL DEFAULT 0,
        last_time BIGINT NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX idx_tid_account ON throttle_tracking (tid, account)",
    """CREATE TABLE greylisting (
        id SERIAL PRIMARY KEY,
        account VARCHAR(255) NOT NULL DEFAULT '',
        priority SMALLINT NOT NULL DEFAULT 0,
        sender VARCHAR(255) NOT NULL DEFAULT '',
        sender_priority SMALLINT NOT NULL DEFAULT 0,
        comment VARCHAR(255) NOT NULL DEFAULT '',
        active SMALLINT NOT NULL DEFAULT 1
    )""",
    "CREATE UNIQUE INDEX idx_greylisting_account_sender ON greylisting (account, sender)",
    "CREATE INDEX idx_greylisting_comment ON greylisting (comment)",
    """CREATE TABLE greylisting_whitelists (
        id SERIAL PRIMARY KEY,
        account VARCHAR(255) NOT NULL DEFAULT '',
        sender VARCHAR(255) NOT NULL DEFAULT '',
        comment VARCHAR(255) NOT NULL DEFAULT ''
    )""",
    "CREATE UNIQUE INDEX idx_greylisting_whitelists_account_sender"
    " ON greylisting_whitelists (account, sender)",
    "CREATE INDEX idx_greylisting_whitelists_comment ON greylisting_whitelists (comment)",
    """CREATE TABLE greylisting_whitelist_domains (
        id SERIAL PRIMARY KEY,
        domain VARCHAR(255) NOT NULL DEFAULT ''
    )""",
    "CREATE UNIQUE INDEX idx_greylisting_whitelist_domains_domain"
    " ON greylisting_whitelist_domains (domain)",
    """CREATE TABLE greylisting_tracking (
        id SERIAL PRIMARY KEY,
        sender VARCHAR(255) NOT NULL,
        recipient VARCHAR(255) NOT NULL,
        client_address VARCHAR(40) NOT NULL,
        sender_domain VARCHAR(255) NOT NULL DEFAULT '',
        rcpt_domain VARCHAR(255) NOT NULL DEFAULT '',
        init_time BIGINT NOT NULL DEFAULT 0,
        block_expired BIGINT NOT NULL DEFAULT 0,
        record_expired BIGINT NOT NULL DEFAULT 0,
        blocked_count BIGINT NOT NULL DEFAULT 0,
        passed SMALLINT NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX idx_greylisting_tracking_triplet"
    " ON greylisting_tracking (sender, recipient, client_address)",
    "CREATE INDEX idx_greylisting_tracking_sender_domain ON greylisting_tracking (sender_domain)",
    "CREATE INDEX idx_greylisting_tracking_rcpt_domain ON greylisting_tracking (rcpt_domain)",
    "CREATE INDEX idx_greylisting_tracking_client_address_passed"
    " ON greylisting_tracking (client_address, passed)",
]

# iRedAPD has no SQLite schema; this is PostgreSQL's shape (no unique keys on
# the throttle tables, nullable tid) with one plain index missing, to cover
# those paths on SQLite as well.
_SQLITE_2X = [
    stmt.replace("SERIAL PRIMARY KEY", "INTEGER PRIMARY KEY")
    for stmt in _PGSQL_2X
    if "rcpt_domain ON" not in stmt
]

OLD_DDL = {"mysql": _MYSQL_2X, "postgresql": _PGSQL_2X, "sqlite": _SQLITE_2X}

# (id, account, kind, period, max_msgs); 3 duplicates 1 where allowed.
OLD_THROTTLE = [
    (1, "@.", "outbound", 60, 100),
    (2, "user@example.com", "outbound", 3600, 10),
    (3, "@.", "outbound", 60, 200),
    (4, "@.", "inbound", 60, 50),
]
# (id, tid, account, cur_msgs); duplicates of (2, user) and (2, wildcard) where allowed.
OLD_TRACKING = [
    (1, 1, "user@example.com", 5),
    (2, 3, "user@example.com", 7),
    (3, 2, "user@example.com", 3),
    (4, 2, "user@example.com", 4),
    (5, 2, "192.0.2.*", 1),
    (6, 2, "192.0.2.*", 1),
    (7, 2, "192.0.2.*", 2),
    (8, 4, "192.0.2.1", 9),
]


def _has_unique_keys(dialect: str) -> bool:
    return dialect == "mysql"


def create_old_database(eng: Engine) -> None:
    dialect = eng.dialect.name
    throttle_rows = OLD_THROTTLE
    tracking_rows = OLD_TRACKING
    if _has_unique_keys(dialect):  # MySQL always had them: no duplicates possible
        throttle_rows = [r for r in OLD_THROTTLE if r[0] != 3]
        tracking_rows = [r for r in OLD_TRACKING if r[0] in (1, 4, 7, 8)]
    with eng.begin() as conn:
        for ddl in OLD_DDL[dialect]:
            conn.exec_driver_sql(ddl)
        for row in throttle_rows:
            conn.execute(
                sa.text(
                    "INSERT INTO throttle (id, account, kind, period, max_msgs)"
                    " VALUES (:id, :account, :kind, :period, :max_msgs)"
                ),
                dict(zip(("id", "account", "kind", "period", "max_msgs"), row, strict=True)),
            )
        for row in tracking_rows:
            conn.execute(
                sa.text(
                    "INSERT INTO throttle_tracking (id, tid, account, cur_msgs, init_time)"
                    " VALUES (:id, :tid, :account, :cur_msgs, 1)"
                ),
                dict(zip(("id", "tid", "account", "cur_msgs"), row, strict=True)),
            )
        if dialect != "mysql":
            conn.execute(
                sa.text("INSERT INTO throttle_tracking (id, tid, account) VALUES (9, NULL, 'x')")
            )
            conn.execute(
                sa.text("INSERT INTO throttle_tracking (id, tid, account) VALUES (10, NULL, 'x')")
            )
        if dialect == "postgresql":
            for table in ("throttle", "throttle_tracking"):
                conn.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence(:t, 'id'), 100)"), {"t": table}
                )
        conn.execute(
            sa.text(
                "INSERT INTO greylisting (account, sender, comment) VALUES ('@.', '@.', 'global')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO greylisting_tracking (sender, recipient, client_address,"
                " init_time, passed) VALUES ('a@b.org', 'u@example.com', '192.0.2.1', 5, 1)"
            )
        )


def test_upgrade_older_iredapd_database(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    dialect = engine.dialect.name
    create_old_database(engine)
    caplog.set_level(logging.INFO, logger="iredapd.storage.migrate")

    changes = upgrade(engine, "iredapd")

    assert {f"created table {t}" for t in ADDED_AFTER_2_0} <= set(changes)
    assert "added column throttle.max_rcpts" in changes
    assert "added column throttle_tracking.last_notify_time" in changes
    assert set(sa.inspect(engine).get_table_names()) == IREDAPD_TABLES
    assert frozenset({"account", "kind"}) in unique_keys(engine, "throttle")
    assert frozenset({"tid", "account"}) in unique_keys(engine, "throttle_tracking")

    t, tt = schema.throttle, schema.throttle_tracking
    with engine.connect() as conn:
        throttle_rows = conn.execute(
            sa.select(t.c.id, t.c.account, t.c.kind, t.c.max_msgs, t.c.max_rcpts).order_by(t.c.id)
        ).all()
        tracking_rows = conn.execute(
            sa.select(tt.c.id, tt.c.tid, tt.c.account, tt.c.cur_msgs, tt.c.last_notify_time)
            .where(tt.c.tid.is_not(None))
            .order_by(tt.c.id)
        ).all()
        grey = conn.execute(sa.select(schema.greylisting.c.comment)).scalars().all()
        passed = conn.execute(sa.select(schema.greylisting_tracking.c.passed)).scalars().all()
    assert grey == ["global"]
    assert passed == [1]

    if _has_unique_keys(dialect):
        # Nothing to de-duplicate: every row kept, new columns at their defaults.
        assert [tuple(r) for r in throttle_rows] == [
            (1, "@.", "outbound", 100, -1),
            (2, "user@example.com", "outbound", 10, -1),
            (4, "@.", "inbound", 50, -1),
        ]
        assert [tuple(r) for r in tracking_rows] == [
            (1, 1, "user@example.com", 5, 0),
            (4, 2, "user@example.com", 4, 0),
            (7, 2, "192.0.2.*", 2, 0),
            (8, 4, "192.0.2.1", 9, 0),
        ]
        # An existing database's column types are not altered.
        assert column_type(engine, "throttle_tracking", "cur_msgs") == "MEDIUMINT(8) UNSIGNED"
        assert column_type(engine, "greylisting", "account") == "VARCHAR(100)"
    else:
        # throttle: newest of (@., outbound) kept; the tracking of id 1 went with it.
        assert [tuple(r) for r in throttle_rows] == [
            (2, "user@example.com", "outbound", 10, -1),
            (3, "@.", "outbound", 200, -1),
            (4, "@.", "inbound", 50, -1),
        ]
        # tracking: newest per (tid, account), counters as they were.
        assert [tuple(r) for r in tracking_rows] == [
            (2, 3, "user@example.com", 7, 0),
            (4, 2, "user@example.com", 4, 0),
            (7, 2, "192.0.2.*", 2, 0),
            (8, 4, "192.0.2.1", 9, 0),
        ]
        assert "removed 1 duplicate throttle rows" in changes
        assert "removed 3 duplicate throttle_tracking rows" in changes
        assert "removing duplicate throttle setting (keeping id=3)" in caplog.text
        with engine.connect() as conn:  # NULL tids are no duplicates: left alone
            nulls = conn.execute(sa.select(tt.c.id).where(tt.c.tid.is_(None))).scalars().all()
        assert sorted(nulls) == [9, 10]
        assert column_type(engine, "throttle", "id") == "INTEGER"  # not retyped

    if dialect == "postgresql":  # iRedAPD's plain indexes stay
        names = {i["name"] for i in sa.inspect(engine).get_indexes("throttle_tracking")}
        assert "idx_tid_account" in names
    if dialect == "sqlite":  # the plain index the old database lacked
        assert "created index idx_greylisting_tracking_rcpt_domain on greylisting_tracking" in (
            changes
        )

    before = snapshot(engine)
    assert upgrade(engine, "iredapd") == []
    assert snapshot(engine) == before

    with engine.connect() as conn:
        upsert_tracking(conn, 2, "user@example.com", 1)
        upsert_tracking(conn, 2, "new@example.com", 1)
        upsert_tracking(conn, 2, "new@example.com", 1)
        assert tracking_msgs(conn, 2, "user@example.com") == [5]
        assert tracking_msgs(conn, 2, "new@example.com") == [2]
        new_id = conn.execute(
            sa.insert(t).values(account="@ip", kind="external")
        ).inserted_primary_key[0]
        assert new_id > 4


# iRedAPD's MySQL always had the unique keys: nothing to test there.
@pytest.mark.parametrize("backend", backend_params("sqlite", "pgsql"), indirect=True)
def test_duplicates_without_a_rule_are_left_alone(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A unique index we have no merge rule for is not forced onto duplicates."""
    with engine.begin() as conn:
        for ddl in OLD_DDL[engine.dialect.name]:
            if "idx_greylisting_account_sender" not in ddl:
                conn.exec_driver_sql(ddl)
        for _ in range(2):
            conn.execute(sa.text("INSERT INTO greylisting (account, sender) VALUES ('@.', '@.')"))
    caplog.set_level(logging.ERROR, logger="iredapd.storage.migrate")

    changes = upgrade(engine, "iredapd")

    assert not any("greylisting " in c or c.endswith("on greylisting") for c in changes)
    assert "holds duplicate account, sender rows" in caplog.text
    assert frozenset({"account", "sender"}) not in unique_keys(engine, "greylisting")
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(schema.greylisting)).scalar() == 2
        )
    # Other tables were still brought up to date.
    assert frozenset({"tid", "account"}) in unique_keys(engine, "throttle_tracking")


# ---------------------------------------------------------------------------
# vmail and amavisd (iRedMail's databases)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vmail", "amavisd"])
def test_foreign_databases_created_only_where_allowed(engine: Engine, name: str) -> None:
    tables = set(METADATA[name].tables)
    if engine.dialect.name == "sqlite":
        assert sorted(upgrade(engine, name)) == sorted(f"created table {t}" for t in tables)
    else:
        assert upgrade(engine, name) == []  # iRedMail's: never touched by default
        assert sa.inspect(engine).get_table_names() == []
        assert len(upgrade(engine, name, create_foreign=True)) == len(tables)
    assert set(sa.inspect(engine).get_table_names()) == tables
    before = snapshot(engine)
    assert upgrade(engine, name, create_foreign=True) == []
    assert snapshot(engine) == before


# On SQLite (the embedded default) the vmail database is ours: not tested there.
@pytest.mark.parametrize("backend", backend_params("mariadb", "pgsql"), indirect=True)
def test_foreign_database_not_empty_is_left_alone(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE domain (domain VARCHAR(255) PRIMARY KEY)")
    assert upgrade(engine, "vmail", create_foreign=True) == []
    assert sa.inspect(engine).get_table_names() == ["domain"]


def test_amavisd_email_is_binary_and_case_sensitive(engine: Engine) -> None:
    upgrade(engine, "amavisd", create_foreign=True)
    users, mailaddr = schema.users, schema.mailaddr
    dialect = engine.dialect.name
    expected_type = {"mysql": "VARBINARY(255)", "postgresql": "BYTEA", "sqlite": "BLOB"}
    assert column_type(engine, "users", "email") == expected_type[dialect]
    with engine.connect() as conn:
        conn.execute(sa.insert(users).values(email="@.", priority=0, policy_id=0))
        conn.execute(
            sa.insert(mailaddr),
            [{"email": "user@example.com", "priority": 10}],
        )
        conn.execute(sa.insert(mailaddr).values(email="User@Example.com"))
        conn.execute(sa.insert(mailaddr).values(email="ü@bücher.de", priority=10))
        found = conn.execute(
            sa.select(mailaddr.c.email, mailaddr.c.priority)
            .where(mailaddr.c.email.in_(["user@example.com", "ü@bücher.de", "USER@EXAMPLE.COM"]))
            .order_by(mailaddr.c.id)
        ).all()
        assert [tuple(r) for r in found] == [("user@example.com", 10), ("ü@bücher.de", 10)]
        row = conn.execute(sa.select(users)).one()
        assert (row.email, row.priority, row.policy_id) == ("@.", 0, 0)
        default = conn.execute(
            sa.select(mailaddr.c.priority).where(mailaddr.c.email == "User@Example.com")
        ).scalar()
        assert default == 7
        conn.execute(sa.insert(schema.wblist).values(rid=row.id, sid=1, wb="B"))
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.insert(schema.wblist).values(rid=row.id, sid=1, wb="W"))


def test_vmail_defaults_follow_iredmail(engine: Engine) -> None:
    upgrade(engine, "vmail", create_foreign=True)
    with engine.connect() as conn:
        conn.execute(sa.insert(schema.domain).values(domain="test.com"))
        conn.execute(
            sa.insert(schema.alias_domain).values(alias_domain="a.com", target_domain="test.com")
        )
        conn.execute(sa.insert(schema.mailbox).values(username="user@test.com", domain="test.com"))
        conn.execute(sa.insert(schema.alias).values(address="alias@test.com"))
        fwd_table = schema.forwardings
        conn.execute(
            sa.insert(fwd_table).values(
                address="alias@test.com", forwarding="user@test.com", is_list=1
            )
        )
        conn.execute(
            sa.insert(fwd_table).values(
                address="user@test.com", forwarding="user@test.com", is_forwarding=1
            )
        )
        dom = conn.execute(sa.select(schema.domain)).one()
        box = conn.execute(sa.select(schema.mailbox)).one()
        ali = conn.execute(sa.select(schema.alias)).one()
        fwd = conn.execute(sa.select(schema.forwardings).order_by(schema.forwardings.c.id)).all()
    assert (dom.active, dom.backupmx, dom.transport) == (1, 0, "dovecot")
    assert dom.expired == datetime.datetime(9999, 12, 31)
    assert (box.active, box.enablesmtp, box.storagebasedirectory) == (1, 1, "/var/vmail")
    if engine.dialect.name == "postgresql":  # iRedMail's PostgreSQL: NOW()
        assert box.passwordlastchange.year >= 2024
    else:
        assert box.passwordlastchange == datetime.datetime(1970, 1, 1, 1, 1, 1)
    assert (ali.accesspolicy, ali.active) == ("", 1)
    assert [(f.is_list, f.is_forwarding, f.is_alias, f.active) for f in fwd] == [
        (1, 0, 0, 1),
        (0, 1, 0, 1),
    ]


def test_all_three_databases_side_by_side(make_database: Callable[[], URL]) -> None:  # noqa: F811
    """vmail, amavisd and iredapd in separate databases of one server, as deployed."""
    for name in ("vmail", "amavisd", "iredapd"):
        for eng in _engine(make_database()):
            assert upgrade(eng, name, create_foreign=True)
            assert set(sa.inspect(eng).get_table_names()) == set(METADATA[name].tables)


# ---------------------------------------------------------------------------
# The fixtures' own contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "outcome"), [(None, pytest.skip.Exception), ("1", pytest.fail.Exception)]
)
def test_require_service_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, env: str | None, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(databases, "_admin_url", lambda _service: "connection refused")
    if env is None:
        monkeypatch.delenv("REQUIRE_ALL_BACKENDS", raising=False)
    else:
        monkeypatch.setenv("REQUIRE_ALL_BACKENDS", env)
    with pytest.raises(outcome, match="pgsql is not reachable"):
        databases.require_service("postgresql")
    with pytest.raises(ValueError, match="unknown database service"):
        databases.require_service("oracle")


def test_temporary_databases_are_unique_and_dropped(backend: str, tmp_path: Path) -> None:  # noqa: F811
    with (
        databases.temporary_database(backend, tmp_path) as first,
        databases.temporary_database(backend, tmp_path) as second,
    ):
        assert first.database != second.database
        for eng in _engine(first):
            with eng.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
    if backend == "sqlite":
        assert not Path(first.database or "").exists()
        return
    admin = sa.create_engine(databases.require_service(backend))
    try:
        with admin.connect() as conn:
            if backend == "mariadb":
                rows = conn.execute(sa.text("SHOW DATABASES")).scalars().all()
            else:
                rows = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    finally:
        admin.dispose()
    assert first.database not in rows
    assert second.database not in rows
