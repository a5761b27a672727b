"""An in-memory account backend for tests, with the SQL backend's semantics.

It answers exactly as :class:`iredapd.backends.sql.SQLAccounts` does on the
same rows (``tests/support/accounts.py`` turns a FakeAccounts into those rows,
or LDAP entries, and the contract suite runs on all of them).

Fill a :class:`FakeAccounts` with domains, alias domains, users, aliases and
lists; set ``down = True`` to make every lookup raise BackendUnavailable, as a
stopped database would.  ``calls`` counts lookups per method (tests use it to
show a question is asked once per request, or served from a cache).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from iredapd.addr import is_domain
from iredapd.backends.base import BackendUnavailable, LoginMatch, PolicyKind

__all__ = ["FakeAccounts", "FakeDomain", "FakeList"]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class FakeDomain:
    """A hosted domain (vmail ``domain`` row)."""

    name: str
    active: bool = True
    backupmx: bool = False


@dataclass
class FakeList:
    """A mail alias or mailing list with its policy, members, moderators, owners."""

    address: str
    policy: str = ""
    active: bool = True
    members: list[str] = field(default_factory=list)
    moderators: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)


@dataclass
class FakeAccounts:
    """In-memory vmail data.  Mutate the attributes directly in tests."""

    domains: dict[str, FakeDomain] = field(default_factory=dict)
    #: alias domain -> target domain
    alias_domains: dict[str, str] = field(default_factory=dict)
    #: username -> password last change (None: never changed -> epoch)
    mailboxes: dict[str, dt.datetime | None] = field(default_factory=dict)
    #: per-user alias address -> user (forwardings rows with is_alias=1)
    user_aliases: dict[str, str] = field(default_factory=dict)
    #: mail aliases (vmail ``alias`` table, members in forwardings is_list=1)
    aliases: dict[str, FakeList] = field(default_factory=dict)
    #: mlmmj mailing lists (vmail ``maillists`` table)
    maillists: dict[str, FakeList] = field(default_factory=dict)
    down: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    kind: str = "fake"

    # -- building data ------------------------------------------------------
    def add_domain(self, name: str, *, active: bool = True, backupmx: bool = False) -> None:
        """A hosted domain."""
        self.domains[name] = FakeDomain(name, active, backupmx)

    def add_alias_domain(self, alias: str, target: str) -> None:
        """``alias`` is an alias domain of ``target``."""
        self.alias_domains[alias] = target

    def add_user(self, username: str, *, changed: dt.datetime | None = None) -> None:
        """A mailbox; ``changed`` is when the password last changed (None: never)."""
        self.mailboxes[username] = changed

    def add_user_alias(self, alias: str, user: str) -> None:
        """A per-user alias address of ``user``."""
        self.user_aliases[alias] = user

    # -- the interface ---------------------------------------------------------
    def _ask(self, method: str) -> None:
        self.calls[method] += 1
        if self.down:
            raise BackendUnavailable("fake backend is down")

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        """See AccountBackend."""
        self._ask("is_local_domain")
        if not is_domain(domain):
            return False
        d = self.domains.get(domain)
        if d is not None and d.active and (include_backupmx or not d.backupmx):
            return True
        if include_alias:
            target = self.domains.get(self.alias_domains.get(domain, ""))
            return (
                target is not None and target.active and (include_backupmx or not target.backupmx)
            )
        return False

    async def alias_target_domain(self, domain: str) -> str | None:
        """See AccountBackend."""
        self._ask("alias_target_domain")
        target = self.alias_domains.get(domain)
        if target is None or not is_domain(domain):
            return None
        d = self.domains.get(target)
        return target if d is not None and d.active else None

    async def is_alias_domain_of(self, alias_domain: str, target_domain: str) -> bool:
        """See AccountBackend."""
        self._ask("is_alias_domain_of")
        return self.alias_domains.get(alias_domain) == target_domain

    async def domain_names(self, domain: str) -> list[str]:
        """See AccountBackend."""
        self._ask("domain_names")
        if not is_domain(domain):
            return []
        primary = self.alias_domains.get(domain, domain)
        if primary not in self.domains:
            return []
        return [primary, *sorted(a for a, t in self.alias_domains.items() if t == primary)]

    async def login_match(
        self, sasl_username: str, sender: str, *, strictly: bool, list_member: bool
    ) -> LoginMatch:
        """See AccountBackend (the SQL backend's rules)."""
        self._ask("login_match")
        real_sender = sender
        sasl_user, _, sasl_domain = sasl_username.partition("@")
        sender_name, _, sender_domain = sender.partition("@")

        def per_user_alias(address: str) -> bool:
            owner = self.user_aliases.get(address)
            return owner is not None and (
                owner == sasl_username
                or (owner.startswith(sasl_user + "+") and owner.endswith("@" + sasl_domain))
            )

        if strictly:
            if per_user_alias(sender):
                return LoginMatch(True, reason="per-user alias address")
            if (
                sender_domain != sasl_domain
                and self.alias_domains.get(sender_domain) == sasl_domain
            ):
                real_sender = f"{sender_name}@{sasl_domain}"
                if sender_name == sasl_user:
                    return LoginMatch(True, reason="same user at an alias domain")
                if per_user_alias(real_sender):
                    return LoginMatch(True, reason="per-user alias address at an alias domain")
        if list_member:
            alias = self.aliases.get(real_sender)
            if alias is not None and alias.active and sasl_username in alias.members:
                return LoginMatch(True, reason="member of the mail alias")
            ml = self.maillists.get(real_sender)
            if ml is not None and ml.active:
                return LoginMatch(False, mlmmj_list=real_sender)
        return LoginMatch(False)

    async def access_policy(self, address: str, kind: PolicyKind) -> str | None:
        """See AccountBackend."""
        self._ask("access_policy")
        table = self.aliases if kind == "alias" else self.maillists
        entry = table.get(address)
        if entry is None:
            return None
        return entry.policy.lower() or "public"

    async def alias_members(self, address: str) -> list[str]:
        """See AccountBackend."""
        self._ask("alias_members")
        entry = self.aliases.get(address)
        return [m.lower() for m in entry.members] if entry else []

    async def moderators(self, address: str) -> list[str]:
        """See AccountBackend."""
        self._ask("moderators")
        entry = self.aliases.get(address) or self.maillists.get(address)
        return [m.lower() for m in entry.moderators] if entry else []

    async def has_moderator(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        self._ask("has_moderator")
        return any(
            sender in entry.moderators
            for a in addresses
            for entry in (self.aliases.get(a), self.maillists.get(a))
            if entry is not None
        )

    async def has_owner(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        self._ask("has_owner")
        return any(
            sender in entry.owners
            for a in addresses
            for entry in (self.maillists.get(a),)
            if entry is not None
        )

    async def password_last_change(self, username: str) -> dt.datetime | None:
        """See AccountBackend (a naive datetime in the data counts as UTC)."""
        self._ask("password_last_change")
        if username not in self.mailboxes:
            return None
        changed = self.mailboxes[username]
        if changed is None:
            return EPOCH
        return changed if changed.tzinfo is not None else changed.replace(tzinfo=dt.UTC)

    async def close(self) -> None:
        """Nothing to release."""
