"""The greylisting plugin (core-and-stateful.md §10) on SQLite, MariaDB and PostgreSQL.

Every step of the decision flow (§10.2-§10.4) and of triplet tracking (§10.5)
with an injected clock, checking both the action and the tracking rows.  The
helpers here (``GreylistEnv``, ``gl_env``) are shared by the other greylisting
test modules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts
from iredapd.chain import Chain
from iredapd.lookup import account_priority
from iredapd.request import PolicyRequest
from iredapd.services import Services
from iredapd.storage import greylisting as store
from iredapd.storage import schema
from tests.support.databases import backend_params, temporary_database

T0 = 1_700_000_000  # the injected clock's start (epoch seconds)
MINUTE, DAY = 60, 86400
GREYLISTED = "451 4.7.1 Intentional policy rejection, please try again later"
CLIENT = "203.0.113.5"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.com"

TABLES = {
    "greylisting": schema.greylisting,
    "whitelists": schema.greylisting_whitelists,
    "spf": schema.greylisting_whitelist_domain_spf,
    "domains": schema.greylisting_whitelist_domains,
    "tracking": schema.greylisting_tracking,
}


class Clock:
    """Wall-clock seconds that only move when told to."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def db_overrides(backend: str, url: URL | None, tmp_path: Path) -> dict[str, Any]:
    """Settings that point the iredapd database at the test database."""
    if backend == "sqlite":
        return {"backend": "sqlite", "DATA_DIR": str(tmp_path / "data")}
    assert url is not None
    return {
        "backend": "mysql" if backend == "mariadb" else "pgsql",
        "iredapd_db_server": url.host,
        "iredapd_db_port": url.port,
        "iredapd_db_name": url.database,
        "iredapd_db_user": url.username,
        "iredapd_db_password": "",
    }


def request(**attrs: str) -> PolicyRequest:
    """An RCPT request from an unknown client, with ``attrs`` replacing defaults."""
    values = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": CLIENT,
        "sender": SENDER,
        "recipient": RECIPIENT,
    }
    values.update(attrs)
    return PolicyRequest.from_attributes(values)


@dataclass
class GreylistEnv:
    """One test database, and chains (daemons) built on it."""

    base: dict[str, Any]
    clock: Clock = field(default_factory=Clock)
    accounts: FakeAccounts = field(default_factory=FakeAccounts)
    services: list[Services] = field(default_factory=list)
    services_class: type[Services] = Services

    def chain(self, plugins: tuple[str, ...] = ("greylisting",), **overrides: Any) -> Chain:
        """A chain with its own Services (its own connection pool: another daemon)."""
        settings = {**self.base, "plugins": list(plugins), **overrides}
        loaded = load_namespace({}, overrides=settings)
        services = self.services_class(loaded.settings, clock=self.clock)
        services.open_databases(create_schema=False)  # made once per module
        services.vmail = self.accounts
        self.services.append(services)
        return Chain.build(loaded.settings, services, loaded.specs)

    @property
    def engine(self) -> sa.Engine:
        if not self.services:
            self.chain()
        db = self.services[0].iredapd_db
        assert db is not None
        return db.engine

    def insert(self, table: str, **values: Any) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.insert(TABLES[table]).values(**values))

    def enable(self, account: str = "@.", sender: str = "@.") -> None:
        with self.engine.connect() as conn:
            store.enable_greylisting(conn, account, sender)

    def rows(self, table: str, *columns: str) -> list[dict[str, Any]]:
        t = TABLES[table]
        cols = [t.c[c] for c in columns] if columns else list(t.c)
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(*cols).order_by(t.c.id))
            return [dict(r._mapping) for r in result]

    def tracking(self) -> list[dict[str, Any]]:
        return self.rows(
            "tracking",
            "sender",
            "recipient",
            "client_address",
            "sender_domain",
            "rcpt_domain",
            "init_time",
            "block_expired",
            "record_expired",
            "blocked_count",
            "passed",
        )

    def close(self) -> None:
        for services in self.services:
            asyncio.run(services.close())


@contextlib.contextmanager
def greylist_env(base: Mapping[str, Any]) -> Iterator[GreylistEnv]:
    """A GreylistEnv on the (existing, schema-ready) database named by ``base``."""
    env = GreylistEnv(dict(base))
    try:
        yield env
    finally:
        env.close()


def create_schema(base: Mapping[str, Any]) -> None:
    """Create the iredapd tables as the daemon does at startup."""
    loaded = load_namespace({}, overrides=dict(base))
    services = Services(loaded.settings)
    services.open_databases()
    asyncio.run(services.close())


@pytest.fixture(scope="module", params=backend_params())
def gl_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One database per backend and test module, with the schema: its settings."""
    name: str = request.param
    directory = tmp_path_factory.mktemp("gl")
    with temporary_database(name, directory) as url:
        base = db_overrides(name, None if name == "sqlite" else url, directory)
        create_schema(base)
        yield base


@pytest.fixture
def gl_env(gl_database: dict[str, Any]) -> Iterator[GreylistEnv]:
    """A GreylistEnv on the backend under test, its greylisting tables empty."""
    with greylist_env(gl_database) as env:
        with env.engine.connect() as conn:
            for table in TABLES.values():
                conn.execute(sa.delete(table))
        yield env


async def ask(chain: Chain, *, dry_run: bool = False, **attrs: str) -> str:
    return (await chain.evaluate(request(**attrs), dry_run=dry_run)).action.text


def triplet_row(**changes: Any) -> dict[str, Any]:
    row = {
        "sender": SENDER,
        "recipient": RECIPIENT,
        "client_address": CLIENT,
        "sender_domain": "example.org",
        "rcpt_domain": "example.com",
        "init_time": T0,
        "block_expired": T0 + 15 * MINUTE,
        "record_expired": T0 + DAY,
        "blocked_count": 1,
        "passed": 0,
    }
    row.update(changes)
    return row


# ---------------------------------------------------------------------------
# Triplet tracking (§10.5)
# ---------------------------------------------------------------------------


async def test_triplet_lifecycle(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    # first sighting: deferred, one row
    assert await ask(chain) == GREYLISTED
    assert env.tracking() == [triplet_row()]
    # retry too soon: deferred, counted
    env.clock.advance(5 * MINUTE)
    assert await ask(chain) == GREYLISTED
    env.clock.advance(9 * MINUTE + 59)
    assert await ask(chain) == GREYLISTED
    assert env.tracking() == [triplet_row(blocked_count=3)]
    # another triplet of the same client, still unpassed
    assert await ask(chain, recipient="carol@example.com") == GREYLISTED
    # at block_expired exactly the retry passes
    env.clock.now = T0 + 15 * MINUTE
    assert await ask(chain) == "DUNNO"
    passed = triplet_row(blocked_count=3, passed=1, record_expired=T0 + 15 * MINUTE + 30 * DAY)
    assert env.tracking() == [passed]  # the client's unpassed triplets are gone
    # from now on the client is known: any sender, any recipient, expiry slides
    env.clock.advance(2 * DAY)
    assert await ask(chain, sender="", recipient="dave@example.com") == "DUNNO"
    assert env.tracking() == [{**passed, "record_expired": T0 + 15 * MINUTE + 32 * DAY}]


@pytest.mark.parametrize("ttl", [0, 300])
async def test_a_passed_client_is_remembered_for_the_cache_ttl(
    gl_env: GreylistEnv, ttl: float
) -> None:
    """Once a client passed, its next messages need no database trip for
    CACHE_TTL seconds: its tracking rows deleted meanwhile (greylisting_admin,
    cleanup) are noticed only then."""
    env = gl_env
    chain = env.chain(CACHE_TTL=ttl)
    env.enable()
    assert await ask(chain) == GREYLISTED
    env.clock.advance(15 * MINUTE)
    assert await ask(chain) == "DUNNO"  # passed
    with env.engine.connect() as conn:
        conn.execute(sa.delete(TABLES["tracking"]))
    new = {"recipient": "dave@example.com"}
    if ttl:
        env.clock.advance(ttl - 1)
        assert await ask(chain, **new) == "DUNNO"  # remembered
        assert env.tracking() == []  # and no row touched or written
        env.clock.advance(1)
    assert await ask(chain, **new) == GREYLISTED
    assert [r["recipient"] for r in env.tracking()] == ["dave@example.com"]


async def test_expired_record_restarts_tracking(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    assert await ask(chain) == GREYLISTED
    env.clock.advance(5 * MINUTE)
    assert await ask(chain) == GREYLISTED
    env.clock.now = T0 + DAY + 1  # never retried after the block: the record expired
    assert await ask(chain) == GREYLISTED
    assert env.tracking() == [
        triplet_row(
            init_time=T0 + DAY + 1,
            block_expired=T0 + DAY + 1 + 15 * MINUTE,
            record_expired=T0 + 2 * DAY + 1,
            blocked_count=1,
        )
    ]


async def test_expired_record_restarts_from_scratch(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    env.insert("tracking", **triplet_row(init_time=1, record_expired=T0 - 1, blocked_count=7))
    assert await ask(chain) == GREYLISTED
    assert env.tracking() == [triplet_row()]


async def test_retry_exactly_at_record_expiry_passes(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    assert await ask(chain) == GREYLISTED
    env.clock.now = T0 + DAY
    assert await ask(chain) == "DUNNO"
    assert env.tracking() == [triplet_row(passed=1, record_expired=T0 + DAY + 30 * DAY)]


async def test_passed_triplet_with_longer_expiry_is_left_alone(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    far = T0 + 90 * DAY
    env.insert("tracking", **triplet_row(block_expired=T0 - 1, record_expired=far))
    env.insert("tracking", **triplet_row(recipient="x@example.com", block_expired=T0 + 60))
    assert await ask(chain) == "DUNNO"
    # nothing written: not passed, other triplet kept (iRedAPD's "do nothing")
    assert [r["passed"] for r in env.tracking()] == [0, 0]
    assert env.tracking()[0]["record_expired"] == far


async def test_null_sender_and_extensions_are_tracked_without_extension(
    gl_env: GreylistEnv,
) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    assert await ask(chain, sender="", recipient="Bob+Lists@Example.COM") == GREYLISTED
    assert await ask(chain, sender="alice+x@example.org", recipient="bob@example.com") == (
        GREYLISTED
    )
    assert env.tracking() == [
        triplet_row(sender="", sender_domain=""),
        triplet_row(),
    ]


async def test_custom_times_and_message(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain(
        GREYLISTING_BLOCK_EXPIRE=2,
        GREYLISTING_UNAUTH_TRIPLET_EXPIRE=3,
        GREYLISTING_AUTH_TRIPLET_EXPIRE=7,
        GREYLISTING_MESSAGE="Come back later",
    )
    env.enable()
    assert await ask(chain) == "451 4.7.1 Come back later"
    assert env.tracking() == [
        triplet_row(block_expired=T0 + 2 * MINUTE, record_expired=T0 + 3 * DAY)
    ]
    env.clock.advance(2 * MINUTE)
    assert await ask(chain) == "DUNNO"
    assert env.tracking()[0]["record_expired"] == T0 + 2 * MINUTE + 7 * DAY


async def test_training_mode_tracks_but_never_defers(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain(GREYLISTING_TRAINING_MODE=True)
    env.enable()
    assert await ask(chain) == "DUNNO"
    env.clock.advance(MINUTE)
    assert await ask(chain) == "DUNNO"
    assert env.tracking() == [triplet_row(blocked_count=2)]


async def test_dry_run_changes_nothing(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain()
    env.enable()
    assert await ask(chain, dry_run=True) == GREYLISTED
    assert env.tracking() == []
    assert await ask(chain) == GREYLISTED
    env.clock.advance(MINUTE)
    assert await ask(chain, dry_run=True) == GREYLISTED
    env.clock.advance(15 * MINUTE)
    assert await ask(chain, dry_run=True) == "DUNNO"
    assert env.tracking() == [triplet_row()]
    # nor does the client count as passed afterwards
    assert await ask(chain, recipient="carol@example.com") == GREYLISTED
    # a passed client is recognised without sliding its expiry
    env.insert("tracking", **triplet_row(client_address="198.51.100.7", passed=1))
    assert await ask(chain, dry_run=True, client_address="198.51.100.7") == "DUNNO"
    assert env.tracking()[-1]["record_expired"] == T0 + DAY


async def test_passed_client_within_the_same_second(gl_env: GreylistEnv) -> None:
    """The slide writes the value already there: still "a passed row exists" (MySQL
    reports changed rows unless asked for matched rows)."""
    env = gl_env
    chain = env.chain()
    env.enable()
    env.insert("tracking", **triplet_row(passed=1, record_expired=T0 + 30 * DAY))
    for recipient in ("x@example.com", "y@example.com"):
        assert await ask(chain, recipient=recipient) == "DUNNO"
    assert env.tracking() == [triplet_row(passed=1, record_expired=T0 + 30 * DAY)]


async def test_passed_client_check_counts_expired_passed_rows(gl_env: GreylistEnv) -> None:
    """iRedAPD's step 4 has no expiry condition: a passed row not yet cleaned up counts."""
    env = gl_env
    chain = env.chain()
    env.enable()
    env.insert("tracking", **triplet_row(recipient="old@example.com", passed=1, record_expired=1))
    assert await ask(chain) == "DUNNO"
    assert env.tracking() == [
        triplet_row(recipient="old@example.com", passed=1, record_expired=T0 + 30 * DAY)
    ]


# ---------------------------------------------------------------------------
# Preconditions, whitelists, settings: one decision table (§10.2-§10.4)
# ---------------------------------------------------------------------------

ANY = ("@.", "@.")  # the global setting row (account, sender)

# (id, settings rows [(account, sender, active, sender_priority|None)],
#  whitelist rows [(table, account, sender)], request changes, expected)
CASES: list[tuple[str, list[Any], list[Any], dict[str, str], str]] = [
    ("opt-in: no setting", [], [], {}, "DUNNO"),
    ("global on", [(*ANY, 1, None)], [], {}, GREYLISTED),
    ("global off", [(*ANY, 0, None)], [], {}, "DUNNO"),
    ("sasl user", [(*ANY, 1, None)], [], {"sasl_username": "u@example.com"}, "DUNNO"),
    ("localhost", [(*ANY, 1, None)], [], {"client_address": "127.0.0.1"}, "DUNNO"),
    ("localhost v6", [(*ANY, 1, None)], [], {"client_address": "::1"}, "DUNNO"),
    ("mynetworks", [(*ANY, 1, None)], [], {"client_address": "192.168.7.1"}, "DUNNO"),
    ("not an IP", [(*ANY, 1, None)], [], {"client_address": "unknown"}, "DUNNO"),
    ("ipv6 client", [(*ANY, 1, None)], [], {"client_address": "2001:db8::5"}, GREYLISTED),
    # settings: recipient priority, then sender priority
    ("user off beats global on", [(*ANY, 1, None), (RECIPIENT, "@.", 0, None)], [], {}, "DUNNO"),
    (
        "domain on beats global off",
        [(*ANY, 0, None), ("@example.com", "@.", 1, None)],
        [],
        {},
        GREYLISTED,
    ),
    ("subdomain key", [("@.example.com", "@.", 1, None)], [], {}, GREYLISTED),
    ("other account only", [("other@example.com", "@.", 1, None)], [], {}, "DUNNO"),
    ("sender email off", [(*ANY, 1, None), ("@.", SENDER, 0, None)], [], {}, "DUNNO"),
    (
        "sender ext stripped",
        [(*ANY, 1, None), ("@.", SENDER, 0, None)],
        [],
        {"sender": "alice+tag@example.org"},
        "DUNNO",
    ),
    ("sender domain off", [(*ANY, 1, None), ("@.", "@example.org", 0, None)], [], {}, "DUNNO"),
    ("sender parent off", [(*ANY, 1, None), ("@.", "@.org", 0, None)], [], {}, "DUNNO"),
    (
        "email on beats domain off",
        [("@.", "@example.org", 0, None), ("@.", SENDER, 1, None)],
        [],
        {},
        GREYLISTED,
    ),
    ("client IP off", [(*ANY, 1, None), ("@.", CLIENT, 0, None)], [], {}, "DUNNO"),
    (
        "wildcard IP off (bug 30 fixed)",
        [(*ANY, 1, None), ("@.", "203.0.113.*", 0, 70)],
        [],
        {},
        "DUNNO",
    ),
    ("cidr v4 off", [(*ANY, 1, None), ("@.", "203.0.113.0/24", 0, None)], [], {}, "DUNNO"),
    (
        "cidr v4 off, iRedAPD CLI priority 0 (bug 14)",
        [(*ANY, 1, None), ("@.", "203.0.113.0/24", 0, 0)],
        [],
        {},
        "DUNNO",
    ),
    ("cidr v4 /1", [(*ANY, 1, None), ("@.", "128.0.0.0/1", 0, None)], [], {}, "DUNNO"),
    (
        "cidr v4 other net",
        [(*ANY, 1, None), ("@.", "198.51.100.0/24", 0, None)],
        [],
        {},
        GREYLISTED,
    ),
    (
        "cidr host bits ignored",
        [(*ANY, 1, None), ("@.", "203.0.113.1/24", 0, 70)],
        [],
        {},
        GREYLISTED,
    ),
    (
        "cidr v6 off (bug 31)",
        [(*ANY, 1, None), ("@.", "2001:db8::/32", 0, None)],
        [],
        {"client_address": "2001:db8:1::7"},
        "DUNNO",
    ),
    (
        "cidr v6 on for one net",
        [(*ANY, 0, None), ("@.", "2001:db8::/32", 1, None)],
        [],
        {"client_address": "2001:db8:1::7"},
        GREYLISTED,
    ),
    (
        "cidr v4 does not hold v6",
        [(*ANY, 1, None), ("@.", "0.0.0.0/0", 0, None)],
        [],
        {"client_address": "2001:db8:1::7"},
        GREYLISTED,
    ),
    (
        "user email beats cidr",
        [("@.", "203.0.113.0/24", 0, None), ("@.", SENDER, 1, None)],
        [],
        {},
        GREYLISTED,
    ),
    (
        "alias domain gets target's setting",
        [("@example.com", "@.", 1, None)],
        [],
        {"recipient": "bob@alias.example"},
        GREYLISTED,
    ),
    (
        "alias domain user setting",
        [(*ANY, 1, None), (RECIPIENT, "@.", 0, None)],
        [],
        {"recipient": "bob@alias.example"},
        "DUNNO",
    ),
    # whitelists (both tables), before settings
    ("wl sender", [(*ANY, 1, None)], [("whitelists", "@.", SENDER)], {}, "DUNNO"),
    (
        "wl sender upper-case row",
        [(*ANY, 1, None)],
        [("whitelists", "@.", "ALICE@Example.ORG")],
        {},
        "DUNNO",
    ),
    ("wl domain", [(*ANY, 1, None)], [("whitelists", RECIPIENT, "@example.org")], {}, "DUNNO"),
    ("wl parent domain", [(*ANY, 1, None)], [("whitelists", "@example.com", "@.org")], {}, "DUNNO"),
    (
        "wl other account",
        [(*ANY, 1, None)],
        [("whitelists", "x@example.com", SENDER)],
        {},
        GREYLISTED,
    ),
    (
        "wl other sender",
        [(*ANY, 1, None)],
        [("whitelists", "@.", "eve@example.org")],
        {},
        GREYLISTED,
    ),
    ("wl client ip", [(*ANY, 1, None)], [("whitelists", "@.", CLIENT)], {}, "DUNNO"),
    (
        "wl wildcard ip (bug 30)",
        [(*ANY, 1, None)],
        [("whitelists", "@.", "203.0.113.*")],
        {},
        "DUNNO",
    ),
    ("wl other wildcard", [(*ANY, 1, None)], [("whitelists", "@.", "203.0.*.5")], {}, GREYLISTED),
    ("wl cidr v4", [(*ANY, 1, None)], [("spf", "@.", "203.0.112.0/23")], {}, "DUNNO"),
    (
        "wl cidr v4 /7 (other first octet)",
        [(*ANY, 1, None)],
        [("spf", "@.", "202.0.0.0/7")],
        {},
        "DUNNO",
    ),
    ("wl cidr v4 outside", [(*ANY, 1, None)], [("spf", "@.", "203.0.114.0/24")], {}, GREYLISTED),
    (
        "wl cidr v6 short form",
        [(*ANY, 1, None)],
        [("spf", "@.", "2001:db8::/32")],
        {"client_address": "2001:db8:ab::1"},
        "DUNNO",
    ),
    (
        "wl cidr v6 long form (iRedAPD missed it)",
        [(*ANY, 1, None)],
        [("whitelists", "@.", "2001:db8:ab:0:0:0:0:0/48")],
        {"client_address": "2001:db8:ab::1"},
        "DUNNO",
    ),
    (
        "wl ipv6 other spelling",
        [(*ANY, 1, None)],
        [("whitelists", "@.", "2001:DB8:0::1")],
        {"client_address": "2001:db8::1"},
        "DUNNO",
    ),
    (
        "wl cidr v6 outside",
        [(*ANY, 1, None)],
        [("spf", "@.", "2001:db8::/32")],
        {"client_address": "2001:db9::1"},
        GREYLISTED,
    ),
    (
        "wl alias target account",
        [(*ANY, 1, None)],
        [("whitelists", RECIPIENT, SENDER)],
        {"recipient": "bob@alias.example"},
        "DUNNO",
    ),
]


@pytest.mark.parametrize(
    ("settings", "whitelists", "changes", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_decision_table(
    gl_env: GreylistEnv,
    settings: list[tuple[str, str, int, int | None]],
    whitelists: list[tuple[str, str, str]],
    changes: dict[str, str],
    expected: str,
) -> None:
    env = gl_env
    env.accounts.add_domain("example.com")
    env.accounts.add_alias_domain("alias.example", "example.com")
    chain = env.chain(MYNETWORKS=["192.168.0.0/16"])
    for account, sender, active, sender_priority in settings:
        env.insert(
            "greylisting",
            account=account,
            sender=sender,
            active=active,
            priority=account_priority(account),
            sender_priority=(
                account_priority(sender) if sender_priority is None else sender_priority
            ),
        )
    for table, account, sender in whitelists:
        env.insert(table, account=account, sender=sender, comment="")
    assert await ask(chain, **changes) == expected
    tracked = env.tracking()
    if expected == GREYLISTED:
        assert len(tracked) == 1 and tracked[0]["blocked_count"] == 1
    else:
        assert tracked == []


async def test_vmail_down_fails_the_plugin(gl_env: GreylistEnv) -> None:
    env = gl_env
    chain = env.chain(PLUGIN_FAILURE_ACTIONS={"greylisting": "DEFER_IF_PERMIT Service unavailable"})
    env.enable()
    env.accounts.down = True
    assert await ask(chain) == "DEFER_IF_PERMIT Service unavailable"
    assert env.tracking() == []


# ---------------------------------------------------------------------------
# SPF bypass (§10.4 step 3)
# ---------------------------------------------------------------------------


class SPFServices(Services):
    """Services whose SPF hook passes for the pairs in ``PASSES`` (and records calls)."""

    PASSES: ClassVar[set[tuple[str, str]]] = {("example.org", CLIENT)}
    DELAY = 0.0
    calls: ClassVar[list[tuple[str, str]]] = []

    async def spf_allows(self, domain: str, client_address: str) -> bool:
        self.calls.append((domain, client_address))
        if self.DELAY:
            await asyncio.sleep(self.DELAY)
        return (domain, client_address) in self.PASSES


@pytest.mark.parametrize(
    ("overrides", "changes", "expected", "asked"),
    [
        pytest.param({}, {}, "DUNNO", [("example.org", CLIENT)], id="pass"),
        pytest.param(
            {}, {"sender": "x@other.example"}, GREYLISTED, [("other.example", CLIENT)], id="no-pass"
        ),
        pytest.param({"GREYLISTING_BYPASS_SPF": False}, {}, GREYLISTED, [], id="setting-off"),
        pytest.param({"srs_domain": "example.org"}, {}, GREYLISTED, [], id="srs-domain"),
        pytest.param({}, {"sender": ""}, GREYLISTED, [], id="null-sender-srs-off"),
        pytest.param(
            {"srs_domain": "srs.example.com"},
            {"sender": ""},
            GREYLISTED,
            [("", CLIENT)],
            id="null-sender-srs-on",
        ),
    ],
)
async def test_spf_bypass(
    gl_env: GreylistEnv,
    overrides: dict[str, Any],
    changes: dict[str, str],
    expected: str,
    asked: list[tuple[str, str]],
) -> None:
    env = gl_env
    env.services_class = SPFServices
    SPFServices.calls = []
    chain = env.chain(**overrides)
    env.enable()
    assert await ask(chain, **changes) == expected
    assert SPFServices.calls == asked
    assert len(env.tracking()) == (1 if expected == GREYLISTED else 0)


async def test_slow_spf_is_not_a_pass(gl_env: GreylistEnv) -> None:
    env = gl_env

    class Slow(SPFServices):
        DELAY = 5.0

    env.services_class = Slow
    chain = env.chain(PLUGIN_TIMEOUTS={"greylisting": 1.0})
    env.enable()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ask(chain) == GREYLISTED  # not the failure action: tracked and deferred
    assert loop.time() - started < 1.0
    assert len(env.tracking()) == 1


async def test_whitelist_checked_before_spf(gl_env: GreylistEnv) -> None:
    env = gl_env
    env.services_class = SPFServices
    SPFServices.calls = []
    chain = env.chain()
    env.enable()
    env.insert("whitelists", account="@.", sender=SENDER, comment="")
    assert await ask(chain) == "DUNNO"
    assert SPFServices.calls == []


@pytest.mark.parametrize("ttl", [0, 300])
async def test_a_whitelist_added_elsewhere_applies_at_once_without_cache_else_within_the_ttl(
    gl_env: GreylistEnv, ttl: float
) -> None:
    """Settings and whitelists are cached per recipient for CACHE_TTL; a row a
    tool or another daemon adds applies when that expires (TTLCache's own
    tests) or on reload (new services, a new cache)."""
    env = gl_env
    chain = env.chain(CACHE_TTL=ttl)
    env.enable()
    assert await ask(chain) == GREYLISTED
    env.insert("whitelists", account="@.", sender=SENDER, comment="")
    assert await ask(chain) == ("DUNNO" if ttl == 0 else GREYLISTED)
    assert await ask(env.chain(CACHE_TTL=ttl)) == "DUNNO"


# ---------------------------------------------------------------------------
# Library helpers (§10.6) on every backend
# ---------------------------------------------------------------------------


async def test_helpers_are_idempotent_and_atomic(gl_env: GreylistEnv) -> None:
    env = gl_env
    with env.engine.connect() as conn:
        store.enable_greylisting(conn, "@example.com", "2001:db8::/32")
        store.disable_greylisting(conn, "@example.com", "2001:db8::/32")  # replaces
        store.enable_greylisting(conn, "user@example.com", "@.")
        assert store.add_whitelist_sender(conn, "@.", "@example.org") is True
        assert store.add_whitelist_sender(conn, "@.", "@example.org", "again") is False
        assert store.add_whitelist_domain(conn, "example.net") is True
        assert store.add_whitelist_domain(conn, "example.net") is False
        for bad, code in (("example.org", "INVALID_SENDER"), ("1.2.3.4/24", "INVALID_SENDER")):
            with pytest.raises(store.InvalidInput) as e:
                store.add_whitelist_sender(conn, "@.", bad)
            assert e.value.code == code
        with pytest.raises(store.InvalidInput) as e:
            store.add_whitelist_sender(conn, "example.com", SENDER)
        assert e.value.code == "INVALID_ACCOUNT"
        with pytest.raises(store.InvalidInput) as e:
            store.add_whitelist_domain(conn, "@example.net")
        assert e.value.code == "INVALID_DOMAIN"
    assert env.rows(
        "greylisting", "account", "priority", "sender", "sender_priority", "active"
    ) == [
        {
            "account": "@example.com",
            "priority": 60,
            "sender": "2001:db8::/32",
            "sender_priority": 70,
            "active": 0,
        },
        {
            "account": "user@example.com",
            "priority": 100,
            "sender": "@.",
            "sender_priority": 0,
            "active": 1,
        },
    ]
    assert env.rows("whitelists", "account", "sender", "comment") == [
        {"account": "@.", "sender": "@example.org", "comment": ""}
    ]
    # remove_whitelisted_domain: the SPF rows go too (bug 33)
    env.insert("spf", account="@.", sender="192.0.2.0/24", comment="AUTO-UPDATE: example.net")
    env.insert("spf", account="@.", sender="192.0.2.9", comment="AUTO-UPDATE: example.com")
    env.insert("whitelists", account="@.", sender="192.0.2.8", comment="AUTO-UPDATE: example.net")
    with env.engine.connect() as conn:
        assert store.remove_whitelisted_domain(conn, "example.net") == 3
        assert store.delete_setting(conn, "user@example.com", "@.") == 1
    assert env.rows("domains") == []
    assert env.rows("spf", "sender") == [{"sender": "192.0.2.9"}]
    assert env.rows("whitelists", "sender") == [{"sender": "@example.org"}]
    assert [r["account"] for r in env.rows("greylisting")] == ["@example.com"]


def test_spf_whitelist_replace_is_one_transaction(gl_env: GreylistEnv) -> None:
    env = gl_env
    comment = "AUTO-UPDATE: example.net"
    env.insert("spf", account="@.", sender="192.0.2.1", comment=comment)
    with pytest.raises(RuntimeError), store.transaction(env.engine) as conn:
        assert store.replace_spf_whitelist(conn, "example.net", ["192.0.2.2"]) == ["192.0.2.2"]
        raise RuntimeError("the tool dies half way")
    assert env.rows("spf", "sender") == [{"sender": "192.0.2.1"}]  # old rows intact
    with store.transaction(env.engine) as conn:
        store.replace_spf_whitelist(conn, "example.net", ["192.0.2.2", "192.0.2.0/25"])
    assert {r["sender"] for r in env.rows("spf", "sender")} == {"192.0.2.2", "192.0.2.0/25"}
    # the pooled connection autocommits again afterwards: another one sees its write
    with env.engine.connect() as first, env.engine.connect() as second:
        first.execute(sa.delete(TABLES["spf"]))
        count = sa.select(sa.func.count()).select_from(TABLES["spf"])
        assert second.execute(count).scalar() == 0


# ---------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("@.", True),
        ("@.com", True),
        ("@example.com", True),
        ("@.example.com", True),
        ("user@example.com", True),
        ("192.0.2.1", True),
        ("192.0.2.0/24", True),
        ("2001:db8::1", True),
        ("2001:db8::/32", True),  # iRedAPD's regex refused it (bug 13)
        ("192.0.2.1/24", False),  # host bits: never matched
        ("192.0.2.*", False),  # iRedAPD's tool refuses wildcards too
        ("example.com", False),
        ("user@*", False),
        ("@ip", False),
        ("", False),
        ("a" * 250 + "@example.com", False),  # longer than the column
    ],
)
def test_is_valid_sender(value: str, valid: bool) -> None:
    assert store.is_valid_sender(value) is valid


def test_settings_order_fixes_cidr_priority_zero() -> None:
    rows = [
        store.Setting(1, "@.", "@.", 0, 0, True),
        store.Setting(2, "@.", "203.0.113.0/24", 0, 0, False),
    ]
    ordered = sorted(rows, key=lambda s: -s.effective_sender_priority)
    assert [s.id for s in ordered] == [2, 1]
    assert store.first_matching_setting(ordered, ["@.", CLIENT], CLIENT) == rows[1]
