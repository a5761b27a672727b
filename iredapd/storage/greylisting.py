"""Greylisting tables: the plugin's queries and the admin helpers.

Spec: core-and-stateful.md §10 (plugin), §10.6 (library helpers), §14.3/§14.4
(tools), §16.3-§16.6 (tables).  Every function takes a SQLAlchemy
``Connection`` and is synchronous: plugins call them through
``Database.run`` (in the thread pool), tools on a connection of their own.

State changes are single atomic statements, so several daemons on one
database agree (§17.1):

* a new row is ``INSERT ... ON CONFLICT DO NOTHING`` (on MySQL ``ON
  DUPLICATE KEY UPDATE id = id``), and the statement's result says whether
  this caller created it; nothing relies on catching duplicate-key errors;
* the triplet's counters move with relative or conditional ``UPDATE``s whose
  ``WHERE`` repeats the state the caller saw; when another daemon changed the
  row in between, the update matches nothing and the caller looks again.

Deliberate differences from iRedAPD (see docs/differences-from-iredapd.md):
CIDR senders of either IP version match in settings and whitelists whatever
their stored ``sender_priority``; ``remove_whitelisted_domain`` also removes
the domain's SPF-derived rows (§17.5 item 33); inputs longer than the
columns are refused instead of failing or being truncated.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.addr import is_domain
from iredapd.lookup import (
    CATCHALL,
    AddressType,
    account_priority,
    classify_address,
    parse_ip,
)
from iredapd.storage.cache import KeyedQuery, TTLCache
from iredapd.storage.db import Prepared, transaction
from iredapd.storage.schema import (
    greylisting,
    greylisting_tracking,
    greylisting_whitelist_domain_spf,
    greylisting_whitelist_domains,
    greylisting_whitelists,
)
from iredapd.storage.upsert import insert_if_absent, upsert

__all__ = [
    "AUTO_UPDATE_PREFIX",
    "AUTO_WHITELISTED",
    "AccountPolicy",
    "InvalidInput",
    "Setting",
    "Triplet",
    "TripletState",
    "WhitelistIndex",
    "account_policies",
    "add_whitelist",
    "add_whitelist_domain",
    "add_whitelist_sender",
    "client_has_passed",
    "delete_setting",
    "disable_greylisting",
    "enable_greylisting",
    "first_matching_setting",
    "forget_policies",
    "greylisting_settings",
    "is_valid_sender",
    "list_settings",
    "list_whitelist_domains",
    "list_whitelists",
    "network_text",
    "ordered_settings",
    "policy_cache",
    "remove_whitelisted_domain",
    "replace_spf_whitelist",
    "touch_passed_client",
    "track_triplet",
    "transaction",
    "whitelist_match",
    "whitelisted_senders",
]

log = logging.getLogger(__name__)

#: comment of the rows spf_to_greylist_whitelists writes for a domain
AUTO_UPDATE_PREFIX: Final = "AUTO-UPDATE: "
#: comment of the rows whitelist_outbound_recipient writes
AUTO_WHITELISTED: Final = "AUTO-WHITELISTED"

# Column widths of the tables this module writes (schema.py, §16).  A longer
# value is refused up front with a clear reason (MySQL would fail the statement).
_TEXT_WIDTH: Final = 255
_CLIENT_WIDTH: Final = 40  # greylisting_tracking.client_address
# Account types a whitelist may belong to (§10.6 add_whitelist_sender).
_WHITELIST_ACCOUNTS: Final = frozenset(
    {AddressType.CATCHALL, AddressType.DOMAIN, AddressType.SUBDOMAIN, AddressType.EMAIL}
)
# Sender types a greylisting setting or whitelist may name (§10.6 is_valid_sender),
# besides IP addresses and networks.
_SENDER_TYPES: Final = frozenset(
    {
        AddressType.CATCHALL,
        AddressType.TOP_LEVEL_DOMAIN,
        AddressType.DOMAIN,
        AddressType.SUBDOMAIN,
        AddressType.EMAIL,
        AddressType.IP,
        AddressType.CIDR_NETWORK,
    }
)
# The sender priority a CIDR network was meant to have (ACCOUNT_PRIORITIES).
# iRedAPD's tools stored 0 for it (§7.3 [BUG], §17.3 item 14).
_CIDR_PRIORITY: Final = 70
# How often track_triplet looks again after another daemon changed the row
# between its SELECT and its guarded write.  Each retry means someone else made
# progress, so a handful is plenty; past it the plugin fails (DUNNO).
_TRACK_ATTEMPTS: Final = 8

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidInput(ValueError):
    """A value the helpers refuse; ``code`` is iRedAPD's error name."""

    def __init__(self, code: str, value: str = "") -> None:
        super().__init__(code if not value else f"{code}: {value}")
        self.code = code


# ---------------------------------------------------------------------------
# Validation and priorities (§10.6)
# ---------------------------------------------------------------------------


def is_valid_sender(value: str) -> bool:
    """True for what a greylisting setting or whitelist may name as sender.

    An IPv4/IPv6 address or network (``2001:db8::/32`` included, unlike
    iRedAPD's regex, §17.3 item 13), an address, ``@domain``, ``@.domain``,
    ``@.tld`` or ``@.``.  A network with host bits set (``192.0.2.1/24``)
    is refused: the plugin never matched such a row.
    """
    return len(value) <= _TEXT_WIDTH and classify_address(value) in _SENDER_TYPES


def _check_sender(sender: str) -> None:
    if not is_valid_sender(sender):
        raise InvalidInput("INVALID_SENDER", sender)


def _check_account(account: str) -> None:
    if len(account) > _TEXT_WIDTH or classify_address(account) not in _WHITELIST_ACCOUNTS:
        raise InvalidInput("INVALID_ACCOUNT", account)


# ---------------------------------------------------------------------------
# Settings (table ``greylisting``)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of ``greylisting``."""

    id: int
    account: str
    sender: str
    priority: int
    sender_priority: int
    active: bool

    @property
    def effective_sender_priority(self) -> int:
        """The stored priority, but 70 for a CIDR sender stored with 0 (iRedAPD's CLI)."""
        if self.sender_priority == 0 and "/" in self.sender and _network(self.sender):
            return _CIDR_PRIORITY
        return self.sender_priority


def _setting(row: sa.Row[Any]) -> Setting:
    return Setting(
        id=int(row.id),
        account=row.account,
        sender=row.sender,
        priority=int(row.priority),
        sender_priority=int(row.sender_priority),
        active=int(row.active) == 1,
    )


def _settings_query(accounts: Sequence[str] | None) -> sa.Select[Any]:
    t = greylisting.c
    q = sa.select(t.id, t.account, t.sender, t.priority, t.sender_priority, t.active)
    if accounts is not None:
        q = q.where(t.account.in_(accounts))
    return q.order_by(t.priority.desc(), t.sender_priority.desc(), t.id)


def greylisting_settings(conn: Connection, recipients: Sequence[str]) -> list[Setting]:
    """Settings rows of the recipient's keys, most specific first (§10.4 step 2)."""
    rows = [_setting(r) for r in conn.execute(_settings_query(recipients))]
    # Stable: the database's order stays wherever the effective priority agrees.
    rows.sort(key=lambda s: (-s.priority, -s.effective_sender_priority))
    return rows


def first_matching_setting(
    settings: Iterable[Setting], senders: Sequence[str], client_address: str
) -> Setting | None:
    """The first row whose sender is a candidate or a network holding the client."""
    candidates = set(senders)
    client = parse_ip(client_address)
    for setting in settings:
        if setting.sender in candidates:
            return setting
        if client is not None and "/" in setting.sender:
            net = _network(setting.sender)
            if net is not None and net.version == client.version and client in net:
                return setting
    return None


def list_settings(conn: Connection, account: str | None = None) -> list[Setting]:
    """Every setting (of ``account`` if given), in the plugin's order (§14.3 --list)."""
    rows = [
        _setting(r) for r in conn.execute(_settings_query(None if account is None else [account]))
    ]
    rows.sort(key=lambda s: (-s.priority, -s.effective_sender_priority))
    return rows


def _set_greylisting(conn: Connection, account: str, sender: str, active: int) -> None:
    _check_sender(sender)
    if "@" not in account or len(account) > _TEXT_WIDTH:
        raise InvalidInput("INVALID_ACCOUNT", account)
    keys = ("account", "sender")
    values = {
        "account": account,
        "priority": account_priority(account),
        "sender": sender,
        "sender_priority": account_priority(sender),
        "comment": "",
        "active": active,
    }
    stmt = upsert(greylisting, conn.dialect.name, keys, [k for k in values if k not in keys])
    conn.execute(stmt, values)


def enable_greylisting(conn: Connection, account: str, sender: str) -> None:
    """Greylist mail from ``sender`` to ``account`` (one atomic upsert)."""
    _set_greylisting(conn, account, sender, 1)


def disable_greylisting(conn: Connection, account: str, sender: str) -> None:
    """Never greylist mail from ``sender`` to ``account`` (one atomic upsert)."""
    _set_greylisting(conn, account, sender, 0)


def delete_setting(conn: Connection, account: str, sender: str) -> int:
    """Remove the (account, sender) setting; the number of rows removed."""
    t = greylisting.c
    stmt = sa.delete(greylisting).where(t.account == account, t.sender == sender)
    return int(conn.execute(stmt).rowcount)


# ---------------------------------------------------------------------------
# Whitelists
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _network(text: str) -> IPNetwork | None:
    """A stored network, parsed strictly (host bits set: not a network); cached."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> IPAddress | None:
    return parse_ip(text)


def whitelisted_senders(conn: Connection, recipients: Sequence[str]) -> list[str]:
    """Lower-cased senders of both whitelist tables for the recipient's keys."""
    spf, wl = greylisting_whitelist_domain_spf.c, greylisting_whitelists.c
    query = sa.union_all(
        sa.select(sa.func.lower(spf.sender)).where(spf.account.in_(recipients)),
        sa.select(sa.func.lower(wl.sender)).where(wl.account.in_(recipients)),
    )
    return [row[0] for row in conn.execute(query)]


def whitelist_match(
    entries: Iterable[str], senders: Sequence[str], client_address: str
) -> str | None:
    """The whitelist entry that lets this mail through, or None (§10.4 step 1).

    An entry matches when it is one of the candidate senders (the sender's
    keys, the client IP, its ``a.b.c.*``), the client IP in another spelling
    (IPv6), or a network (IPv4 or IPv6, any prefix length) holding the client.
    """
    values = list(entries)
    candidates = set(senders)
    for value in values:
        if value in candidates:
            return value
    client = parse_ip(client_address)
    if client is None:
        return None
    for value in values:
        if "/" in value:
            net = _network(value)
            if net is not None and net.version == client.version and client in net:
                return value
        elif ":" in value and _address(value) == client:
            return value
    return None


class WhitelistIndex:
    """The whitelist entries of some accounts, indexed for :meth:`match`.

    :func:`whitelist_match` reads every entry for each request; with the SPF
    tool's rows (every network of every whitelisted domain, under ``@.``)
    that is thousands.  Here an entry is found by one dictionary look-up per
    candidate and per network size, with the same answer: the first entry
    (in ``entries`` order) that is a candidate, else the first that holds
    the client.
    """

    __slots__ = ("_exact", "_networks", "entries")

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(entries)
        exact: dict[str, int] = {}
        # (IP version, prefix length) -> {network address as int: first index}
        networks: dict[tuple[int, int], dict[int, int]] = {}
        for i, value in enumerate(self.entries):
            exact.setdefault(value, i)
            if "/" in value:
                net = _network(value)
                if net is None:
                    continue
                key, number = (net.version, net.prefixlen), int(net.network_address)
            elif ":" in value:
                # an IPv6 address in another spelling than the client's
                addr = _address(value)
                if addr is None:
                    continue
                key, number = (addr.version, addr.max_prefixlen), int(addr)
            else:
                continue
            networks.setdefault(key, {}).setdefault(number, i)
        self._exact = exact
        self._networks = networks

    def match(self, senders: Iterable[str], client: IPAddress | None) -> str | None:
        """The entry that lets this mail through, or None (see :func:`whitelist_match`)."""
        exact = self._exact
        found = [exact[s] for s in senders if s in exact]
        if not found and client is not None:
            number, bits = int(client), client.max_prefixlen
            for (version, prefixlen), nets in self._networks.items():
                if version == client.version:
                    shift = bits - prefixlen
                    i = nets.get(number >> shift << shift)
                    if i is not None:
                        found.append(i)
        return self.entries[min(found)] if found else None


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """What greylisting reads for one recipient key: its whitelists and settings."""

    whitelist: WhitelistIndex
    settings: tuple[Setting, ...]


#: Recipient keys whose whitelists and settings are cached at most (an LRU).
POLICY_CACHE_SIZE: Final = 50_000
_policy_caches: weakref.WeakKeyDictionary[Any, TTLCache[str, AccountPolicy]] = (
    weakref.WeakKeyDictionary()
)


def policy_cache(db: object, ttl: float) -> TTLCache[str, AccountPolicy]:
    """The cache of :class:`AccountPolicy` per key read from database ``db``.

    One per database handle (so per daemon and settings generation), shared
    by the plugins: what this process writes (whitelist_outbound_recipient)
    applies at once through :func:`forget_policies`; changes made elsewhere
    (tools, other daemons) within ``ttl`` seconds.
    """
    cache = _policy_caches.get(db)
    if cache is None:
        cache = _policy_caches[db] = TTLCache(ttl, POLICY_CACHE_SIZE)
    return cache


def forget_policies(db: object, accounts: Iterable[str]) -> None:
    """Drop the cached policies of ``accounts`` (their whitelists just changed)."""
    cache = _policy_caches.get(db)
    if cache is not None:
        for account in accounts:
            cache.discard(account)


def _whitelist_query(table: sa.Table) -> KeyedQuery:
    return KeyedQuery(table.c.account, [sa.func.lower(table.c.sender)])


_SPF_WHITELIST = _whitelist_query(greylisting_whitelist_domain_spf)
_WHITELIST = _whitelist_query(greylisting_whitelists)
_t = greylisting.c
_SETTINGS = KeyedQuery(
    _t.account, [_t.id, _t.account, _t.sender, _t.priority, _t.sender_priority, _t.active]
)
del _t


def account_policies(conn: Connection, accounts: Sequence[str]) -> dict[str, AccountPolicy]:
    """Whitelists and greylisting settings per recipient key (§10.4 steps 1-2).

    Three SELECTs whatever the number of keys; the database decides which
    rows belong to which key (its collation), so the answer can be cached
    per key.  Whitelist entries are lower-cased, SPF-derived ones first.
    """
    spf = _SPF_WHITELIST.run(conn, accounts)
    manual = _WHITELIST.run(conn, accounts)
    settings = _SETTINGS.run(conn, accounts)
    return {
        account: AccountPolicy(
            WhitelistIndex(row[0] for row in (*spf[account], *manual[account])),
            tuple(_setting_of(row) for row in settings[account]),
        )
        for account in spf
    }


def _setting_of(row: Sequence[Any]) -> Setting:
    return Setting(
        id=int(row[0]),
        account=row[1],
        sender=row[2],
        priority=int(row[3]),
        sender_priority=int(row[4]),
        active=int(row[5]) == 1,
    )


def ordered_settings(policies: Iterable[AccountPolicy]) -> list[Setting]:
    """The settings of several keys in :func:`greylisting_settings`' order.

    The database's ``priority DESC, sender_priority DESC, id`` and then the
    stable sort by effective priorities: together one sort key.  A row found
    for two keys counts once.
    """
    rows = {s.id: s for p in policies for s in p.settings}
    return sorted(
        rows.values(),
        key=lambda s: (-s.priority, -s.effective_sender_priority, -s.sender_priority, s.id),
    )


def _insert_whitelist(
    conn: Connection, table: sa.Table, account: str, sender: str, comment: str
) -> bool:
    return insert_if_absent(conn, table, {"account": account, "sender": sender, "comment": comment})


def add_whitelist_sender(conn: Connection, account: str, sender: str, comment: str = "") -> bool:
    """Whitelist ``sender`` for mail to ``account``; True if the row is new.

    Raises InvalidInput ``INVALID_SENDER`` / ``INVALID_ACCOUNT`` (§10.6).  An
    existing row is left as it is (idempotent).
    """
    _check_sender(sender)
    _check_account(account)
    return _insert_whitelist(conn, greylisting_whitelists, account, sender, comment[:_TEXT_WIDTH])


def add_whitelist(conn: Connection, account: str, sender: str, comment: str = "") -> bool:
    """``greylisting_admin --add-whitelist``: the sender is checked, the account only
    needs an ``@`` (iRedAPD's tool); True if the row is new."""
    _check_sender(sender)
    if "@" not in account or len(account) > _TEXT_WIDTH:
        raise InvalidInput("INVALID_ACCOUNT", account)
    return _insert_whitelist(conn, greylisting_whitelists, account, sender, comment[:_TEXT_WIDTH])


def add_whitelist_domain(conn: Connection, domain: str) -> bool:
    """Add ``domain`` to ``greylisting_whitelist_domains``; True if it is new.

    The SPF cron tool turns it into whitelist rows.  Raises InvalidInput
    ``INVALID_DOMAIN``.
    """
    if not domain or len(domain) > _TEXT_WIDTH or not is_domain(domain):
        raise InvalidInput("INVALID_DOMAIN", domain)
    return insert_if_absent(conn, greylisting_whitelist_domains, {"domain": domain})


def remove_whitelisted_domain(conn: Connection, domain: str) -> int:
    """Remove ``domain`` and the whitelist rows the SPF tool made for it.

    iRedAPD deleted those rows from ``greylisting_whitelists`` only, where
    older versions kept them, and left the ones in
    ``greylisting_whitelist_domain_spf`` (§17.5 item 33).  Both go here.
    Returns the number of rows removed in all three tables.
    """
    comment = AUTO_UPDATE_PREFIX + domain
    d = greylisting_whitelist_domains
    removed = conn.execute(sa.delete(d).where(d.c.domain == domain)).rowcount
    for table in (greylisting_whitelist_domain_spf, greylisting_whitelists):
        removed += conn.execute(sa.delete(table).where(table.c.comment == comment)).rowcount
    return int(removed)


def list_whitelist_domains(conn: Connection) -> list[str]:
    """Every domain of ``greylisting_whitelist_domains``, ascending."""
    d = greylisting_whitelist_domains.c
    return [r[0] for r in conn.execute(sa.select(d.domain).order_by(d.domain))]


def list_whitelists(conn: Connection, account: str | None = None) -> list[tuple[str, str, str]]:
    """(sender, account, comment) rows (§14.3 --list-whitelists).

    ``account`` None: every manual whitelist, then every SPF-derived one;
    otherwise only the manual whitelists of that account.
    """
    tables = [greylisting_whitelists]
    if account is None:
        tables.append(greylisting_whitelist_domain_spf)
    out: list[tuple[str, str, str]] = []
    for table in tables:
        t = table.c
        q = sa.select(t.sender, t.account, t.comment).order_by(t.account, t.sender)
        if account is not None:
            q = q.where(t.account == account)
        out.extend((r.sender, r.account, r.comment) for r in conn.execute(q))
    return out


def network_text(network: IPNetwork) -> str:
    """How a network is stored: a bare address for a single host, else ``net/len``."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def replace_spf_whitelist(conn: Connection, domain: str, senders: Sequence[str]) -> list[str]:
    """Replace the SPF-derived whitelist rows of ``domain`` (§14.4 step 5).

    Run it inside :func:`transaction` so readers see the old rows or the new
    ones, never none.  Rows ``AUTO-UPDATE: <domain>`` go (also from
    ``greylisting_whitelists``, where older versions put them); each sender
    not yet whitelisted for everyone (``@.``) is added, and the greylisting
    triplets of that exact client address are forgotten.  Returns the senders
    added.
    """
    comment = AUTO_UPDATE_PREFIX + domain
    for table in (greylisting_whitelist_domain_spf, greylisting_whitelists):
        conn.execute(sa.delete(table).where(table.c.comment == comment))
    added: list[str] = []
    track = greylisting_tracking.c
    for sender in senders:
        if insert_if_absent(
            conn,
            greylisting_whitelist_domain_spf,
            {"account": CATCHALL, "sender": sender, "comment": comment},
        ):
            added.append(sender)
            conn.execute(sa.delete(greylisting_tracking).where(track.client_address == sender))
    return added


# ---------------------------------------------------------------------------
# Triplet tracking (§10.5) and previously passed clients (§10.4 step 4)
# ---------------------------------------------------------------------------


# The statements of the request path, built once (parameters bound per call).
# Parameter names start with "p_": SQLAlchemy reserves column names in
# UPDATE statements for itself.
def _p(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(f"p_{name}", type_=type_ or sa.BigInteger())


_gt = greylisting_tracking.c
_CLIENT = _p("client", sa.String())
_TOUCH_PASSED = Prepared(
    sa.update(greylisting_tracking)
    .where(_gt.client_address == _CLIENT, _gt.passed == 1)
    .values(record_expired=_p("expire"))
)
_HAS_PASSED = Prepared(
    sa.select(_gt.id).where(_gt.client_address == _CLIENT, _gt.passed == 1).limit(1)
)
_KEY = (
    _gt.sender == _p("sender", sa.String()),
    _gt.recipient == _p("recipient", sa.String()),
    _gt.client_address == _CLIENT,
)
_READ_TRIPLET = Prepared(
    sa.select(_gt.blocked_count, _gt.block_expired, _gt.record_expired).where(*_KEY).limit(1)
)
_RESTART = Prepared(
    sa.update(greylisting_tracking)
    .where(*_KEY, _gt.record_expired < _p("now"))
    .values(
        blocked_count=1,
        init_time=_p("now"),
        block_expired=_p("block_expire"),
        record_expired=_p("unauth_expire"),
    )
)
_TOO_SOON = Prepared(
    sa.update(greylisting_tracking)
    .where(*_KEY, _gt.block_expired > _p("now"), _gt.record_expired >= _p("now"))
    .values(blocked_count=_gt.blocked_count + 1)
)
_PASS = Prepared(
    sa.update(greylisting_tracking)
    .where(*_KEY, _gt.block_expired <= _p("now"), _gt.record_expired >= _p("now"))
    .values(record_expired=_p("auth_expire"), passed=1)
)
_FORGET_UNPASSED = Prepared(
    sa.delete(greylisting_tracking).where(_gt.client_address == _CLIENT, _gt.passed == 0)
)
del _gt


def touch_passed_client(conn: Connection, client_address: str, record_expired: int) -> bool:
    """If any triplet of this client passed, slide their expiry; True if one did.

    One UPDATE (iRedAPD: a SELECT, then this UPDATE).  MySQL connections made
    by SQLAlchemy count matched rows, so an unchanged expiry still counts.
    """
    params = {"p_client": client_address, "p_expire": record_expired}
    return _TOUCH_PASSED.execute(conn, params).rowcount > 0


def client_has_passed(conn: Connection, client_address: str) -> bool:
    """Read-only :func:`touch_passed_client` (dry runs)."""
    return _HAS_PASSED.execute(conn, {"p_client": client_address}).first() is not None


@dataclass(frozen=True, slots=True)
class Triplet:
    """(sender, recipient, client) and the informational domain columns."""

    sender: str
    recipient: str
    client_address: str
    sender_domain: str = ""
    rcpt_domain: str = ""

    def fits(self) -> bool:
        """True if every value fits its column (MySQL would truncate otherwise)."""
        return (
            len(self.sender) <= _TEXT_WIDTH
            and len(self.recipient) <= _TEXT_WIDTH
            and len(self.client_address) <= _CLIENT_WIDTH
            and len(self.sender_domain) <= _TEXT_WIDTH
            and len(self.rcpt_domain) <= _TEXT_WIDTH
        )


class TripletState(Enum):
    """What tracking found; ``greylist`` says whether the mail is deferred."""

    FIRST = ("first sighting", True)
    EXPIRED = ("record expired, tracking restarted", True)
    TOO_SOON = ("retry too soon", True)
    PASSED = ("passed", False)

    def __init__(self, text: str, greylist: bool) -> None:
        self.text = text
        self.greylist = greylist


def track_triplet(
    conn: Connection,
    triplet: Triplet,
    *,
    now: int,
    block_expire: int,
    unauth_expire: int,
    auth_expire: int,
    dry_run: bool = False,
) -> TripletState:
    """Record one delivery attempt of a triplet and say what state it is in.

    ``block_expire``, ``unauth_expire`` and ``auth_expire`` are the absolute
    times of §10.5.  Each write repeats, in its WHERE clause, the state read
    just before; if another daemon changed the row in between, nothing is
    written and the row is read again.  ``dry_run``: read only.
    """
    key = {
        "p_sender": triplet.sender,
        "p_recipient": triplet.recipient,
        "p_client": triplet.client_address,
    }
    for _ in range(_TRACK_ATTEMPTS):
        row = _READ_TRIPLET.execute(conn, key).first()
        if row is None:
            if dry_run or insert_if_absent(
                conn,
                greylisting_tracking,
                {
                    "sender": triplet.sender,
                    "sender_domain": triplet.sender_domain,
                    "recipient": triplet.recipient,
                    "rcpt_domain": triplet.rcpt_domain,
                    "client_address": triplet.client_address,
                    "init_time": now,
                    "block_expired": block_expire,
                    "record_expired": unauth_expire,
                    "blocked_count": 1,
                },
            ):
                return TripletState.FIRST
            continue  # another daemon inserted it first: count this attempt on it
        block_expired, record_expired = int(row[1]), int(row[2])
        params: dict[str, Any] = {**key, "p_now": now}
        if now > record_expired:
            state = TripletState.EXPIRED
            stmt = _RESTART
            params.update(p_block_expire=block_expire, p_unauth_expire=unauth_expire)
        elif now < block_expired:
            state = TripletState.TOO_SOON
            stmt = _TOO_SOON
        else:
            state = TripletState.PASSED
            if record_expired > auth_expire:
                return state  # already whitelisted for longer (§10.5)
            stmt = _PASS
            params["p_auth_expire"] = auth_expire
        if dry_run:
            return state
        if stmt.execute(conn, params).rowcount:
            if state is TripletState.PASSED:
                # The client is trusted from now on (§10.4 step 4): its other,
                # unpassed triplets are of no use any more.
                _FORGET_UNPASSED.execute(conn, {"p_client": triplet.client_address})
            return state
    raise RuntimeError(
        f"greylisting triplet changed by others {_TRACK_ATTEMPTS} times in a row; giving up"
    )
