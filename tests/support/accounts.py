"""Run account tests on every backend: one FakeAccounts dataset, five real backends.

A :class:`~iredapd.backends.fake.FakeAccounts` is the declarative test data
everyone writes.  :func:`populated` turns it into the same rows in a vmail
database (SQLite, MariaDB, PostgreSQL) or the same entries in a throwaway
slapd, and yields the real backend (SQLAccounts / LDAPAccounts) reading them;
kind ``fake`` yields the FakeAccounts itself.  In a test module::

    pytest_plugins = ["tests.support.accounts"]     # the fixtures below

    async def test_x(populate):            # runs once per kind: fake, sqlite, mariadb, pgsql, ldap
        fake = FakeAccounts()
        fake.add_domain("example.com")
        async with populate(fake) as backend:
            assert await backend.is_local_domain("example.com")

or without fixtures: ``async with populated("pgsql", fake) as backend: ...``
(starts and removes its own database or slapd: slower).

Servers are shared per test session (one MariaDB and one PostgreSQL database,
one slapd); each ``populate`` empties the vmail tables (or uses a new LDAP
subtree, ``o=domains-<random>``), so only one populated backend per kind is
live at a time.  Unavailable servers skip the test (fail under
``REQUIRE_ALL_BACKENDS=1``).

How the data maps (what the backends can and cannot say):

* ``FakeDomain``: a ``domain`` row / ``mailDomain`` entry (``accountStatus``
  from ``active``, ``domainBackupMX: yes`` for backup MX, ``enabledService:
  mail`` and, with alias domains, ``domainalias``).  An alias domain becomes
  an ``alias_domain`` row / a ``domainAliasName`` of its target; on LDAP an
  alias domain of a domain that is not in ``domains`` cannot exist (dropped).
* mailboxes: ``mailbox`` rows / mail users (``shadowLastChange`` in days: LDAP
  keeps the date only; MySQL keeps whole seconds).
* user aliases: ``forwardings`` rows with ``is_alias=1`` / a ``shadowAddress``
  of the user (the target without its ``+extension``; the user entry is
  created if it is not a mailbox).
* aliases: ``alias`` row + member rows (``forwardings``, ``is_list=1``,
  ``active`` = the alias's) + ``moderators`` / a ``mailAlias`` entry
  (``mailForwardingAddress``, ``listModerator``, ``accessPolicy``).  LDAP does
  not look at the alias's status in login_match (iRedAPD's rule), SQL does.
* mailing lists: ``maillists`` row (mlmmj) + ``moderators`` +
  ``maillist_owners`` / a ``mailList`` entry with ``enabledService: mlmmj``,
  ``listModerator``, ``listOwner``; members of an mlmmj list are mlmmj
  subscribers, in neither database.
* Accounts of a domain that is not hosted sit directly under the LDAP base.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iredapd.addr import strip_extension
from iredapd.backends.base import AccountBackend
from iredapd.backends.fake import EPOCH, FakeAccounts
from iredapd.config import Settings, build_settings
from iredapd.storage import schema
from iredapd.storage.db import Database, create_engine
from iredapd.storage.migrate import upgrade
from tests.support.databases import require_service, temporary_database
from tests.support.services import deadline_in, free_port, require, require_module, scaled

__all__ = [
    "KINDS",
    "AccountStores",
    "account_backend_kind",
    "account_settings",
    "account_stores",
    "kind_params",
    "ldif_for",
    "load_sql",
    "populate",
    "populated",
    "restartable_slapd",
    "sql_rows",
]

KINDS = ("fake", "sqlite", "mariadb", "pgsql", "ldap")
_VMAIL_TABLES = (
    schema.domain,
    schema.alias_domain,
    schema.mailbox,
    schema.alias,
    schema.forwardings,
    schema.maillists,
    schema.moderators,
    schema.maillist_owners,
)


def kind_params(*kinds: str) -> list[Any]:
    """``pytest.param`` for each kind (default all five), with its markers."""
    marks = {
        "mariadb": [pytest.mark.mariadb, pytest.mark.integration],
        "pgsql": [pytest.mark.pgsql, pytest.mark.integration],
        "ldap": [pytest.mark.ldap, pytest.mark.integration],
    }
    return [pytest.param(k, marks=marks.get(k, []), id=k) for k in (kinds or KINDS)]


def require_kind(kind: str) -> None:
    """Skip (or fail under REQUIRE_ALL_BACKENDS=1) when ``kind``'s server is missing."""
    if kind in ("mariadb", "pgsql"):
        require_service(kind)
    elif kind == "ldap":
        require("slapd", "Debian package slapd")
        require("ldapmodify", "Debian package ldap-utils")
        require_module("ldap", "python-ldap")
    elif kind not in ("fake", "sqlite"):
        raise ValueError(f"unknown account backend kind {kind!r}")


def account_settings(**overrides: Any) -> Settings:
    """Default settings with ``overrides`` (pool sizes for engines, LDAP timeouts)."""
    return build_settings({}, overrides=overrides)


# ---------------------------------------------------------------------------
# FakeAccounts -> rows / entries
# ---------------------------------------------------------------------------


def _domain(address: str) -> str:
    return address.partition("@")[2]


def _naive_local(when: dt.datetime | None) -> dt.datetime:
    """What iRedMail stores in ``passwordlastchange``: the local time, naive."""
    value = EPOCH if when is None else when
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # the fake reads naive values as UTC
    return value.astimezone().replace(tzinfo=None)


def _mlid(address: str) -> str:
    h = hashlib.sha256(address.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def sql_rows(fake: FakeAccounts) -> dict[sa.Table, list[dict[str, Any]]]:
    """The vmail rows that make SQLAccounts answer as ``fake`` does."""
    rows: dict[sa.Table, list[dict[str, Any]]] = {t: [] for t in _VMAIL_TABLES}
    for d in fake.domains.values():
        rows[schema.domain].append(
            {"domain": d.name, "active": int(d.active), "backupmx": int(d.backupmx)}
        )
    for alias_name, target in fake.alias_domains.items():
        rows[schema.alias_domain].append(
            {"alias_domain": alias_name, "target_domain": target, "active": 1}
        )
    for user, changed in fake.mailboxes.items():
        rows[schema.mailbox].append(
            {
                "username": user,
                "domain": _domain(user),
                "maildir": f"{_domain(user)}/{user.partition('@')[0]}/",
                "passwordlastchange": _naive_local(changed),
            }
        )
    pairs: set[tuple[str, str]] = set()
    for address, owner in fake.user_aliases.items():
        pairs.add((address, owner))
        rows[schema.forwardings].append(
            {
                "address": address,
                "forwarding": owner,
                "domain": _domain(address),
                "dest_domain": _domain(owner),
                "is_list": 0,
                "is_alias": 1,
                "active": 1,
            }
        )
    moderator_pairs: set[tuple[str, str]] = set()
    for entry in fake.aliases.values():
        rows[schema.alias].append(
            {
                "address": entry.address,
                "domain": _domain(entry.address),
                "accesspolicy": entry.policy,
                "active": int(entry.active),
            }
        )
        for member in entry.members:
            if (entry.address, member) in pairs:
                continue
            pairs.add((entry.address, member))
            rows[schema.forwardings].append(
                {
                    "address": entry.address,
                    "forwarding": member,
                    "domain": _domain(entry.address),
                    "dest_domain": _domain(member),
                    "is_list": 1,
                    "is_alias": 0,
                    "active": int(entry.active),
                }
            )
    for entry in fake.maillists.values():
        domain = _domain(entry.address)
        rows[schema.maillists].append(
            {
                "address": entry.address,
                "domain": domain,
                "transport": f"mlmmj:{domain}/{entry.address.partition('@')[0]}",
                "accesspolicy": entry.policy,
                "mlid": _mlid(entry.address),
                "active": int(entry.active),
            }
        )
        for owner in dict.fromkeys(entry.owners):
            rows[schema.maillist_owners].append(
                {
                    "address": entry.address,
                    "owner": owner,
                    "domain": domain,
                    "dest_domain": _domain(owner),
                }
            )
    for entry in [*fake.aliases.values(), *fake.maillists.values()]:
        for moderator in entry.moderators:
            if (entry.address, moderator) in moderator_pairs:
                continue
            moderator_pairs.add((entry.address, moderator))
            rows[schema.moderators].append(
                {
                    "address": entry.address,
                    "moderator": moderator,
                    "domain": _domain(entry.address),
                    "dest_domain": _domain(moderator),
                }
            )
    return rows


def ldif_for(fake: FakeAccounts, basedn: str) -> str:
    """LDIF (the base ``o=`` entry first) that makes LDAPAccounts answer as ``fake``."""
    import ldap.dn

    from tests.support.slapd import USER_SERVICES, ldif_entry

    esc = ldap.dn.escape_dn_chars
    rdn, _, _parent = basedn.partition(",")
    text = ldif_entry(basedn, {"objectClass": "organization", "o": rdn.partition("=")[2]})

    def home(address: str, ou: str) -> str:
        domain = _domain(address)
        if domain in fake.domains:
            return f"mail={esc(address)},ou={ou},domainName={esc(domain)},{basedn}"
        return f"mail={esc(address)},{basedn}"  # not a hosted domain

    for d in fake.domains.values():
        aliases = sorted(a for a, t in fake.alias_domains.items() if t == d.name)
        dn = f"domainName={esc(d.name)},{basedn}"
        text += ldif_entry(
            dn,
            {
                "objectClass": "mailDomain",
                "domainName": d.name,
                "mtaTransport": "dovecot",
                "accountStatus": "active" if d.active else "disabled",
                "enabledService": ["mail", "domainalias"] if aliases else ["mail"],
                "domainBackupMX": "yes" if d.backupmx else None,
                "domainAliasName": aliases or None,
            },
        )
        for ou in ("Users", "Groups", "Aliases", "Externals"):
            text += ldif_entry(f"ou={ou},{dn}", {"objectClass": "organizationalUnit", "ou": ou})

    users: dict[str, dict[str, Any]] = {}
    for user, changed in fake.mailboxes.items():
        users[user] = {"changed": changed, "shadow": []}
    for address, owner in fake.user_aliases.items():
        base_user = strip_extension(owner, ["+"])
        users.setdefault(base_user, {"changed": None, "shadow": []})["shadow"].append(address)
    for user, data in users.items():
        local = user.partition("@")[0]
        changed = data["changed"]
        days = None
        if user in fake.mailboxes and changed is not None:
            when = changed if changed.tzinfo else changed.replace(tzinfo=dt.UTC)
            days = str((when - EPOCH).days)
        text += ldif_entry(
            home(user, "Users"),
            {
                "objectClass": ["inetOrgPerson", "shadowAccount", "mailUser"],
                "mail": user,
                "uid": local or "user",
                "cn": local or "user",
                "sn": local or "user",
                "accountStatus": "active",
                "enabledService": list(USER_SERVICES),
                "shadowAddress": data["shadow"] or None,
                "shadowLastChange": days,
            },
        )
    for entry in fake.aliases.values():
        text += ldif_entry(
            home(entry.address, "Aliases"),
            {
                "objectClass": "mailAlias",
                "mail": entry.address,
                "accountStatus": "active" if entry.active else "disabled",
                "accessPolicy": entry.policy or None,
                "mailForwardingAddress": list(dict.fromkeys(entry.members)) or None,
                "listModerator": list(dict.fromkeys(entry.moderators)) or None,
            },
        )
    for entry in fake.maillists.values():
        text += ldif_entry(
            home(entry.address, "Groups"),
            {
                "objectClass": "mailList",
                "mail": entry.address,
                "accountStatus": "active" if entry.active else "disabled",
                "accessPolicy": entry.policy or None,
                "enabledService": ["mail", "mlmmj"],
                "mailingListID": _mlid(entry.address),
                "listModerator": list(dict.fromkeys(entry.moderators)) or None,
                "listOwner": list(dict.fromkeys(entry.owners)) or None,
            },
        )
    return text


# ---------------------------------------------------------------------------
# Shared servers
# ---------------------------------------------------------------------------


class AccountStores:
    """Databases and a slapd shared by the populated backends of a session."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._urls: dict[str, URL] = {}
        self._slapd: Any = None
        self._busy: set[str] = set()

    @property
    def tmp(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="iredapd-accounts-"))
            self._stack.callback(shutil.rmtree, self._tmp, True)
        return self._tmp

    def sql_url(self, kind: str) -> URL:
        """A vmail database for ``kind`` with iRedMail's tables (shared; SQLite: new)."""
        if kind == "sqlite":
            return URL.create("sqlite", database=str(self.tmp / f"vmail-{secrets.token_hex(4)}.db"))
        if kind not in self._urls:
            url = self._stack.enter_context(temporary_database(kind))
            engine = sa.create_engine(url)
            try:
                upgrade(engine, "vmail", create_foreign=True)
            finally:
                engine.dispose()
            self._urls[kind] = url
        return self._urls[kind]

    def slapd(self) -> Any:
        """The shared slapd (an empty tree under dc=iredmail,dc=org plus cn=vmail)."""
        if self._slapd is None:
            from tests.support.slapd import base_ldif, slapd_instance

            self._slapd = self._stack.enter_context(slapd_instance(base_ldif(domains=(), users={})))
        return self._slapd

    @contextlib.contextmanager
    def lease(self, kind: str) -> Iterator[None]:
        """One populated backend per shared kind at a time."""
        if kind in self._busy:
            raise RuntimeError(f"a populated {kind} backend is still open in this session")
        self._busy.add(kind)
        try:
            yield
        finally:
            self._busy.discard(kind)

    def close(self) -> None:
        self._stack.close()


def load_sql(url: URL, fake: FakeAccounts) -> None:
    """Create iRedMail's vmail tables in ``url`` if missing; replace their rows by ``fake``'s."""
    engine = sa.create_engine(url)
    try:
        upgrade(engine, "vmail", create_foreign=True)
        with engine.begin() as conn:
            for table in reversed(_VMAIL_TABLES):
                conn.execute(table.delete())
            for table, rows in sql_rows(fake).items():
                if rows:
                    conn.execute(table.insert(), rows)
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def populated(
    kind: str,
    fake: FakeAccounts,
    stores: AccountStores | None = None,
    *,
    settings: Settings | None = None,
) -> AsyncIterator[AccountBackend]:
    """The backend of ``kind`` holding ``fake``'s data (see the module docstring).

    Args:
        stores: shared servers (the ``account_stores`` fixture); None: private
            ones for this call only.
        settings: for engine pool sizes and LDAP options (LDAP_TIMEOUT...).
    """
    require_kind(kind)
    if kind == "fake":
        yield fake
        return
    own = stores is None
    store = AccountStores() if stores is None else stores
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="accounts-test")
    loop = asyncio.get_running_loop()

    async def run_blocking(func: Callable[..., Any], *args: Any) -> Any:
        return await loop.run_in_executor(executor, func, *args)

    s = settings or account_settings(LDAP_TIMEOUT=scaled(5.0))
    backend: Any = None
    try:
        with store.lease(kind):
            if kind == "ldap":
                from iredapd.backends.ldap import LDAPAccounts, LDAPConfig

                server = await run_blocking(store.slapd)
                basedn = f"o=domains-{secrets.token_hex(4)},{server.suffix}"
                await run_blocking(server.add, ldif_for(fake, basedn))
                config = LDAPConfig(
                    uri=server.uri,
                    basedn=basedn,
                    binddn=server.binddn,
                    bindpw=server.bindpw,
                    timeout=float(s.LDAP_TIMEOUT),
                    connections=int(s.LDAP_CONNECTIONS),
                )
                backend = LDAPAccounts(config, run_blocking)
                await run_blocking(backend.open)
            else:
                from iredapd.backends.sql import SQLAccounts

                url = await run_blocking(store.sql_url, kind)
                await run_blocking(load_sql, url, fake)
                db = Database("vmail", create_engine(url, s), run_blocking)
                backend = SQLAccounts(db)
            try:
                yield backend
            finally:
                await backend.close()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if own:
            store.close()


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def account_stores() -> Iterator[AccountStores]:
    """Servers shared by every populated backend of the test session."""
    stores = AccountStores()
    try:
        yield stores
    finally:
        stores.close()


@pytest.fixture(params=kind_params())
def account_backend_kind(request: pytest.FixtureRequest) -> str:
    """The account backend kind under test: fake, sqlite, mariadb, pgsql, ldap."""
    kind: str = request.param
    require_kind(kind)
    return kind


@pytest.fixture
def populate(
    account_backend_kind: str, account_stores: AccountStores
) -> Callable[..., contextlib.AbstractAsyncContextManager[AccountBackend]]:
    """``populate(fake, settings=None)``: an async context manager yielding the backend."""

    def make(
        fake: FakeAccounts, *, settings: Settings | None = None
    ) -> contextlib.AbstractAsyncContextManager[AccountBackend]:
        return populated(account_backend_kind, fake, account_stores, settings=settings)

    return make


# ---------------------------------------------------------------------------
# A slapd that can be stopped and started again on the same port, with TLS
# (tests/support/slapd.py picks a new port at each start and has no TLS)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """Create a CA and a server certificate signed by it (openssl command line)."""
    openssl = require("openssl", "Debian package openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=scaled(60))

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca_cert), "-days", "2", "-subj", "/CN=iredapd test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    for path in (key, ca_key):
        path.chmod(0o600)
    return TLSFiles(ca_cert, cert, key)


def _restartable_class() -> type:
    from tests.support.slapd import SlapdInstance, SlapdStartError, render_slapd_conf

    class RestartableSlapd(SlapdInstance):  # type: ignore[misc]
        """A SlapdInstance whose later starts reuse the first start's port."""

        tls: TLSFiles | None = None

        def start(self, deadline: float | None = None) -> None:
            if deadline is None:
                deadline = deadline_in(20)
            (self.base / "data").mkdir(parents=True, exist_ok=True)
            conf = render_slapd_conf(self.base, self.suffix)
            if self.tls is not None:
                conf = conf.replace(
                    "\ndatabase ",
                    f"\nTLSCACertificateFile {self.tls.ca_cert}\n"
                    f"TLSCertificateFile {self.tls.server_cert}\n"
                    f"TLSCertificateKeyFile {self.tls.server_key}\n\ndatabase ",
                    1,
                )
            (self.base / "slapd.conf").write_text(conf)
            if not self.port:
                self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [self._slapd, "-f", str(self.base / "slapd.conf"), "-h", self.uri, "-d", "0"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if not self._wait_ready(deadline):
                self.stop()
                text = self.log_path.read_text(errors="replace")
                raise SlapdStartError(f"slapd did not start on {self.uri}:\n{text}")

    return RestartableSlapd


@contextlib.contextmanager
def restartable_slapd(ldif: str | None = None, *, tls: bool = False) -> Iterator[Any]:
    """A started slapd (loaded with ``ldif``, default the base tree) that
    ``stop()``/``start()`` keep on one port; with ``tls``, STARTTLS with a
    throwaway CA (``server.tls.ca_cert``).  Stopped by PID and removed at the end."""
    require_kind("ldap")
    from tests.support.slapd import base_ldif

    base = Path(tempfile.mkdtemp(prefix="iredapd-slapd-restart-"))
    server = _restartable_class()(base)
    try:
        if tls:
            server.tls = make_tls_files(base / "tls")
        server.start()
        text = base_ldif(domains=(), users={}) if ldif is None else ldif
        if text.strip():
            server.add(text)
        yield server
    finally:
        try:
            if server.proc is not None and server.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.proc.pid, signal.SIGCONT)  # in case a test paused it
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
