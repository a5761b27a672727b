"""``iredapd-accounts``: manage mail accounts in the SQL vmail database.

For the embedded default (SQLite under ``DATA_DIR``) and for trying things
out: add a domain and a mailbox, then ask ``iredapd-query`` for a verdict::

    iredapd-accounts -o DATA_DIR=var domain add example.com
    iredapd-accounts -o DATA_DIR=var mailbox add user@example.com
    iredapd-query -o DATA_DIR=var -o "plugins=['reject_sender_login_mismatch']" \\
        sender=user@example.com recipient=x@example.org client_address=203.0.113.9

(the forged-sender check: an unauthenticated sender of a hosted domain gets
``REJECT SMTP AUTH is required for users under this sender domain``).

On an iRedMail server (``backend = 'mysql'`` or ``'pgsql'``) it writes to
iRedMail's vmail tables, as iRedAdmin would for the columns the policy
server reads; it never creates tables there.  With ``backend = 'ldap'``
accounts live in the directory: use iRedAdmin or ldapmodify.  A running
daemon sees changes within ``CACHE_TTL`` seconds.

Exit status: 0 done, 2 bad arguments, 65 the account exists / does not exist,
69 the database is down, 78 bad settings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.addr import is_domain, is_email, strip_extension
from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_USAGE,
    add_config_arguments,
    database_engine,
    database_error,
    fail,
    load_config,
    transaction,
)
from iredapd.storage.schema import (
    alias,
    alias_domain,
    domain,
    forwardings,
    mailbox,
    maillist_owners,
    maillists,
    moderators,
)

__all__ = ["main"]

PROG = "iredapd-accounts"
EX_DATAERR = 65  # sysexits(3): the account exists already / does not exist
NOT_FOR_LDAP = (
    "backend = 'ldap': accounts live in the LDAP directory (use iRedAdmin or "
    "ldapmodify); this tool manages the SQL vmail database"
)

POLICIES = (
    "public",
    "domain",
    "subdomain",
    "membersonly",
    "moderatorsonly",
    "allowedonly",
    "membersandmoderatorsonly",
)
EPOCH_TEXT = "1970-01-01 00:00:00"


class Refused(Exception):
    """The change cannot be made (exists, missing, still in use)."""


class BadValue(Exception):
    """An argument is not an address, a domain, a date, a policy."""


# -- argument values -----------------------------------------------------------


def _domain(value: str) -> str:
    v = value.strip().lower()
    if not is_domain(v):
        raise BadValue(f"not a domain name: {value!r}")
    return v


def _address(value: str) -> str:
    v = value.strip().lower()
    if not is_email(v):
        raise BadValue(f"not an e-mail address: {value!r}")
    return v


def _policy(value: str) -> str:
    v = value.strip().lower()
    if v not in POLICIES:
        raise BadValue(f"unknown access policy {value!r} (one of: {', '.join(POLICIES)})")
    return v


def _changed(value: str | None) -> dt.datetime:
    """When the password last changed, as iRedMail stores it (local time, naive)."""
    if value is None or value == "now":
        return dt.datetime.now().replace(microsecond=0)
    if value == "never":
        return dt.datetime.fromisoformat(EPOCH_TEXT)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadValue(
            f"not a date: {value!r} (YYYY-MM-DD, 'YYYY-MM-DD HH:MM', now or never)"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    return when.replace(microsecond=0)


def _domain_of(address: str) -> str:
    return address.partition("@")[2]


# -- database ------------------------------------------------------------------


def _exists(conn: Connection, column: sa.Column[Any], value: str) -> bool:
    return conn.execute(sa.select(column).where(column == value).limit(1)).first() is not None


def _need_domain(conn: Connection, name: str) -> None:
    if not _exists(conn, domain.c.domain, name):
        raise Refused(f"domain {name} is not hosted here (add it first: domain add {name})")


def _address_taken(conn: Connection, address: str) -> str | None:
    for what, column in (
        ("a mailbox", mailbox.c.username),
        ("a mail alias", alias.c.address),
        ("a mailing list", maillists.c.address),
    ):
        if _exists(conn, column, address):
            return what
    alias_row = sa.select(forwardings.c.id).where(
        forwardings.c.address == address, forwardings.c.is_alias == 1
    )
    if conn.execute(alias_row.limit(1)).first() is not None:
        return "a per-user alias address"
    return None


def _need_free(conn: Connection, address: str) -> None:
    taken = _address_taken(conn, address)
    if taken:
        raise Refused(f"{address} is already {taken}")


# -- commands (each gets a connection in a transaction) -----------------------


def domain_add(conn: Connection, a: argparse.Namespace) -> str:
    name = _domain(a.name)
    if _exists(conn, domain.c.domain, name) or _exists(conn, alias_domain.c.alias_domain, name):
        raise Refused(f"domain {name} exists already")
    conn.execute(
        domain.insert().values(
            domain=name, backupmx=int(a.backup_mx), active=int(not a.disabled), transport="dovecot"
        )
    )
    return f"added domain {name}"


def domain_remove(conn: Connection, a: argparse.Namespace) -> str:
    name = _domain(a.name)
    _need_domain(conn, name)
    for what, column in (
        ("mailboxes", mailbox.c.domain),
        ("mail aliases", alias.c.domain),
        ("mailing lists", maillists.c.domain),
    ):
        if _exists(conn, column, name):
            raise Refused(f"domain {name} still has {what}; remove them first")
    conn.execute(alias_domain.delete().where(alias_domain.c.target_domain == name))
    conn.execute(domain.delete().where(domain.c.domain == name))
    return f"removed domain {name} (and its alias domains)"


def domain_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(domain.c.domain, domain.c.active, domain.c.backupmx).order_by(domain.c.domain)
    )
    return [
        {"domain": r.domain, "active": bool(r.active), "backupmx": bool(r.backupmx)} for r in rows
    ]


def alias_domain_add(conn: Connection, a: argparse.Namespace) -> str:
    name, target = _domain(a.alias), _domain(a.target)
    _need_domain(conn, target)
    if _exists(conn, domain.c.domain, name) or _exists(conn, alias_domain.c.alias_domain, name):
        raise Refused(f"domain {name} exists already")
    conn.execute(alias_domain.insert().values(alias_domain=name, target_domain=target, active=1))
    return f"added alias domain {name} -> {target}"


def alias_domain_remove(conn: Connection, a: argparse.Namespace) -> str:
    name = _domain(a.alias)
    if not conn.execute(alias_domain.delete().where(alias_domain.c.alias_domain == name)).rowcount:
        raise Refused(f"{name} is not an alias domain")
    return f"removed alias domain {name}"


def alias_domain_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    q = sa.select(alias_domain.c.alias_domain, alias_domain.c.target_domain).order_by(
        alias_domain.c.alias_domain
    )
    return [{"alias_domain": r[0], "target_domain": r[1]} for r in conn.execute(q)]


def mailbox_add(conn: Connection, a: argparse.Namespace) -> str:
    user = _address(a.address)
    changed = _changed(a.password_changed)
    local, _, name = user.partition("@")
    _need_domain(conn, name)
    _need_free(conn, user)
    conn.execute(
        mailbox.insert().values(
            username=user,
            domain=name,
            maildir=f"{name}/{local}/",
            passwordlastchange=changed,
            active=1,
        )
    )
    return f"added mailbox {user}"


def mailbox_remove(conn: Connection, a: argparse.Namespace) -> str:
    user = _address(a.address)
    if not conn.execute(mailbox.delete().where(mailbox.c.username == user)).rowcount:
        raise Refused(f"{user} is not a mailbox")
    # its per-user alias addresses go with it
    conn.execute(
        forwardings.delete().where(forwardings.c.forwarding == user, forwardings.c.is_alias == 1)
    )
    return f"removed mailbox {user}"


def mailbox_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    q = sa.select(
        mailbox.c.username, sa.type_coerce(mailbox.c.passwordlastchange, sa.String())
    ).order_by(mailbox.c.username)
    # as stored (SQLite keeps microseconds in the text: cut to seconds)
    return [{"username": r[0], "passwordlastchange": str(r[1])[:19]} for r in conn.execute(q)]


def user_alias_add(conn: Connection, a: argparse.Namespace) -> str:
    address, user = _address(a.alias), _address(a.user)
    _need_domain(conn, _domain_of(address))
    if not _exists(conn, mailbox.c.username, strip_extension(user, ["+"])):
        raise Refused(f"{user} is not a mailbox")
    _need_free(conn, address)
    conn.execute(
        forwardings.insert().values(
            address=address,
            forwarding=user,
            domain=_domain_of(address),
            dest_domain=_domain_of(user),
            is_alias=1,
            active=1,
        )
    )
    return f"added per-user alias {address} -> {user}"


def user_alias_remove(conn: Connection, a: argparse.Namespace) -> str:
    address = _address(a.alias)
    stmt = forwardings.delete().where(forwardings.c.address == address, forwardings.c.is_alias == 1)
    if not conn.execute(stmt).rowcount:
        raise Refused(f"{address} is not a per-user alias address")
    return f"removed per-user alias {address}"


def user_alias_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    q = (
        sa.select(forwardings.c.address, forwardings.c.forwarding)
        .where(forwardings.c.is_alias == 1)
        .order_by(forwardings.c.address)
    )
    return [{"alias": r[0], "user": r[1]} for r in conn.execute(q)]


def _add_people(conn: Connection, table: sa.Table, column: str, address: str, people: Any) -> None:
    for person in dict.fromkeys(people or []):
        conn.execute(
            table.insert().values(
                {
                    "address": address,
                    column: person,
                    "domain": _domain_of(address),
                    "dest_domain": _domain_of(person),
                }
            )
        )


def _moderator(value: str) -> str:
    v = value.strip().lower()
    if v.startswith("*@") and is_domain(v[2:]):
        return v  # every address of a domain (sql_alias_access_policy)
    return _address(v)


def alias_add(conn: Connection, a: argparse.Namespace) -> str:
    address = _address(a.address)
    policy = _policy(a.policy)
    members = [_address(m) for m in a.member or []]
    mods = [_moderator(m) for m in a.moderator or []]
    _need_domain(conn, _domain_of(address))
    _need_free(conn, address)
    conn.execute(
        alias.insert().values(
            address=address,
            domain=_domain_of(address),
            accesspolicy=policy,
            active=int(not a.disabled),
        )
    )
    for member in dict.fromkeys(members):
        conn.execute(
            forwardings.insert().values(
                address=address,
                forwarding=member,
                domain=_domain_of(address),
                dest_domain=_domain_of(member),
                is_list=1,
                active=int(not a.disabled),
            )
        )
    _add_people(conn, moderators, "moderator", address, mods)
    return f"added mail alias {address} ({policy}, {len(set(members))} members)"


def _remove_list(conn: Connection, table: sa.Table, address: str, what: str) -> None:
    if not conn.execute(table.delete().where(table.c.address == address)).rowcount:
        raise Refused(f"{address} is not {what}")
    conn.execute(moderators.delete().where(moderators.c.address == address))


def alias_remove(conn: Connection, a: argparse.Namespace) -> str:
    address = _address(a.address)
    _remove_list(conn, alias, address, "a mail alias")
    conn.execute(
        forwardings.delete().where(forwardings.c.address == address, forwardings.c.is_list == 1)
    )
    return f"removed mail alias {address}"


def _people(
    conn: Connection, column: sa.Column[Any], key: sa.Column[Any], address: str
) -> list[str]:
    return [r[0] for r in conn.execute(sa.select(column).where(key == address).order_by(column))]


def alias_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute(
        sa.select(alias.c.address, alias.c.accesspolicy, alias.c.active).order_by(alias.c.address)
    ):
        members = conn.execute(
            sa.select(forwardings.c.forwarding)
            .where(forwardings.c.address == r.address, forwardings.c.is_list == 1)
            .order_by(forwardings.c.forwarding)
        )
        out.append(
            {
                "address": r.address,
                "policy": r.accesspolicy or "public",
                "active": bool(r.active),
                "members": [m[0] for m in members],
                "moderators": _people(
                    conn, moderators.c.moderator, moderators.c.address, r.address
                ),
            }
        )
    return out


def maillist_add(conn: Connection, a: argparse.Namespace) -> str:
    address = _address(a.address)
    policy = _policy(a.policy)
    mods = [_address(m) for m in a.moderator or []]
    owners = [_address(o) for o in a.owner or []]
    local, _, name = address.partition("@")
    _need_domain(conn, name)
    _need_free(conn, address)
    conn.execute(
        maillists.insert().values(
            address=address,
            domain=name,
            transport=f"mlmmj:{name}/{local}",
            accesspolicy=policy,
            mlid=str(uuid.uuid4()),
            active=int(not a.disabled),
        )
    )
    _add_people(conn, moderators, "moderator", address, mods)
    _add_people(conn, maillist_owners, "owner", address, owners)
    return f"added mailing list {address} ({policy}); mlmmj itself is managed by mlmmjadmin"


def maillist_remove(conn: Connection, a: argparse.Namespace) -> str:
    address = _address(a.address)
    _remove_list(conn, maillists, address, "a mailing list")
    conn.execute(maillist_owners.delete().where(maillist_owners.c.address == address))
    return f"removed mailing list {address}"


def maillist_list(conn: Connection, a: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    q = sa.select(maillists.c.address, maillists.c.accesspolicy, maillists.c.active).order_by(
        maillists.c.address
    )
    for r in conn.execute(q):
        out.append(
            {
                "address": r.address,
                "policy": r.accesspolicy or "public",
                "active": bool(r.active),
                "moderators": _people(
                    conn, moderators.c.moderator, moderators.c.address, r.address
                ),
                "owners": _people(
                    conn, maillist_owners.c.owner, maillist_owners.c.address, r.address
                ),
            }
        )
    return out


# -- the program -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Add, remove and list mail accounts in the SQL vmail database "
        "(the embedded SQLite default, or iRedMail's MySQL/PostgreSQL vmail).",
        epilog="example (with `make run`): iredapd-accounts -o DATA_DIR=var domain add example.com",
    )
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print lists as JSON")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    def group(name: str, help_text: str) -> Any:
        sub = kinds.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="action", metavar="ACTION", required=True)

    def cmd(actions: Any, name: str, func: Callable[..., Any], help_text: str) -> Any:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(func=func)
        return parser

    g = group("domain", "hosted mail domains")
    c = cmd(g, "add", domain_add, "add a domain")
    c.add_argument("name")
    c.add_argument("--backup-mx", action="store_true", help="relay only (backup MX)")
    c.add_argument("--disabled", action="store_true", help="add it inactive")
    cmd(g, "remove", domain_remove, "remove a domain without accounts").add_argument("name")
    cmd(g, "list", domain_list, "list domains")

    g = group("alias-domain", "alias domains (user@alias = user@target)")
    c = cmd(g, "add", alias_domain_add, "add an alias domain of a hosted domain")
    c.add_argument("alias")
    c.add_argument("target")
    cmd(g, "remove", alias_domain_remove, "remove an alias domain").add_argument("alias")
    cmd(g, "list", alias_domain_list, "list alias domains")

    g = group("mailbox", "mail users (no password is stored)")
    c = cmd(g, "add", mailbox_add, "add a mailbox")
    c.add_argument("address")
    c.add_argument(
        "--password-changed",
        metavar="DATE",
        help="when the password last changed: YYYY-MM-DD[ HH:MM[:SS]], now (default) or never",
    )
    cmd(g, "remove", mailbox_remove, "remove a mailbox").add_argument("address")
    cmd(g, "list", mailbox_list, "list mailboxes")

    g = group("user-alias", "per-user alias addresses (alias@domain delivers to a mailbox)")
    c = cmd(g, "add", user_alias_add, "add an alias address of a mailbox")
    c.add_argument("alias")
    c.add_argument("user")
    cmd(g, "remove", user_alias_remove, "remove an alias address").add_argument("alias")
    cmd(g, "list", user_alias_list, "list alias addresses")

    for name, add_func, remove_func, list_func, what in (
        ("alias", alias_add, alias_remove, alias_list, "mail aliases (groups) with members"),
        ("maillist", maillist_add, maillist_remove, maillist_list, "mlmmj mailing lists"),
    ):
        g = group(name, what)
        c = cmd(g, "add", add_func, f"add one of the {what}")
        c.add_argument("address")
        c.add_argument("--policy", default="public", help=f"access policy ({', '.join(POLICIES)})")
        if name == "alias":
            c.add_argument("--member", action="append", metavar="ADDRESS", help="repeatable")
        c.add_argument(
            "--moderator",
            action="append",
            metavar="ADDRESS",
            help="repeatable" + ("; *@domain for a whole domain" if name == "alias" else ""),
        )
        if name == "maillist":
            c.add_argument("--owner", action="append", metavar="ADDRESS", help="repeatable")
        c.add_argument("--disabled", action="store_true", help="add it inactive")
        cmd(g, "remove", remove_func, "remove it").add_argument("address")
        cmd(g, "list", list_func, f"list {what}")
    return p


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print("  ".join(", ".join(v) if isinstance(v, list) else str(v) for v in row.values()))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iredapd-accounts`` console script."""
    args = _parser().parse_args(argv)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    if loaded.settings.backend == "ldap":
        return fail(PROG, NOT_FOR_LDAP, EX_CONFIG)
    try:
        # the tables are created on SQLite only (never in iRedMail's vmail)
        with database_engine(loaded.settings, "vmail", create_tables=True) as engine:
            result = transaction(engine, lambda conn: args.func(conn, args))
    except BadValue as e:
        return fail(PROG, str(e), EX_USAGE)
    except Refused as e:
        return fail(PROG, str(e), EX_DATAERR)
    except sa.exc.IntegrityError as e:
        return fail(PROG, f"refused by the database: {e.orig}", EX_DATAERR)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
        return database_error(PROG, "vmail", e)
    except sa.exc.ProgrammingError as e:  # no such table: not an iRedMail vmail database
        return fail(PROG, f"vmail database: {e.orig}", EX_CONFIG)
    if isinstance(result, list):
        _print_rows(result, args.json)
    else:
        print(result)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
