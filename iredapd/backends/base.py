"""The account-backend interface every backend implements (SQL, LDAP, fake).

Three outcomes for every lookup: a value, absent (``None``, ``False`` or an
empty list, as documented per method), or :class:`BackendUnavailable` raised
when the database or directory did not answer.  "Down" never reads as "not
found": a plugin that gets BackendUnavailable fails, and the chain applies its
failure action.

All methods are coroutines and never block the event loop: SQL and LDAP run
their sync drivers in the daemon's bounded thread pool.  Addresses and domains
are passed lower-cased (the request is normalised); backends compare the way
iRedAPD does on the same data (SQL: the column's collation; LDAP: the
directory's matching rules).

The methods follow what the plugins ask (iRedAPD behaviour notes,
access-policies.md sections 4, 7-10, 12, 13); each says which rows count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from iredapd.storage.db import BackendUnavailable

__all__ = [
    "AccountBackend",
    "BackendUnavailable",
    "LoginMatch",
    "MailList",
    "PolicyKind",
]

PolicyKind = Literal["alias", "maillist"]


@dataclass(frozen=True, slots=True)
class LoginMatch:
    """Whether an authenticated user may send as another address (login mismatch).

    ``allowed``: an alias address of the user, an alias-domain twin, or a
    membership that allows it.  ``mlmmj_list``: the address of a mailing list
    whose subscribers mlmmjadmin must be asked about ('' = none).
    """

    allowed: bool
    mlmmj_list: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MailList:
    """A mailing list or mail alias as the LDAP access-policy plugin sees it."""

    address: str
    object_classes: tuple[str, ...] = ()
    account_status: tuple[str, ...] = ()
    access_policy: str = ""
    enabled_services: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    moderators: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: where the entry is (LDAP: its DN; '' elsewhere)
    dn: str = ""


@runtime_checkable
class AccountBackend(Protocol):
    """What plugins may ask about mail accounts.  See each method for its rows."""

    #: 'sql', 'ldap' or 'fake'
    kind: str

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        """True for an active hosted domain (backup-MX ones unless excluded), or an
        alias domain of an active domain (unless excluded).  Not a domain: False.
        The server hostname check is the caller's (see :mod:`iredapd.accounts`)."""
        ...

    async def alias_target_domain(self, domain: str) -> str | None:
        """The target of an alias domain whose target is active; None if not one."""
        ...

    async def is_alias_domain_of(self, alias_domain: str, target_domain: str) -> bool:
        """True if ``alias_domain`` is an alias of ``target_domain`` (no status checks)."""
        ...

    async def domain_names(self, domain: str) -> list[str]:
        """The primary name and every alias name of the domain ``domain`` belongs to;
        [] if it is not hosted here."""
        ...

    async def login_match(
        self, sasl_username: str, sender: str, *, strictly: bool, list_member: bool
    ) -> LoginMatch:
        """Step 4 of reject_sender_login_mismatch: may ``sasl_username`` send as
        ``sender``?  ``strictly``: as one of its alias addresses (or the same user
        at an alias domain); ``list_member``: as a list/alias it is a member of."""
        ...

    async def access_policy(self, address: str, kind: PolicyKind) -> str | None:
        """The access policy of a mail alias or mailing list, lower-cased ('' in
        the database reads as 'public'); None if there is no such account."""
        ...

    async def alias_members(self, address: str) -> list[str]:
        """Members of a mail alias (lower-cased); [] if none."""
        ...

    async def moderators(self, address: str) -> list[str]:
        """Moderators of an alias or list (lower-cased; may hold '*@domain')."""
        ...

    async def has_moderator(self, addresses: Sequence[str], sender: str) -> bool:
        """True if ``sender`` moderates one of the lists ``addresses``."""
        ...

    async def has_owner(self, addresses: Sequence[str], sender: str) -> bool:
        """True if ``sender`` owns one of the lists ``addresses``."""
        ...

    async def password_last_change(self, username: str) -> dt.datetime | None:
        """When the user last changed the password (UTC); epoch if never; None if no
        such user."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
