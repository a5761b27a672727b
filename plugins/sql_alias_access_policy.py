"""sql_alias_access_policy: who may send to a mail alias (its access policy).

What it does
    When the recipient is a mail alias account (a group address whose mail
    goes to its members), the alias's access policy decides who may send to
    it; anybody else gets ``REJECT Not authorized``:

    * ``public`` (or empty): anybody;
    * ``domain``: senders of the alias's domain or one of its alias domains;
    * ``subdomain``: the same, plus senders of any sub-domain of those;
    * ``membersonly``: the alias's members;
    * ``moderatorsonly`` (also the old name ``allowedonly``): its moderators;
      a moderator ``*@example.com`` stands for every sender of example.com;
    * ``membersandmoderatorsonly``: members and moderators;
    * any other value: not enforced (logged in the trace as unsupported).

    An alias domain counts as the same domain: ``alias@alias.example`` is the
    alias ``alias@example.com``, and the member ``john@example.com`` may send
    as ``john@alias.example`` too (and the other way round).  The recipient's
    ``+extension`` is ignored.

Settings
    None of its own.

Tables
    The account backend: vmail ``alias`` (``accesspolicy``), ``forwardings``
    (members: ``is_list=1``), ``moderators``, ``alias_domain``, ``domain``.

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

_NOT_AN_ALIAS = Action("DUNNO Recipient is not a mail alias account or no access policy")
_NOT_AN_ALIAS_AT_TARGET = Action(
    "DUNNO (Recipient domain is an alias domain, but recipient is not a mail alias account)"
)
_PUBLIC = Action("DUNNO (Access policy is public)")
_NEEDS_MEMBERS = frozenset({MEMBERSONLY, MEMBERSANDMODERATORSONLY})
_NEEDS_MODERATORS = frozenset({MODERATORSONLY, MEMBERSANDMODERATORSONLY})


class SqlAliasAccessPolicy(Plugin):
    """Enforce the access policy of a mail alias recipient."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"vmail"})

    async def check(self, ctx: Context) -> Action:
        """iRedAPD's decision table, with alias domains counted as the same domain."""
        found, at_alias_domain = await find_policy(ctx, "alias")
        if found is None:
            return _NOT_AN_ALIAS_AT_TARGET if at_alias_domain else _NOT_AN_ALIAS
        policy = found.policy
        if policy == PUBLIC:
            return _PUBLIC
        sender = ctx.request.sender_without_ext
        sender_name, _, sender_domain = sender.partition("@")
        if policy in (DOMAIN, SUBDOMAIN):
            names = await domain_names(ctx, found)
            if sender_domain_allowed(sender_domain, names, subdomains=policy == SUBDOMAIN):
                return DUNNO
            return Action.named("reject_not_authorized")
        if policy not in _NEEDS_MEMBERS and policy not in _NEEDS_MODERATORS:
            return Action(unsupported(policy))

        backend = vmail(ctx)
        allowed: set[str] = set()
        if policy in _NEEDS_MEMBERS:
            allowed.update(await backend.alias_members(found.address))
        if policy in _NEEDS_MODERATORS:
            moderators = await backend.moderators(found.address)
            if f"*@{sender_domain}" in moderators:
                return DUNNO
            allowed.update(moderators)
        if sender in allowed:
            return DUNNO
        # The same user at another name of the alias's domain.
        names = await domain_names(ctx, found)
        if sender_domain in names and any(f"{sender_name}@{d}" in allowed for d in names):
            return DUNNO
        return Action.named("reject_not_authorized")
