"""senderscore: refuse IPv4 clients with a bad Sender Score reputation.

What it does
    Asks Validity's Sender Score DNS list for the reputation (0-100) of the
    client's IPv4 address (an A query for ``<d>.<c>.<b>.<a>.score.senderscore.com``;
    the answer's last octet is the score).  A score at or below
    ``SENDERSCORE_REJECT_SCORE`` is refused with
    ``REJECT Server IP address has bad reputation. FYI: https://www.senderscore.org/lookup.php?lookup=<ip>``.
    Unlisted addresses score 100.  Logged-in clients (SMTP AUTH), trusted
    clients (``MYNETWORKS``) and IPv6 clients are never checked.

    Scores are cached in the ``senderscore_cache`` table, so each address is
    asked once; ``tools/cleanup_db.py`` expires entries after
    ``SENDERSCORE_CACHE_DAYS``.  A DNS timeout or server failure is not cached
    and the mail passes.  ``tools/senderscore_admin.py -w <ip>`` whitelists an
    address for good (score 100, never expired).

Settings
    ``SENDERSCORE_REJECT_SCORE`` (30), ``SENDERSCORE_CACHE_DAYS`` (2, used by
    the cleanup tool), ``DNS_QUERY_TIMEOUT`` (3 s), ``MYNETWORKS``.

Tables
    iredapd: ``senderscore_cache(client_address, score, time)``.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import ipaddress
import logging

import sqlalchemy as sa

from iredapd import aio
from iredapd.plugin import SMTP_ACTIONS, Action, Context, Plugin
from iredapd.resolver import DNSStatus
from iredapd.storage.schema import senderscore_cache
from iredapd.storage.upsert import insert_ignore

log = logging.getLogger(__name__)

DNS_ZONE = "score.senderscore.com"
#: score of an address Sender Score does not list
UNLISTED = 100


def query_name(ip: str) -> str:
    """``4.3.2.1.score.senderscore.com`` for ``1.2.3.4``."""
    return ".".join(reversed(ip.split("."))) + "." + DNS_ZONE


class SenderScore(Plugin):
    """Reject clients whose Sender Score is at most SENDERSCORE_REJECT_SCORE."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"iredapd", "dns"})

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's steps (core-and-stateful.md §12); the cache insert is race-free."""
        if ctx.authenticated_or_trusted:
            return None
        request = ctx.request
        ip = request.client_address
        try:
            if not isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address):
                return None
        except ValueError:
            return None
        db = ctx.services.iredapd_db
        if db is None:
            return None

        cached = True
        row = await db.fetchone(
            sa.select(senderscore_cache.c.score)
            .where(senderscore_cache.c.client_address == ip)
            .limit(1)
        )
        if row is not None:
            score = UNLISTED if row.score is None else int(row.score)
            if row.score is None:
                log.error("[%s] senderscore: cached score is NULL; using %d", ip, UNLISTED)
        else:
            cached = False
            looked_up = await self._ask_dns(ctx, ip)
            if looked_up is None:
                return None
            score, cache_it = looked_up
            if not 0 <= score <= 100:
                log.error("Invalid sender score: %d (must between 0-100)", score)
                return None
            if cache_it and not ctx.dry_run:
                # Concurrent misses for one address: the first row stays, no error.
                await db.execute(
                    insert_ignore(senderscore_cache, db.dialect).values(
                        client_address=ip, score=score, time=int(ctx.now)
                    )
                )

        threshold = ctx.settings.SENDERSCORE_REJECT_SCORE
        reject = score <= threshold
        log.info(
            "[%s] [%s] senderscore: %d%s%s",
            ip,
            request.sender_domain,
            score,
            " (cache matched)" if cached else "",
            f" [REJECT (<= {threshold})]" if reject else "",
        )
        if reject:
            return Action(SMTP_ACTIONS["reject_low_sender_score"] + ip)
        return None

    async def _ask_dns(self, ctx: Context, ip: str) -> tuple[int, bool] | None:
        """(score, cache it) from the DNS; None when the answer gives no decision.

        Listed: the last octet of the first A record.  NXDOMAIN / no A record:
        100, cached.  Timeout or server failure: 100, not cached.
        """
        resolver = ctx.services.resolver
        if resolver is None:  # required, so only when started without DNS by hand
            return None
        name = query_name(ip)
        try:
            async with aio.timeout(ctx.settings.DNS_QUERY_TIMEOUT):
                answer = await resolver.query(name, "A")
        except TimeoutError:
            log.warning("[%s] senderscore: DNS query %s timed out", ip, name)
            return UNLISTED, False
        status = answer.status
        if status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA):
            return UNLISTED, True
        if status is not DNSStatus.OK:
            log.warning("[%s] senderscore: DNS query %s: %s", ip, name, status.value)
            return UNLISTED, False
        records = answer.texts
        if not records:
            return None
        try:
            return int(records[0].rsplit(".", 1)[-1]), True
        except ValueError:
            log.error("[%s] senderscore: unexpected answer %r", ip, records[0])
            return None
