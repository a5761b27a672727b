"""amavisd white/blacklists: the look-ups of ``amavisd_wblist`` and the writer.

Tables (amavisd database, access-policies.md §6.2, §16.2):

* ``users(id, priority, policy_id, email)``: local accounts and account
  patterns (``user@dom``, ``@dom``, ``@.dom``, ``@.``);
* ``mailaddr(id, priority, email)``: external addresses, IPs, networks, patterns;
* ``wblist(rid -> users.id, sid -> mailaddr.id, wb)``: inbound lists, per local
  recipient;
* ``outbound_wblist(sid -> users.id, rid -> mailaddr.id, wb)``: outbound lists,
  per local sender.

Only ``wb`` values ``W`` and ``B`` mean anything (compared by the database, so
MySQL's case-insensitive collation also accepts ``w``/``b``, as with iRedAPD).

**Look-ups.**  One joined SELECT per direction returns every listed pair of a
local candidate and an external candidate; :func:`pick_hit` then chooses the
pair iRedAPD's nested loop would reach first: local account by priority (the
outer loop), then external address by priority.  Where iRedAPD was
nondeterministic or wrong (access-policies.md §15 items 12-15, 18), this
module does what it meant:

* CIDR networks are ranked by their ``priority`` like every other form, not
  tried after all of them in hash-set order;
* networks are looked up in the table of the side the client IP belongs to
  (``mailaddr`` inbound, ``users`` outbound), never mixing the two id spaces;
* networks are parsed leniently (``10.0.0.1/8`` is ``10.0.0.0/8``), and IPv6
  networks work;
* ties in ``priority`` go to the more specific entry: the form's default
  priority (:data:`~iredapd.lookup.MAILADDR_PRIORITIES`), then the longer
  network prefix or domain, then the lower id.

**Writer** (access-policies.md §6.6, used by ``wblist_admin`` and custom
plugins): synchronous functions over a SQLAlchemy ``Connection``; from a plugin
run them with ``await ctx.services.amavisd_db.run(lambda conn: add_wblist(conn,
...))``.  Every statement is idempotent and atomic on its own (INSERT ... ON
CONFLICT DO NOTHING / ON DUPLICATE KEY, UPSERT of the W/B value), so concurrent
writers never fail on a duplicate key.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.lookup import MAILADDR_PRIORITIES, AddressType, cidr_prefix, classify_address
from iredapd.storage.cache import KeyedQuery
from iredapd.storage.schema import mailaddr, outbound_wblist, users, wblist
from iredapd.storage.upsert import insert_ignore, upsert

__all__ = [
    "LIST_LIMIT",
    "AccountList",
    "Deleted",
    "InvalidAccount",
    "WBHit",
    "WBRow",
    "account_lists",
    "account_wblist",
    "add_wblist",
    "delete_all_wblist",
    "delete_wblist",
    "hit_statement",
    "network_prefixes",
    "normalise_addresses",
    "pairs_statement",
    "pick_hit",
    "user_id",
    "users_with_prefix",
]

WB_VALUES = ("W", "B")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ---------------------------------------------------------------------------
# Look-ups (amavisd_wblist)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WBHit:
    """The listed pair that decides: ``wb`` is ``W`` or ``B``."""

    wb: str
    #: users.id / users.email: the local account side
    account_id: int
    account: str
    #: mailaddr.id / mailaddr.email: the external side
    address_id: int
    address: str


def _network_prefixes(client: str) -> list[str]:
    """Prefixes of the stored networks that can contain ``client`` (``192.``)."""
    prefix = cidr_prefix(client)
    if prefix is None:
        return []
    # IPv6 text may be stored in upper case; the email column compares bytes.
    return list(dict.fromkeys((prefix, prefix.lower(), prefix.upper())))


def _starts_with(column: sa.ColumnElement[Any], prefix: str) -> sa.ColumnElement[bool]:
    """``column`` starts with ``prefix``, as a range on the (binary) value.

    A range, not LIKE: it compares bytes the same way on every database (SQLite
    does not apply LIKE to BLOBs) and is a range scan of the unique index.
    """
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return sa.and_(column >= prefix, column < upper)


def _matches(
    column: sa.ColumnElement[Any], candidates: Sequence[str], client: str | None
) -> sa.ColumnElement[bool]:
    conditions: list[sa.ColumnElement[bool]] = [column.in_(list(candidates))]
    if client:
        conditions.extend(_starts_with(column, p) for p in _network_prefixes(client))
    return sa.or_(*conditions)


def hit_statement(
    *,
    outbound: bool,
    accounts: Sequence[str],
    addresses: Sequence[str],
    client_address: str,
) -> sa.Select[Any]:
    """The SELECT of every listed (account, address) pair a request can hit.

    Inbound: ``accounts`` are the recipient's keys (``users``), ``addresses``
    the sender's keys (``mailaddr``), and networks containing the client are
    looked up in ``mailaddr``.  Outbound: ``accounts`` are the SMTP AUTH
    sender's keys (``users``, networks looked up there too), ``addresses`` the
    recipient's keys (``mailaddr``).
    """
    account_match = (
        _matches(users.c.email, accounts, client_address)
        if outbound
        else users.c.email.in_(list(accounts))
    )
    address_match = (
        mailaddr.c.email.in_(list(addresses))
        if outbound
        else _matches(mailaddr.c.email, addresses, client_address)
    )
    return _pairs(outbound).where(account_match, address_match, _listed(outbound))


def _pairs(outbound: bool) -> sa.Select[Any]:
    """The listed (account, address) pairs of one direction, as :class:`WBRow` columns."""
    link = outbound_wblist if outbound else wblist
    local_key, external_key = ("sid", "rid") if outbound else ("rid", "sid")
    return sa.select(
        users.c.id.label("account_id"),
        users.c.priority.label("account_priority"),
        users.c.email.label("account"),
        mailaddr.c.id.label("address_id"),
        mailaddr.c.priority.label("address_priority"),
        mailaddr.c.email.label("address"),
        link.c.wb,
    ).select_from(
        users.join(link, link.c[local_key] == users.c.id).join(
            mailaddr, mailaddr.c.id == link.c[external_key]
        )
    )


def _listed(outbound: bool) -> sa.ColumnElement[bool]:
    """Rows with a white/black verdict (other ``wb`` values are ignored)."""
    return (outbound_wblist if outbound else wblist).c.wb.in_(WB_VALUES)


class WBRow(NamedTuple):
    """One listed pair, as :func:`hit_statement` returns it."""

    account_id: int
    account_priority: int
    account: str
    address_id: int
    address_priority: int
    address: str
    wb: str


class AccountList:
    """The listed pairs of one local account in one direction, for the cache.

    :meth:`matching` returns the pairs :func:`hit_statement` would have
    returned for this account: external address one of the candidates, or
    starting with one of the network prefixes (the range of
    :func:`_starts_with`).
    """

    __slots__ = ("_by_address", "_sorted", "rows")

    def __init__(self, rows: Iterable[WBRow]) -> None:
        self.rows = tuple(rows)
        by_address: dict[str, list[WBRow]] = {}
        for row in self.rows:
            by_address.setdefault(row.address, []).append(row)
        self._by_address = by_address
        self._sorted = sorted(by_address)

    def matching(self, addresses: Iterable[str], prefixes: Sequence[str] = ()) -> list[WBRow]:
        """Pairs whose address is one of ``addresses`` or starts with one of ``prefixes``."""
        by_address = self._by_address
        found: dict[str, list[WBRow]] = {}
        for address in addresses:
            rows = by_address.get(address)
            if rows is not None:
                found[address] = rows
        if prefixes and self._sorted:
            ordered = self._sorted
            for prefix in prefixes:
                start = bisect.bisect_left(ordered, prefix)
                for address in ordered[start:]:
                    if not address.startswith(prefix):
                        break
                    found[address] = by_address[address]
        return [row for rows in found.values() for row in rows]


def network_prefixes(client_address: str) -> list[str]:
    """Prefixes of the stored networks that may hold the client (empty: not an IP)."""
    return _network_prefixes(client_address) if client_address else []


def _list_query(outbound: bool, limit: int) -> KeyedQuery:
    link = outbound_wblist if outbound else wblist
    local_key, external_key = ("sid", "rid") if outbound else ("rid", "sid")
    return KeyedQuery(
        users.c.email,
        [
            users.c.id,
            users.c.priority,
            mailaddr.c.id,
            mailaddr.c.priority,
            mailaddr.c.email,
            link.c.wb,
        ],
        select_from=users.join(link, link.c[local_key] == users.c.id).join(
            mailaddr, mailaddr.c.id == link.c[external_key]
        ),
        where=[link.c.wb.in_(WB_VALUES)],
        limit=limit,
    )


#: Pairs of one account read into the cache at most; an account with more
#: is looked up per request (only its pairs that can match).
LIST_LIMIT: Final = 10_000
_LISTS = {outbound: _list_query(outbound, LIST_LIMIT) for outbound in (False, True)}


def account_lists(
    conn: Connection, accounts: Sequence[str], *, outbound: bool
) -> dict[str, AccountList | None]:
    """Every listed pair of each local account (``users.email``), one SELECT.

    None for an account with more than :data:`LIST_LIMIT` pairs.
    """
    found = _LISTS[outbound].run_bounded(conn, accounts)
    out: dict[str, AccountList | None] = {}
    for account, rows in found.items():
        if rows is None:
            out[account] = None
            continue
        out[account] = AccountList(
            WBRow(int(r[0]), int(r[1]), account, int(r[2]), int(r[3]), str(r[4]), str(r[5]))
            for r in rows
        )
    return out


_PREFIX_USERS = sa.select(users.c.email).where(
    users.c.email >= sa.bindparam("lo", type_=users.c.email.type),
    users.c.email < sa.bindparam("hi", type_=users.c.email.type),
)


def users_with_prefix(conn: Connection, prefixes: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The ``users.email`` values starting with each prefix (outbound network entries)."""
    out: dict[str, tuple[str, ...]] = {}
    for prefix in prefixes:
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = conn.execute(_PREFIX_USERS, {"lo": prefix, "hi": upper})
        out[prefix] = tuple(str(row[0]) for row in rows)
    return out


def pairs_statement(
    *,
    outbound: bool,
    accounts: Sequence[str],
    addresses: Sequence[str],
    prefixes: Sequence[str] = (),
) -> sa.Select[Any]:
    """:func:`hit_statement` for given accounts only (no network look-up on the
    account side), with ``prefixes`` on the address side: for the accounts
    too big for the cache."""
    address_match: list[sa.ColumnElement[bool]] = [mailaddr.c.email.in_(list(addresses))]
    address_match.extend(_starts_with(mailaddr.c.email, p) for p in prefixes)
    return _pairs(outbound).where(
        users.c.email.in_(list(accounts)), sa.or_(*address_match), _listed(outbound)
    )


def _parse_network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _specificity(key: str, kind: AddressType | None) -> int:
    """Labels of a domain form (``@.b.c`` 2, ``@a.b.c`` 3); known octets of a wildcard IP."""
    if kind in (AddressType.DOMAIN, AddressType.SUBDOMAIN, AddressType.TOP_LEVEL_DOMAIN):
        return len(key.lstrip("@.").split("."))
    if kind is AddressType.WILDCARD_IP:
        return sum(octet != "*" for octet in key.split("."))
    return 0


def _rank(
    entry_id: int,
    key: str,
    priority: int,
    candidates: frozenset[str],
    client: IPAddress | None,
) -> tuple[int, int, int, int] | None:
    """Sort key of a stored entry (smaller first), or None if it does not apply.

    An entry applies when it is one of the candidate keys, or (``client``
    given) a network or address that contains the client IP.
    """
    if key in candidates:
        kind = classify_address(key)
        type_rank = MAILADDR_PRIORITIES[kind] if kind is not None else -1
        specificity = _specificity(key, kind)
    elif client is not None:
        network = _parse_network(key)
        if network is None or network.version != client.version or client not in network:
            return None
        kind = AddressType.CIDR_NETWORK if "/" in key else AddressType.IP
        type_rank = MAILADDR_PRIORITIES[kind]
        specificity = network.prefixlen
    else:
        return None
    return (-int(priority), -type_rank, -specificity, int(entry_id))


def pick_hit(
    rows: Iterable[Any],
    *,
    outbound: bool,
    accounts: Sequence[str],
    addresses: Sequence[str],
    client_address: str,
) -> WBHit | None:
    """The pair iRedAPD's loop meets first: account by rank, then address by rank.

    ``rows`` are the rows of :func:`hit_statement` with the same arguments.
    """
    client: IPAddress | None = None
    if client_address:
        try:
            client = ipaddress.ip_address(client_address.strip())
        except ValueError:
            client = None
    account_keys = frozenset(accounts)
    address_keys = frozenset(addresses)
    best: tuple[tuple[int, ...], WBHit] | None = None
    for row in rows:
        account_rank = _rank(
            row.account_id,
            row.account,
            row.account_priority,
            account_keys,
            client if outbound else None,
        )
        address_rank = _rank(
            row.address_id,
            row.address,
            row.address_priority,
            address_keys,
            None if outbound else client,
        )
        if account_rank is None or address_rank is None:
            continue
        order = account_rank + address_rank
        if best is None or order < best[0]:
            hit = WBHit(
                wb=str(row.wb).strip().upper(),
                account_id=int(row.account_id),
                account=row.account,
                address_id=int(row.address_id),
                address=row.address,
            )
            best = (order, hit)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------
# Writer (access-policies.md §6.6)
# ---------------------------------------------------------------------------


class InvalidAccount(ValueError):
    """The account is none of the forms amavisd lists belong to."""


def normalise_addresses(values: Iterable[str]) -> list[str]:
    """Lower-cased, de-duplicated (first occurrence kept), valid keys only."""
    out: dict[str, None] = {}
    for value in values:
        key = str(value).strip().lower()
        if key and classify_address(key) is not None:
            out[key] = None
    return list(out)


def _priority(key: str) -> int:
    kind = classify_address(key)
    if kind is None:
        raise InvalidAccount(f"not a valid account or address: {key!r}")
    return MAILADDR_PRIORITIES[kind]


def user_id(conn: Connection, account: str, *, create: bool = True) -> int | None:
    """The ``users.id`` of ``account``; created (policy_id 0) when missing and ``create``.

    Raises:
        InvalidAccount: ``account`` does not classify.
    """
    priority = _priority(account)
    query = sa.select(users.c.id).where(users.c.email == account).limit(1)
    found = conn.execute(query).scalar()
    if found is None and create:
        conn.execute(
            insert_ignore(users, conn.dialect.name),
            {"policy_id": 0, "email": account, "priority": priority},
        )
        found = conn.execute(query).scalar()
    return None if found is None else int(found)


def _mailaddr_ids(conn: Connection, addresses: Sequence[str], *, create: bool) -> dict[str, int]:
    if not addresses:
        return {}
    if create:
        conn.execute(
            insert_ignore(mailaddr, conn.dialect.name),
            [{"email": a, "priority": _priority(a)} for a in addresses],
        )
    rows = conn.execute(
        sa.select(mailaddr.c.id, mailaddr.c.email).where(mailaddr.c.email.in_(list(addresses)))
    )
    return {row.email: int(row.id) for row in rows}


def _link(outbound: bool) -> tuple[sa.Table, str, str]:
    """(table, column holding the users id, column holding the mailaddr id)."""
    return (outbound_wblist, "sid", "rid") if outbound else (wblist, "rid", "sid")


def _store(
    conn: Connection, uid: int, ids: dict[str, int], *, wl: list[str], bl: list[str], outbound: bool
) -> None:
    table, local, external = _link(outbound)
    rows = [{local: uid, external: ids[a], "wb": "W"} for a in wl if a in ids]
    whitelisted = set(wl)
    rows += [
        {local: uid, external: ids[a], "wb": "B"} for a in bl if a in ids and a not in whitelisted
    ]
    if rows:
        conn.execute(upsert(table, conn.dialect.name, ("rid", "sid"), ("wb",)), rows)


def add_wblist(
    conn: Connection,
    account: str,
    *,
    wl_senders: Iterable[str] = (),
    bl_senders: Iterable[str] = (),
    wl_rcpts: Iterable[str] = (),
    bl_rcpts: Iterable[str] = (),
    flush: bool = False,
) -> None:
    """Whitelist/blacklist addresses for ``account``.

    ``*_senders`` go to the inbound list (``wblist``), ``*_rcpts`` to the
    outbound list (``outbound_wblist``).  Invalid addresses are dropped; an
    address both white- and blacklisted is only whitelisted.  The account's
    ``users`` row and the addresses' ``mailaddr`` rows are created when
    missing (an existing row's priority is never changed).  ``flush`` first
    deletes every inbound and outbound entry of the account.

    Raises:
        InvalidAccount: ``account`` does not classify.
    """
    ws, bs = normalise_addresses(wl_senders), normalise_addresses(bl_senders)
    wr, br = normalise_addresses(wl_rcpts), normalise_addresses(bl_rcpts)
    uid = user_id(conn, account, create=True)
    assert uid is not None  # create=True always yields an id
    if flush:
        conn.execute(sa.delete(wblist).where(wblist.c.rid == uid))
        conn.execute(sa.delete(outbound_wblist).where(outbound_wblist.c.sid == uid))
    everything = list(dict.fromkeys(ws + bs + wr + br))
    ids = _mailaddr_ids(conn, everything, create=True)
    _store(conn, uid, ids, wl=ws, bl=bs, outbound=False)
    _store(conn, uid, ids, wl=wr, bl=br, outbound=True)


@dataclass(slots=True)
class Deleted:
    """The listed addresses :func:`delete_wblist` found in ``mailaddr``."""

    wl_senders: list[str] = field(default_factory=list)
    bl_senders: list[str] = field(default_factory=list)
    wl_rcpts: list[str] = field(default_factory=list)
    bl_rcpts: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        """Every address, sorted, without repeats."""
        return sorted({*self.wl_senders, *self.bl_senders, *self.wl_rcpts, *self.bl_rcpts})


def _delete(conn: Connection, uid: int, addresses: list[str], wb: str, outbound: bool) -> list[str]:
    ids = _mailaddr_ids(conn, addresses, create=False)
    if ids:
        table, local, external = _link(outbound)
        conn.execute(
            sa.delete(table).where(
                table.c[local] == uid,
                table.c[external].in_(list(ids.values())),
                table.c.wb == wb,
            )
        )
    return sorted(ids)


def delete_wblist(
    conn: Connection,
    account: str,
    *,
    wl_senders: Iterable[str] = (),
    bl_senders: Iterable[str] = (),
    wl_rcpts: Iterable[str] = (),
    bl_rcpts: Iterable[str] = (),
) -> Deleted:
    """Remove the listed W (``wl_*``) or B (``bl_*``) entries of ``account``.

    As iRedAPD, the account's ``users`` row is created when missing.  Returns
    the addresses that exist in ``mailaddr`` (their entries, if any, are gone).

    Raises:
        InvalidAccount: ``account`` does not classify.
    """
    uid = user_id(conn, account, create=True)
    assert uid is not None  # create=True always yields an id
    return Deleted(
        wl_senders=_delete(conn, uid, normalise_addresses(wl_senders), "W", outbound=False),
        bl_senders=_delete(conn, uid, normalise_addresses(bl_senders), "B", outbound=False),
        wl_rcpts=_delete(conn, uid, normalise_addresses(wl_rcpts), "W", outbound=True),
        bl_rcpts=_delete(conn, uid, normalise_addresses(bl_rcpts), "B", outbound=True),
    )


def delete_all_wblist(
    conn: Connection,
    account: str,
    *,
    wl_senders: bool = False,
    bl_senders: bool = False,
    wl_rcpts: bool = False,
    bl_rcpts: bool = False,
) -> None:
    """Remove every inbound (``*_senders``) / outbound (``*_rcpts``) W or B entry.

    As iRedAPD, the account's ``users`` row is created when missing.

    Raises:
        InvalidAccount: ``account`` does not classify.
    """
    uid = user_id(conn, account, create=True)
    for wanted, wb, outbound in (
        (wl_senders, "W", False),
        (bl_senders, "B", False),
        (wl_rcpts, "W", True),
        (bl_rcpts, "B", True),
    ):
        if wanted:
            table, local, _external = _link(outbound)
            conn.execute(sa.delete(table).where(table.c[local] == uid, table.c.wb == wb))


def account_wblist(
    conn: Connection,
    account: str,
    *,
    outbound: bool = False,
    whitelist: bool = True,
    blacklist: bool = True,
) -> tuple[list[str], list[str]]:
    """(whitelisted, blacklisted) addresses of ``account``, sorted.  Reads only."""
    table, local, external = _link(outbound)
    query = (
        sa.select(mailaddr.c.email, table.c.wb)
        .select_from(
            users.join(table, table.c[local] == users.c.id).join(
                mailaddr, mailaddr.c.id == table.c[external]
            )
        )
        .where(users.c.email == account)
    )
    if whitelist and not blacklist:
        query = query.where(table.c.wb == "W")
    elif blacklist and not whitelist:
        query = query.where(table.c.wb == "B")
    wl: list[str] = []
    bl: list[str] = []
    for row in conn.execute(query):
        (wl if str(row.wb).strip().upper() == "W" else bl).append(row.email)
    return sorted(wl), sorted(bl)
