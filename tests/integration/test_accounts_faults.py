"""Account backends when the server goes away: private MariaDB, PostgreSQL and slapd.

Each server is our own (never the machine's shared ones): stopped mid-run,
every lookup must raise BackendUnavailable within its deadline (no hang, no
"not found"), the outage is logged once per interval, not once per lookup,
and the backend answers again by itself once the server is back on the same
port, including the first request after a restart that nobody saw.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from iredapd.accounts import CachedAccounts
from iredapd.backends.base import AccountBackend, BackendUnavailable
from iredapd.config import ConfigError, build_settings
from iredapd.services import Services
from iredapd.storage.db import Database, create_engine
from tests.integration.test_accounts_contract import CALLS, contract_data
from tests.support.accounts import (
    account_settings,
    ldif_for,
    load_sql,
    require_kind,
    restartable_slapd,
)
from tests.support.private_servers import private_mariadb, private_postgres
from tests.support.services import free_port, scaled

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS_LOG = "iredapd.accounts"


class FrozenClock:
    """Monotonic time that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def executor() -> Iterator[Callable[..., Any]]:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="faults")

    async def run_blocking(func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, func, *args)

    try:
        yield run_blocking
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def _all_unavailable(backend: AccountBackend, deadline: float) -> None:
    """Every protocol method raises BackendUnavailable, each within ``deadline`` s."""
    for name, call in CALLS:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(call(backend), timeout=deadline + 5)
        assert time.monotonic() - started < deadline, name


async def _answers(backend: AccountBackend) -> None:
    assert await backend.is_local_domain("example.com")
    assert await backend.access_policy("all@example.com", "alias") == "membersonly"
    assert (
        await backend.login_match(
            "user@example.com", "user-alias@example.com", strictly=True, list_member=False
        )
    ).allowed


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ACCOUNTS_LOG and r.levelno == level]


async def _outage_cycle(
    cached: CachedAccounts,
    *,
    stop: Callable[[], None],
    start: Callable[[], None],
    run_blocking: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    deadline: float,
) -> None:
    """Up, down (every lookup fails fast, one log line), up again (by itself)."""
    await _answers(cached)
    await run_blocking(stop)
    await _all_unavailable(cached, deadline)
    await _all_unavailable(cached, deadline)
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1, errors  # 22 failed lookups, one line (the clock stands still)
    assert errors[0].startswith(f"{cached.name} unavailable: ")
    await run_blocking(start)
    await _answers(cached)
    assert _records(caplog, logging.WARNING) == [f"{cached.name} is back"]
    # A restart nobody saw: the pooled connections are dead, the first
    # request after it must still be answered (one transparent retry).
    await run_blocking(stop)
    await run_blocking(start)
    await _answers(cached)
    assert len(_records(caplog, logging.ERROR)) == 1


@pytest.mark.mariadb
async def test_mariadb_outage_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with private_mariadb() as server, executor() as run_blocking:
        server.sql("CREATE DATABASE vmail CHARACTER SET utf8mb4")
        url = server.url("vmail")
        await run_blocking(load_sql, url, contract_data())
        db = Database("vmail", create_engine(url, account_settings()), run_blocking)
        from iredapd.backends.sql import SQLAccounts

        cached = CachedAccounts(SQLAccounts(db), ttl=0, clock=FrozenClock(), name="vmail database")
        try:
            await _outage_cycle(
                cached,
                stop=server.stop,
                start=server.start,
                run_blocking=run_blocking,
                caplog=caplog,
                deadline=scaled(6.0),
            )
        finally:
            await cached.close()


@pytest.mark.pgsql
async def test_postgresql_outage_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with private_postgres() as server, executor() as run_blocking:
        url = server.url("postgres")
        await run_blocking(load_sql, url, contract_data())
        db = Database("vmail", create_engine(url, account_settings()), run_blocking)
        from iredapd.backends.sql import SQLAccounts

        cached = CachedAccounts(SQLAccounts(db), ttl=0, clock=FrozenClock(), name="vmail database")
        try:
            await _outage_cycle(
                cached,
                stop=server.stop,
                start=server.start,
                run_blocking=run_blocking,
                caplog=caplog,
                deadline=scaled(6.0),
            )
        finally:
            await cached.close()


BASEDN = "o=domains,dc=iredmail,dc=org"


@contextmanager
def _slapd(**options: Any) -> Iterator[Any]:
    from tests.support.slapd import base_ldif

    require_kind("ldap")
    with restartable_slapd(base_ldif(domains=(), users={}), **options) as server:
        server.add(ldif_for(contract_data(), f"o=domains-x,{server.suffix}"))
        yield server


def _ldap_backend(server: Any, run_blocking: Callable[..., Any], **config: Any) -> Any:
    from iredapd.backends.ldap import LDAPAccounts, LDAPConfig

    options: dict[str, Any] = {
        "uri": server.uri,
        "basedn": f"o=domains-x,{server.suffix}",
        "binddn": server.binddn,
        "bindpw": server.bindpw,
        "timeout": scaled(1.0),
        "connections": 3,
    }
    options.update(config)
    return LDAPAccounts(LDAPConfig(**options), run_blocking)


@pytest.mark.ldap
async def test_ldap_outage_and_recovery(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with _slapd() as server, executor() as run_blocking:
        backend = _ldap_backend(server, run_blocking)
        await run_blocking(backend.open)
        cached = CachedAccounts(backend, ttl=0, clock=FrozenClock(), name="LDAP server")
        try:
            await _outage_cycle(
                cached,
                stop=server.stop,
                start=server.start,
                run_blocking=run_blocking,
                caplog=caplog,
                deadline=scaled(3.0),
            )
            opened = backend._pool.opened
            assert opened >= 2  # connections were replaced, not reused dead
        finally:
            await cached.close()


@pytest.mark.ldap
async def test_ldap_hung_server_times_out(caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts but never answers (SIGSTOP): each lookup gives up
    after LDAP_TIMEOUT instead of hanging, and all is well after SIGCONT."""
    caplog.set_level(logging.INFO)
    with _slapd() as server, executor() as run_blocking:
        backend = _ldap_backend(server, run_blocking, timeout=scaled(0.5))
        await run_blocking(backend.open)
        cached = CachedAccounts(backend, ttl=0, clock=FrozenClock(), name="LDAP server")
        try:
            await _answers(cached)
            os.kill(server.pid, signal.SIGSTOP)
            try:
                for _name, call in CALLS[:4]:
                    started = time.monotonic()
                    with pytest.raises(BackendUnavailable):
                        await call(cached)
                    assert time.monotonic() - started < scaled(2.5)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            await _answers(cached)
            assert len(_records(caplog, logging.ERROR)) == 1
        finally:
            await cached.close()


@pytest.mark.ldap
async def test_ldap_pool_stays_bounded_under_load() -> None:
    with _slapd() as server, executor() as run_blocking:
        backend = _ldap_backend(server, run_blocking, connections=2)
        await run_blocking(backend.open)
        try:
            results = await asyncio.gather(
                *(backend.is_local_domain("example.com") for _ in range(50)),
                *(backend.access_policy("all@example.com", "alias") for _ in range(50)),
            )
            assert results == [True] * 50 + ["membersonly"] * 50
            assert backend._pool.opened <= 2
        finally:
            await backend.close()


# ---------------------------------------------------------------------------
# startup: a bind that fails stops the daemon (no anonymous fallback)
# ---------------------------------------------------------------------------


def _ldap_settings(server: Any | None, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "backend": "ldap",
        "ldap_uri": server.uri if server else f"ldap://127.0.0.1:{free_port()}",
        "ldap_basedn": f"o=domains-x,{server.suffix}" if server else BASEDN,
        "ldap_binddn": server.binddn if server else "cn=vmail,dc=iredmail,dc=org",
        "ldap_bindpw": server.bindpw if server else "x",
        "LDAP_TIMEOUT": scaled(2.0),
    }
    values.update(overrides)
    return build_settings({}, overrides=values)


def _open_services(settings: Any) -> None:
    from iredapd.accounts import create_account_backend

    services = Services(settings)
    try:
        create_account_backend(services)
    finally:
        services.executor.shutdown(wait=False)


@pytest.mark.ldap
def test_ldap_startup_wrong_password_is_a_config_error() -> None:
    with _slapd() as server:
        with pytest.raises(ConfigError, match="invalid credentials"):
            _open_services(_ldap_settings(server, ldap_bindpw="wrong"))
        with pytest.raises(ConfigError, match="invalid credentials"):
            _open_services(_ldap_settings(server, ldap_binddn=f"cn=nobody,{server.suffix}"))
        with pytest.raises(ConfigError, match="must both be set"):
            _open_services(_ldap_settings(server, ldap_bindpw=""))


@pytest.mark.ldap
def test_ldap_startup_server_down_is_backend_unavailable() -> None:
    require_kind("ldap")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="Can't contact LDAP server"):
        _open_services(_ldap_settings(None))
    assert time.monotonic() - started < scaled(5.0)


@pytest.mark.ldap
async def test_ldap_daemon_startup_gives_a_working_cached_backend() -> None:
    with _slapd() as server:
        from iredapd.accounts import create_account_backend

        services = Services(_ldap_settings(server, SERVER_HOSTNAME="mx.example.test"))
        try:
            # what Services.open_databases does for the account backend
            loop = asyncio.get_running_loop()
            vmail = await loop.run_in_executor(None, create_account_backend, services)
            services.vmail = vmail  # closed with the services
            assert isinstance(vmail, CachedAccounts) and vmail.kind == "ldap"
            await _answers(vmail)
            assert await vmail.is_local_domain("mx.example.test")
        finally:
            await services.close()


# ---------------------------------------------------------------------------
# TLS: certificates are checked unless LDAP_TLS_REQUIRE_CERT = False
# ---------------------------------------------------------------------------


@pytest.mark.ldap
async def test_ldap_starttls_verifies_the_certificate() -> None:
    with _slapd(tls=True) as server, executor() as run_blocking:
        ca = str(server.tls.ca_cert)
        good = _ldap_backend(server, run_blocking, starttls=True, ca_cert_file=ca)
        await run_blocking(good.open)
        try:
            await _answers(good)
        finally:
            await good.close()
        # an unknown CA is refused ...
        strict = _ldap_backend(server, run_blocking, starttls=True)
        with pytest.raises(BackendUnavailable):
            await run_blocking(strict.open)
        with pytest.raises(BackendUnavailable):
            await strict.is_local_domain("example.com")
        # ... unless the admin turns the check off
        lax = _ldap_backend(server, run_blocking, starttls=True, require_cert=False)
        await run_blocking(lax.open)
        try:
            await _answers(lax)
        finally:
            await lax.close()


@pytest.mark.ldap
def test_ldap_settings_reach_the_connection() -> None:
    from iredapd.backends.ldap import LDAPConfig

    config = LDAPConfig.from_settings(
        _ldap_settings(
            None,
            ldap_enable_tls=True,
            LDAP_TLS_REQUIRE_CERT=False,
            LDAP_TLS_CA_CERT_FILE="/etc/ssl/x.pem",
            LDAP_CONNECTIONS=7,
            LDAP_TIMEOUT=3.5,
        )
    )
    assert config.starttls and not config.require_cert
    assert (config.ca_cert_file, config.connections, config.timeout) == ("/etc/ssl/x.pem", 7, 3.5)
    assert LDAPConfig.from_settings(_ldap_settings(None)).require_cert  # verified by default
