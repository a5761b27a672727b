"""amavisd_wblist: decision tables on SQLite, MariaDB and PostgreSQL.

One amavisd dataset (explicit ids, so id-space mix-ups are visible) is loaded
once per backend; every row of the decision tables is one request through the
real chain.  Bugs of iRedAPD that are fixed here (access-policies.md §15 items
12-15, 18) have rows of their own, marked "fixed".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts
from iredapd.chain import Chain
from iredapd.request import PolicyRequest
from iredapd.services import Services
from iredapd.storage import wblist as wblist_store
from iredapd.storage.migrate import upgrade
from iredapd.storage.schema import mailaddr, outbound_wblist, users, wblist
from iredapd.storage.wblist import WBRow, hit_statement, pick_hit
from tests.support.databases import backend_params, require_service, temporary_database

NOW = 1_700_000_000.0
HOSTNAME = "mx.example.test"
REJECT = "REJECT Blacklisted"
DISCARD = "DISCARD Policy discard"


# ---------------------------------------------------------------------------
# Services on a real database (shared with test_wblist_rdns / test_senderscore)
# ---------------------------------------------------------------------------


@contextmanager
def backend_services(backend: str, directory: Path, **overrides: Any) -> Iterator[Services]:
    """Services whose iredapd and amavisd databases are new, empty ones on ``backend``.

    SQLite: files under ``directory``.  MariaDB/PostgreSQL: one temporary
    database holding both (their table names do not clash), dropped afterwards.
    ``services.vmail`` is a :class:`FakeAccounts` with example.com (hosted),
    backup.org (backup MX) and alias.com (alias of example.com).
    """
    with ExitStack() as stack:
        if backend == "sqlite":
            db: dict[str, Any] = {"backend": "sqlite", "DATA_DIR": str(directory)}
        else:
            require_service(backend)
            url = stack.enter_context(temporary_database(backend))
            engine = sa.create_engine(url, poolclass=NullPool)
            try:
                upgrade(engine, "amavisd", create_foreign=True)
            finally:
                engine.dispose()
            db = {"backend": "mysql" if backend == "mariadb" else "pgsql"}
            for name in ("iredapd", "amavisd"):
                db.update(
                    {
                        f"{name}_db_server": url.host,
                        f"{name}_db_port": url.port,
                        f"{name}_db_name": url.database,
                        f"{name}_db_user": url.username,
                        f"{name}_db_password": "",
                    }
                )
        loaded = load_namespace({}, overrides={**db, "SERVER_HOSTNAME": HOSTNAME, **overrides})
        services = Services(loaded.settings, clock=lambda: NOW)
        services.open_databases()
        stack.callback(_close, services)
        accounts = FakeAccounts()
        accounts.add_domain("example.com")
        accounts.add_domain("backup.org", backupmx=True)
        accounts.add_alias_domain("alias.com", "example.com")
        services.vmail = accounts
        yield services


def _close(services: Services) -> None:
    for db in (services.iredapd_db, services.amavisd_db, services.vmail_db):
        if db is not None:
            db.dispose()
    services.executor.shutdown(wait=True)


def chain_for(services: Services, plugin: str, **overrides: Any) -> Chain:
    """A chain of one built-in plugin on ``services`` with setting overrides."""
    loaded = load_namespace(
        {}, overrides={"plugins": [plugin], "SERVER_HOSTNAME": HOSTNAME, **overrides}
    )
    return Chain.build(loaded.settings, services, loaded.specs)


def rcpt(**attrs: str) -> PolicyRequest:
    """An RCPT request with the given attributes."""
    return PolicyRequest.from_attributes({"protocol_state": "RCPT", **attrs})


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------

# users (local accounts): id, email, priority (the values iRedAPD writes)
USERS = [
    (1, "@.", 0),
    (2, "r1@example.com", 10),
    (3, "@example.com", 5),
    (4, "@.example.com", 3),
    (5, "r-all@example.com", 10),
    (6, "out@example.com", 10),
    # same id as the CIDR 192.0.2.0/24 in mailaddr: iRedAPD mixed the two (bug 12)
    (7, "other@example.com", 10),
    (8, "selfish@example.com", 10),
    (9, "10.9.0.0/16", 7),  # outbound list of clients in a network (users side)
    (10, "r6@example.com", 10),
]

# mailaddr (senders of inbound, recipients of outbound): id, email, priority
MAILADDR = [
    (1, "spammer@ext.org", 10),
    (2, "@bad.org", 5),
    (3, "vip@bad.org", 10),
    (4, "@.evil.net", 3),
    (5, "@.xyz", 2),
    (6, "john@*", 7),
    (7, "192.0.2.0/24", 7),
    (8, "192.0.2.128/25", 7),
    (9, "203.0.113.5", 9),
    (10, "198.51.100.*", 8),
    (11, "10.20.*.*", 8),
    (12, "172.16.5.1/16", 7),  # host bits set: iRedAPD ignored it (bug 15)
    (13, "2001:db8::/32", 7),
    (14, "2001:db8:1::7", 9),
    (15, "@ext2.org", 5),
    (16, "100.64.0.0/10", 7),
    (17, "mixed@ext.org", 10),
    (18, "global-bad@ext.org", 10),
    (19, "dom-bad@ext.org", 10),
    (20, "subbad@ext.org", 10),
    (21, "@.", 0),
    (22, "friend@ext.org", 10),
    (23, "fake@example.com", 10),
    (24, "forbidden@ext.org", 10),
    (25, "@competitor.com", 5),
    (26, "r1@example.com", 10),
    (27, "out@example.com", 10),
    (28, "victim@ext.org", 10),
    (29, "bad-local@example.com", 10),
    (30, "selfish@example.com", 10),
    (31, "yes@ext.org", 10),
    (32, "lower@ext.org", 10),
    (33, "Upper@Ext.org", 10),
    (34, "@office-blocked.org", 5),
    (35, "198.51.100.0/24", 7),
    (36, "198.51.100.7", 9),
    (37, "@partner.org", 5),
    (38, "boss@partner.org", 10),
]

# inbound: (users.email of the local recipient, mailaddr.email of the sender, wb)
WBLIST = [
    ("r1@example.com", "spammer@ext.org", "B"),
    ("r1@example.com", "@bad.org", "B"),
    ("r1@example.com", "vip@bad.org", "W"),
    ("r1@example.com", "@.evil.net", "B"),
    ("r1@example.com", "@.xyz", "B"),
    ("r1@example.com", "john@*", "B"),
    ("r1@example.com", "192.0.2.0/24", "B"),
    ("r1@example.com", "192.0.2.128/25", "W"),
    ("r1@example.com", "203.0.113.5", "B"),
    ("r1@example.com", "198.51.100.*", "B"),
    ("r1@example.com", "10.20.*.*", "B"),
    ("r1@example.com", "172.16.5.1/16", "B"),
    ("r1@example.com", "2001:db8::/32", "B"),
    ("r1@example.com", "2001:db8:1::7", "W"),
    ("r1@example.com", "@ext2.org", "B"),
    ("r1@example.com", "100.64.0.0/10", "W"),
    ("r1@example.com", "mixed@ext.org", "W"),
    ("r1@example.com", "fake@example.com", "B"),
    ("r1@example.com", "out@example.com", "B"),
    ("r1@example.com", "yes@ext.org", "Y"),  # amavisd's own values mean nothing here
    ("r1@example.com", "lower@ext.org", "b"),  # MySQL's collation matches 'B'
    ("r1@example.com", "Upper@Ext.org", "B"),  # never matches: requests are lower-cased
    ("@example.com", "mixed@ext.org", "B"),
    ("@example.com", "dom-bad@ext.org", "B"),
    ("@.example.com", "subbad@ext.org", "B"),
    ("@.", "global-bad@ext.org", "B"),
    ("@.", "bad-local@example.com", "B"),
    ("r-all@example.com", "@.", "B"),
    ("r-all@example.com", "friend@ext.org", "W"),
    ("selfish@example.com", "selfish@example.com", "B"),
    # ip 9 > wildcard ip 8 > network 7
    ("r6@example.com", "198.51.100.0/24", "W"),
    ("r6@example.com", "198.51.100.*", "B"),
    ("r6@example.com", "198.51.100.7", "W"),
    # the recipient's account is the outer loop: r1 (10) before @example.com (5)
    ("r1@example.com", "@partner.org", "W"),
    ("@example.com", "boss@partner.org", "B"),
]

# outbound: (users.email of the local sender, mailaddr.email of the recipient, wb)
OUTBOUND = [
    ("out@example.com", "forbidden@ext.org", "B"),
    ("out@example.com", "r1@example.com", "W"),
    ("@example.com", "@competitor.com", "B"),
    ("other@example.com", "victim@ext.org", "B"),
    ("10.9.0.0/16", "@office-blocked.org", "B"),
    # the sender's account is the outer loop: out@ (10) before @example.com (5)
    ("out@example.com", "@partner.org", "W"),
    ("@example.com", "boss@partner.org", "B"),
]


def load_dataset(services: Services) -> None:
    """Insert the dataset with explicit ids."""
    assert services.amavisd_db is not None
    uid = {email: i for i, email, _p in USERS}
    mid = {email: i for i, email, _p in MAILADDR}
    with services.amavisd_db.engine.begin() as conn:
        conn.execute(
            users.insert(),
            [{"id": i, "email": e, "priority": p, "policy_id": 0} for i, e, p in USERS],
        )
        conn.execute(
            mailaddr.insert(), [{"id": i, "email": e, "priority": p} for i, e, p in MAILADDR]
        )
        conn.execute(
            wblist.insert(), [{"rid": uid[r], "sid": mid[s], "wb": wb} for r, s, wb in WBLIST]
        )
        conn.execute(
            outbound_wblist.insert(),
            [{"sid": uid[s], "rid": mid[r], "wb": wb} for s, r, wb in OUTBOUND],
        )


@pytest.fixture(scope="module", params=backend_params())
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(backend, services) with the dataset loaded, one database per backend."""
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"wblist-{backend}")
    with backend_services(backend, directory) as services:
        load_dataset(services)
        yield backend, services


# ---------------------------------------------------------------------------
# Decision tables
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and the expected action (``mysql``: where MariaDB differs)."""

    sender: str
    recipient: str
    client: str = "203.0.113.200"
    sasl: str = ""
    expected: str = "DUNNO"
    mysql: str | None = None
    settings: tuple[tuple[str, Any], ...] = ()


def _cases(table: dict[str, Case]) -> list[Any]:
    return [pytest.param(case, id=name) for name, case in table.items()]


INBOUND = {
    # sender candidate forms
    "email": Case("spammer@ext.org", "r1@example.com", expected=REJECT),
    "email-extension-stripped": Case("spammer+tag@ext.org", "r1@example.com", expected=REJECT),
    "email-discard": Case(
        "spammer@ext.org",
        "r1@example.com",
        expected=DISCARD,
        settings=(("WBLIST_DISCARD_INSTEAD_OF_REJECT", True),),
    ),
    "domain": Case("anyone@bad.org", "r1@example.com", expected=REJECT),
    "subdomain-form-on-domain": Case("x@evil.net", "r1@example.com", expected=REJECT),
    "subdomain-form-on-sub": Case("x@mail.evil.net", "r1@example.com", expected=REJECT),
    "tld": Case("x@shop.xyz", "r1@example.com", expected=REJECT),
    "wildcard-addr": Case("john+news@any.org", "r1@example.com", expected=REJECT),
    "wildcard-addr-other-local": Case("johnny@any.org", "r1@example.com"),
    "ip": Case("a@clean.org", "r1@example.com", client="203.0.113.5", expected=REJECT),
    "wildcard-ip": Case("a@clean.org", "r1@example.com", client="198.51.100.9", expected=REJECT),
    "wildcard-ip-all-forms-off": Case("a@clean.org", "r1@example.com", client="10.20.30.40"),
    "wildcard-ip-all-forms-on": Case(
        "a@clean.org",
        "r1@example.com",
        client="10.20.30.40",
        expected=REJECT,
        settings=(("ENABLE_ALL_WILDCARD_IP", True),),
    ),
    "cidr": Case("a@clean.org", "r1@example.com", client="192.0.2.9", expected=REJECT),
    # fixed (bugs 13, 18): of two networks with equal priority the longer prefix wins
    "cidr-longer-prefix-wins": Case(
        "a@clean.org", "r1@example.com", client="192.0.2.200", expected="OK"
    ),
    # fixed (bug 15): 172.16.5.1/16 is read as 172.16.0.0/16
    "cidr-host-bits-set": Case(
        "a@clean.org", "r1@example.com", client="172.16.9.9", expected=REJECT
    ),
    # fixed (bug 15): IPv6 networks
    "cidr-ipv6": Case("a@clean.org", "r1@example.com", client="2001:db8:5::1", expected=REJECT),
    "ip-ipv6-beats-network": Case(
        "a@clean.org", "r1@example.com", client="2001:db8:1::7", expected="OK"
    ),
    "no-match": Case("a@clean.org", "r1@example.com", client="203.0.113.200"),
    # priorities
    "email-beats-domain": Case("vip@bad.org", "r1@example.com", expected="OK"),
    # fixed (bug 14): a network (7) is tried before @domain (5), not after everything
    "cidr-priority-beats-domain": Case(
        "x@ext2.org", "r1@example.com", client="100.64.1.1", expected="OK"
    ),
    "domain-without-network": Case("x@ext2.org", "r1@example.com", expected=REJECT),
    # ip 9 > wildcard ip 8 > network 7
    "ip-beats-wildcard-ip": Case(
        "a@clean.org", "r6@example.com", client="198.51.100.7", expected="OK"
    ),
    "wildcard-ip-beats-network": Case(
        "a@clean.org", "r6@example.com", client="198.51.100.8", expected=REJECT
    ),
    # recipient forms, recipient priority first
    "rcpt-user-beats-domain": Case("mixed@ext.org", "r1@example.com", expected="OK"),
    "rcpt-account-is-outer-loop": Case("boss@partner.org", "r1@example.com", expected="OK"),
    "rcpt-account-is-outer-loop-2": Case("boss@partner.org", "r2@example.com", expected=REJECT),
    "rcpt-domain-account": Case("mixed@ext.org", "r2@example.com", expected=REJECT),
    "rcpt-domain-account-2": Case("dom-bad@ext.org", "r1@example.com", expected=REJECT),
    "rcpt-subdomain-account": Case("subbad@ext.org", "a@sub.example.com", expected=REJECT),
    "rcpt-subdomain-account-on-domain": Case("subbad@ext.org", "a@example.com", expected=REJECT),
    "rcpt-server-wide": Case("global-bad@ext.org", "nobody@elsewhere.org", expected=REJECT),
    "rcpt-extension-stripped": Case("spammer@ext.org", "r1+folder@example.com", expected=REJECT),
    "catchall-sender-blacklisted": Case("x@y.org", "r-all@example.com", expected=REJECT),
    "catchall-sender-email-whitelisted": Case("friend@ext.org", "r-all@example.com", expected="OK"),
    # alias domains: the recipient's and the sender's
    "rcpt-alias-domain": Case("spammer@ext.org", "r1@alias.com", expected=REJECT),
    "sender-alias-domain": Case("fake@alias.com", "r1@example.com", expected=REJECT),
    # no decision
    "null-sender": Case("", "r-all@example.com"),
    "sender-is-recipient": Case("selfish@example.com", "selfish@example.com"),
    "sender-is-recipient-ext": Case("selfish+x@example.com", "selfish@example.com"),
    "wb-Y-ignored": Case("yes@ext.org", "r1@example.com"),
    # a lower-case 'b' counts on MySQL only (its collation), as with iRedAPD
    "wb-lowercase": Case("lower@ext.org", "r1@example.com", mysql=REJECT),
    "email-case-sensitive": Case("upper@ext.org", "r1@example.com"),
}

OUTBOUND_CASES = {
    "outbound-email": Case(
        "out@example.com", "forbidden@ext.org", sasl="out@example.com", expected=REJECT
    ),
    "outbound-discard": Case(
        "out@example.com",
        "forbidden@ext.org",
        sasl="out@example.com",
        expected=DISCARD,
        settings=(("WBLIST_DISCARD_INSTEAD_OF_REJECT", True),),
    ),
    "outbound-bypass": Case(
        "out@example.com",
        "forbidden@ext.org",
        sasl="out@example.com",
        settings=(("WBLIST_BYPASS_OUTGOING_EMAIL", True),),
    ),
    "outbound-account-is-outer-loop": Case(
        "out@example.com", "boss@partner.org", sasl="out@example.com"
    ),
    "outbound-account-is-outer-loop-2": Case(
        "u@example.com", "boss@partner.org", sasl="u@example.com", expected=REJECT
    ),
    "outbound-domain-account": Case(
        "u@example.com", "ceo@competitor.com", sasl="u@example.com", expected=REJECT
    ),
    # the login, not the envelope sender, is the sender of logged-in mail
    "outbound-uses-sasl-username": Case(
        "someone@else.org", "forbidden@ext.org", sasl="out@example.com", expected=REJECT
    ),
    "outbound-envelope-ignored": Case("out@example.com", "forbidden@ext.org", sasl="u@example.com"),
    # an outbound W does not stop the recipient's inbound blacklist
    "outbound-white-then-inbound-black": Case(
        "out@example.com", "r1@example.com", sasl="out@example.com", expected=REJECT
    ),
    # fixed (bug 12): the network 192.0.2.0/24 (mailaddr id 7) is not user id 7
    "outbound-no-id-mixing": Case(
        "out@example.com", "victim@ext.org", sasl="out@example.com", client="192.0.2.9"
    ),
    # networks listed as outbound accounts (users side)
    "outbound-network-account": Case(
        "u@example.com",
        "x@office-blocked.org",
        sasl="u@example.com",
        client="10.9.1.1",
        expected=REJECT,
    ),
    "outbound-network-account-other-client": Case(
        "u@example.com", "x@office-blocked.org", sasl="u@example.com", client="10.8.1.1"
    ),
    # inbound lists for logged-in senders: only towards local recipients
    "auth-same-domain": Case(
        "bad-local@example.com", "r1@example.com", sasl="bad-local@example.com", expected=REJECT
    ),
    "auth-external-recipient": Case(
        "bad-local@example.com", "x@ext.org", sasl="bad-local@example.com"
    ),
    "auth-backup-mx-recipient": Case(
        "bad-local@example.com", "x@backup.org", sasl="bad-local@example.com", expected=REJECT
    ),
    "auth-alias-domain-recipient": Case(
        "bad-local@example.com", "x@alias.com", sasl="bad-local@example.com", expected=REJECT
    ),
    "auth-hostname-recipient": Case(
        "bad-local@example.com", f"root@{HOSTNAME}", sasl="bad-local@example.com", expected=REJECT
    ),
    "unauth-external-recipient": Case("bad-local@example.com", "x@ext.org", expected=REJECT),
    # no user@* form for logged-in senders (bug 16 kept: see the plugin's doc)
    "auth-no-wildcard-addr": Case("john@example.com", "r1@example.com", sasl="john@example.com"),
}


def _expected(case: Case, backend: str) -> str:
    return case.mysql if backend == "mariadb" and case.mysql is not None else case.expected


@pytest.fixture(params=["cached", "uncached", "big-lists"])
def caching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The three ways to a hit: each account's whole list cached; one query per
    request (CACHE_TTL = 0); lists over the limit, queried per request for
    the candidates only (the limit lowered to 1 pair here)."""
    if request.param == "big-lists":
        small = {outbound: wblist_store._list_query(outbound, 1) for outbound in (False, True)}
        monkeypatch.setattr(wblist_store, "_LISTS", small)
    return {"CACHE_TTL": 0} if request.param == "uncached" else {}


@pytest.mark.parametrize("case", _cases(INBOUND) + _cases(OUTBOUND_CASES))
async def test_decision(env: Any, case: Case, caching: dict[str, Any]) -> None:
    backend, services = env
    chain = chain_for(services, "amavisd_wblist", **caching, **dict(case.settings))
    request = rcpt(
        sender=case.sender,
        recipient=case.recipient,
        client_address=case.client,
        sasl_username=case.sasl,
    )
    decision = await chain.evaluate(request)
    assert decision.action.text == _expected(case, backend)
    assert decision.plugin == ("" if decision.action.text == "DUNNO" else "amavisd_wblist")


@pytest.mark.parametrize("ttl", [0, 300])
async def test_a_list_change_applies_at_once_without_cache_else_within_the_ttl(
    env: Any, ttl: float
) -> None:
    """With CACHE_TTL, a change made elsewhere (wblist_admin) applies when the
    cached list expires (TTLCache's own tests) or on reload (a new chain)."""
    _backend, services = env
    request = rcpt(
        sender="newcomer@ext.org", recipient="r1@example.com", client_address="203.0.113.200"
    )
    chain = chain_for(services, "amavisd_wblist", CACHE_TTL=ttl)
    assert (await chain.evaluate(request)).action.text == "DUNNO"
    assert services.amavisd_db is not None
    engine = services.amavisd_db.engine
    with engine.begin() as conn:
        conn.execute(mailaddr.insert().values(id=900, email="newcomer@ext.org", priority=10))
        conn.execute(wblist.insert().values(rid=2, sid=900, wb="B"))
    try:
        assert (await chain.evaluate(request)).action.text == (REJECT if ttl == 0 else "DUNNO")
        reloaded = chain_for(services, "amavisd_wblist", CACHE_TTL=ttl)
        assert (await reloaded.evaluate(request)).action.text == REJECT
    finally:
        with engine.begin() as conn:
            conn.execute(wblist.delete().where(wblist.c.sid == 900))
            conn.execute(mailaddr.delete().where(mailaddr.c.id == 900))


async def test_other_states_are_not_checked(env: Any) -> None:
    _backend, services = env
    chain = chain_for(services, "amavisd_wblist")
    request = PolicyRequest.from_attributes(
        {
            "protocol_state": "END-OF-MESSAGE",
            "sender": "spammer@ext.org",
            "recipient": "r1@example.com",
        }
    )
    assert (await chain.evaluate(request)).action.text == "DUNNO"


async def test_account_backend_down_is_a_plugin_failure(env: Any) -> None:
    _backend, services = env
    accounts = services.vmail
    assert isinstance(accounts, FakeAccounts)
    accounts.down = True
    try:
        chain = chain_for(
            services,
            "amavisd_wblist",
            PLUGIN_FAILURE_ACTIONS={"amavisd_wblist": "DEFER_IF_PERMIT x"},
        )
        decision = await chain.evaluate(
            rcpt(sender="spammer@ext.org", recipient="r1@example.com", client_address="192.0.2.1")
        )
        assert decision.action.text == "DEFER_IF_PERMIT x"
    finally:
        accounts.down = False


async def test_alias_lookups_are_shared_within_a_request(env: Any) -> None:
    _backend, services = env
    accounts = services.vmail
    assert isinstance(accounts, FakeAccounts)
    before = accounts.calls["alias_target_domain"]
    chain = chain_for(services, "amavisd_wblist")
    await chain.evaluate(
        rcpt(sender="a@example.com", recipient="b@example.com", client_address="192.0.2.1")
    )
    # sender and recipient share one domain: asked once
    assert accounts.calls["alias_target_domain"] - before == 1


# ---------------------------------------------------------------------------
# pick_hit: the loop order, on plain rows (no database)
# ---------------------------------------------------------------------------


Row = WBRow


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # the account (recipient) is the outer loop
        (
            [
                Row(3, 5, "@d.com", 1, 10, "a@x.org", "B"),
                Row(2, 10, "u@d.com", 2, 5, "@x.org", "W"),
            ],
            (2, 2),
        ),
        # then the address by priority
        (
            [
                Row(2, 10, "u@d.com", 2, 5, "@x.org", "W"),
                Row(2, 10, "u@d.com", 1, 10, "a@x.org", "B"),
            ],
            (2, 1),
        ),
        # equal priorities: the form's default priority, then the longer prefix, then the id
        (
            [
                Row(2, 10, "u@d.com", 9, 7, "192.0.2.0/24", "B"),
                Row(2, 10, "u@d.com", 8, 7, "192.0.2.0/25", "W"),
            ],
            (2, 8),
        ),
        (
            [
                Row(2, 10, "u@d.com", 9, 5, "@x.org", "B"),
                Row(2, 10, "u@d.com", 8, 5, "192.0.2.0/25", "W"),
            ],
            (2, 8),
        ),
        (
            [
                Row(2, 10, "u@d.com", 9, 10, "a@x.org", "B"),
                Row(2, 10, "u@d.com", 8, 10, "a@x.org", "W"),
            ],
            (2, 8),
        ),
        # rows the client is not in are not hits
        ([Row(2, 10, "u@d.com", 9, 7, "198.51.100.0/24", "B")], None),
        ([Row(2, 10, "u@d.com", 9, 8, "192.0.3.*", "B")], None),
    ],
)
def test_pick_hit_order(rows: list[Row], expected: tuple[int, int] | None) -> None:
    hit = pick_hit(
        rows,
        outbound=False,
        accounts=["u@d.com", "@d.com", "@."],
        addresses=["a@x.org", "@x.org", "192.0.2.1"],
        client_address="192.0.2.1",
    )
    assert (None if hit is None else (hit.account_id, hit.address_id)) == expected


def test_hit_statement_binds_every_value() -> None:
    stmt = hit_statement(
        outbound=False, accounts=["u@d.com"], addresses=["a'b@x.org"], client_address="192.0.2.1"
    )
    compiled = stmt.compile()
    assert "a'b@x.org" not in str(compiled)
    assert {"192.", "192/"} <= {v for v in compiled.params.values() if isinstance(v, str)}
