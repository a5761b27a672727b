"""The ``smtp_sessions`` log: one row per decision worth keeping, written in batches.

iRedAPD inserts one row per request, in its own transaction, on the hot path.
Here rows wait in memory and go to the database in one multi-row INSERT every
FLUSH_INTERVAL seconds (or FLUSH_ROWS rows), in the thread pool, so logging
never delays a reply.  When the database is down the rows wait (up to
MAX_PENDING; beyond that the oldest are dropped and counted) and go out when
it is back.  ``close()`` flushes what is left: nothing is lost on SIGTERM.

Which requests are logged is iRedAPD's rule (core-and-stateful.md §3.5, §3.9):
END-OF-MESSAGE always, RCPT when the action is not DUNNO, subject to the
LOG_SMTP_SESSIONS_BYPASS_* settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.actions import Action
from iredapd.config import Settings
from iredapd.ratelimit import RateLimitedLog
from iredapd.request import PolicyRequest
from iredapd.storage.db import BackendUnavailable, Database
from iredapd.storage.schema import smtp_sessions

__all__ = ["SessionLog", "session_row", "should_log"]

_INSERT: Final = sa.insert(smtp_sessions)

log = logging.getLogger(__name__)

# Seconds a row may wait before it is written (an admin watching iRedAdmin's
# log page sees it this much later).
FLUSH_INTERVAL: Final = 1.0
# Rows that trigger a write before the interval is over.
FLUSH_ROWS: Final = 500
# Rows kept while the database is down; at ~1 KiB a row, a bounded 100 MiB.
MAX_PENDING: Final = 100_000
# Column lengths of iRedAPD's MySQL schema where they are shorter than ours:
# an existing iRedAPD database keeps them, and strict MySQL refuses longer values.
_LEGACY_LENGTHS: Final = {"reason": 150}
_LENGTHS: Final = {
    c.name: min(_LEGACY_LENGTHS.get(c.name, c.type.length), c.type.length)
    for c in smtp_sessions.columns
    if isinstance(c.type, sa.String) and c.type.length
}


def should_log(settings: Settings, request: PolicyRequest, action: Action) -> bool:
    """iRedAPD's rule for which requests get a row."""
    if not settings.LOG_SMTP_SESSIONS:
        return False
    state = request.protocol_state
    text = action.text
    if not (state == "END-OF-MESSAGE" or (state == "RCPT" and not text.startswith("DUNNO"))):
        return False
    if settings.LOG_SMTP_SESSIONS_BYPASS_GREYLISTING and text.startswith("451 4.7.1"):
        return False
    if settings.LOG_SMTP_SESSIONS_BYPASS_WHITELIST and action.verb == "OK":
        return False
    # iRedAPD defines this setting but never reads it; we do what its name says.
    return not (settings.LOG_SMTP_SESSIONS_BYPASS_DUNNO and text.startswith("DUNNO"))


def session_row(request: PolicyRequest, action: Action, now: float) -> dict[str, Any]:
    """The row for one request (§3.9)."""
    verb, _, rest = action.text.partition(" ")
    row: dict[str, Any] = {
        "time": dt.datetime.fromtimestamp(int(now), dt.UTC).replace(tzinfo=None),
        "time_num": int(now),
        "action": verb,
        "reason": "" if verb == "DUNNO" else rest,
        "instance": request.instance,
        "client_address": request.client_address,
        "client_name": request.client_name,
        "reverse_client_name": request.reverse_client_name,
        "helo_name": request.helo_name,
        "sender": request.sender_without_ext,
        "sender_domain": request.sender_domain,
        "sasl_username": request.sasl_username,
        "sasl_domain": request.sasl_username_domain,
        "recipient": request.recipient_without_ext,
        "recipient_domain": request.recipient_domain,
        "encryption_protocol": request.encryption_protocol,
        "encryption_cipher": request.encryption_cipher,
        "server_address": request.server_address,
        "server_port": request.server_port,
    }
    for name, length in _LENGTHS.items():
        value = row[name]
        if len(value) > length:
            row[name] = value[:length]
    return row


def _insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.name != "sqlite":
        # pymysql and SQLAlchemy's psycopg2 dialect send the batch as
        # multi-row INSERTs: one statement, one transaction
        conn.execute(_INSERT, rows)
        return
    # SQLite's driver would run executemany row by row: on this autocommit
    # connection a transaction per row, and per row a wait for the GIL the
    # busy event loop holds (the writer falls behind under load).  Instead
    # one transaction of multi-row INSERTs, as many rows per statement as
    # SQLite takes bound values.
    columns = [smtp_sessions.c[key] for key in rows[0]]  # KeyError: not a column
    names = [c.name for c in columns]
    dialect = conn.dialect
    convert = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    dbapi_conn = conn.connection.dbapi_connection
    limit = getattr(dbapi_conn, "getlimit", lambda _: 999)(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, limit // len(names))
    head = f"INSERT INTO smtp_sessions ({', '.join(names)}) VALUES "  # noqa: S608 - the table's own column names
    one = f"({', '.join('?' * len(names))})"
    conn.exec_driver_sql("BEGIN")
    try:
        for i in range(0, len(rows), per_statement):
            part = rows[i : i + per_statement]
            values = tuple(
                f(r[n]) if f else r[n] for r in part for n, f in zip(names, convert, strict=True)
            )
            conn.exec_driver_sql(head + ", ".join([one] * len(part)), values)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            conn.exec_driver_sql("ROLLBACK")
        raise
    conn.exec_driver_sql("COMMIT")


class SessionLog:
    """Buffered writer of smtp_sessions rows (event-loop side only)."""

    def __init__(
        self,
        db: Database,
        *,
        interval: float = FLUSH_INTERVAL,
        batch: int = FLUSH_ROWS,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.db = db
        self.interval = interval
        self.batch = batch
        self.pending: deque[dict[str, Any]] = deque(maxlen=max_pending)
        self.dropped = 0
        self.written = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._errors = RateLimitedLog(log, interval=60.0)

    def add(self, row: dict[str, Any]) -> None:
        """Queue a row; the background task writes it soon."""
        if self._closing:
            return
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1  # the deque drops the oldest
        self.pending.append(row)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif len(self.pending) >= self.batch and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Write every pending row now; False if the database did not take them."""
        while self.pending:
            rows = [self.pending.popleft() for _ in range(min(self.batch, len(self.pending)))]
            try:
                # executemany with one compiled statement: little Python work in
                # the thread (it competes with the event loop for the GIL)
                await self.db.run(functools.partial(_insert_rows, rows=rows))
            except (BackendUnavailable, sa.exc.SQLAlchemyError) as e:
                self.pending.extendleft(reversed(rows))  # keep them for the next try
                self._errors.error(
                    ("flush",),
                    "cannot write smtp_sessions (%d rows waiting): %s",
                    len(self.pending),
                    e,
                )
                return False
            self.written += len(rows)
        return True

    async def close(self, grace: float = 5.0) -> None:
        """Stop the background task and write what is left (within ``grace`` seconds)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(grace):
                ok = await self.flush()
        except TimeoutError:
            ok = False
        if not ok and self.pending:
            log.error("smtp_sessions: %d rows could not be written at shutdown", len(self.pending))
        if self.dropped:
            log.warning(
                "smtp_sessions: %d rows were dropped while the database was down", self.dropped
            )
