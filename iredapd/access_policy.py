"""What the access-policy plugins of mail aliases and mailing lists share.

A mail alias or mailing list has an access policy that says who may send to
it (iRedMail's ``accesspolicy`` column; access-policies.md sections 7 and 8):

* ``public`` (also an empty value): anybody;
* ``domain``: senders of the list's domain and of its alias domains;
* ``subdomain``: the same, plus any sub-domain of those;
* ``membersonly``: members;
* ``moderatorsonly`` (``allowedonly`` is an old name of it): moderators;
* ``membersandmoderatorsonly``: members and moderators.

The recipient is looked up as sent (without ``+extension``); when it is not
found and its domain is an alias domain, the same name at the target domain
is looked up.  The list's *domain names* are its primary domain and every
alias domain of it.  Lookups shared with other plugins of the same request go
through ``ctx.once``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from iredapd.backends.base import AccountBackend, PolicyKind
from iredapd.plugin import Context

__all__ = [
    "DOMAIN",
    "MEMBERSANDMODERATORSONLY",
    "MEMBERSONLY",
    "MODERATORSONLY",
    "PUBLIC",
    "SUBDOMAIN",
    "ListPolicy",
    "alias_target_domain",
    "domain_names",
    "find_policy",
    "sender_domain_allowed",
    "unsupported",
    "vmail",
]

PUBLIC: Final = "public"
DOMAIN: Final = "domain"
SUBDOMAIN: Final = "subdomain"
MEMBERSONLY: Final = "membersonly"
MODERATORSONLY: Final = "moderatorsonly"
MEMBERSANDMODERATORSONLY: Final = "membersandmoderatorsonly"
# Old names still found in databases.
_RENAMED: Final = {"allowedonly": MODERATORSONLY}


@dataclass(frozen=True, slots=True)
class ListPolicy:
    """The access policy of the account a recipient resolves to."""

    #: the normalised policy (lower case, ``allowedonly`` read as ``moderatorsonly``)
    policy: str
    #: the account's address: the recipient, or its name at the target domain
    address: str
    #: the account's domain
    domain: str


def vmail(ctx: Context) -> AccountBackend:
    """The account backend (plugins using it declare ``requires = {'vmail'}``)."""
    backend = ctx.services.vmail
    if backend is None:  # only when services were swapped under a running chain
        raise RuntimeError("no account backend")
    return backend


async def alias_target_domain(ctx: Context, domain: str) -> str | None:
    """The target of alias domain ``domain`` (asked once per request)."""
    backend = vmail(ctx)
    return await ctx.once(
        ("alias_target_domain", domain), lambda: backend.alias_target_domain(domain)
    )


async def find_policy(ctx: Context, kind: PolicyKind) -> tuple[ListPolicy | None, bool]:
    """The recipient's access policy, and whether its domain is an alias domain.

    ``(None, False)``: not an account of ``kind`` and not at an alias domain;
    ``(None, True)``: not one at the alias domain's target either.
    """
    recipient = ctx.request.recipient_without_ext
    recipient_domain = ctx.request.recipient_domain
    backend = vmail(ctx)
    policy = await backend.access_policy(recipient, kind)
    if policy is not None:
        return ListPolicy(_normalise(policy), recipient, recipient_domain), False
    target = await alias_target_domain(ctx, recipient_domain)
    if target is None:
        return None, False
    address = f"{recipient.partition('@')[0]}@{target}"
    policy = await backend.access_policy(address, kind)
    if policy is None:
        return None, True
    return ListPolicy(_normalise(policy), address, target), True


def _normalise(policy: str) -> str:
    p = policy.lower() or PUBLIC
    return _RENAMED.get(p, p)


async def domain_names(ctx: Context, found: ListPolicy) -> frozenset[str]:
    """The list's domain names: its domain, every alias domain of it, and the
    recipient's domain as sent."""
    backend = vmail(ctx)
    domain = found.domain
    names = await ctx.once(("domain_names", domain), lambda: backend.domain_names(domain))
    return frozenset([*names, domain, ctx.request.recipient_domain])


def sender_domain_allowed(sender_domain: str, names: Iterable[str], *, subdomains: bool) -> bool:
    """Policies ``domain`` and ``subdomain``: is the sender's domain one of ``names``
    (or, for ``subdomain``, below one of them)?"""
    if not sender_domain:
        return False
    for name in names:
        if sender_domain == name or (subdomains and sender_domain.endswith("." + name)):
            return True
    return False


def unsupported(policy: str) -> str:
    """iRedAPD's trace text for a policy it does not know (never sent to Postfix)."""
    shown = policy if policy.isprintable() else repr(policy)
    return f"DUNNO (Unsupported policy: {shown[:64]}. Bypass.)"
