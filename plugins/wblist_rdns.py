"""wblist_rdns: white/blacklist clients by the reverse DNS name of their IP.

What it does
    Many spam sources sit on dial-up or hosting networks whose reverse DNS
    names say so (``1-2-3-4.dynamic.example.net``).  This plugin looks the
    client's reverse DNS name (Postfix's ``reverse_client_name``) up in the
    ``wblist_rdns`` table and refuses mail from blacklisted names with
    ``REJECT Blacklisted`` (``DISCARD Policy discard`` with
    ``WBLIST_DISCARD_INSTEAD_OF_REJECT = True``).

    A row ``host.example.com`` matches that exact name; a row starting with a
    dot, ``.example.com``, matches ``example.com`` and every name below it.  A
    whitelist row (``wb = 'W'``) wins over any blacklist row: the mail is not
    accepted by it, only spared from the blacklist.  Logged-in clients (SMTP
    AUTH), trusted clients (``MYNETWORKS``) and clients without a reverse name
    (``unknown``) are never checked.

Settings
    ``WBLIST_DISCARD_INSTEAD_OF_REJECT`` (False), ``MYNETWORKS``,
    ``CACHE_TTL``: the table is read at most once in that many seconds, so a
    row added or removed takes up to CACHE_TTL seconds to apply.

Tables
    iredapd: ``wblist_rdns(rdns, wb)``, ``wb`` is ``W`` or ``B``; read only.
    Example: ``INSERT INTO wblist_rdns (rdns, wb) VALUES ('.dynamic.example.net', 'B')``.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.config import Settings
from iredapd.lookup import rdns_candidates
from iredapd.plugin import SMTP_ACTIONS, Action, Context, Plugin
from iredapd.services import Services
from iredapd.storage.cache import MISSING, Snapshot, TTLCache
from iredapd.storage.db import Database
from iredapd.storage.schema import wblist_rdns

log = logging.getLogger(__name__)

# A table with more rows than this is not held in memory: every name is
# looked up in it (and the answer cached).
_SNAPSHOT_ROWS = 100_000
# Names whose answer is cached at most (an LRU).
_NAMES_CACHED = 50_000

_c = wblist_rdns.c
# The database compares wb (MySQL's collation also takes 'w' / 'b') and rdns.
_MARKS = sa.select(_c.rdns, _c.wb).where(
    _c.rdns.in_(sa.bindparam("names", expanding=True)), _c.wb.in_(("W", "B"))
)
_ALL_NAMES = sa.select(_c.rdns).limit(_SNAPSHOT_ROWS + 1)
del _c

Marks = dict[str, Any]


def _loose(value: str) -> str | None:
    """A key that is equal for any two values a database may compare equal.

    MySQL's collations ignore case and trailing spaces; PostgreSQL and SQLite
    compare exactly.  For printable ASCII nothing else is equal; for
    anything else no such key is known (None).
    """
    if not (value.isascii() and value.isprintable()):
        return None
    return value.lower().rstrip(" ")


def _marks(conn: Connection, names: list[str]) -> Marks:
    """{'W': row, 'B': row} of the rows matching one of ``names`` (the database compares)."""
    rows = conn.execute(_MARKS, {"names": names})
    return {str(row.wb).strip().upper(): row.rdns for row in rows}


def _loose_names(conn: Connection) -> frozenset[str] | None:
    """Every row's :func:`_loose` key; None when some row has none, or too many rows."""
    keys: set[str] = set()
    rows = conn.execute(_ALL_NAMES).fetchall()
    if len(rows) > _SNAPSHOT_ROWS:
        return None
    for (name,) in rows:
        key = _loose(str(name))
        if key is None:
            return None
        keys.add(key)
    return frozenset(keys)


class WblistRdns(Plugin):
    """Reject clients whose reverse DNS name is blacklisted."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"iredapd"})

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        ttl = settings.CACHE_TTL
        # Most names match no row: a snapshot of the table's names (loosely
        # compared) answers them without a query.  A name that may match is
        # asked of the database, which compares exactly, and that answer is
        # cached per name.
        self._names: Snapshot[frozenset[str] | None] = Snapshot(ttl, self._load_names)
        self._answers: TTLCache[str, Marks] = TTLCache(ttl, _NAMES_CACHED)

    def _db(self) -> Database:
        db = self.services.iredapd_db
        assert db is not None  # required
        return db

    async def _load_names(self) -> frozenset[str] | None:
        return await self._db().run(_loose_names, idempotent=True)

    async def _lookup(self, name: str) -> Marks:
        candidates = rdns_candidates(name)
        if self._answers.enabled:
            marks = self._answers.get(name)
            if marks is not MISSING:
                result: Marks = marks
                return result
            names = await self._names.get()
            if names is not None:
                loose = [_loose(c) for c in candidates]
                if None not in loose and names.isdisjoint(loose):
                    return {}

        def query(conn: Connection) -> Marks:
            return _marks(conn, candidates)

        found = await self._db().run(query, idempotent=True)
        self._answers.put(name, found)
        return found

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's table (access-policies.md §5): AUTH, unknown, trusted pass; W beats B."""
        request = ctx.request
        name = request.reverse_client_name
        # An absent name (Postfix always sends one, "unknown" at worst) is
        # treated as iRedAPD does a missing attribute: no decision.
        if ctx.authenticated_or_trusted or not name or name == "unknown":
            return None
        if ctx.services.iredapd_db is None:
            return None
        marks = await self._lookup(name)
        if "W" in marks:
            log.debug("[%s] rDNS %s whitelisted by %r", request.client_address, name, marks["W"])
            return None
        if "B" in marks:
            log.info("[%s] rDNS %s blacklisted by %r", request.client_address, name, marks["B"])
            key = (
                "discard" if ctx.settings.WBLIST_DISCARD_INSTEAD_OF_REJECT else "reject_blacklisted"
            )
            return Action(SMTP_ACTIONS[key])
        return None
