"""ldap_maillist_access_policy: who may send to a mailing list (LDAP backend).

What it does
    A mailing list in the directory (objectClass ``mailList``) may restrict
    who sends to it with ``accessPolicy``:

    ``public`` (default)          anybody;
    ``domain``                    senders of the list's domain and its alias domains;
    ``subdomain``                 the same, plus their sub-domains;
    ``membersonly``               active members (users and external users with
                                  ``memberOfGroup`` = the list);
    ``moderatorsonly``            logged-in senders listed in ``listAllowedUser``
                                  (``allowedonly`` is the old name);
    ``membersandmoderatorsonly``  members, and the list's own allowed senders.

    Under every policy the list's moderators (``listModerator``), owners
    (``listOwner``) and the senders in ``listAllowedUser`` may send; an entry
    there may be an address, a domain, ``*@domain`` or ``.domain`` (the domain
    and its sub-domains).  A list that is not active rejects everything with
    ``REJECT Policy rejection``; a sender that is not allowed gets ``REJECT Not
    authorized``.  mlmmj lists (``enabledService: mlmmj``) with a members or
    moderators policy are left to mlmmj, which knows its subscribers.

    Differences from iRedAPD (docs/differences-from-iredapd.md): mail to
    ``list+tag@domain`` is checked like mail to the list; a list reached at an
    alias domain is checked against its own domain's members; mlmmj lists with
    ``membersandmoderatorsonly`` are left to mlmmj; ``accountStatus`` and
    addresses in the directory compare case-insensitively; under
    ``moderatorsonly`` a listed domain also allows its alias domains, and
    every listed address of the list's domain is expanded to the user's alias
    addresses (iRedAPD skipped some).

Settings
    The LDAP backend's: ``backend = 'ldap'``, ``ldap_uri``, ``ldap_basedn``,
    ``ldap_binddn``, ``ldap_bindpw`` (it refuses to start on an SQL backend:
    use ``sql_alias_access_policy`` and ``sql_ml_access_policy`` there).

Tables
    None: the directory under ``ldap_basedn`` (mailList, mailUser,
    mailExternalUser and mailDomain entries).

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from iredapd.accounts import unwrap
from iredapd.addr import is_email
from iredapd.plugin import DUNNO, Action, Context, Plugin

NOT_A_LIST_ACCOUNT = Action("DUNNO (sasl_username == recipient, not a mail list account)")
NO_LDIF = Action("DUNNO (Recipient is not a local account - no LDIF data)")
NOT_A_LIST = Action("DUNNO (Recipient is not a mailing list account)")
PUBLIC = Action("DUNNO (Access policy: public, no restriction)")
REJECT = Action.named("reject")
NOT_AUTHORIZED = Action.named("reject_not_authorized")
# mlmmj enforces these itself (its subscribers are not in the directory)
MLMMJ_POLICIES = frozenset({"membersonly", "moderatorsonly", "membersandmoderatorsonly"})
KNOWN_POLICIES = frozenset(
    {"public", "domain", "subdomain", "membersonly", "moderatorsonly", "membersandmoderatorsonly"}
)


def _suffixes(domain: str) -> list[str]:
    """``a.b.com`` -> ``a.b.com``, ``.a.b.com``, ``.b.com``, ``.com`` (§9.2 step 10)."""
    labels = domain.split(".")
    return [domain] + ["." + ".".join(labels[i:]) for i in range(len(labels))]


class LdapMaillistAccessPolicy(Plugin):
    """Enforce the access policy of LDAP mailing lists (iRedAPD's §9)."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"vmail"})

    async def start(self) -> None:
        """Refuse to run on anything but the LDAP backend."""
        backend = unwrap(self.services.vmail)
        if getattr(backend, "kind", "") != "ldap" or not hasattr(backend, "mail_list"):
            raise RuntimeError(
                "ldap_maillist_access_policy needs backend = 'ldap' (the account backend "
                f"is {getattr(backend, 'kind', 'missing')!r}); with an SQL backend enable "
                "sql_alias_access_policy and sql_ml_access_policy instead"
            )

    async def _ask(
        self, ctx: Context, key: tuple[Hashable, ...], compute: Callable[[], Awaitable[Any]]
    ) -> Any:
        """A directory lookup, through the account cache when there is one."""
        vmail = ctx.services.vmail
        cached = getattr(vmail, "cached", None)
        if cached is None:
            return await compute()
        return await cached(("ldap_maillist_access_policy", *key), compute)

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's decision table (access-policies.md §9.2, §9.3)."""
        req = ctx.request
        ldap: Any = unwrap(ctx.services.vmail)
        recipient = req.recipient_without_ext
        sender = req.sender_without_ext
        sender_domain = req.sender_domain
        if req.sasl_username == recipient:
            return NOT_A_LIST_ACCOUNT
        # The account as addressed, then without its extension (§15 item 26:
        # iRedAPD only tried the former, so list+tag@domain bypassed the policy).
        ml = None
        for address in dict.fromkeys((req.recipient, recipient)):
            ml = await self._ask(ctx, ("list", address), functools.partial(ldap.mail_list, address))
            if ml is not None:
                break
        if ml is None:
            return NO_LDIF
        if "maillist" not in ml.object_classes:
            return NOT_A_LIST
        if [s.lower() for s in ml.account_status] != ["active"]:
            return REJECT
        policy = ml.access_policy or "public"
        if policy == "public":
            return PUBLIC
        if policy == "allowedonly":
            policy = "moderatorsonly"
        if "mlmmj" in ml.enabled_services and policy in MLMMJ_POLICIES:
            return DUNNO

        list_domain = ml.address.partition("@")[2]
        rcpt_domains: list[str] = await self._ask(
            ctx, ("names", req.recipient_domain), lambda: ldap.domain_names(req.recipient_domain)
        )
        if not rcpt_domains:  # §15 item 31: iRedAPD failed here
            rcpt_domains = list(dict.fromkeys([req.recipient_domain, list_domain]))

        if sender in ml.moderators or sender in ml.owners:
            return DUNNO
        explicit = ml.allowed_users
        if sender in explicit or sender_domain in explicit or f"*@{sender_domain}" in explicit:
            return DUNNO
        if any(s in explicit for s in _suffixes(sender_domain)):
            return DUNNO

        if policy == "domain":
            return DUNNO if sender_domain in rcpt_domains else NOT_AUTHORIZED
        if policy == "subdomain":
            ok = any(sender_domain == d or sender_domain.endswith("." + d) for d in rcpt_domains)
            return DUNNO if ok else NOT_AUTHORIZED
        if policy not in KNOWN_POLICIES:
            return Action(f"DUNNO (Unknown access policy: {policy[:64]}, no restriction)")

        # Members are searched under the list's own domain entry (§15 item 27:
        # iRedAPD built it from the recipient domain, wrong for alias domains).
        from iredapd.backends.ldap import domain_dn_of

        domain_dn = domain_dn_of(ml.dn) or ldap.basedn
        lists = tuple(dict.fromkeys((recipient, ml.address)))
        if policy == "membersonly":
            members = await self._ask(
                ctx, ("members", domain_dn, lists), lambda: ldap.list_members(domain_dn, lists)
            )
            return DUNNO if sender in members else NOT_AUTHORIZED
        if policy == "membersandmoderatorsonly":
            allowed = await self._ask(
                ctx,
                ("members+list", domain_dn, lists),
                lambda: ldap.list_members(domain_dn, lists, with_list_entry=True),
            )
            return DUNNO if sender in allowed else NOT_AUTHORIZED
        # moderatorsonly
        if not req.sasl_username:
            return NOT_AUTHORIZED
        return await self._moderators_only(ctx, ldap, ml, domain_dn, rcpt_domains)

    async def _moderators_only(
        self, ctx: Context, ldap: Any, ml: Any, domain_dn: str, rcpt_domains: list[str]
    ) -> Action:
        """listAllowedUser, with the list domain's users expanded to their alias
        addresses and listed domains to their alias domains (§9.3; items 24, 25)."""
        req = ctx.request
        sender, sender_domain = req.sender_without_ext, req.sender_domain
        local_suffixes = tuple(f"@{d}" for d in rcpt_domains)
        allowed: set[str] = set()
        users: list[str] = []
        domains: list[str] = []
        for entry in ml.allowed_users:
            if entry.startswith("*@"):
                continue
            if is_email(entry):
                if entry.endswith(local_suffixes):
                    users.append(entry)
                else:
                    allowed.add(entry)
            else:
                domains.append(entry.removeprefix("."))
        allowed.update(users)
        allowed.update(domains)
        if users:
            base = f"ou=Users,{domain_dn}"
            found = await self._ask(
                ctx, ("shadow", base, tuple(users)), lambda: ldap.shadow_addresses(base, users)
            )
            allowed.update(found)
        if domains:
            found = await self._ask(
                ctx, ("domains", tuple(domains)), lambda: ldap.alias_domain_names(domains)
            )
            allowed.update(found)
        return DUNNO if sender in allowed or sender_domain in allowed else NOT_AUTHORIZED
