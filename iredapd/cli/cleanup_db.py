"""``cleanup_db``: remove expired rows from the iredapd database (cron, hourly).

iRedAPD's ``tools/cleanup_db.py`` (core-and-stateful.md §14.2):

============================  ============================================  ==============
table                         rows removed                                  key
============================  ============================================  ==============
``throttle_tracking``         the window has ended: init_time + period < now  id
``greylisting_tracking``      record_expired < now                          id
``senderscore_cache``         older than SENDERSCORE_CACHE_DAYS             client_address
``smtp_sessions``             older than LOG_SMTP_SESSIONS_EXPIRE_DAYS      id
============================  ============================================  ==============

Rows go in batches of CLEANUP_QUERY_SIZE_LIMIT: the keys of a batch are read,
then deleted by key in one short statement that checks the condition again, so
a row the daemon refreshed in between (a throttle window restarted, a
greylisting triplet extended) is kept.  Safe to run while the daemon serves.

Output, as iRedAPD's: ``* <table>: <n> records removed.`` after each batch
(running total) and ``* <table>: <n> left.`` per table, at log level info.

Exit status: 0 done, 69 the database is unreachable, 70 a query failed (a
missing table: start the daemon once to create them), 78 bad settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    add_config_arguments,
    command_logger,
    database_engine,
    database_error,
    load_config,
)
from iredapd.config import Settings
from iredapd.storage.schema import (
    greylisting_tracking,
    senderscore_cache,
    smtp_sessions,
    throttle_tracking,
)

__all__ = ["Target", "cleanup_table", "main", "targets"]

PROG = "cleanup_db"
DAY = 86400


@dataclass(frozen=True, slots=True)
class Target:
    """One table to clean: its key column and what makes a row expired."""

    table: sa.Table
    key: sa.Column[object]
    expired: sa.ColumnElement[bool]


def targets(settings: Settings, now: int) -> list[Target]:
    """The four tables of §14.2 with their expiry conditions at ``now``.

    Thresholds are computed here, so the SQL never subtracts from MySQL's
    UNSIGNED columns.
    """
    tt, gt = throttle_tracking.c, greylisting_tracking.c
    score_before = now - settings.SENDERSCORE_CACHE_DAYS * DAY
    session_before = now - settings.LOG_SMTP_SESSIONS_EXPIRE_DAYS * DAY
    return [
        Target(throttle_tracking, tt.id, tt.init_time + tt.period < now),
        Target(greylisting_tracking, gt.id, gt.record_expired < now),
        Target(
            senderscore_cache,
            senderscore_cache.c.client_address,
            senderscore_cache.c.time < score_before,
        ),
        Target(smtp_sessions, smtp_sessions.c.id, smtp_sessions.c.time_num < session_before),
    ]


def cleanup_table(
    conn: Connection, target: Target, batch: int, say: Callable[[str], None]
) -> tuple[int, int]:
    """Delete the expired rows of one table in batches; (removed, left)."""
    name = target.table.name
    removed = 0
    while True:
        keys = [
            row[0] for row in conn.execute(sa.select(target.key).where(target.expired).limit(batch))
        ]
        if not keys:
            break
        # The condition again: a row refreshed since the SELECT stays.
        done = conn.execute(
            sa.delete(target.table).where(target.key.in_(keys), target.expired)
        ).rowcount
        removed += int(done)
        say(f"* {name:<20}: {removed} records removed.")
    left = conn.execute(sa.select(sa.func.count(target.key))).scalar_one()
    say(f"* {name}: {left} left.")
    return removed, int(left)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Remove expired throttle/greylisting tracking rows, old sender scores "
        "and old SMTP session log rows from the iredapd database.",
        epilog="cron example: 1 * * * * python3 /opt/iredapd/tools/cleanup_db.py >/dev/null",
    )
    add_config_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``tools/cleanup_db.py``)."""
    args = _parser().parse_args(argv)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    settings = loaded.settings
    logger = command_logger(settings)
    now = int(time.time())
    try:
        with database_engine(settings, "iredapd") as engine, engine.connect() as conn:
            for target in targets(settings, now):
                cleanup_table(conn, target, settings.CLEANUP_QUERY_SIZE_LIMIT, logger.info)
    except sa.exc.DBAPIError as e:
        return database_error(PROG, "iredapd", e)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
