"""The account backend the daemon uses, built from settings, behind a cache.

``backend = 'sqlite' | 'mysql' | 'pgsql'`` reads iRedMail's vmail database
(:class:`iredapd.backends.sql.SQLAccounts`), ``'ldap'`` its directory
(:class:`iredapd.backends.ldap.LDAPAccounts`, which binds at startup: wrong
credentials stop the daemon).

The cache (:class:`CachedAccounts`) keeps the answers to questions whose
answers rarely change (local domains, alias domains, access policies, members,
moderators, owners, login matches, password dates) for ``CACHE_TTL`` seconds
(0: no cache), negative answers too; a BackendUnavailable is never cached.
Concurrent identical questions share one lookup.  Its size is bounded
(oldest entries go first).

Rules on top of every backend:

* the server's hostname (``SERVER_HOSTNAME`` or the system's) is a local
  domain whatever the backend says (iRedAPD's rule);
* an outage is logged once at ERROR when it starts, then at most once a
  minute with the number of failed lookups, and ``... is back`` (WARNING)
  when the backend answers again; a server that comes and goes still gives
  at most one line of each kind a minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from iredapd.backends.base import AccountBackend, BackendUnavailable, LoginMatch, PolicyKind
from iredapd.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from iredapd.services import Services

__all__ = ["DEFAULT_MAX_ENTRIES", "CachedAccounts", "create_account_backend", "unwrap"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most answers kept; a mail server asks about a few thousand names at most.
DEFAULT_MAX_ENTRIES = 20_000
#: At most one outage line per this many seconds (after the first).
OUTAGE_LOG_INTERVAL = 60.0


class CachedAccounts:
    """An AccountBackend that caches another one (see the module docstring).

    Args:
        backend: the real backend.
        ttl: seconds an answer is kept; 0 turns the cache off (outage logging
            and the hostname rule stay).
        hostname: the server's hostname, a local domain whatever the backend says.
        clock: monotonic seconds (tests inject one).
        max_entries: bound on the number of kept answers.
        name: how log lines call the backend (``vmail SQL database`` ...).
    """

    def __init__(
        self,
        backend: AccountBackend,
        *,
        ttl: float,
        hostname: str = "",
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        name: str = "",
    ) -> None:
        self.backend = backend
        self.kind = backend.kind
        self.ttl = ttl
        self.hostname = hostname.lower()
        self.clock = clock
        self.max_entries = max(1, max_entries)
        self.name = name or f"account backend ({backend.kind})"
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._outage_log = RateLimitedLog(log, interval=OUTAGE_LOG_INTERVAL, clock=clock)
        self._down = False
        #: lookups answered from the cache / asked of the backend (tests, stats)
        self.hits = 0
        self.misses = 0

    # -- the machinery -------------------------------------------------------

    def _get(self, key: Hashable) -> tuple[bool, Any]:
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return False, None
        return True, value

    def _put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = (self.clock() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every cached answer."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    async def _ask(self, compute: Callable[[], Awaitable[T]]) -> T:
        """Ask the backend; log outages and recoveries (each at most once a minute,
        so a flapping server cannot flood the log)."""
        try:
            value = await compute()
        except BackendUnavailable as e:
            self._down = True
            self._outage_log.error("outage", "%s unavailable: %s", self.name, e)
            raise
        if self._down:
            self._down = False
            self._outage_log.warning("back", "%s is back", self.name)
        return value

    async def cached(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The answer for ``key``: cached, or ``await compute()`` (then cached).

        Plugins may use it for backend-specific lookups (the LDAP list policy
        does); ``key`` must name the question completely.
        """
        if self.ttl <= 0:
            return await self._ask(compute)
        found, value = self._get(key)
        if found:
            self.hits += 1
            cached_value: T = value
            return cached_value
        pending = self._inflight.get(key)
        if pending is None:
            self.misses += 1
            # A task of its own: a caller that is cancelled (its plugin ran out
            # of time) neither cancels the lookup for the others nor loses it.
            pending = asyncio.ensure_future(self._ask(compute))
            self._inflight[key] = pending
            pending.add_done_callback(lambda task: self._settle(key, task))
        else:
            self.hits += 1
        result: T = await asyncio.shield(pending)
        return result

    def _settle(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        """A lookup finished: cache its answer (never an error)."""
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        if task.exception() is None:  # also marks an error as retrieved
            self._put(key, task.result())

    # -- the interface -------------------------------------------------------

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        """See AccountBackend; the server hostname is always local."""
        if self.hostname and domain == self.hostname:
            return True
        return await self.cached(
            ("is_local_domain", domain, include_alias, include_backupmx),
            lambda: self.backend.is_local_domain(
                domain, include_alias=include_alias, include_backupmx=include_backupmx
            ),
        )

    async def alias_target_domain(self, domain: str) -> str | None:
        """See AccountBackend."""
        return await self.cached(
            ("alias_target_domain", domain), lambda: self.backend.alias_target_domain(domain)
        )

    async def is_alias_domain_of(self, alias_domain: str, target_domain: str) -> bool:
        """See AccountBackend."""
        return await self.cached(
            ("is_alias_domain_of", alias_domain, target_domain),
            lambda: self.backend.is_alias_domain_of(alias_domain, target_domain),
        )

    async def domain_names(self, domain: str) -> list[str]:
        """See AccountBackend (a copy: callers may change the list)."""
        names = await self.cached(
            ("domain_names", domain), lambda: self.backend.domain_names(domain)
        )
        return list(names)

    async def login_match(
        self, sasl_username: str, sender: str, *, strictly: bool, list_member: bool
    ) -> LoginMatch:
        """See AccountBackend."""
        return await self.cached(
            ("login_match", sasl_username, sender, strictly, list_member),
            lambda: self.backend.login_match(
                sasl_username, sender, strictly=strictly, list_member=list_member
            ),
        )

    async def access_policy(self, address: str, kind: PolicyKind) -> str | None:
        """See AccountBackend."""
        return await self.cached(
            ("access_policy", address, kind), lambda: self.backend.access_policy(address, kind)
        )

    async def alias_members(self, address: str) -> list[str]:
        """See AccountBackend (a copy)."""
        members = await self.cached(
            ("alias_members", address), lambda: self.backend.alias_members(address)
        )
        return list(members)

    async def moderators(self, address: str) -> list[str]:
        """See AccountBackend (a copy)."""
        found = await self.cached(("moderators", address), lambda: self.backend.moderators(address))
        return list(found)

    async def has_moderator(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        key = ("has_moderator", tuple(addresses), sender)
        return await self.cached(key, lambda: self.backend.has_moderator(addresses, sender))

    async def has_owner(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        key = ("has_owner", tuple(addresses), sender)
        return await self.cached(key, lambda: self.backend.has_owner(addresses, sender))

    async def password_last_change(self, username: str) -> dt.datetime | None:
        """See AccountBackend."""
        return await self.cached(
            ("password_last_change", username),
            lambda: self.backend.password_last_change(username),
        )

    async def close(self) -> None:
        """Close the backend."""
        self._entries.clear()
        await self.backend.close()


def unwrap(backend: Any) -> Any:
    """The real backend behind a :class:`CachedAccounts` (or ``backend`` itself)."""
    while isinstance(backend, CachedAccounts):
        backend = backend.backend
    return backend


def create_account_backend(services: Services) -> AccountBackend | None:
    """The account backend for ``services.settings.backend``, cached.

    Blocking (at startup): the LDAP backend connects and binds here.
    Returns None when an SQL backend's vmail database is not configured.

    Raises:
        ConfigError: LDAP credentials refused, or an unusable LDAP setting.
        BackendUnavailable: the LDAP server did not answer.
    """
    s = services.settings
    backend: AccountBackend
    if s.backend == "ldap":
        from iredapd.backends.ldap import LDAPAccounts

        ldap_backend = LDAPAccounts.from_settings(s, services.run_blocking)
        ldap_backend.open()
        backend = ldap_backend
        name = f"LDAP server {s.ldap_uri}"
    else:
        if services.vmail_db is None:
            return None
        from iredapd.backends.sql import SQLAccounts

        backend = SQLAccounts(services.vmail_db)
        name = "vmail database"
    return CachedAccounts(backend, ttl=float(s.CACHE_TTL), hostname=services.hostname, name=name)
