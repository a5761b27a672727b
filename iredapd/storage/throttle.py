"""The throttle tables: rule lookup, atomic counting, notification claims, admin queries.

Spec: core-and-stateful.md §9 (the plugin), §14.7 (fix_throttle_priority),
§16.1/§16.2 (tables).

Counting is exact under concurrency and across daemons sharing one database:
a message is added to a ``throttle_tracking`` row only by one statement that
resets an expired window, adds the message and checks the limit at once
(``UPDATE … WHERE <new value> <= limit``, or on PostgreSQL/SQLite the
equivalent ``INSERT … ON CONFLICT DO UPDATE … WHERE``; on MySQL a missing
row is created by ``INSERT IGNORE`` with the message counted).  When a message is
counted in two rows (max_msgs and max_quota won by different rules), both
statements run in one transaction and are rolled back together if either
limit would be passed.  Nothing is read, computed in Python and written back.

Functions taking a ``Connection`` are blocking: the plugin runs them through
``Database.run`` (the thread pool), the tools call them directly.  They expect
an autocommit connection (what :mod:`iredapd.storage.db` hands out) and open
their own short transactions where they need one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.lookup import account_priority
from iredapd.storage.db import Prepared
from iredapd.storage.schema import throttle, throttle_tracking
from iredapd.storage.upsert import dialect_insert, insert_ignore

__all__ = [
    "KINDS",
    "LIMITS",
    "Charge",
    "ChargeResult",
    "Rule",
    "Tracking",
    "Usage",
    "charge_message",
    "claim_notification",
    "delete_rules",
    "effective",
    "fetch_rules",
    "fits",
    "fix_priorities",
    "list_rules",
    "read_tracking",
    "transaction",
    "upsert_rule",
    "usage",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Throttle kinds (§9.1): sender throttling of local/authenticated senders,
#: of unauthenticated remote senders, and recipient throttling.
KINDS: Final = ("outbound", "external", "inbound")
#: The four limits of a rule, in iRedAPD's evaluation order (§9.4).
LIMITS: Final = ("msg_size", "max_rcpts", "max_msgs", "max_quota")

# How often a transaction that lost a deadlock (or a Galera certification
# conflict) is tried again.  The server rolled it back, so a retry cannot
# count anything twice.
_ATTEMPTS: Final = 4
_MYSQL_RETRY_ERRNOS: Final = frozenset({1213, 1205})  # deadlock, lock wait timeout
_PG_RETRY_CODES: Final = frozenset({"40P01", "40001"})  # deadlock, serialization failure


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of ``throttle``."""

    id: int
    account: str
    kind: str
    priority: int
    period: int
    msg_size: int
    max_msgs: int
    max_quota: int
    max_rcpts: int

    def limit(self, name: str) -> int:
        """The value of limit ``name`` (one of :data:`LIMITS`)."""
        value: int = getattr(self, name)
        return value


@dataclass(frozen=True, slots=True)
class Charge:
    """One ``throttle_tracking`` row a message is counted in.

    ``max_msgs``/``max_quota`` are the limits checked against this row; 0 means
    the row is counted but that limit is not checked here (unlimited, or won
    by another rule).
    """

    tid: int
    account: str
    period: int
    max_msgs: int = 0
    max_quota: int = 0

    @property
    def key(self) -> tuple[int, str]:
        """(tid, account): the row's unique key."""
        return (self.tid, self.account)


@dataclass(frozen=True, slots=True)
class Tracking:
    """One row of ``throttle_tracking``."""

    id: int
    tid: int
    account: str
    period: int
    cur_msgs: int
    cur_quota: int
    init_time: int
    last_time: int
    last_notify_time: int


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What :func:`charge_message` did.

    ``accepted``: the message was added to every row.  Otherwise ``over`` is
    the first row whose limit it would pass and ``tracking`` that row as read
    after the refusal (None when the row does not exist yet: the message alone
    passes the limit).
    """

    accepted: bool
    over: Charge | None = None
    tracking: Tracking | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """A tracking row with the rule it counts for (throttle_admin usage)."""

    rule: Rule
    tracking: Tracking


_RULE_COLUMNS = (
    throttle.c.id,
    throttle.c.account,
    throttle.c.kind,
    throttle.c.priority,
    throttle.c.period,
    throttle.c.msg_size,
    throttle.c.max_msgs,
    throttle.c.max_quota,
    throttle.c.max_rcpts,
)
_TRACKING_COLUMNS = (
    throttle_tracking.c.id,
    throttle_tracking.c.tid,
    throttle_tracking.c.account,
    throttle_tracking.c.period,
    throttle_tracking.c.cur_msgs,
    throttle_tracking.c.cur_quota,
    throttle_tracking.c.init_time,
    throttle_tracking.c.last_time,
    throttle_tracking.c.last_notify_time,
)


def _int(value: Any) -> int:
    return int(value or 0)


def _rule(row: Sequence[Any]) -> Rule:
    return Rule(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        *(_int(v) for v in row[3:9]),
    )


def _tracking(row: Sequence[Any]) -> Tracking:
    return Tracking(int(row[0]), _int(row[1]), str(row[2]), *(_int(v) for v in row[3:9]))


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


@functools.cache
def _rules_statement() -> sa.Select[Any]:
    accounts: sa.BindParameter[list[str]] = sa.bindparam("p_accounts", expanding=True)
    return sa.select(*_RULE_COLUMNS).where(throttle.c.account.in_(accounts))


def fetch_rules(conn: Connection, accounts: Iterable[str]) -> list[Rule]:
    """The rules (every kind) whose account is one of ``accounts``: one indexed query."""
    wanted = sorted(set(accounts))
    if not wanted:
        return []
    return [_rule(row) for row in conn.execute(_rules_statement(), {"p_accounts": wanted})]


def list_rules(
    conn: Connection, *, account: str | None = None, kind: str | None = None
) -> list[Rule]:
    """Every rule, or those of one account and/or kind, by account then kind."""
    stmt = sa.select(*_RULE_COLUMNS).order_by(throttle.c.account, throttle.c.kind, throttle.c.id)
    if account is not None:
        stmt = stmt.where(throttle.c.account == account)
    if kind is not None:
        stmt = stmt.where(throttle.c.kind == kind)
    return [_rule(row) for row in conn.execute(stmt)]


# ---------------------------------------------------------------------------
# Transactions on autocommit connections
# ---------------------------------------------------------------------------


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """One explicit transaction on an autocommit connection.

    The pool's connections are in autocommit mode (no BEGIN/ROLLBACK around
    every read); a multi-statement change opens its own transaction here and
    always ends it, so no connection goes back to the pool inside one.
    SQLite takes the write lock at once (``BEGIN IMMEDIATE``) so two writers
    never deadlock upgrading a read lock.
    """
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.dialect.name == "sqlite" else "BEGIN")
    try:
        yield conn
    except BaseException:
        try:
            conn.exec_driver_sql("ROLLBACK")
        except sa.exc.SQLAlchemyError:
            # the connection is broken: the server drops the transaction itself
            with suppress(sa.exc.SQLAlchemyError):
                conn.invalidate()
        raise
    conn.exec_driver_sql("COMMIT")


def _retryable(exc: sa.exc.DBAPIError) -> bool:
    """True for a deadlock or serialization failure (the server rolled back)."""
    orig = exc.orig
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_RETRY_ERRNOS:
        return True
    return getattr(orig, "pgcode", None) in _PG_RETRY_CODES


def _with_retries(func: Callable[[], T]) -> T:
    """Run ``func`` again when the server reports a deadlock (it rolled back)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return func()
        except sa.exc.DBAPIError as e:
            if attempt == _ATTEMPTS or not _retryable(e):
                raise
            log.info("throttle: deadlock, trying again (%d/%d)", attempt, _ATTEMPTS - 1)
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------
# Counting (§9.8-§9.10, made atomic)
# ---------------------------------------------------------------------------


# The counting statements are built once per shape (which limits are checked,
# which dialect) with named parameters, so a request only binds values.
# Parameter names start with "p_": SQLAlchemy reserves column names in
# INSERT/UPDATE statements for itself.
def _bp(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=sa.String() if name == "account" else sa.BigInteger())


def _named(**values: Any) -> dict[str, Any]:
    return {f"p_{name}": value for name, value in values.items()}


def _params(charge: Charge, now: int, msgs: int, size: int) -> dict[str, Any]:
    return _named(
        tid=charge.tid,
        account=charge.account,
        period=charge.period,
        now=now,
        msgs=msgs,
        size=size,
        max_msgs=charge.max_msgs,
        max_quota=charge.max_quota,
        row_msgs=msgs,
        row_quota=size,
        row_time=now,
    )


def _new_values() -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    """cur_msgs, cur_quota, init_time after adding the message.

    The stored window has ended when ``init_time > 0 AND now > init_time +
    period`` (no subtraction, so MySQL's UNSIGNED columns never see a negative
    value); the message then starts a new window.  A window that has not
    started (init_time 0) starts now.
    """
    t = throttle_tracking.c
    now = _bp("now")
    expired = sa.and_(t.init_time > 0, now > t.init_time + _bp("period"))
    new_msgs = sa.case((expired, _bp("msgs")), else_=t.cur_msgs + _bp("msgs"))
    new_quota = sa.case((expired, _bp("size")), else_=t.cur_quota + _bp("size"))
    new_init = sa.case((sa.or_(expired, t.init_time == 0), now), else_=t.init_time)
    return new_msgs, new_quota, new_init


def _fits_clause(check_msgs: bool, check_quota: bool) -> list[sa.ColumnElement[bool]]:
    new_msgs, new_quota, _init = _new_values()
    where: list[sa.ColumnElement[bool]] = []
    if check_msgs:
        where.append(new_msgs <= _bp("max_msgs"))
    if check_quota:
        where.append(new_quota <= _bp("max_quota"))
    return where


@functools.cache
def _update_statement(check_msgs: bool, check_quota: bool) -> Prepared:
    """Add the message to an existing row if it stays within the limits."""
    t = throttle_tracking.c
    new_msgs, new_quota, new_init = _new_values()
    # MySQL evaluates SET assignments left to right with the new values, so
    # the counters (which read init_time) come before init_time itself.
    return Prepared(
        sa.update(throttle_tracking)
        .where(t.tid == _bp("tid"), t.account == _bp("account"))
        .where(*_fits_clause(check_msgs, check_quota))
        .ordered_values(
            (t.cur_msgs, new_msgs),
            (t.cur_quota, new_quota),
            (t.init_time, new_init),
            (t.last_time, _bp("now")),
            (t.period, _bp("period")),
        )
    )


# A new row: the message counted, or (a placeholder) nothing yet.
_ROW_VALUES = {
    "tid": _bp("tid"),
    "account": _bp("account"),
    "period": _bp("period"),
    "cur_msgs": _bp("row_msgs"),
    "cur_quota": _bp("row_quota"),
    "init_time": _bp("row_time"),
    "last_time": _bp("row_time"),
    "last_notify_time": sa.literal(0, sa.BigInteger()),
}


@functools.cache
def _upsert_statement(dialect: str, check_msgs: bool, check_quota: bool) -> Prepared:
    """PostgreSQL/SQLite: insert the row counting the message, or add the
    message to the existing row if it stays within the limits; one statement."""
    new_msgs, new_quota, new_init = _new_values()
    t = throttle_tracking.c
    where = _fits_clause(check_msgs, check_quota)
    # inline(): no RETURNING of the new id, which nothing here needs
    stmt = dialect_insert(throttle_tracking, dialect).values(_ROW_VALUES).inline()
    upsert: sa.Insert = stmt.on_conflict_do_update(
        index_elements=[t.tid, t.account],
        set_={
            "cur_msgs": new_msgs,
            "cur_quota": new_quota,
            "init_time": new_init,
            "last_time": _bp("now"),
            "period": _bp("period"),
        },
        where=sa.and_(*where) if where else None,
    )
    return Prepared(upsert)


@functools.cache
def _insert_ignore_statement(dialect: str) -> Prepared:
    """Insert a row unless (tid, account) exists.

    MySQL's INSERT IGNORE also skips a row it cannot insert for another
    reason (a foreign key: the rule was deleted); callers check.  (Kept on
    purpose, ``skip_errors``: the counting loops and claim_notification are
    written around that skip and its row count.)
    """
    stmt = insert_ignore(
        throttle_tracking, dialect, index_elements=["tid", "account"], skip_errors=True
    )
    return Prepared(stmt.values(_ROW_VALUES).inline())


def _insert_row(conn: Connection, charge: Charge, msgs: int, size: int, now: int) -> bool:
    """Insert the row (msgs/size/now; zeros for a placeholder); False if it exists."""
    params = _named(
        tid=charge.tid,
        account=charge.account,
        period=charge.period,
        row_msgs=msgs,
        row_quota=size,
        row_time=now,
    )
    return _insert_ignore_statement(conn.dialect.name).execute(conn, params).rowcount == 1


def fits(charge: Charge, row: Tracking | None, now: int, msgs: int, size: int) -> bool:
    """Whether the message fits the row's limits (what the statements check)."""
    cur_msgs, cur_quota, _init = effective(row, charge.period, now)
    if charge.max_msgs > 0 and cur_msgs + msgs > charge.max_msgs:
        return False
    return not (charge.max_quota > 0 and cur_quota + size > charge.max_quota)


def effective(row: Tracking | None, period: int, now: int) -> tuple[int, int, int]:
    """(cur_msgs, cur_quota, init_time) of the current window at ``now``.

    A missing row, or one whose window has ended, counts nothing; a window
    that has not started (init_time 0) starts now (§9.8 step 1).
    """
    if row is None:
        return 0, 0, now
    if row.init_time > 0 and now > row.init_time + period:
        return 0, 0, now
    return row.cur_msgs, row.cur_quota, row.init_time or now


def _alone_fits(charge: Charge, msgs: int, size: int) -> bool:
    return fits(charge, None, 0, msgs, size)


@functools.cache
def _tracking_one() -> Prepared:
    t = throttle_tracking.c
    return Prepared(
        sa.select(*_TRACKING_COLUMNS).where(t.tid == _bp("tid"), t.account == _bp("account"))
    )


def _read_one(conn: Connection, charge: Charge) -> Tracking | None:
    params = _named(tid=charge.tid, account=charge.account)
    row = _tracking_one().execute(conn, params).first()
    return None if row is None else _tracking(row)


def read_tracking(
    conn: Connection, keys: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], Tracking]:
    """The tracking rows of the given (tid, account) keys that exist."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return {}
    t = throttle_tracking.c
    stmt = sa.select(*_TRACKING_COLUMNS).where(
        sa.or_(*(sa.and_(t.tid == tid, t.account == account) for tid, account in keys))
    )
    rows = (_tracking(r) for r in conn.execute(stmt))
    return {(r.tid, r.account): r for r in rows}


def _count_statement(dialect: str, charge: Charge) -> Prepared:
    checks = (charge.max_msgs > 0, charge.max_quota > 0)
    if dialect in ("postgresql", "sqlite"):
        return _upsert_statement(dialect, *checks)
    return _update_statement(*checks)


def _count_one(conn: Connection, charge: Charge, now: int, msgs: int, size: int) -> ChargeResult:
    """Add the message to one row within its limits, or refuse it.

    PostgreSQL and SQLite: one conditional upsert; no row counted means the
    row exists and the message would pass a limit.  MySQL: a conditional
    UPDATE; when it counts nothing the row is read: over the limit, refuse;
    missing, insert it with the message counted (INSERT IGNORE); otherwise
    another daemon changed it meanwhile (created it, started a new window):
    try again.
    """
    if not _alone_fits(charge, msgs, size):
        return ChargeResult(False, charge, _read_one(conn, charge))
    dialect = conn.dialect.name
    stmt = _count_statement(dialect, charge)
    params = _params(charge, now, msgs, size)
    if dialect in ("postgresql", "sqlite"):
        if stmt.execute(conn, params).rowcount == 1:
            return ChargeResult(True)
        return ChargeResult(False, charge, _read_one(conn, charge))
    for _ in range(_ATTEMPTS):
        if stmt.execute(conn, params).rowcount == 1:
            return ChargeResult(True)
        row = _read_one(conn, charge)
        if row is not None and not fits(charge, row, now, msgs, size):
            return ChargeResult(False, charge, row)
        if row is None and _insert_row(conn, charge, msgs, size, now):
            return ChargeResult(True)
    # INSERT IGNORE keeps skipping the row: the rule was deleted meanwhile
    raise RuntimeError(f"cannot count in throttle_tracking row {charge.key!r}")


def _count_all(
    conn: Connection, charges: Sequence[Charge], now: int, msgs: int, size: int
) -> ChargeResult:
    """Add the message to every row in one transaction, or to none."""
    dialect = conn.dialect.name
    for charge in charges:
        if not _alone_fits(charge, msgs, size):
            return ChargeResult(False, charge, _read_one(conn, charge))
    work = []
    for charge in charges:
        params = _params(charge, now, msgs, size)
        work.append((charge, _count_statement(dialect, charge), params))

    def attempt() -> None:
        with transaction(conn):
            for charge, stmt, params in work:
                if stmt.execute(conn, params).rowcount != 1:
                    raise _Missed(charge)

    for _ in range(_ATTEMPTS):
        try:
            _with_retries(attempt)
        except _Missed as missed:
            charge = missed.charge
            row = _read_one(conn, charge)
            if dialect in ("postgresql", "sqlite"):
                return ChargeResult(False, charge, row)
            if row is not None and not fits(charge, row, now, msgs, size):
                return ChargeResult(False, charge, row)
            if row is None:
                # MySQL: the row did not exist.  Create it empty outside the
                # transaction (INSERT IGNORE inside one takes a shared lock
                # that two daemons could both try to upgrade) and try again.
                _insert_row(conn, charge, 0, 0, 0)
            continue
        return ChargeResult(True)
    raise RuntimeError("cannot count in throttle_tracking rows")  # rule deleted meanwhile


class _Missed(Exception):
    """A conditional statement counted nothing (internal: ends the transaction)."""

    def __init__(self, charge: Charge) -> None:
        super().__init__(charge.key)
        self.charge = charge


def charge_message(
    conn: Connection, charges: Sequence[Charge], *, now: int, msgs: int, size: int
) -> ChargeResult:
    """Count one message (``msgs`` recipients, ``size`` bytes) in every row, or in none.

    Rows are taken in (tid, account) order so that two daemons counting the
    same rows lock them in the same order and never deadlock each other.
    """
    ordered = sorted(charges, key=lambda c: c.key)
    if not ordered:
        return ChargeResult(True)
    if len(ordered) == 1:
        charge = ordered[0]
        return _with_retries(lambda: _count_one(conn, charge, now, msgs, size))
    return _count_all(conn, ordered, now, msgs, size)


# ---------------------------------------------------------------------------
# Notifications (§9.11: once per window)
# ---------------------------------------------------------------------------


@functools.cache
def _claim_statement() -> Prepared:
    """Set last_notify_time=now unless this window was already notified.

    A running window (started, not ended) is notified once (iRedAPD's test
    ``init < last_notify <= init + period``, with ``<=`` at the start so a
    notification in the window's first second counts).  A window that has
    not started or has ended (every message refused, so nothing reset it) is
    notified at most once per period.
    """
    t = throttle_tracking.c
    period, now = _bp("period"), _bp("now")
    running = sa.and_(t.init_time > 0, now <= t.init_time + period)
    not_in_window = sa.or_(
        t.last_notify_time < t.init_time, t.last_notify_time > t.init_time + period
    )
    idle_due = sa.or_(t.last_notify_time == 0, t.last_notify_time + period < now)
    return Prepared(
        sa.update(throttle_tracking)
        .where(t.tid == _bp("tid"), t.account == _bp("account"))
        .where(sa.or_(sa.and_(running, not_in_window), sa.and_(sa.not_(running), idle_due)))
        .values(last_notify_time=now)
    )


def claim_notification(conn: Connection, charge: Charge, now: int) -> bool:
    """True if this caller is the one to send the notification for this window.

    Atomic, so two daemons never both send.  A missing row (the first message
    was already over the limit) is created empty to remember the notification.
    """
    params = _named(tid=charge.tid, account=charge.account, period=charge.period, now=now)
    if _claim_statement().execute(conn, params).rowcount == 1:
        return True
    if not _insert_row(conn, charge, 0, 0, 0):
        return False
    return _claim_statement().execute(conn, params).rowcount == 1


# ---------------------------------------------------------------------------
# Administration (throttle_admin, fix_throttle_priority)
# ---------------------------------------------------------------------------


def upsert_rule(conn: Connection, account: str, kind: str, values: Mapping[str, int]) -> bool:
    """Create the rule (account, kind) or change the given columns of it.

    ``values`` may hold period, msg_size, max_msgs, max_quota, max_rcpts;
    columns not given keep their value (a new rule gets the table defaults).
    The priority is always ``account_priority(account)``.  Returns True when
    the rule was created.
    """
    allowed = {"period", *LIMITS}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown throttle column(s): {sorted(unknown)}")
    priority = account_priority(account)
    with transaction(conn):
        t = throttle.c
        changes = {"priority": priority, **values}
        updated = conn.execute(
            sa.update(throttle).where(t.account == account, t.kind == kind).values(changes)
        ).rowcount
        if updated:
            return False
        conn.execute(sa.insert(throttle).values(account=account, kind=kind, **changes))
        return True


def delete_rules(conn: Connection, account: str, kinds: Sequence[str]) -> int:
    """Remove the account's rules of the given kinds and their tracking rows.

    One transaction: tracking rows first (they refer to the rule).
    """
    t = throttle.c
    with transaction(conn):
        ids = [
            int(row[0])
            for row in conn.execute(
                sa.select(t.id).where(t.account == account, t.kind.in_(list(kinds)))
            )
        ]
        if not ids:
            return 0
        conn.execute(sa.delete(throttle_tracking).where(throttle_tracking.c.tid.in_(ids)))
        return int(conn.execute(sa.delete(throttle).where(t.id.in_(ids))).rowcount)


def usage(conn: Connection, *, account: str | None = None, kind: str | None = None) -> list[Usage]:
    """Tracking rows with their rules; ``account`` matches the rule or the counter key."""
    tt = throttle_tracking.c
    stmt = (
        sa.select(*_RULE_COLUMNS, *_TRACKING_COLUMNS)
        .select_from(throttle_tracking.join(throttle, tt.tid == throttle.c.id))
        .order_by(throttle.c.account, throttle.c.kind, tt.account)
    )
    if account is not None:
        stmt = stmt.where(sa.or_(throttle.c.account == account, tt.account == account))
    if kind is not None:
        stmt = stmt.where(throttle.c.kind == kind)
    n = len(_RULE_COLUMNS)
    return [Usage(_rule(row[:n]), _tracking(row[n:])) for row in conn.execute(stmt)]


def fix_priorities(conn: Connection, *, page_size: int = 100) -> Iterator[tuple[str, int, int]]:
    """Set every rule's priority to ``account_priority(account)`` (§14.7).

    Pages through the table by id; yields (account, old, new) for each change.
    Each change is one conditional UPDATE (a concurrent edit is not overwritten).
    """
    t = throttle.c
    last_id = -1
    while True:
        rows = conn.execute(
            sa.select(t.id, t.account, t.priority)
            .where(t.id > last_id)
            .order_by(t.id)
            .limit(page_size)
        ).fetchall()
        if not rows:
            return
        for rid, account, old in rows:
            last_id = int(rid)
            new = account_priority(str(account))
            if int(old) != new:
                done = conn.execute(
                    sa.update(throttle).where(t.id == rid, t.priority == old).values(priority=new)
                ).rowcount
                if done:
                    yield str(account), int(old), new
