"""amavisd_wblist: per-account white/blacklists stored in the amavisd database.

What it does
    Looks up the sender and the recipient in amavisd's lists (the ones iRedAdmin
    and ``tools/wblist_admin.py`` manage) and:

    * replies ``OK`` when a local recipient whitelisted the sender (inbound);
    * replies ``REJECT Blacklisted`` (``DISCARD Policy discard`` with
      ``WBLIST_DISCARD_INSTEAD_OF_REJECT = True``) when a local recipient
      blacklisted the sender, or when a logged-in sender blacklisted the
      recipient (outbound);
    * otherwise lets the next plugin decide.  An outbound whitelist entry does
      not accept the mail: it only means "not blacklisted"; the recipient's
      inbound lists are still checked.

    Keys a sender can be listed under: ``user@example.com``, ``@example.com``,
    ``@.example.com`` (domain and sub-domains), ``@.com``, ``@.`` (anyone),
    ``user@*`` (that local part at any domain; not for logged-in senders), the
    client IP (``192.0.2.1``), a wildcard IP (``192.0.2.*``; every wildcard form
    with ``ENABLE_ALL_WILDCARD_IP = True``) and a network (``192.0.2.0/24``,
    ``2001:db8::/32``).  The most specific entry wins: entries are tried by
    their ``priority`` (email 10, IP 9, wildcard IP 8, network and ``user@*``
    7, ``@domain`` 5, ``@.domain`` 3, ``@.tld`` 2, ``@.`` 0), the recipient's
    account first; at equal priority the more specific entry (longer network,
    longer domain) wins.  Addresses of an alias domain also match the entries
    of the target domain.  For logged-in mail the SMTP AUTH username is the
    sender, as with iRedAPD: it is the identity the server verified (the
    envelope sender is checked by ``reject_sender_login_mismatch``).

    Outbound lists apply to logged-in senders only; inbound lists apply to
    mail from outside and to logged-in mail for a locally hosted recipient.

Settings
    ``WBLIST_DISCARD_INSTEAD_OF_REJECT`` (False), ``WBLIST_BYPASS_OUTGOING_EMAIL``
    (False: set True to skip the outbound lists), ``ENABLE_ALL_WILDCARD_IP``
    (False), the ``amavisd_db_*`` settings, and ``CACHE_TTL``: each account's
    list is cached this long (seconds), so a change made in iRedAdmin or with
    ``wblist_admin.py`` takes up to CACHE_TTL seconds to apply.

Tables
    amavisd: ``users``, ``mailaddr``, ``wblist`` (inbound), ``outbound_wblist``
    (outbound); read only.  vmail (or LDAP): alias domains and local domains.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable
from typing import Any

from iredapd.config import Settings
from iredapd.lookup import policy_addresses, wildcard_address, wildcard_ipv4
from iredapd.plugin import SMTP_ACTIONS, Action, Context, Plugin
from iredapd.services import Services
from iredapd.storage.cache import TTLCache
from iredapd.storage.db import Database
from iredapd.storage.wblist import (
    AccountList,
    WBHit,
    account_lists,
    hit_statement,
    network_prefixes,
    pairs_statement,
    pick_hit,
    users_with_prefix,
)

log = logging.getLogger(__name__)

# Accounts whose lists are cached at most (an LRU; both directions together).
_CACHE_SIZE = 20_000


async def _alias_target(ctx: Context, domain: str) -> str | None:
    """The target of an alias domain (None when it is not one, or no account backend)."""
    vmail = ctx.services.vmail
    if vmail is None or not domain:
        return None

    async def ask() -> str | None:
        return await vmail.alias_target_domain(domain)

    return await ctx.once(("alias_target_domain", domain), ask)


async def _is_local_domain(ctx: Context, domain: str) -> bool:
    """iRedAPD's is_local_domain(domain, include_alias_domain=False): backup MX counts."""
    if domain and domain == ctx.services.hostname:
        return True
    vmail = ctx.services.vmail
    if vmail is None or not domain:
        return False

    async def ask() -> bool:
        return await vmail.is_local_domain(domain, include_alias=False)

    return await ctx.once(("is_local_domain", domain, False, True), ask)


class AmavisdWblist(Plugin):
    """Inbound and outbound white/blacklists of amavisd's database."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"amavisd"})

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        ttl = settings.CACHE_TTL
        #: per direction (outbound?): users.email -> its listed pairs (None: too
        #: many to keep)
        self._lists: dict[bool, TTLCache[str, AccountList | None]] = {
            outbound: TTLCache(ttl, _CACHE_SIZE) for outbound in (False, True)
        }
        #: network prefix -> the users.email values starting with it (outbound)
        self._prefix_users: TTLCache[str, tuple[str, ...]] = TTLCache(ttl, 1024)

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's evaluation (access-policies.md §6.3-6.5), with its bugs fixed."""
        request = ctx.request
        settings = ctx.settings
        db = ctx.services.amavisd_db
        if db is None:
            return None
        sasl = request.sasl_username
        if sasl:
            sender, sender_domain = sasl, request.sasl_username_domain
        else:
            sender, sender_domain = request.sender_without_ext, request.sender_domain
        recipient, recipient_domain = request.recipient_without_ext, request.recipient_domain
        if not sender or sender == recipient:
            return None

        sender_target = await _alias_target(ctx, sender_domain)
        recipient_target = await _alias_target(ctx, recipient_domain)
        senders = policy_addresses(sender, alias_target=sender_target)
        if not sasl:
            wildcard = wildcard_address(sender)
            if wildcard:
                senders.append(wildcard)
        client = request.client_address
        if client:
            senders.append(client)
            senders += wildcard_ipv4(client, all_forms=settings.ENABLE_ALL_WILDCARD_IP)
        recipients = policy_addresses(recipient, alias_target=recipient_target)

        reject = Action(
            SMTP_ACTIONS[
                "discard" if settings.WBLIST_DISCARD_INSTEAD_OF_REJECT else "reject_blacklisted"
            ]
        )
        if sasl and not settings.WBLIST_BYPASS_OUTGOING_EMAIL:
            hit = await self._lookup(ctx, outbound=True, accounts=senders, addresses=recipients)
            if hit is not None:
                self._log(ctx, "outbound", hit)
                if hit.wb == "B":
                    return reject

        inbound = (
            not sasl
            or request.sasl_username_domain == recipient_domain
            or recipient_target is not None
            or await _is_local_domain(ctx, recipient_domain)
        )
        if not inbound:
            return None
        hit = await self._lookup(ctx, outbound=False, accounts=recipients, addresses=senders)
        if hit is None:
            return None
        self._log(ctx, "inbound", hit)
        return Action(SMTP_ACTIONS["whitelist"]) if hit.wb == "W" else reject

    async def _lookup(
        self, ctx: Context, *, outbound: bool, accounts: list[str], addresses: list[str]
    ) -> WBHit | None:
        db = ctx.services.amavisd_db
        assert db is not None  # checked in check()
        client = ctx.request.client_address
        rows: list[Any]
        if self._lists[outbound].enabled:
            rows = await self._cached_rows(db, outbound, accounts, addresses, client)
        else:
            stmt = hit_statement(
                outbound=outbound, accounts=accounts, addresses=addresses, client_address=client
            )
            rows = list(await db.fetchall(stmt))
        return pick_hit(
            rows, outbound=outbound, accounts=accounts, addresses=addresses, client_address=client
        )

    async def _cached_rows(
        self, db: Database, outbound: bool, accounts: list[str], addresses: list[str], client: str
    ) -> list[Any]:
        """The rows hit_statement would return, from the accounts' cached lists."""
        prefixes = network_prefixes(client)
        keys = list(dict.fromkeys(accounts))
        if outbound and prefixes:
            # networks on the account side: the users rows that may hold the client
            keys.extend(e for e in await self._users_with(db, prefixes) if e not in keys)
        lists = await self._account_lists(db, outbound, keys)
        address_prefixes = () if outbound else prefixes
        rows: list[Any] = []
        too_big: list[str] = []
        for key in keys:
            found = lists[key]
            if found is None:
                too_big.append(key)
            else:
                rows.extend(found.matching(addresses, address_prefixes))
        if too_big:
            stmt = pairs_statement(
                outbound=outbound, accounts=too_big, addresses=addresses, prefixes=address_prefixes
            )
            rows.extend(await db.fetchall(stmt))
        return rows

    async def _account_lists(
        self, db: Database, outbound: bool, keys: list[str]
    ) -> dict[str, AccountList | None]:
        def fetch(missing: list[str]) -> Awaitable[dict[str, AccountList | None]]:
            query = functools.partial(account_lists, accounts=missing, outbound=outbound)
            return db.run(query, idempotent=True)

        return await self._lists[outbound].get_many(keys, fetch)

    async def _users_with(self, db: Database, prefixes: list[str]) -> list[str]:
        def fetch(missing: list[str]) -> Awaitable[dict[str, tuple[str, ...]]]:
            query = functools.partial(users_with_prefix, prefixes=missing)
            return db.run(query, idempotent=True)

        found = await self._prefix_users.get_many(prefixes, fetch)
        return list(dict.fromkeys(e for p in prefixes for e in found[p]))

    @staticmethod
    def _log(ctx: Context, direction: str, hit: WBHit) -> None:
        log.info(
            "[%s] %s %s: account %r (id %d), address %r (id %d)",
            ctx.request.client_address,
            direction,
            "whitelisted" if hit.wb == "W" else "blacklisted",
            hit.account,
            hit.account_id,
            hit.address,
            hit.address_id,
        )
