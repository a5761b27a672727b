"""sql_ml_access_policy: who may send to an mlmmj mailing list (its access policy).

What it does
    When the recipient is an mlmmj mailing list, its access policy decides who
    may send to it; anybody else gets ``REJECT Not authorized``:

    * ``public`` (or empty): anybody;
    * ``membersonly``, ``moderatorsonly`` (also ``allowedonly``) and
      ``membersandmoderatorsonly``: left to mlmmj, which knows the
      subscribers and enforces these itself;
    * ``domain``: the list's moderators and owners, and senders of the
      list's domain or one of its alias domains;
    * ``subdomain``: the same, plus senders of any sub-domain of those;
    * any other value: moderators and owners pass, the rest is not enforced.

    A list is found at its alias domains too (``list@alias.example`` is
    ``list@example.com``); its moderators and owners are looked up under
    every name of the list.  The recipient's ``+extension`` is ignored.
    Runs just before ``sql_alias_access_policy`` (priority 51); the two are
    independent.

Settings
    None of its own.

Tables
    The account backend: vmail ``maillists`` (``accesspolicy``),
    ``moderators``, ``maillist_owners``, ``alias_domain``, ``domain``.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.access_policy import (
    DOMAIN,
    MEMBERSANDMODERATORSONLY,
    MEMBERSONLY,
    MODERATORSONLY,
    PUBLIC,
    SUBDOMAIN,
    domain_names,
    find_policy,
    sender_domain_allowed,
    unsupported,
    vmail,
)
from iredapd.plugin import DUNNO, Action, Context, Plugin

_NOT_A_LIST = Action("DUNNO Recipient is not a mailing list account.")
_NOT_A_LIST_AT_TARGET = Action("DUNNO (Recipient is not a mailing list account)")
_PUBLIC = Action("DUNNO (Access policy is public)")
_MLMMJ = Action("DUNNO (Let mlmmj handle the ACL)")
_MLMMJ_POLICIES = frozenset({MEMBERSONLY, MODERATORSONLY, MEMBERSANDMODERATORSONLY})


class SqlMlAccessPolicy(Plugin):
    """Enforce the domain/subdomain access policy of an mlmmj mailing list."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"vmail"})

    async def check(self, ctx: Context) -> Action:
        """iRedAPD's decision, with moderators and owners under every list name."""
        found, at_alias_domain = await find_policy(ctx, "maillist")
        if found is None:
            return _NOT_A_LIST_AT_TARGET if at_alias_domain else _NOT_A_LIST
        policy = found.policy
        if policy == PUBLIC:
            return _PUBLIC
        if policy in _MLMMJ_POLICIES:
            return _MLMMJ
        names = await domain_names(ctx, found)
        local = found.address.partition("@")[0]
        addresses = sorted(
            {found.address, ctx.request.recipient_without_ext, *(f"{local}@{d}" for d in names)}
        )
        sender = ctx.request.sender_without_ext
        backend = vmail(ctx)
        if await backend.has_moderator(addresses, sender):
            return DUNNO
        if await backend.has_owner(addresses, sender):
            return DUNNO
        if policy not in (DOMAIN, SUBDOMAIN):
            return Action(unsupported(policy))
        sender_domain = sender.partition("@")[2]
        if sender_domain_allowed(sender_domain, names, subdomains=policy == SUBDOMAIN):
            return DUNNO
        return Action.named("reject_not_authorized")
