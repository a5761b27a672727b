"""Services: what the daemon shares with every plugin (pool, clock, databases).

Created once per settings generation (startup and each reload) and closed when
that generation's last request is done.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from iredapd.backends.base import AccountBackend
from iredapd.config import Settings
from iredapd.resolver import DNSSource, Resolver
from iredapd.storage.db import Database, open_database
from iredapd.storage.sessions import SessionLog

__all__ = ["Services"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _complete(settings: Settings, name: str) -> bool:
    """iRedAPD's rule: a database is configured when none of its settings is empty."""
    if settings.backend == "sqlite":
        return True
    parts = ("server", "port", "name", "user")
    return all(settings.get(f"{name}_db_{p}") not in ("", None) for p in parts)


class Services:
    """Shared resources.  Attributes that a backend does not provide are None."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.hostname = (settings.SERVER_HOSTNAME or socket.gethostname()).lower()
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(
            max_workers=max(1, settings.THREAD_POOL_SIZE), thread_name_prefix="iredapd-io"
        )
        #: iRedAPD's own database (throttle, greylisting, smtp_sessions, ...)
        self.iredapd_db: Database | None = None
        #: amavisd's database (white/blacklists)
        self.amavisd_db: Database | None = None
        #: iRedMail's vmail database (SQL backends only)
        self.vmail_db: Database | None = None
        #: the account backend (vmail SQL database or LDAP): an AccountBackend
        self.vmail: AccountBackend | None = None
        #: the smtp_sessions writer (when LOG_SMTP_SESSIONS and an iredapd database)
        self.session_log: SessionLog | None = None
        #: the DNS resolver (async, with deadlines and a TTL cache)
        self.resolver: DNSSource | None = Resolver(
            list(settings.DNS_NAMESERVERS) or None,
            port=settings.DNS_PORT,
            timeout=settings.DNS_QUERY_TIMEOUT,
            clock=time.monotonic,
        )

    def provides(self, requirement: str) -> bool:
        """True if the service a plugin ``requires`` is available."""
        return {
            "iredapd": self.iredapd_db is not None,
            "amavisd": self.amavisd_db is not None,
            "vmail": self.vmail is not None,
            "dns": self.resolver is not None,
        }.get(requirement, False)

    async def spf_allows(self, domain: str, client_address: str) -> bool:
        """True if the SPF record of ``domain`` gives ``pass`` for ``client_address``.

        The hook behind GREYLISTING_BYPASS_SPF and CHECK_SPF_IF_LOGIN_MISMATCH.
        Without a resolver (no DNS configured) nothing is allowed.  A DNS error
        or an SPF error is not a pass.
        """
        if self.resolver is None or not domain or not client_address:
            return False
        from iredapd.spf import is_allowed_server_in_spf

        return await is_allowed_server_in_spf(domain, client_address, self.resolver)

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in the bounded thread pool, keeping contextvars."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, func, *args)
        return await loop.run_in_executor(self.executor, call)

    def open_databases(self, *, create_schema: bool = True) -> None:
        """Open the databases the settings name (blocking; at startup).

        The iredapd database is created or upgraded; with the embedded SQLite
        default the vmail and amavisd databases are created too.  Connections
        are made lazily, so a database that no plugin uses is never contacted.
        """
        s = self.settings
        self.iredapd_db = open_database("iredapd", s, self.run_blocking)
        if _complete(s, "amavisd"):
            self.amavisd_db = open_database("amavisd", s, self.run_blocking)
        if s.backend != "ldap" and _complete(s, "vmail"):
            self.vmail_db = open_database("vmail", s, self.run_blocking)
        if create_schema:
            self.iredapd_db.create_schema()
            if s.backend == "sqlite":
                for db in (self.vmail_db, self.amavisd_db):
                    if db is not None:
                        db.create_schema()
        if s.LOG_SMTP_SESSIONS:
            self.session_log = SessionLog(self.iredapd_db)
        from iredapd.accounts import create_account_backend

        self.vmail = create_account_backend(self)

    async def close(self) -> None:
        """Write what is buffered, then release pools and threads."""
        if self.session_log is not None:
            await self.session_log.close(grace=self.settings.SHUTDOWN_GRACE)
        for db in (self.iredapd_db, self.amavisd_db, self.vmail_db):
            if db is not None:
                db.dispose()
        closer = getattr(self.vmail, "close", None)
        if closer is not None:
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)
