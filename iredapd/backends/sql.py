"""Mail accounts in iRedMail's SQL ``vmail`` database (MySQL/MariaDB, PostgreSQL, SQLite).

Every question is one or two indexed SELECTs built with SQLAlchemy Core and
bound parameters, run in the daemon's thread pool on an autocommit connection
(:class:`iredapd.storage.db.Database`).  Which rows count follows iRedAPD
(access-policies.md §13, §4.5.1), with these deliberate differences (§15):

* login mismatch (§15 item 8): after the sender is mapped from an alias domain
  to the login's domain, the per-user alias address is looked up again for the
  mapped address, so ``alias@alias-domain`` of ``user@domain`` is allowed;
* the per-user alias pattern ``<user>+%@<domain>`` escapes ``%`` and ``_`` in
  the login name, so ``a_b@x`` no longer matches ``axb+tag@x``;
* ``is_local_domain(..., include_backupmx=False)`` also leaves out an alias
  domain whose target is a backup-MX domain, as iRedAPD's LDAP backend does
  (its SQL backend forgot the target's ``backupmx`` flag);
* a NULL ``accesspolicy`` reads as ``public`` (iRedAPD: the unsupported policy
  ``none``; both let mail through);
* a database error raises BackendUnavailable instead of reading as "not
  local" (iRedAPD logged it and answered False).

Case: inputs arrive lower-cased (the request is normalised).  Columns are
compared with ``=`` as stored, so the indexes are used: on MySQL/MariaDB the
vmail collation is case-insensitive, on PostgreSQL and SQLite comparison is
exact, and addresses must be stored lower-case, as iRedMail's tools store
them (iRedAPD behaves the same way).

Values no vmail column can hold (a NUL character, text that is not valid
UTF-8, or, on a MySQL ``utf8`` (3-byte) column, a 4-byte character such as an
emoji) match nothing; they never make the database look down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.addr import is_domain
from iredapd.backends.base import LoginMatch, PolicyKind
from iredapd.storage.db import Database, Prepared, is_statement_error
from iredapd.storage.schema import (
    alias,
    alias_domain,
    forwardings,
    mailbox,
    maillist_owners,
    maillists,
    moderators,
)
from iredapd.storage.schema import domain as d_tbl

__all__ = ["EPOCH", "SQLAccounts", "like_escape", "to_utc"]

T = TypeVar("T")

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# The LIKE escape character: '/' renders the same on every dialect (a
# backslash would need dialect-specific quoting in ESCAPE '...').
_ESCAPE = "/"


def like_escape(value: str) -> str:
    """``value`` with LIKE's wildcards (``%``, ``_``) and the escape character escaped."""
    return (
        value.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )


def _storable(*values: str) -> bool:
    """False when a value cannot be in any vmail column (so nothing can match it).

    Surrounding white space is refused too: MySQL's PAD SPACE collations would
    match ``user@example.com `` with ``user@example.com`` where PostgreSQL and
    SQLite do not; no address or domain has it.
    """
    for v in values:
        if "\x00" in v or v != v.strip():
            return False
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return False
    return True


def to_utc(value: object) -> dt.datetime:
    """A stored ``passwordlastchange`` as an aware UTC datetime; epoch if unset.

    iRedMail writes the database server's local time (MySQL ``NOW()``), and
    iRedAPD compared it with the local time of the iRedAPD host (usually the
    same machine), so a naive value is read as this host's local time.  NULL,
    MySQL's zero date and anything unparsable mean "never changed" (epoch),
    as in iRedAPD.
    """
    when: dt.datetime
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return EPOCH
    else:
        return EPOCH
    try:
        # naive: this host's local time (astimezone() assumes exactly that)
        return when.astimezone(dt.UTC)
    except (OverflowError, OSError, ValueError):
        return EPOCH


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=sa.String())


# The statements, built and compiled once: a request's lookups only bind
# values (``Prepared`` runs them on the DBAPI cursor where it can).
_ad, _d, _fw = alias_domain.c, d_tbl.c, forwardings.c


def _first(stmt: sa.Select[Any]) -> Prepared:
    return Prepared(stmt.limit(1))


def _own_domain(backupmx: bool) -> Prepared:
    stmt = sa.select(_d.domain).where(_d.domain == _p("domain"), _d.active == 1)
    return _first(stmt if backupmx else stmt.where(_d.backupmx == 0))


def _alias_of_local(backupmx: bool) -> Prepared:
    stmt = (
        sa.select(_ad.target_domain)
        .join(d_tbl, _d.domain == _ad.target_domain)
        .where(_ad.alias_domain == _p("domain"), _d.active == 1)
    )
    return _first(stmt if backupmx else stmt.where(_d.backupmx == 0))


#: (include_backupmx) -> statement
_OWN_DOMAIN = {b: _own_domain(b) for b in (True, False)}
_ALIAS_OF_LOCAL = {b: _alias_of_local(b) for b in (True, False)}
_ALIAS_PAIR = _first(
    sa.select(_ad.alias_domain).where(
        _ad.alias_domain == _p("alias"), _ad.target_domain == _p("target")
    )
)
_ANY_TARGET = _first(sa.select(_ad.target_domain).where(_ad.alias_domain == _p("domain")))
_ANY_DOMAIN = _first(sa.select(_d.domain).where(_d.domain == _p("domain")))
_ALIASES_OF = Prepared(
    sa.select(_ad.alias_domain).where(_ad.target_domain == _p("domain")).order_by(_ad.alias_domain)
)
_PER_USER_ALIAS = _first(
    sa.select(_fw.id).where(
        _fw.address == _p("address"),
        sa.or_(_fw.forwarding == _p("login"), _fw.forwarding.like(_p("pattern"), escape=_ESCAPE)),
        _fw.is_alias == 1,
    )
)
_ALIAS_MEMBER = _first(
    sa.select(_fw.id).where(
        _fw.address == _p("address"),
        _fw.forwarding == _p("login"),
        _fw.is_list == 1,
        _fw.active == 1,
    )
)
_ACTIVE_LIST = _first(
    sa.select(maillists.c.id).where(maillists.c.address == _p("address"), maillists.c.active == 1)
)
_ACCESS_POLICY = {
    kind: _first(sa.select(table.c.accesspolicy).where(table.c.address == _p("address")))
    for kind, table in (("alias", alias), ("maillist", maillists))
}
_ALIAS_MEMBERS = Prepared(
    sa.select(_fw.forwarding).where(_fw.address == _p("address"), _fw.is_list == 1).order_by(_fw.id)
)
_MODERATORS = Prepared(
    sa.select(moderators.c.moderator)
    .where(moderators.c.address == _p("address"))
    .order_by(moderators.c.id)
)
_LISTED = {
    column.name: Prepared(
        sa.select(column.table.c.id)
        .where(
            column.table.c.address.in_(sa.bindparam("p_addresses", expanding=True)),
            column == _p("sender"),
        )
        .limit(1)
    )
    for column in (moderators.c.moderator, maillist_owners.c.owner)
}
# The raw value (no SQLAlchemy date parsing): MySQL may hold a zero date,
# which is "never changed", not an error.
_PASSWORD_CHANGED = _first(
    sa.select(sa.type_coerce(mailbox.c.passwordlastchange, sa.String())).where(
        mailbox.c.username == _p("username")
    )
)


def _one(conn: Connection, stmt: Prepared, **params: Any) -> Any:
    """The first column of the first row, or None."""
    row = stmt.execute(conn, params).first()
    return None if row is None else row[0]


class SQLAccounts:
    """The AccountBackend on the vmail database (see the module docstring)."""

    kind = "sql"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _read(self, func: Callable[[Connection], T], absent: T) -> T:
        """Run a read in the pool; a value no column can hold gives ``absent``."""

        def guarded(conn: Connection) -> T:
            try:
                return func(conn)
            except sa.exc.DBAPIError as e:
                if is_statement_error(e):
                    return absent
                raise

        return await self.db.run(guarded, idempotent=True)

    # -- domains ---------------------------------------------------------------

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        """See AccountBackend (§13.2 ``is_local_domain``)."""
        if not is_domain(domain) or not _storable(domain):
            return False

        def query(conn: Connection) -> bool:
            if _one(conn, _OWN_DOMAIN[include_backupmx], p_domain=domain) is not None:
                return True
            if not include_alias:
                return False
            return _one(conn, _ALIAS_OF_LOCAL[include_backupmx], p_domain=domain) is not None

        return await self._read(query, False)

    async def alias_target_domain(self, domain: str) -> str | None:
        """See AccountBackend (§13.2 ``get_alias_target_domain``)."""
        if not is_domain(domain) or not _storable(domain):
            return None
        target = await self._read(
            lambda conn: _one(conn, _ALIAS_OF_LOCAL[True], p_domain=domain), None
        )
        return str(target).lower() if target else None

    async def is_alias_domain_of(self, alias_domain_name: str, target_domain: str) -> bool:
        """See AccountBackend: a raw ``alias_domain`` row, no status checks (§4.5.1)."""
        if not _storable(alias_domain_name, target_domain):
            return False
        return await self._read(
            lambda conn: (
                _one(conn, _ALIAS_PAIR, p_alias=alias_domain_name, p_target=target_domain)
                is not None
            ),
            False,
        )

    async def domain_names(self, domain: str) -> list[str]:
        """See AccountBackend: the primary domain (any status) and its alias domains."""
        if not is_domain(domain) or not _storable(domain):
            return []

        def query(conn: Connection) -> list[str]:
            target = _one(conn, _ANY_TARGET, p_domain=domain)
            primary = str(target) if target else domain
            if _one(conn, _ANY_DOMAIN, p_domain=primary) is None:
                return []
            names = [primary.lower()]
            for (name,) in _ALIASES_OF.execute(conn, {"p_domain": primary}).rows:
                if name and name.lower() not in names:
                    names.append(name.lower())
            return names

        return await self._read(query, [])

    # -- reject_sender_login_mismatch ------------------------------------------

    async def login_match(
        self, sasl_username: str, sender: str, *, strictly: bool, list_member: bool
    ) -> LoginMatch:
        """See AccountBackend (§4.5.1, with the per-user alias retried for the
        alias-domain-mapped sender and LIKE wildcards escaped)."""
        if not _storable(sasl_username, sender):
            return LoginMatch(False)
        sasl_user, _, sasl_domain = sasl_username.partition("@")
        sender_name, _, sender_domain = sender.partition("@")
        pattern = f"{like_escape(sasl_user)}+%@{like_escape(sasl_domain)}"

        def per_user_alias(conn: Connection, address: str) -> bool:
            found = _one(
                conn, _PER_USER_ALIAS, p_address=address, p_login=sasl_username, p_pattern=pattern
            )
            return found is not None

        def query(conn: Connection) -> LoginMatch:
            real_sender = sender
            if strictly:
                if per_user_alias(conn, sender):
                    return LoginMatch(True, reason="per-user alias address")
                if sender_domain != sasl_domain:
                    pair = {"p_alias": sender_domain, "p_target": sasl_domain}
                    if _one(conn, _ALIAS_PAIR, **pair) is not None:
                        real_sender = f"{sender_name}@{sasl_domain}"
                        if sender_name == sasl_user:
                            return LoginMatch(True, reason="same user at an alias domain")
                        if per_user_alias(conn, real_sender):
                            return LoginMatch(
                                True, reason="per-user alias address at an alias domain"
                            )
            if list_member:
                member = {"p_address": real_sender, "p_login": sasl_username}
                if _one(conn, _ALIAS_MEMBER, **member) is not None:
                    return LoginMatch(True, reason="member of the mail alias")
                if _one(conn, _ACTIVE_LIST, p_address=real_sender) is not None:
                    return LoginMatch(False, mlmmj_list=real_sender)
            return LoginMatch(False)

        return await self._read(query, LoginMatch(False))

    # -- access policies -----------------------------------------------------

    async def access_policy(self, address: str, kind: PolicyKind) -> str | None:
        """See AccountBackend (§13.3); no ``active`` check, as in iRedAPD."""
        if not _storable(address):
            return None
        stmt = _ACCESS_POLICY["alias" if kind == "alias" else "maillist"]

        def query(conn: Connection) -> tuple[bool, Any]:
            row = stmt.execute(conn, {"p_address": address}).first()
            return (False, None) if row is None else (True, row[0])

        found, value = await self._read(query, (False, None))
        if not found:
            return None
        return str(value or "").lower() or "public"

    async def alias_members(self, address: str) -> list[str]:
        """See AccountBackend: ``forwardings`` rows with ``is_list=1`` (no ``active`` check)."""
        if not _storable(address):
            return []
        return await self._read(
            lambda conn: _lowered(_ALIAS_MEMBERS.execute(conn, {"p_address": address}).rows), []
        )

    async def moderators(self, address: str) -> list[str]:
        """See AccountBackend: ``moderators`` rows of the alias or list."""
        if not _storable(address):
            return []
        return await self._read(
            lambda conn: _lowered(_MODERATORS.execute(conn, {"p_address": address}).rows), []
        )

    async def has_moderator(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend (§8 step 7)."""
        return await self._is_listed("moderator", addresses, sender)

    async def has_owner(self, addresses: Sequence[str], sender: str) -> bool:
        """See AccountBackend (§8 step 8)."""
        return await self._is_listed("owner", addresses, sender)

    async def _is_listed(self, column: str, addresses: Sequence[str], sender: str) -> bool:
        """Whether ``column`` holds ``sender`` in a row of one of ``addresses``."""
        wanted = [a for a in addresses if _storable(a)]
        if not wanted or not _storable(sender):
            return False
        params = {"p_addresses": wanted, "p_sender": sender}
        return await self._read(
            lambda conn: _LISTED[column].execute(conn, params).first() is not None, False
        )

    # -- passwords -----------------------------------------------------------

    async def password_last_change(self, username: str) -> dt.datetime | None:
        """See AccountBackend (§10): ``mailbox.passwordlastchange``; no ``active`` check."""
        if not _storable(username):
            return None

        def query(conn: Connection) -> tuple[bool, Any]:
            row = _PASSWORD_CHANGED.execute(conn, {"p_username": username}).first()
            return (False, None) if row is None else (True, row[0])

        found, value = await self._read(query, (False, None))
        return to_utc(value) if found else None

    async def close(self) -> None:
        """Release the pooled connections."""
        self.db.dispose()


def _lowered(rows: list[tuple[Any, ...]]) -> list[str]:
    return [str(r[0]).lower() for r in rows if r[0] is not None]
