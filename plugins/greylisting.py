"""greylisting: ask unknown senders to come back later.

What it does
    Mail from a client that is neither logged in (SMTP AUTH) nor trusted
    (``MYNETWORKS``, localhost) is deferred the first time a (sender,
    recipient, client IP) triplet is seen, with
    ``451 4.7.1 <GREYLISTING_MESSAGE>``.  Real mail servers retry; most spam
    software does not.  A retry after ``GREYLISTING_BLOCK_EXPIRE`` minutes is
    accepted, and from then on every message from that client IP skips
    greylisting for ``GREYLISTING_AUTH_TRIPLET_EXPIRE`` days (renewed with
    each message).  Triplets never retried are forgotten after
    ``GREYLISTING_UNAUTH_TRIPLET_EXPIRE`` days (``cleanup_db`` deletes them).

    Greylisting is opt-in: nothing is greylisted until a setting says so.  A
    setting names a local recipient (``user@domain``, ``@domain``,
    ``@.domain``, or ``@.`` for everyone) and a sender (an address,
    ``@domain``, ``@.domain``, ``@.tld``, ``@.``, a client IP, ``a.b.c.*`` or
    an IPv4/IPv6 network) and says "greylist" (active) or "do not greylist";
    the most specific recipient, then the most specific sender, decides.
    ``greylisting_admin.py --enable`` with the defaults turns it on for all
    mail.  Whitelisted senders and client networks are never greylisted; nor
    are clients listed in the sender domain's SPF record
    (``GREYLISTING_BYPASS_SPF``).

Settings
    ``GREYLISTING_MESSAGE``, ``GREYLISTING_TRAINING_MODE`` (track, never
    defer), ``GREYLISTING_BLOCK_EXPIRE`` (minutes), ``GREYLISTING_AUTH_TRIPLET_EXPIRE``
    and ``GREYLISTING_UNAUTH_TRIPLET_EXPIRE`` (days), ``GREYLISTING_BYPASS_SPF``,
    ``MYNETWORKS``, ``srs_domain`` (no SPF check for senders at it),
    ``CACHE_TTL``: settings and whitelists are cached this long (seconds), so
    a change made with ``greylisting_admin.py`` or by the SPF cron tool takes
    up to CACHE_TTL seconds to apply; a client that passed is remembered as
    long (its expiry is renewed when that runs out); triplets are never
    cached.

Tables (iredapd database)
    ``greylisting`` (settings), ``greylisting_whitelists`` (manual and
    automatic whitelists), ``greylisting_whitelist_domain_spf`` (written by
    ``spf_to_greylist_whitelists.py`` from ``greylisting_whitelist_domains``),
    ``greylisting_tracking`` (triplets).  The vmail backend is asked whether
    the recipient domain is an alias domain (its target's settings apply too).

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable

from sqlalchemy.engine import Connection

from iredapd.addr import is_email
from iredapd.aio import within
from iredapd.config import Settings
from iredapd.lookup import is_ipv4, parse_ip, policy_addresses
from iredapd.plugin import SMTP_ACTIONS, Action, Context, Plugin
from iredapd.services import Services
from iredapd.storage import greylisting as store
from iredapd.storage.cache import TTLCache
from iredapd.storage.db import Database

log = logging.getLogger(__name__)

# Part of the plugin's deadline the SPF check may use: a slow DNS server must
# leave time for tracking, or the plugin would fail and let the mail through.
SPF_SHARE = 0.5
# Clients known to have passed greylisting, kept at most (an LRU).
PASSED_CLIENTS = 50_000


class Greylisting(Plugin):
    """Defer the first delivery attempt of unknown (sender, recipient, client) triplets."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"iredapd", "vmail"})

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        s = settings
        # iRedAPD computes the reply once, at load.
        self.reply = Action(f"{SMTP_ACTIONS['greylisting']} {s.GREYLISTING_MESSAGE}")
        self.spf_budget = s.plugin_timeout(self.name) * SPF_SHARE
        # A client that passed is never greylisted again (for
        # GREYLISTING_AUTH_TRIPLET_EXPIRE days, renewed by each message), so
        # it is remembered for CACHE_TTL seconds: no SPF check and no
        # database trip for its next messages; the renewal of its expiry
        # waits until the entry expires (a minute late out of 30 days).
        self._passed: TTLCache[str, bool] = TTLCache(
            s.CACHE_TTL, PASSED_CLIENTS, clock=services.clock
        )

    async def alias_target(self, ctx: Context, domain: str) -> str | None:
        """The target domain when ``domain`` is an alias domain (shared per request)."""
        vmail = ctx.services.vmail
        assert vmail is not None  # required
        return await ctx.once(
            ("alias_target_domain", domain), lambda: vmail.alias_target_domain(domain)
        )

    async def check(self, ctx: Context) -> Action | None:
        if ctx.authenticated_or_trusted:
            return None  # outbound mail and trusted clients are never greylisted
        r = ctx.request
        client = r.client_address
        if parse_ip(client) is None:
            log.debug("greylisting: client address %r is not an IP; skipped", client)
            return None
        if self._passed.get(client) is True:
            log.debug("[%s] greylisting: client passed greylisting before (cached)", client)
            return None
        db = ctx.services.iredapd_db
        assert db is not None  # required

        target = None
        if is_email(r.recipient_without_ext):
            target = await self.alias_target(ctx, r.recipient_domain)
        recipients = policy_addresses(r.recipient_without_ext, alias_target=target)
        senders = [*policy_addresses(r.sender_without_ext), client]
        if is_ipv4(client):
            # iRedAPD meant to add this and added its characters instead (§10.3).
            senders.append(client.rsplit(".", 1)[0] + ".*")

        policies = await self._policies(db, recipients)
        verdict = _verdict(policies, senders, client)
        if verdict is not None:
            level = logging.INFO if verdict.startswith("whitelisted") else logging.DEBUG
            log.log(level, "[%s] greylisting skipped: %s", client, verdict)
            return None

        s = ctx.settings
        # iRedAPD skips the check when the sender domain is srs_domain (both
        # are empty for a null sender with SRS off).
        bypass = s.GREYLISTING_BYPASS_SPF and r.sender_domain != s.srs_domain
        if bypass and await self._spf_pass(ctx, r.sender_domain, client):
            log.info("[%s] Bypass greylisting due to SPF match (%s)", client, r.sender_domain)
            return None

        now = int(ctx.now)
        triplet = store.Triplet(
            sender=r.sender_without_ext,
            recipient=r.recipient_without_ext,
            client_address=client,
            sender_domain=r.sender_domain,
            rcpt_domain=r.recipient_domain,
        )
        state = await db.run(
            functools.partial(
                _track,
                triplet,
                now=now,
                block_expire=now + s.GREYLISTING_BLOCK_EXPIRE * 60,
                unauth_expire=now + s.GREYLISTING_UNAUTH_TRIPLET_EXPIRE * 86400,
                auth_expire=now + s.GREYLISTING_AUTH_TRIPLET_EXPIRE * 86400,
                dry_run=ctx.dry_run,
            )
        )
        if state is None:
            log.debug("[%s] greylisting: client passed greylisting before", client)
            self._passed.put(client, True)
            return None
        if not state.greylist:
            log.info("[%s] greylisting: triplet %s", client, state.text)
            if not ctx.dry_run:  # a dry run wrote nothing: the client has not passed
                self._passed.put(client, True)
            return None
        if s.GREYLISTING_TRAINING_MODE:
            log.debug("[%s] greylisting (training mode, not deferred): %s", client, state.text)
            return None
        log.info(
            "[%s] greylisting: %s -> %s: %s",
            client,
            triplet.sender or "<>",
            triplet.recipient,
            state.text,
        )
        return self.reply

    async def _policies(self, db: Database, recipients: list[str]) -> list[store.AccountPolicy]:
        """Whitelists and settings of each recipient key: cached, else one trip to the pool."""
        cache = store.policy_cache(db, self.settings.CACHE_TTL)

        def fetch(missing: list[str]) -> Awaitable[dict[str, store.AccountPolicy]]:
            return db.run(
                functools.partial(store.account_policies, accounts=missing), idempotent=True
            )

        found = await cache.get_many(recipients, fetch)
        return [found[key] for key in recipients]

    async def _spf_pass(self, ctx: Context, domain: str, client: str) -> bool:
        """SPF check with a deadline; a late answer is not a pass."""
        try:
            # no timer when the DNS answers are cached (the check does not wait)
            return bool(await within(ctx.services.spf_allows(domain, client), self.spf_budget))
        except TimeoutError:
            log.info("[%s] greylisting: SPF check of %s timed out; not bypassed", client, domain)
            return False


def _verdict(policies: list[store.AccountPolicy], senders: list[str], client: str) -> str | None:
    """Whitelists, then settings: why not to greylist, or None to go on (§10.4 1-2)."""
    address = parse_ip(client)
    for policy in policies:
        hit = policy.whitelist.match(senders, None)
        if hit is not None:
            return f"whitelisted ({hit})"
    for policy in policies:
        hit = policy.whitelist.match((), address)
        if hit is not None:
            return f"whitelisted ({hit})"
    rows = store.ordered_settings(policies)
    if not rows:
        return "no greylisting setting"
    setting = store.first_matching_setting(rows, senders, client)
    if setting is None:
        return "no greylisting setting for this sender"
    if not setting.active:
        return f"disabled by setting {setting.sender} -> {setting.account}"
    return None


def _track(
    triplet: store.Triplet,
    conn: Connection,
    *,
    now: int,
    block_expire: int,
    unauth_expire: int,
    auth_expire: int,
    dry_run: bool,
) -> store.TripletState | None:
    """Previously passed client (None), else the triplet's state (§10.4 4-5)."""
    if dry_run:
        if store.client_has_passed(conn, triplet.client_address):
            return None
    elif store.touch_passed_client(conn, triplet.client_address, auth_expire):
        return None
    if not triplet.fits():
        # iRedAPD's INSERT fails on such values and it defers; so do we,
        # without writing a truncated row.
        log.warning("greylisting: triplet too long to track; deferred")
        return store.TripletState.FIRST
    return store.track_triplet(
        conn,
        triplet,
        now=now,
        block_expire=block_expire,
        unauth_expire=unauth_expire,
        auth_expire=auth_expire,
        dry_run=dry_run,
    )
