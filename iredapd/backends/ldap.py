"""Mail accounts in iRedMail's LDAP directory (OpenLDAP with iredmail.schema).

python-ldap is synchronous and its connection objects are not thread-safe, so
searches run in the daemon's thread pool on a small pool of connections
(``LDAP_CONNECTIONS``), each used by one thread at a time; an asyncio
semaphore on the event loop keeps at most that many searches in flight, so
waiting for a connection never holds a thread.

Connections (access-policies.md §12.1, with §15 item 32 fixed):

* simple bind as ``ldap_binddn``/``ldap_bindpw``; a failed bind at startup
  stops the daemon (iRedAPD logged it and went on anonymously);
* ``ldap_enable_tls``: STARTTLS; certificates are verified unless
  ``LDAP_TLS_REQUIRE_CERT = False`` (iRedAPD never verified), against
  ``LDAP_TLS_CA_CERT_FILE`` or the system's CAs;
* ``LDAP_TIMEOUT`` bounds the TCP connect and every operation;
* a connection that fails is dropped (with every idle one: after a server
  restart they are all dead) and a new one is made on the next search.  A
  search that meets a dead *pooled* connection is retried once on a fresh
  one, so the first request after a restart is answered; when the server is
  really down the fresh connection fails too and the search raises
  BackendUnavailable.

Every value put into a filter is escaped (RFC 4515, ``escape_filter_chars``),
so ``*)(mail=*`` is a literal that matches nothing.  Values come back decoded
as UTF-8 and lower-cased where they are addresses or domains (the directory
matches them case-insensitively; iRedAPD compared them case-sensitively in
Python, so an upper-case value in the directory never matched).

The protocol methods follow §12.2 and §4.5.2, with §15 items 6 and 9 fixed:
login mismatch considers alias domains like the SQL backend does, and the
mlmmj list probe looks for the sender's list only (iRedAPD: any mlmmj list in
the directory, even without ALLOWED_LOGIN_MISMATCH_LIST_MEMBER).  The
LDAP-only lookups below serve the ``ldap_maillist_access_policy`` plugin (§9).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import ldap
import ldap.dn
import ldap.filter

from iredapd.addr import is_domain
from iredapd.backends.base import BackendUnavailable, LoginMatch, MailList, PolicyKind
from iredapd.config import ConfigError, Settings

__all__ = ["EPOCH", "Entry", "LDAPAccounts", "LDAPConfig", "domain_dn_of", "escape"]

log = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

#: (dn, attributes): attribute names lower-cased, values decoded.
Entry = tuple[str, dict[str, list[str]]]
RunBlocking = Callable[..., Awaitable[Any]]

# Request no attributes (RFC 4511 4.5.1.8): iRedAPD asked for a dummy 'dn'.
_NO_ATTRS = ["1.1"]
# The account classes iRedAPD's get_account_ldif looks for (§12.3).
_ACCOUNT_CLASSES = "(|(objectClass=mailUser)(objectClass=mailList)(objectClass=mailAlias))"
#: What the mailing-list access policy reads of a list (§9.1), plus its addresses.
LIST_ATTRS = (
    "objectClass",
    "mail",
    "shadowAddress",
    "accountStatus",
    "listAllowedUser",
    "accessPolicy",
    "enabledService",
    "listModerator",
    "listOwner",
)
# Errors that mean "the server did not answer" (anything else from the
# directory is also reported as BackendUnavailable, never as "not found").
_DOWN = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE, ldap.BUSY)


def escape(value: str) -> str:
    """``value`` escaped for an LDAP filter (RFC 4515: ``*``, ``(``, ``)``, ``\\``, NUL)."""
    return str(ldap.filter.escape_filter_chars(value))


def _encodable(*values: str) -> bool:
    """False for values that match nothing: text that cannot be sent as UTF-8 (lone
    surrogates), with a NUL character or surrounding white space.  slapd's
    matching rules ignore both (``user@example.com\\00`` and ``user@example.com ``
    would find ``user@example.com``, escaped or not); no address has them."""
    try:
        for v in values:
            v.encode("utf-8")
            if "\x00" in v or v != v.strip():
                return False
    except UnicodeEncodeError:
        return False
    return True


def _any_of(attr: str, values: Iterable[str]) -> str:
    """``(attr=v)`` for one value, ``(|(attr=v1)(attr=v2)...)`` for several."""
    parts = [f"({attr}={escape(v)})" for v in dict.fromkeys(values)]
    return parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"


def _addresses(values: Iterable[str]) -> str:
    """``(|(mail=v)(shadowAddress=v)...)`` for the given addresses."""
    parts = [f"(mail={escape(v)})(shadowAddress={escape(v)})" for v in dict.fromkeys(values)]
    return "(|" + "".join(parts) + ")"


def domain_dn_of(dn: str) -> str | None:
    """The DN of the ``domainName=...`` entry an account DN sits under (None if none)."""
    try:
        rdns = ldap.dn.str2dn(dn)
    except ldap.DECODING_ERROR:
        return None
    for i, rdn in enumerate(rdns):
        if any(attr.lower() == "domainname" for attr, _value, _flags in rdn):
            return str(ldap.dn.dn2str(rdns[i:]))
    return None


@dataclass(frozen=True, slots=True)
class LDAPConfig:
    """Connection settings (from ``ldap_*`` and ``LDAP_*`` settings)."""

    uri: str
    basedn: str
    binddn: str
    bindpw: str
    starttls: bool = False
    require_cert: bool = True
    ca_cert_file: str = ""
    timeout: float = 5.0
    connections: int = 4

    @classmethod
    def from_settings(cls, s: Settings) -> LDAPConfig:
        """The configuration the settings describe; ConfigError if unusable."""
        if not s.ldap_binddn or not s.ldap_bindpw:
            # An empty password makes a simple bind "unauthenticated" (RFC 4513
            # 5.1.2): slapd accepts it as anonymous.  Never fall back to that.
            raise ConfigError("ldap_binddn and ldap_bindpw must both be set for backend = 'ldap'")
        return cls(
            uri=s.ldap_uri,
            basedn=s.ldap_basedn,
            binddn=s.ldap_binddn,
            bindpw=s.ldap_bindpw,
            starttls=bool(s.ldap_enable_tls),
            require_cert=bool(s.LDAP_TLS_REQUIRE_CERT),
            ca_cert_file=s.LDAP_TLS_CA_CERT_FILE,
            timeout=float(s.LDAP_TIMEOUT),
            connections=max(1, int(s.LDAP_CONNECTIONS)),
        )


def _describe(e: BaseException) -> str:
    """python-ldap's error text (``desc: info``), without the exception's repr noise."""
    arg = e.args[0] if e.args else None
    if isinstance(arg, dict):
        desc = str(arg.get("desc", type(e).__name__))
        info = str(arg.get("info", "")).strip()
        return f"{desc}: {info}" if info else desc
    return str(e) or type(e).__name__


class _Pool:
    """Idle connections; callers hold one at a time (thread-safe, bounded)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self.opened = 0  # connections made so far (tests and stats read it)

    def count_new(self) -> None:
        with self._lock:
            self.opened += 1

    def take(self) -> Any | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def give(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        _unbind(conn)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _unbind(conn)


def _unbind(conn: Any) -> None:
    with contextlib.suppress(ldap.LDAPError):  # already dead: nothing to release
        conn.unbind_s()


def _decode(attrs: dict[str, list[bytes]]) -> dict[str, list[str]]:
    return {
        name.lower(): [v.decode("utf-8", "replace") for v in values]
        for name, values in attrs.items()
    }


def _lower(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v.lower() for v in values))


class LDAPAccounts:
    """The AccountBackend on iRedMail's directory (see the module docstring)."""

    kind = "ldap"

    def __init__(self, config: LDAPConfig, run_blocking: RunBlocking) -> None:
        self.config = config
        self.basedn = config.basedn
        self._run_blocking = run_blocking
        self._pool = _Pool(config.connections)
        self._slots = asyncio.Semaphore(config.connections)

    @classmethod
    def from_settings(cls, settings: Settings, run_blocking: RunBlocking) -> LDAPAccounts:
        """A backend for the ``ldap_*`` settings (no connection yet; see :meth:`open`)."""
        return cls(LDAPConfig.from_settings(settings), run_blocking)

    # -- connections (blocking; run in the pool) ---------------------------

    def _connect(self) -> Any:
        """A new bound connection; raises python-ldap's errors."""
        c = self.config
        conn = ldap.initialize(c.uri)
        try:
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, c.timeout)
            conn.set_option(ldap.OPT_TIMEOUT, c.timeout)
            conn.set_option(
                ldap.OPT_X_TLS_REQUIRE_CERT,
                ldap.OPT_X_TLS_DEMAND if c.require_cert else ldap.OPT_X_TLS_NEVER,
            )
            if c.ca_cert_file:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, c.ca_cert_file)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # apply the TLS options above
            if c.starttls and not c.uri.lower().startswith("ldaps:"):
                conn.start_tls_s()
            conn.simple_bind_s(c.binddn, c.bindpw)
        except BaseException:
            _unbind(conn)
            raise
        self._pool.count_new()
        return conn

    def open(self) -> None:
        """Connect and bind once (blocking; at startup): fail now, not at the first mail.

        Raises:
            ConfigError: the bind was refused (wrong ldap_binddn/ldap_bindpw)
                or the URI is unusable.
            BackendUnavailable: the server did not answer (or TLS failed).
        """
        try:
            conn = self._connect()
        except ldap.INVALID_CREDENTIALS:
            raise ConfigError(
                f"LDAP bind as {self.config.binddn!r} to {self.config.uri} failed: "
                "invalid credentials (check ldap_binddn / ldap_bindpw)"
            ) from None
        except (
            ldap.INAPPROPRIATE_AUTH,
            ldap.STRONG_AUTH_REQUIRED,
            ldap.CONFIDENTIALITY_REQUIRED,
        ) as e:
            raise ConfigError(f"LDAP bind to {self.config.uri} refused: {_describe(e)}") from None
        except ldap.LDAPError as e:
            raise BackendUnavailable(f"LDAP server {self.config.uri}: {_describe(e)}") from None
        self._pool.give(conn)

    def _search_sync(self, base: str, scope: int, flt: str, attrs: list[str]) -> list[Entry]:
        for attempt in (1, 2):
            conn = self._pool.take()
            fresh = conn is None
            try:
                if conn is None:
                    conn = self._connect()
                raw = conn.search_ext_s(
                    base, scope, flt, attrlist=attrs, timeout=self.config.timeout
                )
            except ldap.NO_SUCH_OBJECT:
                self._pool.give(conn)
                return []
            except ldap.LDAPError as e:
                if conn is not None:
                    _unbind(conn)
                if isinstance(e, _DOWN):
                    self._pool.clear()  # after a restart every idle connection is dead
                    if attempt == 1 and not fresh and isinstance(e, ldap.SERVER_DOWN):
                        continue  # a pooled connection the server had dropped: once more
                raise BackendUnavailable(f"LDAP server {self.config.uri}: {_describe(e)}") from None
            except BaseException:
                if conn is not None:
                    _unbind(conn)
                raise
            self._pool.give(conn)
            return [(dn, _decode(a)) for dn, a in raw if dn is not None]
        raise AssertionError("unreachable")  # pragma: no cover

    async def search(
        self, base: str, scope: int, flt: str, attrs: Sequence[str] = ()
    ) -> list[Entry]:
        """Search (filter values must already be escaped); [] if ``base`` does not exist."""
        async with self._slots:
            result: list[Entry] = await self._run_blocking(
                self._search_sync, base, scope, flt, list(attrs) or _NO_ATTRS
            )
            return result

    async def _domains(self, flt: str, attrs: Sequence[str] = ()) -> list[Entry]:
        return await self.search(self.basedn, ldap.SCOPE_ONELEVEL, flt, attrs)

    async def _subtree(self, flt: str, attrs: Sequence[str] = ()) -> list[Entry]:
        return await self.search(self.basedn, ldap.SCOPE_SUBTREE, flt, attrs)

    # -- domains (§12.2) ---------------------------------------------------

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        """See AccountBackend: an active mailDomain with ``enabledService=mail``."""
        if not is_domain(domain) or not _encodable(domain):
            return False
        d = escape(domain)
        names = (
            f"(|(domainName={d})(domainAliasName={d}))" if include_alias else f"(domainName={d})"
        )
        backupmx = "" if include_backupmx else "(!(domainBackupMX=yes))"
        flt = (
            "(&(objectClass=mailDomain)(accountStatus=active)(enabledService=mail)"
            f"{names}{backupmx})"
        )
        return bool(await self._domains(flt))

    async def alias_target_domain(self, domain: str) -> str | None:
        """See AccountBackend: the active domain whose ``domainAliasName`` it is."""
        if not is_domain(domain) or not _encodable(domain):
            return None
        flt = f"(&(objectClass=mailDomain)(accountStatus=active)(domainAliasName={escape(domain)}))"
        for _dn, attrs in await self._domains(flt, ["domainName"]):
            for name in attrs.get("domainname", []):
                return name.lower()
        return None

    async def is_alias_domain_of(self, alias_domain: str, target_domain: str) -> bool:
        """See AccountBackend: ``target_domain``'s entry lists ``alias_domain`` (no status)."""
        if not _encodable(alias_domain, target_domain):
            return False
        flt = (
            f"(&(objectClass=mailDomain)(domainName={escape(target_domain)})"
            f"(domainAliasName={escape(alias_domain)}))"
        )
        return bool(await self._domains(flt))

    async def domain_names(self, domain: str) -> list[str]:
        """See AccountBackend (§12.2 get_primary_and_alias_domains; [] when not hosted)."""
        if not is_domain(domain) or not _encodable(domain):
            return []
        d = escape(domain)
        flt = f"(&(objectClass=mailDomain)(|(domainName={d})(domainAliasName={d})))"
        for _dn, attrs in await self._domains(flt, ["domainName", "domainAliasName"]):
            primary = _lower(attrs.get("domainname", []))
            return _lower([*primary, *sorted(_lower(attrs.get("domainaliasname", [])))])
        return []

    # -- login mismatch (§4.5.2) -------------------------------------------

    async def login_match(
        self, sasl_username: str, sender: str, *, strictly: bool, list_member: bool
    ) -> LoginMatch:
        """See AccountBackend.

        U (alias address of the login), L (login is a member of the list
        ``sender``), A (login is a member of the mail alias ``sender``) in one
        search, as iRedAPD; with STRICTLY the sender is also tried at the
        login's domain when its domain is an alias domain of it (§15 item 9),
        and with LIST_MEMBER an active mlmmj list at the sender's address
        sets ``mlmmj_list`` (§15 item 6).
        """
        if not sasl_username or not sender or not _encodable(sasl_username, sender):
            return LoginMatch(False)
        sasl_user, _, sasl_domain = sasl_username.partition("@")
        sender_name, _, sender_domain = sender.partition("@")
        senders = [sender]
        if (
            strictly
            and sender_domain != sasl_domain
            and await self.is_alias_domain_of(sender_domain, sasl_domain)
        ):
            if sender_name == sasl_user:
                return LoginMatch(True, reason="same user at an alias domain")
            senders.append(f"{sender_name}@{sasl_domain}")
        if not (strictly or list_member):
            return LoginMatch(False)
        s = escape(sasl_username)
        parts = []
        if strictly:
            parts.append(f"(&(objectClass=mailUser)(mail={s}){_any_of('shadowAddress', senders)})")
        if list_member:
            parts.append(
                f"(&(objectClass=mailUser)(|(mail={s})(shadowAddress={s}))"
                f"{_any_of('memberOfGroup', senders)})"
            )
            parts.append(
                f"(&(objectClass=mailAlias){_addresses(senders)}(mailForwardingAddress={s}))"
            )
        flt = parts[0] if len(parts) == 1 else "(|" + "".join(parts) + ")"
        found = await self._subtree(flt, ["objectClass"])
        if found:
            classes = {c.lower() for _dn, a in found for c in a.get("objectclass", [])}
            if "mailalias" in classes:
                return LoginMatch(True, reason="member of the mail alias")
            return LoginMatch(True, reason="alias address or list membership")
        if list_member:
            flt = (
                "(&(objectClass=mailList)(enabledService=mlmmj)(accountStatus=active)"
                f"{_addresses(senders)})"
            )
            for _dn, attrs in await self._subtree(flt, ["mail"]):
                mails = _lower(attrs.get("mail", []))
                return LoginMatch(False, mlmmj_list=mails[0] if mails else senders[-1])
        return LoginMatch(False)

    # -- aliases and lists ---------------------------------------------------

    async def _account(self, address: str, classes: str, attrs: Sequence[str]) -> list[Entry]:
        if not address or not _encodable(address):
            return []
        return await self._subtree(f"(&{classes}{_addresses([address])})", attrs)

    async def access_policy(self, address: str, kind: PolicyKind) -> str | None:
        """See AccountBackend: ``accessPolicy`` of the mailAlias / mailList entry."""
        cls = "(objectClass=mailAlias)" if kind == "alias" else "(objectClass=mailList)"
        for _dn, attrs in await self._account(address, cls, ["accessPolicy"]):
            values = attrs.get("accesspolicy", [])
            return (values[0].lower() if values else "") or "public"
        return None

    async def alias_members(self, address: str) -> list[str]:
        """See AccountBackend: ``mailForwardingAddress`` of the mailAlias entry."""
        for _dn, attrs in await self._account(
            address, "(objectClass=mailAlias)", ["mailForwardingAddress"]
        ):
            return _lower(attrs.get("mailforwardingaddress", []))
        return []

    async def moderators(self, address: str) -> list[str]:
        """See AccountBackend: ``listModerator`` of the list or alias entry."""
        found = await self._account(
            address, "(|(objectClass=mailList)(objectClass=mailAlias))", ["listModerator"]
        )
        return _lower(v for _dn, a in found for v in a.get("listmoderator", []))

    async def has_moderator(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        wanted = [a for a in addresses if a and _encodable(a)]
        if not wanted or not _encodable(sender):
            return False
        flt = (
            f"(&(|(objectClass=mailList)(objectClass=mailAlias)){_addresses(wanted)}"
            f"(listModerator={escape(sender)}))"
        )
        return bool(await self._subtree(flt))

    async def has_owner(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend."""
        wanted = [a for a in addresses if a and _encodable(a)]
        if not wanted or not _encodable(sender):
            return False
        flt = f"(&(objectClass=mailList){_addresses(wanted)}(listOwner={escape(sender)}))"
        return bool(await self._subtree(flt))

    # -- passwords (§10) -------------------------------------------------------

    async def password_last_change(self, username: str) -> dt.datetime | None:
        """See AccountBackend: ``shadowLastChange`` (days since 1970-01-01, UTC midnight).

        The user is found by ``mail`` or ``shadowAddress`` (iRedMail lets users
        log in with an alias address).  No attribute: epoch (iRedAPD's 0).  A
        value that is not a number: None and a warning (iRedAPD raised, which
        let the mail through).
        """
        # iRedAPD looked for any account class; only users log in (and only
        # users have a password), so a list address is "no such user" here.
        if not username or not _encodable(username):
            return None
        flt = f"(&(!(domainStatus=disabled)){_addresses([username])}(objectClass=mailUser))"
        found = await self._subtree(flt, ["shadowLastChange"])
        if not found:
            return None
        entry = found[0]
        values = entry[1].get("shadowlastchange", [])
        if not values:
            return EPOCH
        try:
            return EPOCH + dt.timedelta(days=int(values[0].strip()))
        except (ValueError, OverflowError):
            log.warning("%s: shadowLastChange %r is not a number of days", entry[0], values[0])
            return None

    # -- LDAP-only lookups (ldap_maillist_access_policy) ---------------------

    async def account_entry(self, address: str, attrs: Sequence[str]) -> Entry | None:
        """iRedAPD's get_account_ldif (§12.3): the first user, list or alias with
        ``mail`` or ``shadowAddress`` = ``address`` whose domain is not disabled."""
        if not address or not _encodable(address):
            return None
        flt = f"(&(!(domainStatus=disabled)){_addresses([address])}{_ACCOUNT_CLASSES})"
        found = await self._subtree(flt, attrs)
        return found[0] if found else None

    async def mail_list(self, address: str) -> MailList | None:
        """The account ``address`` as the list access policy sees it (§9.1); None if none."""
        entry = await self.account_entry(address, LIST_ATTRS)
        if entry is None:
            return None
        dn, a = entry
        mails = _lower(a.get("mail", []))
        policies = a.get("accesspolicy", [])
        return MailList(
            address=mails[0] if mails else address,
            object_classes=tuple(_lower(a.get("objectclass", []))),
            account_status=tuple(a.get("accountstatus", [])),
            access_policy=policies[0].lower() if policies else "",
            enabled_services=tuple(_lower(a.get("enabledservice", []))),
            allowed_users=tuple(_lower(a.get("listalloweduser", []))),
            moderators=tuple(_lower(a.get("listmoderator", []))),
            owners=tuple(_lower(a.get("listowner", []))),
            extra={"shadowaddress": tuple(_lower(a.get("shadowaddress", [])))},
            dn=dn,
        )

    async def list_members(
        self, base: str, lists: Sequence[str], *, with_list_entry: bool = False
    ) -> set[str]:
        """Addresses (mail, shadowAddress) of the members of the lists ``lists`` (§9.3).

        Members are mail users and external users with ``memberOfGroup`` = a
        list address, under ``base`` (the list's domain).  Plain
        (``membersonly``): active members only.  ``with_list_entry``
        (``membersandmoderatorsonly``): members whatever their status, plus the
        list entry's own mail, shadowAddress and listAllowedUser, as iRedAPD.
        """
        names = [x for x in lists if x and _encodable(x)]
        if not names:
            return set()
        groups = _any_of("memberOfGroup", names)
        classes = "(|(objectClass=mailUser)(objectClass=mailExternalUser))"
        if with_list_entry:
            flt = f"(|(&{groups}{classes})(&(objectClass=mailList){_any_of('mail', names)}))"
            attrs = ["mail", "shadowAddress", "listAllowedUser"]
        else:
            flt = f"(&(accountStatus=active){groups}{classes})"
            attrs = ["mail", "shadowAddress"]
        found = await self.search(base, ldap.SCOPE_SUBTREE, flt, attrs)
        return {v.lower() for _dn, a in found for name in attrs for v in a.get(name.lower(), [])}

    async def shadow_addresses(self, users_base: str, users: Sequence[str]) -> set[str]:
        """mail and shadowAddress of the users (``enabledService=shadowaddress``) that
        have one of ``users`` as an address, one level under ``users_base`` (§9.3)."""
        wanted = [u for u in users if u and _encodable(u)]
        if not wanted:
            return set()
        flt = f"(&(objectClass=mailUser)(enabledService=shadowaddress){_addresses(wanted)})"
        found = await self.search(users_base, ldap.SCOPE_ONELEVEL, flt, ["mail", "shadowAddress"])
        return {
            v.lower() for _dn, a in found for k in ("mail", "shadowaddress") for v in a.get(k, [])
        }

    async def alias_domain_names(self, domains: Sequence[str]) -> set[str]:
        """domainName and domainAliasName of the domains (``enabledService=domainalias``)
        that have one of ``domains`` as a name (§9.3 moderatorsonly, §15 item 24)."""
        wanted = [d for d in domains if d and _encodable(d)]
        if not wanted:
            return set()
        names = (
            "(|"
            + "".join(
                f"(domainName={escape(d)})(domainAliasName={escape(d)})"
                for d in dict.fromkeys(wanted)
            )
            + ")"
        )
        flt = f"(&(objectClass=mailDomain)(enabledService=domainalias){names})"
        found = await self._domains(flt, ["domainName", "domainAliasName"])
        return {
            v.lower()
            for _dn, a in found
            for k in ("domainname", "domainaliasname")
            for v in a.get(k, [])
        }

    async def close(self) -> None:
        """Unbind every idle connection."""
        try:
            await self._run_blocking(self._pool.clear)
        except RuntimeError:  # the thread pool is already shut down
            self._pool.clear()
