"""whitelist_outbound_recipient: people your users write to are not greylisted.

What it does
    When a logged-in user (SMTP AUTH) sends a message to one external
    recipient, that recipient is whitelisted for greylisting, so the answer
    comes in without delay.  It never rejects anything (it always answers
    ``DUNNO``); it only writes whitelist rows.

    With the defaults, ``greylisting_whitelists`` gets the row
    ``account = <the sender's login>``, ``sender = <the recipient>``,
    ``comment = 'AUTO-WHITELISTED'``: mail from that address to that user is
    not greylisted.  Recipients at local domains (hosted, alias and backup-MX
    domains, the server's hostname) and at the sender's own domain are left
    out.  Postfix only tells the recipient at END-OF-MESSAGE for
    single-recipient messages, so messages to several recipients whitelist
    nothing.  An address extension (``user+tag@``) is removed first, as
    greylisting compares the sender without it.

Settings
    ``WL_RCPT_FOR_GREYLISTING`` (default True): whitelist as above; with
    ``WL_RCPT_WHITELIST_DOMAIN_FOR_GREYLISTING`` (default False) the
    recipient's domain is added to ``greylisting_whitelist_domains`` instead,
    which ``spf_to_greylist_whitelists.py`` turns into whitelisted networks for
    everyone.
    ``WL_RCPT_WITHOUT_SPF`` (default False): also add a plain whitelist row
    (comment empty) whose account is the user (``WL_RCPT_LOCAL_ACCOUNT =
    'user'``), the user's domain (``'domain'``) or everyone (anything else),
    and whose sender is the recipient (``WL_RCPT_RCPT = 'user'``) or the
    recipient's domain (``'domain'``).

Tables (iredapd database)
    ``greylisting_whitelists``, ``greylisting_whitelist_domains`` (written);
    the vmail backend is asked whether the recipient domain is local.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_end_of_data_restrictions`` (it runs at END-OF-MESSAGE).
"""

from __future__ import annotations

import functools
import logging

from sqlalchemy.engine import Connection

from iredapd.addr import is_email
from iredapd.lookup import CATCHALL
from iredapd.plugin import Action, Context, Plugin
from iredapd.storage import greylisting as store

log = logging.getLogger(__name__)


class WhitelistOutboundRecipient(Plugin):
    """Whitelist the external recipients of logged-in users for greylisting."""

    task_free = True
    states = frozenset({"END-OF-MESSAGE"})
    requires = frozenset({"iredapd", "vmail"})

    async def is_local_domain(self, ctx: Context, domain: str) -> bool:
        """Hosted, alias or backup-MX domain, or the server's hostname (iRedAPD §8.1)."""
        if domain == ctx.services.hostname:
            return True
        vmail = ctx.services.vmail
        assert vmail is not None  # required
        return await ctx.once(("is_local_domain", domain), lambda: vmail.is_local_domain(domain))

    async def check(self, ctx: Context) -> Action | None:
        s = ctx.settings
        if not (s.WL_RCPT_FOR_GREYLISTING or s.WL_RCPT_WITHOUT_SPF):
            return None
        r = ctx.request
        if not r.sasl_username or not is_email(r.recipient):
            return None
        rcpt_domain = r.recipient_domain
        if r.sasl_username_domain == rcpt_domain or await self.is_local_domain(ctx, rcpt_domain):
            return None

        # (account, sender, comment) rows for greylisting_whitelists
        senders: list[tuple[str, str, str]] = []
        domain_wanted = False
        recipient = r.recipient_without_ext  # greylisting compares without extension
        if s.WL_RCPT_WITHOUT_SPF:
            if s.WL_RCPT_LOCAL_ACCOUNT == "user":
                account = r.sasl_username
            elif s.WL_RCPT_LOCAL_ACCOUNT == "domain":
                account = "@" + r.sasl_username_domain
            else:
                account = CATCHALL
            sender = "@" + rcpt_domain if s.WL_RCPT_RCPT == "domain" else recipient
            senders.append((account, sender, ""))
        if s.WL_RCPT_FOR_GREYLISTING:
            if s.WL_RCPT_WHITELIST_DOMAIN_FOR_GREYLISTING:
                domain_wanted = True
            else:
                senders.append((r.sasl_username, recipient, store.AUTO_WHITELISTED))
        if ctx.dry_run:
            return None
        db = ctx.services.iredapd_db
        assert db is not None  # required
        added = await db.run(
            functools.partial(_whitelist, senders, rcpt_domain if domain_wanted else None)
        )
        # greylisting in this daemon sees the new rows at once (others within CACHE_TTL)
        store.forget_policies(db, added)
        return None


def _whitelist(
    senders: list[tuple[str, str, str]], domain: str | None, conn: Connection
) -> list[str]:
    """Write the rows; the accounts that got a new one."""
    added: list[str] = []
    for account, sender, comment in senders:
        try:
            if store.add_whitelist_sender(conn, account, sender, comment):
                added.append(account)
                log.info("whitelisted %s for greylisting of %s", sender, account)
        except store.InvalidInput as e:
            log.error("cannot whitelist %s for %s: %s", sender, account, e.code)
    if domain is not None:
        try:
            if store.add_whitelist_domain(conn, domain):
                log.info("whitelisted domain %s for greylisting (SPF)", domain)
        except store.InvalidInput as e:
            log.error("cannot whitelist domain %s: %s", domain, e.code)
    return added
