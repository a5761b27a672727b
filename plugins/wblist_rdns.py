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
    ``WBLIST_DISCARD_INSTEAD_OF_REJECT`` (False), ``MYNETWORKS``.

Tables
    iredapd: ``wblist_rdns(rdns, wb)``, ``wb`` is ``W`` or ``B``; read only.
    Example: ``INSERT INTO wblist_rdns (rdns, wb) VALUES ('.dynamic.example.net', 'B')``.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from iredapd.lookup import rdns_candidates
from iredapd.plugin import SMTP_ACTIONS, Action, Context, Plugin
from iredapd.storage.schema import wblist_rdns

log = logging.getLogger(__name__)


class WblistRdns(Plugin):
    """Reject clients whose reverse DNS name is blacklisted."""

    states = frozenset({"RCPT"})
    requires = frozenset({"iredapd"})

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's table (access-policies.md §5): AUTH, unknown, trusted pass; W beats B."""
        request = ctx.request
        name = request.reverse_client_name
        # An absent name (Postfix always sends one, "unknown" at worst) is
        # treated as iRedAPD does a missing attribute: no decision.
        if ctx.authenticated_or_trusted or not name or name == "unknown":
            return None
        db = ctx.services.iredapd_db
        if db is None:
            return None
        candidates = rdns_candidates(name)
        # The database compares wb (MySQL's collation also takes 'w' / 'b').
        rows = await db.fetchall(
            sa.select(wblist_rdns.c.rdns, wblist_rdns.c.wb).where(
                wblist_rdns.c.rdns.in_(candidates), wblist_rdns.c.wb.in_(("W", "B"))
            )
        )
        marks = {str(row.wb).strip().upper(): row.rdns for row in rows}
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
