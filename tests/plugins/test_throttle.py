"""The throttle plugin: iRedAPD's decision tables (core-and-stateful.md §9), the bugs
it fixes (§17.4), notification mail once per window, on SQLite, MariaDB and PostgreSQL.

One database per backend for the module; each test empties the throttle tables.
The clock is fixed (``Clock``) so windows expire when a test says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts
from iredapd.chain import Chain
from iredapd.lookup import account_priority
from iredapd.request import PolicyRequest
from iredapd.services import Services
from iredapd.storage.schema import throttle, throttle_tracking
from tests.support.databases import backend_params, require_service, temporary_database

QUOTA = "REJECT Throttling quota exceeded"
SIZE = "REJECT Message size is too large"
RCPTS = "REJECT Too many recipients in single message"
T0 = 1_700_000_000  # the fixed clock's start


def db_settings(backend: str, url: URL | None, data_dir: Path) -> dict[str, Any]:
    """Setting overrides that point the iredapd database at ``url``."""
    if backend == "sqlite":
        return {"backend": "sqlite", "DATA_DIR": str(data_dir)}
    return {
        "backend": "mysql" if backend == "mariadb" else "pgsql",
        "iredapd_db_server": url.host,
        "iredapd_db_port": url.port,
        "iredapd_db_name": url.database,
        "iredapd_db_user": url.username,
        "iredapd_db_password": url.password or "",
    }


@pytest.fixture(scope="module", params=backend_params())
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One iredapd database per backend for the whole module (settings overrides)."""
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"throttle-{backend}")
    if backend == "sqlite":
        yield _with_schema(db_settings(backend, None, data_dir))
        return
    require_service(backend)
    with temporary_database(backend) as url:
        yield _with_schema(db_settings(backend, url, data_dir))


def _with_schema(overrides: dict[str, Any]) -> dict[str, Any]:
    """Create the iredapd schema once (as the daemon does at start)."""
    loaded = load_namespace({}, overrides=overrides)
    services = Services(loaded.settings)
    services.open_databases()
    asyncio.run(services.close())
    return overrides


class Clock:
    """A clock that only moves when told."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    """A throttle chain on the test database, with helpers to read and write rows."""

    overrides: dict[str, Any]
    clock: Clock = field(default_factory=Clock)
    accounts: FakeAccounts = field(default_factory=FakeAccounts)
    services: list[Services] = field(default_factory=list)
    plugins: list[Any] = field(default_factory=list)

    def chain(self, **settings: Any) -> tuple[Chain, Any]:
        """A new chain with only the throttle plugin; returns (chain, plugin).

        Rules are not cached (CACHE_TTL 0) and notifications go to ``true``
        unless the test says otherwise.
        """
        merged = {
            "plugins": ["throttle"],
            "CACHE_TTL": 0,
            "CMD_SENDMAIL": shutil.which("true") or "/bin/true",
            **self.overrides,
            **settings,
        }
        loaded = load_namespace({}, overrides=merged)
        services = Services(loaded.settings, clock=self.clock)
        services.open_databases(create_schema=False)  # the module fixture made it
        services.vmail = self.accounts
        self.services.append(services)
        chain = Chain.build(loaded.settings, services, loaded.specs)
        plugin = chain._entries[0].plugin
        self.plugins.append(plugin)
        return chain, plugin

    async def drain(self) -> None:
        """Wait for every notification in flight (they claim last_notify_time)."""
        for plugin in self.plugins:
            await plugin.notifier.close(10)

    @property
    def engine(self) -> sa.Engine:
        db = self.services[0].iredapd_db
        assert db is not None
        return db.engine

    def add(self, account: str, kind: str = "outbound", **cols: int) -> int:
        """Insert a throttle rule; priority defaults to the account's type priority."""
        values = {"priority": account_priority(account), "period": 3600, **cols}
        with self.engine.connect() as conn:
            conn.execute(sa.insert(throttle).values(account=account, kind=kind, **values))
            rid = conn.execute(
                sa.select(throttle.c.id).where(
                    throttle.c.account == account, throttle.c.kind == kind
                )
            ).scalar_one()
        return int(rid)

    def tracking(self) -> dict[tuple[int, str], dict[str, int]]:
        """Every tracking row: (tid, account) -> its counters."""
        t = throttle_tracking.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(throttle_tracking).order_by(t.id)).mappings().all()
        out = {}
        for row in rows:
            key = (int(row["tid"]), str(row["account"]))
            assert key not in out, f"duplicate tracking row {key}"
            out[key] = {
                k: int(row[k])
                for k in (
                    "period",
                    "cur_msgs",
                    "cur_quota",
                    "init_time",
                    "last_time",
                    "last_notify_time",
                )
            }
        return out

    def clear(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.delete(throttle_tracking))
            conn.execute(sa.delete(throttle))

    async def close(self) -> None:
        await self.drain()
        for services in self.services:
            await services.close()


def eom(**attrs: str) -> PolicyRequest:
    """An END-OF-MESSAGE request: remote client, one recipient, 100 bytes by default."""
    base = {
        "protocol_state": "END-OF-MESSAGE",
        "client_address": "203.0.113.5",
        "sender": "alice@example.com",
        "recipient": "bob@example.org",
        "recipient_count": "1",
        "size": "100",
    }
    base.update(attrs)
    return PolicyRequest.from_attributes(base)


async def ask(chain: Chain, **attrs: str) -> str:
    return (await chain.evaluate(eom(**attrs))).action.text


# The conftest runs ``async def`` tests but not async fixtures: wrap them.
@pytest.fixture
def th(database: dict[str, Any]) -> Iterator[Env]:
    e = Env(dict(database))
    e.chain()
    e.clear()
    yield e
    asyncio.run(e.close())


# ---------------------------------------------------------------------------
# Pure helpers: winners (§9.4) and the description string
# ---------------------------------------------------------------------------


def _rule(rid: int, account: str, priority: int, period: int, **limits: int) -> Any:
    from iredapd.storage.throttle import Rule

    values = {"msg_size": -1, "max_msgs": -1, "max_quota": -1, "max_rcpts": -1, **limits}
    return Rule(rid, account, "outbound", priority, period, **values)


def _plugin_module() -> Any:
    """The loaded plugin module (its pure helpers)."""
    loaded = load_namespace({}, overrides={"plugins": ["throttle"]})
    return sys.modules[loaded.specs["throttle"].cls.__module__]


def test_worked_example_winners() -> None:
    """§9.12: each limit comes from the first rule (by priority) that sets it."""
    mod = _plugin_module()
    rules = mod.ordered(
        [
            _rule(3, "@.", 0, 86400, max_rcpts=50),
            _rule(1, "user@x.com", 100, 60, max_msgs=10),
            _rule(2, "@x.com", 60, 3600, msg_size=1_000_000, max_msgs=100, max_quota=0),
        ]
    )
    winners = mod.pick_winners(rules)
    got = {name: (w.rule.id, w.value) for name, w in winners.items()}
    assert got == {
        "msg_size": (2, 1_000_000),
        "max_rcpts": (3, 50),
        "max_msgs": (1, 10),
        "max_quota": (2, 0),
    }
    assert mod.throttle_info(winners) == (
        "id=1/max_msgs=10/account=user@x.com; "
        "id=2/msg_size=1000000 (bytes)/account=@x.com; "
        "id=2/max_quota=0 (bytes)/account=@x.com; "
        "id=3/max_rcpts=50/account=@.; "
    )
    charges = mod.charges_for(winners, "user@x.com", "192.0.2.1")
    assert sorted((c.tid, c.account, c.period, c.max_msgs, c.max_quota) for c in charges) == [
        (1, "user@x.com", 60, 10, 0),
        (2, "user@x.com", 3600, 0, 0),
    ]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # -1 inherits from the next rule, 0 is unlimited and stops inheritance
        ([(1, "u@x.com", 100, 60, {"max_msgs": -1}), (2, "@x.com", 60, 60, {"max_msgs": 5})], 2),
        ([(1, "u@x.com", 100, 60, {"max_msgs": 0}), (2, "@x.com", 60, 60, {"max_msgs": 5})], 1),
        # period 0: no window, so no max_msgs from that rule
        ([(1, "u@x.com", 100, 0, {"max_msgs": 3}), (2, "@x.com", 60, 60, {"max_msgs": 5})], 2),
        # equal priorities: the smaller id first, whatever the input order
        ([(7, "@ip", 0, 60, {"max_msgs": 3}), (4, "@.", 0, 60, {"max_msgs": 5})], 4),
        ([(4, "@ip", 0, 60, {"max_msgs": 3}), (7, "@.", 0, 60, {"max_msgs": 5})], 4),
        # no rule sets it
        ([(1, "u@x.com", 100, 60, {})], None),
    ],
)
def test_max_msgs_winner(rules: list[tuple[Any, ...]], expected: int | None) -> None:
    mod = _plugin_module()
    winners = mod.pick_winners(
        mod.ordered(_rule(i, a, p, per, **lim) for i, a, p, per, lim in rules)
    )
    w = winners.get("max_msgs")
    assert (w.rule.id if w else None) == expected


def test_period_zero_rule_still_sets_msg_size_and_max_rcpts() -> None:
    """§17.4 item 22: iRedAPD ignored period-0 rules even for the per-message limits."""
    mod = _plugin_module()
    winners = mod.pick_winners([_rule(1, "@x.com", 60, 0, msg_size=10, max_rcpts=2, max_msgs=1)])
    assert {n: w.value for n, w in winners.items()} == {"msg_size": 10, "max_rcpts": 2}


# ---------------------------------------------------------------------------
# Decision tables on every backend
# ---------------------------------------------------------------------------


# (settings, request attributes, expected reply); rules: outbound @example.com
# and external @example.com max_msgs=1 with one message already counted, inbound
# bob@example.org max_msgs=1 likewise.  So a rule that applies refuses.
BYPASS_TABLE = [
    # sender and recipient domain equal: no throttling at all
    ({}, {"sender": "alice@example.com", "recipient": "carol@example.com"}, "DUNNO"),
    (
        {"THROTTLE_BYPASS_SAME_DOMAIN": False},
        {"sender": "alice@example.com", "recipient": "carol@example.com"},
        QUOTA,
    ),
    # a null sender without SASL on a multi-recipient message: both domains ''
    ({}, {"sender": "", "recipient": "", "recipient_count": "3"}, "DUNNO"),
    # SASL domain counts as the sender domain
    (
        {},
        {"sasl_username": "alice@example.org", "sender": "alice@example.com"},
        "DUNNO",
    ),
    # MYNETWORKS bypass only when asked for
    ({"MYNETWORKS": ["203.0.113.0/24"]}, {}, QUOTA),
    ({"MYNETWORKS": ["203.0.113.0/24"], "THROTTLE_BYPASS_MYNETWORKS": True}, {}, "DUNNO"),
    ({"MYNETWORKS": ["203.0.113.*"], "THROTTLE_BYPASS_MYNETWORKS": True}, {}, "DUNNO"),
    # SMTP AUTH: outbound rule; recipient throttling skipped by default
    ({}, {"sasl_username": "alice@example.com"}, QUOTA),
    (
        {},
        {"sasl_username": "dave@example.net", "sender": "dave@example.net"},
        "DUNNO",
    ),
    (
        {"THROTTLE_BYPASS_LOCAL_RECIPIENT": False},
        {"sasl_username": "dave@example.net", "sender": "dave@example.net"},
        QUOTA,
    ),
    # no SASL from 127.0.0.1 / ::1: outbound; from elsewhere: external
    ({}, {"client_address": "127.0.0.1", "sender": "alice@example.com"}, QUOTA),
    ({}, {"client_address": "::1", "sender": "alice@example.com"}, QUOTA),
    # unauthenticated remote sender of another domain: only inbound applies
    ({}, {"sender": "eve@example.net"}, QUOTA),
    ({}, {"sender": "eve@example.net", "recipient": "frank@example.org"}, "DUNNO"),
]


@pytest.mark.parametrize(("settings", "attrs", "expected"), BYPASS_TABLE)
async def test_bypasses_and_kinds(
    th: Env, settings: dict[str, Any], attrs: dict[str, str], expected: str
) -> None:
    chain, _ = th.chain(**settings)
    out_id = th.add("@example.com", "outbound", max_msgs=1)
    ext_id = th.add("@example.com", "external", max_msgs=1)
    in_id = th.add("bob@example.org", "inbound", max_msgs=1)
    with th.engine.connect() as conn:
        for tid, account in (
            (out_id, "alice@example.com"),
            (ext_id, "alice@example.com"),
            (in_id, "bob@example.org"),
        ):
            conn.execute(
                sa.insert(throttle_tracking).values(
                    tid=tid, account=account, period=3600, cur_msgs=1, init_time=T0, last_time=T0
                )
            )
    before = th.tracking()
    assert await ask(chain, **attrs) == expected
    await th.drain()
    after = th.tracking()
    if expected == "DUNNO":
        assert after == before  # bypassed or no rule: nothing counted
    else:  # refused: nothing counted either (a notification may be recorded)
        assert {k: v["cur_msgs"] for k, v in after.items()} == {
            k: v["cur_msgs"] for k, v in before.items()
        }


async def test_external_rule_is_not_used_for_sasl_senders(th: Env) -> None:
    chain, _ = th.chain()
    th.add("@example.com", "external", max_msgs=1)
    sasl = {"sasl_username": "alice@example.com"}
    assert [await ask(chain, **sasl) for _ in range(3)] == ["DUNNO"] * 3
    assert await ask(chain) == "DUNNO"  # external: first message counted
    assert await ask(chain) == QUOTA


@pytest.mark.parametrize(
    ("cols", "attrs", "expected"),
    [
        ({"msg_size": 1000}, {"size": "1000"}, "DUNNO"),
        ({"msg_size": 1000}, {"size": "1001"}, SIZE),
        ({"msg_size": 0}, {"size": "99999999"}, "DUNNO"),  # 0: unlimited
        ({"msg_size": -1}, {"size": "99999999"}, "DUNNO"),
        ({"max_rcpts": 3}, {"recipient_count": "3"}, "DUNNO"),
        ({"max_rcpts": 3}, {"recipient_count": "4"}, RCPTS),
        ({"max_rcpts": 0}, {"recipient_count": "400"}, "DUNNO"),
        # checked in this order: msg_size before max_rcpts before the counters
        ({"msg_size": 10, "max_rcpts": 1, "max_msgs": 1}, {"recipient_count": "2"}, SIZE),
        ({"max_rcpts": 1, "max_msgs": 1}, {"recipient_count": "2", "size": "5"}, RCPTS),
        ({"max_msgs": 1}, {"recipient_count": "2", "size": "5"}, QUOTA),
        # period 0: the per-message limits still apply (iRedAPD: ignored)
        ({"msg_size": 1000, "period": 0}, {"size": "1001"}, SIZE),
        ({"max_rcpts": 3, "period": 0}, {"recipient_count": "4"}, RCPTS),
        ({"max_msgs": 1, "period": 0}, {"recipient_count": "4"}, "DUNNO"),
        # empty size is 0; a non-number or negative value is not throttled
        ({"msg_size": 1}, {"size": ""}, "DUNNO"),
        ({"max_rcpts": 1}, {"recipient_count": "", "size": "5"}, "DUNNO"),
        ({"max_rcpts": 1}, {"recipient_count": "x2"}, "DUNNO"),
        ({"max_msgs": 1}, {"recipient_count": "-5"}, "DUNNO"),
    ],
)
async def test_per_message_limits(
    th: Env, cols: dict[str, int], attrs: dict[str, str], expected: str
) -> None:
    chain, _ = th.chain()
    th.add("alice@example.com", "external", **cols)
    assert await ask(chain, **attrs) == expected
    if expected in (SIZE, RCPTS):
        assert th.tracking() == {}  # stateless checks count nothing


async def test_max_msgs_counts_recipients_in_a_window(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("alice@example.com", "external", period=60, max_msgs=5)
    replies = [await ask(chain, recipient_count=n) for n in ("2", "2", "2", "1", "1")]
    assert replies == ["DUNNO", "DUNNO", QUOTA, "DUNNO", QUOTA]
    await th.drain()
    row = th.tracking()[(tid, "alice@example.com")]
    assert row == {
        "period": 60,
        "cur_msgs": 5,
        "cur_quota": 300,
        "init_time": T0,
        "last_time": T0,
        "last_notify_time": T0,  # a notification was claimed
    }
    # still inside the window at init + period
    th.clock.now = T0 + 60
    assert await ask(chain) == QUOTA
    # the window has ended: reset, this message is the first of a new one
    th.clock.now = T0 + 61
    assert await ask(chain, recipient_count="3", size="7") == "DUNNO"
    row = th.tracking()[(tid, "alice@example.com")]
    assert (row["cur_msgs"], row["cur_quota"], row["init_time"], row["last_time"]) == (
        3,
        7,
        T0 + 61,
        T0 + 61,
    )


async def test_refused_message_in_an_ended_window_changes_nothing(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("alice@example.com", "external", period=60, max_msgs=2)
    assert await ask(chain, recipient_count="2") == "DUNNO"
    th.clock.now = T0 + 100
    before = th.tracking()[(tid, "alice@example.com")]
    assert await ask(chain, recipient_count="3") == QUOTA  # alone over the limit
    after = th.tracking()[(tid, "alice@example.com")]
    assert {k: v for k, v in after.items() if k != "last_notify_time"} == {
        k: v for k, v in before.items() if k != "last_notify_time"
    }


async def test_max_quota_counts_the_current_message(th: Env) -> None:
    """Our choice (§17.4 item 21): the message that would pass the quota is refused."""
    chain, _ = th.chain()
    tid = th.add("alice@example.com", "external", period=60, max_quota=1000)
    replies = [await ask(chain, size=s) for s in ("400", "400", "300", "200", "1")]
    assert replies == ["DUNNO", "DUNNO", QUOTA, "DUNNO", QUOTA]
    assert th.tracking()[(tid, "alice@example.com")]["cur_quota"] == 1000
    assert th.tracking()[(tid, "alice@example.com")]["cur_msgs"] == 3


async def test_quota_only_rule_refuses(th: Env) -> None:
    """§17.4 item 20: without a max_msgs winner iRedAPD crashed and accepted."""
    chain, _ = th.chain()
    th.add("@example.com", "external", max_msgs=-1, max_quota=150)
    assert await ask(chain) == "DUNNO"
    assert await ask(chain) == QUOTA


async def test_unlimited_counters_are_still_tracked(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("@example.com", "external", max_msgs=0, max_quota=0)
    for _ in range(3):
        assert await ask(chain, recipient_count="4", size="10") == "DUNNO"
    row = th.tracking()[(tid, "alice@example.com")]
    assert (row["cur_msgs"], row["cur_quota"]) == (12, 30)


async def test_worked_example_on_the_database(th: Env) -> None:
    """§9.12: four winners from three rules; two counters per user."""
    chain, _ = th.chain()
    user_id = th.add("user@x.com", "outbound", priority=100, period=60, max_msgs=10)
    dom_id = th.add(
        "@x.com",
        "outbound",
        priority=60,
        period=3600,
        msg_size=1_000_000,
        max_msgs=100,
        max_quota=0,
    )
    th.add("@.", "outbound", priority=0, period=86400, max_rcpts=50)
    sasl = {"sasl_username": "user@x.com", "sender": "user@x.com"}
    assert await ask(chain, **sasl, size="1000001") == SIZE
    assert await ask(chain, **sasl, recipient_count="51") == RCPTS
    assert await ask(chain, **sasl, recipient_count="6", size="500") == "DUNNO"
    assert await ask(chain, **sasl, recipient_count="4", size="500") == "DUNNO"
    assert await ask(chain, **sasl, recipient_count="1", size="1") == QUOTA
    rows = th.tracking()
    assert set(rows) == {(user_id, "user@x.com"), (dom_id, "user@x.com")}
    for key, period in (((user_id, "user@x.com"), 60), ((dom_id, "user@x.com"), 3600)):
        assert (rows[key]["cur_msgs"], rows[key]["cur_quota"], rows[key]["period"]) == (
            10,
            1000,
            period,
        )
    # the user's window ends after 60 s; the domain counter (unlimited) keeps going
    th.clock.now = T0 + 61
    assert await ask(chain, **sasl, recipient_count="2", size="5") == "DUNNO"
    rows = th.tracking()
    assert rows[(user_id, "user@x.com")]["cur_msgs"] == 2
    assert rows[(dom_id, "user@x.com")]["cur_msgs"] == 12


async def test_two_rows_are_counted_together_or_not_at_all(th: Env) -> None:
    """max_msgs and max_quota from different rules: one refusal leaves both untouched."""
    chain, _ = th.chain()
    msgs_id = th.add("alice@example.com", "external", max_msgs=10)
    quota_id = th.add("@example.com", "external", max_quota=1000)
    assert await ask(chain, recipient_count="2", size="900") == "DUNNO"
    assert await ask(chain, recipient_count="2", size="200") == QUOTA  # quota refuses
    assert await ask(chain, recipient_count="9", size="1") == QUOTA  # max_msgs refuses
    assert await ask(chain, recipient_count="8", size="100") == "DUNNO"
    rows = th.tracking()
    for tid in (msgs_id, quota_id):
        assert (
            rows[(tid, "alice@example.com")]["cur_msgs"],
            rows[(tid, "alice@example.com")]["cur_quota"],
        ) == (10, 1000)


@pytest.mark.parametrize(
    ("account", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),  # an IP: per client IP
        ("@ip", "203.0.113.5"),  # every IP: per client IP
        ("203.0.113.*", "203.0.113.*"),  # a wildcard: one shared counter
        ("203.0.*.5", "203.0.*.5"),
        ("alice@example.com", "alice@example.com"),
        ("@example.com", "alice@example.com"),  # domain rules count per user
        ("@.example.com", "alice@example.com"),
        ("@.com", "alice@example.com"),
        ("@.", "alice@example.com"),
    ],
)
async def test_tracking_keys(th: Env, account: str, key: str) -> None:
    chain, _ = th.chain()
    tid = th.add(account, "external", max_msgs=100)
    assert await ask(chain, recipient_count="2") == "DUNNO"
    assert await ask(chain, recipient_count="3") == "DUNNO"
    rows = th.tracking()
    assert list(rows) == [(tid, key)]
    assert rows[(tid, key)]["cur_msgs"] == 5  # read back and accumulated


async def test_wildcard_counter_is_shared_by_its_clients(th: Env) -> None:
    """§17.4 item 19: iRedAPD never read wildcard counters back (no accumulation)."""
    chain, _ = th.chain()
    tid = th.add("198.51.100.*", "external", max_msgs=3)
    replies = [
        await ask(chain, client_address=f"198.51.100.{i}", sender=f"u{i}@example.net")
        for i in (1, 2, 3, 4)
    ]
    assert replies == ["DUNNO", "DUNNO", "DUNNO", QUOTA]
    assert th.tracking()[(tid, "198.51.100.*")]["cur_msgs"] == 3


async def test_all_wildcard_forms(th: Env) -> None:
    chain, _ = th.chain(ENABLE_ALL_WILDCARD_IP=True)
    th.add("198.*.*.*", "external", max_msgs=1)
    assert await ask(chain, client_address="198.51.100.1") == "DUNNO"
    assert await ask(chain, client_address="198.0.0.9") == QUOTA
    chain2, _ = th.chain()  # default: only a.b.c.* and a.b.*.d are looked up
    assert await ask(chain2, client_address="198.51.100.7") == "DUNNO"


async def test_domain_rule_limits_each_user(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("@example.com", "external", max_msgs=1)
    assert await ask(chain, sender="a@example.com") == "DUNNO"
    assert await ask(chain, sender="b@example.com") == "DUNNO"
    assert await ask(chain, sender="a@example.com") == QUOTA
    assert set(th.tracking()) == {(tid, "a@example.com"), (tid, "b@example.com")}


async def test_higher_priority_rule_wins_and_zero_is_unlimited(th: Env) -> None:
    chain, _ = th.chain()
    th.add("@example.com", "external", max_msgs=1)
    th.add("vip@example.com", "external", max_msgs=0)
    for _ in range(3):
        assert await ask(chain, sender="vip@example.com") == "DUNNO"
    assert await ask(chain, sender="joe@example.com") == "DUNNO"
    assert await ask(chain, sender="joe@example.com") == QUOTA


async def test_address_extension_and_case(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("alice@example.com", "external", max_msgs=2)
    assert await ask(chain, sender="Alice+news@Example.COM") == "DUNNO"
    assert await ask(chain, sender="alice+x@example.com") == "DUNNO"
    assert await ask(chain, sender="alice@example.com") == QUOTA
    assert list(th.tracking()) == [(tid, "alice@example.com")]


async def test_alias_domain_gets_the_target_domain_rules(th: Env) -> None:
    th.accounts.add_domain("example.com")
    th.accounts.add_alias_domain("alias.example", "example.com")
    chain, _ = th.chain()
    tid = th.add("@example.com", "inbound", max_msgs=1)
    args = {"sender": "x@example.net", "recipient": "bob@alias.example"}
    assert await ask(chain, **args) == "DUNNO"
    assert await ask(chain, **args) == QUOTA
    assert list(th.tracking()) == [(tid, "bob@alias.example")]  # keyed by the user
    # the lookup is shared with other plugins of the request
    assert th.accounts.calls["alias_target_domain"] >= 1


async def test_alias_lookup_failure_is_a_plugin_failure(th: Env) -> None:
    th.accounts.down = True
    chain, _ = th.chain(PLUGIN_FAILURE_ACTION="DEFER_IF_PERMIT Try later")
    th.add("@example.com", "external", max_msgs=1)
    assert await ask(chain) == "DEFER_IF_PERMIT Try later"


async def test_recipient_throttling_of_a_multi_recipient_message(th: Env) -> None:
    """§9.12: no recipient at END-OF-MESSAGE: only IP rules can match."""
    chain, _ = th.chain()
    th.add("@example.org", "inbound", max_msgs=1)
    ip_id = th.add("@ip", "inbound", max_msgs=4)
    args = {"sender": "x@example.net", "recipient": "", "recipient_count": "3"}
    assert await ask(chain, **args) == "DUNNO"
    assert await ask(chain, **args) == QUOTA
    assert list(th.tracking()) == [(ip_id, "203.0.113.5")]


async def test_sasl_username_without_domain(th: Env) -> None:
    """§17.3 item 18: iRedAPD crashed on 'john' (no throttling at all)."""
    chain, _ = th.chain()
    catchall = th.add("@.", "outbound", max_msgs=1)
    req = PolicyRequest.from_attributes(
        {
            "protocol_state": "END-OF-MESSAGE",
            "client_address": "203.0.113.5",
            "sasl_username": "john",
            "sender": "john@example.com",
            "recipient": "bob@example.org",
            "recipient_count": "1",
            "size": "10",
        }
    )
    assert (await chain.evaluate(req)).action.text == "DUNNO"
    assert (await chain.evaluate(req)).action.text == QUOTA
    assert list(th.tracking()) == [(catchall, "john")]


async def test_dry_run_decides_and_writes_nothing(th: Env) -> None:
    chain, plugin = th.chain()
    tid = th.add("alice@example.com", "external", max_msgs=2)
    assert await ask(chain) == "DUNNO"
    before = th.tracking()
    d = await chain.evaluate(eom(recipient_count="1"), dry_run=True)
    assert d.action.text == "DUNNO"
    d = await chain.evaluate(eom(recipient_count="2"), dry_run=True)
    assert d.action.text == QUOTA
    assert th.tracking() == before
    assert plugin.notifier.pending == 0
    assert before[(tid, "alice@example.com")]["cur_msgs"] == 1


async def test_only_end_of_message(th: Env) -> None:
    chain, _ = th.chain()
    th.add("alice@example.com", "external", max_msgs=1, max_rcpts=1)
    for state in ("RCPT", "DATA", "END-OF-MESSAGE"):
        req = eom(protocol_state=state, recipient_count="5")
        expected = RCPTS if state == "END-OF-MESSAGE" else "DUNNO"
        assert (await chain.evaluate(req)).action.text == expected


async def test_rules_are_cached_for_cache_ttl(th: Env) -> None:
    chain, _ = th.chain(CACHE_TTL=300)
    assert await ask(chain) == "DUNNO"  # no rules: remembered
    th.add("alice@example.com", "external", max_msgs=1)
    assert await ask(chain) == "DUNNO"  # still the cached "no rules", nothing counted
    assert th.tracking() == {}
    fresh, _ = th.chain(CACHE_TTL=300)
    assert await ask(fresh) == "DUNNO"
    assert await ask(fresh) == QUOTA  # counters are never cached


async def test_database_down_is_a_plugin_failure(th: Env) -> None:
    chain, _ = th.chain(PLUGIN_FAILURE_ACTION="DEFER_IF_PERMIT Try later")
    th.add("alice@example.com", "external", max_msgs=1)
    db = chain.services.iredapd_db
    assert db is not None

    async def down(func: Any) -> Any:
        from iredapd.storage.db import BackendUnavailable

        raise BackendUnavailable("iredapd database: stopped")

    db.run = down  # type: ignore[method-assign]
    assert await ask(chain) == "DEFER_IF_PERMIT Try later"


# ---------------------------------------------------------------------------
# Notification mail
# ---------------------------------------------------------------------------


def sendmail_stub(tmp_path: Path, *, fail: bool = False, sleep: float = 0) -> tuple[Path, Path]:
    """A CMD_SENDMAIL that stores each message and its arguments in ``tmp_path/out``."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    script = tmp_path / "sendmail"
    tail = "exit 1\n" if fail else ""
    script.write_text(
        "#!/bin/sh\n"
        f"sleep {sleep}\n"
        f'f="$(mktemp "{out}/mail.XXXXXX")"\n'
        'printf "%s\\n" "$@" > "$f.args"\n'
        'cat > "$f"\n' + tail
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, out


def mails(out: Path) -> list[tuple[list[str], Any]]:
    """(arguments, parsed message) of every message the stub received."""
    found = []
    for path in sorted(out.glob("mail.??????")):
        args = path.with_name(path.name + ".args").read_text().splitlines()
        found.append((args, message_from_bytes(path.read_bytes())))
    return found


async def test_notification_once_per_window_across_daemons(th: Env, tmp_path: Path) -> None:
    script, out = sendmail_stub(tmp_path)
    settings = {"CMD_SENDMAIL": str(script), "NOTIFICATION_RECIPIENTS": ["root", "postmaster"]}
    chain_a, plugin_a = th.chain(**settings)
    chain_b, plugin_b = th.chain(**settings)  # a second daemon on the same database
    tid = th.add("alice@example.com", "external", period=600, max_msgs=2)
    assert await ask(chain_a, recipient_count="2") == "DUNNO"
    assert await ask(chain_a) == QUOTA
    assert await ask(chain_b) == QUOTA
    th.clock.now = T0 + 100  # past the local re-check interval: the database decides
    assert await ask(chain_a) == QUOTA
    assert await ask(chain_b) == QUOTA
    await plugin_a.notifier.close(10)
    await plugin_b.notifier.close(10)
    got = mails(out)
    assert len(got) == 1
    args, msg = got[0]
    assert args == ["-f", "no-reply@localhost.localdomain", "root,postmaster"]
    assert msg["Subject"] == "Throttle quota exceeded: alice@example.com, max_msgs=2 "
    assert msg["To"] == "root,postmaster"
    assert msg["From"] == "No Reply <no-reply@localhost.localdomain>"
    assert msg["Message-Id"].startswith("<") and "@" not in msg["Message-Id"]
    assert msg.get_content_type() == "multipart/alternative"
    body = msg.get_payload()[0].get_payload(decode=True).decode()
    assert body.splitlines() == [
        "- User: alice@example.com",
        "- Client IP address: 203.0.113.5",
        "- Throttle type: external",
        "- Throttle setting: max_msgs",
        "- Limit: 2 ",
        f"- Detailed setting: id={tid}/max_msgs=2/account=alice@example.com; ",
    ]
    assert th.tracking()[(tid, "alice@example.com")]["last_notify_time"] == T0
    # a new window: one more notification
    th.clock.now = T0 + 601
    assert await ask(chain_b, recipient_count="2") == "DUNNO"
    assert await ask(chain_b) == QUOTA
    assert await ask(chain_a) == QUOTA
    await plugin_a.notifier.close(10)
    await plugin_b.notifier.close(10)
    assert len(mails(out)) == 2
    assert th.tracking()[(tid, "alice@example.com")]["last_notify_time"] == T0 + 601


async def test_notification_without_a_counter_row(th: Env, tmp_path: Path) -> None:
    """§17.4 item 27: a first message already over the limit notified every time."""
    script, out = sendmail_stub(tmp_path)
    chain, plugin = th.chain(CMD_SENDMAIL=str(script))
    tid = th.add("@example.com", "external", period=3600, max_quota=50)
    assert await ask(chain, size="100") == QUOTA
    await th.drain()
    th.clock.now = T0 + 120
    chain2, plugin2 = th.chain(CMD_SENDMAIL=str(script))
    assert await ask(chain2, size="100") == QUOTA
    await plugin.notifier.close(10)
    await plugin2.notifier.close(10)
    got = mails(out)
    assert len(got) == 1
    assert got[0][1]["Subject"] == "Throttle quota exceeded: alice@example.com, max_quota=50 bytes"
    row = th.tracking()[(tid, "alice@example.com")]
    assert (row["cur_msgs"], row["cur_quota"], row["last_notify_time"]) == (0, 0, T0)
    # the next accepted message starts the window normally
    assert await ask(chain2, size="10") == "DUNNO"
    row = th.tracking()[(tid, "alice@example.com")]
    assert (row["cur_msgs"], row["cur_quota"], row["init_time"]) == (1, 10, T0 + 120)


async def test_notification_failure_and_deadline_do_not_change_the_reply(
    th: Env, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    failing, _ = sendmail_stub(tmp_path / "a", fail=True)
    slow, slow_out = sendmail_stub(tmp_path / "b", sleep=30)
    th.add("@example.com", "external", max_msgs=1)
    chain, plugin = th.chain(CMD_SENDMAIL=str(failing))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ask(chain, recipient_count="2") == QUOTA
    await plugin.notifier.close(10)
    assert (plugin.notifier.sent, plugin.notifier.failed) == (0, 1)
    chain2, plugin2 = th.chain(CMD_SENDMAIL=str(slow), NOTIFICATION_TIMEOUT=0.5)
    assert await ask(chain2, sender="x@example.com", recipient_count="2") == QUOTA
    assert loop.time() - started < 5  # the replies never waited for the mail
    await plugin2.notifier.close(10)
    assert (plugin2.notifier.sent, plugin2.notifier.failed) == (0, 1)
    assert loop.time() - started < 10
    assert mails(slow_out) == []


class FakeSMTP:
    """A tiny SMTP server on loopback: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        current: dict[str, Any] = {"rcpt": []}
        auth = None

        def send(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        send("220 fake ESMTP")
        try:
            while True:
                line = (await reader.readline()).decode().rstrip("\r\n")
                if not line:
                    break
                cmd = line.split(" ", 1)[0].upper()
                if cmd in ("EHLO", "HELO"):
                    send("250-fake\r\n250-AUTH PLAIN\r\n250 8BITMIME")
                elif cmd == "AUTH":
                    parts = line.split()
                    token = parts[2] if len(parts) > 2 else None
                    if token is None:
                        send("334 ")
                        await writer.drain()
                        token = (await reader.readline()).decode().strip()
                    auth = base64.b64decode(token).split(b"\0")
                    send("235 ok")
                elif cmd == "MAIL":
                    current["from"] = line[10:].split()[0].strip("<>")
                    send("250 ok")
                elif cmd == "RCPT":
                    current["rcpt"].append(line[8:].strip("<>"))
                    send("250 ok")
                elif cmd == "DATA":
                    send("354 go")
                    await writer.drain()
                    data = b""
                    while True:
                        chunk = await reader.readline()
                        if chunk in (b".\r\n", b""):
                            break
                        data += chunk
                    current["data"] = data
                    current["auth"] = auth
                    self.messages.append(current)
                    current = {"rcpt": []}
                    send("250 queued")
                elif cmd == "QUIT":
                    send("221 bye")
                    await writer.drain()
                    break
                else:
                    send("250 ok")
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_notification_through_smtp(th: Env) -> None:
    server = FakeSMTP()
    await server.start()
    try:
        chain, plugin = th.chain(
            NOTIFICATION_SMTP_SERVER="127.0.0.1",
            NOTIFICATION_SMTP_PORT=server.port,
            NOTIFICATION_SMTP_STARTTLS=False,
            NOTIFICATION_SMTP_USER="robot@example.com",
            NOTIFICATION_SMTP_PASSWORD="s3cret",
            NOTIFICATION_SENDER_NAME="Dämon",
            NOTIFICATION_RECIPIENTS=["admin@example.com"],
        )
        th.add("alice@example.com", "external", max_msgs=1)
        assert await ask(chain, recipient_count="3") == QUOTA
        assert await ask(chain, recipient_count="3") == QUOTA
        await plugin.notifier.close(10)
    finally:
        await server.stop()
    assert len(server.messages) == 1
    m = server.messages[0]
    assert m["auth"] == [b"", b"robot@example.com", b"s3cret"]
    assert m["from"] == "robot@example.com"
    assert m["rcpt"] == ["admin@example.com"]
    msg = message_from_bytes(m["data"])
    assert str(make_header(decode_header(msg["From"]))) == "Dämon <robot@example.com>"
    assert msg["Subject"] == "Throttle quota exceeded: alice@example.com, max_msgs=1 "
    assert msg["Date"].endswith("GMT")


# ---------------------------------------------------------------------------
# MySQL specifics: the first-insert race, and iRedAPD's UNSIGNED columns
# ---------------------------------------------------------------------------


async def test_ipv6_client_counts_per_address(th: Env) -> None:
    chain, _ = th.chain()
    tid = th.add("@ip", "external", max_msgs=2)
    assert await ask(chain, client_address="2001:db8::25", recipient_count="2") == "DUNNO"
    assert await ask(chain, client_address="2001:db8::25") == QUOTA
    assert await ask(chain, client_address="2001:db8::26") == "DUNNO"
    assert set(th.tracking()) == {(tid, "2001:db8::25"), (tid, "2001:db8::26")}


class RowAppears:
    """A connection on which another daemon creates the counter right after the
    first statement of a kind (``UPDATE`` or ``SELECT``) found no row."""

    def __init__(
        self, conn: sa.Connection, other: sa.Engine, values: dict[str, Any], after: str
    ) -> None:
        self.conn = conn
        self.other = other
        self.values = values
        self.after = after
        self.done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, stmt: Any, *args: Any) -> Any:
        result = self.conn.execute(stmt, *args)
        kind = "UPDATE" if isinstance(stmt, sa.Update) else "SELECT"
        if not self.done and isinstance(stmt, sa.Update | sa.Select) and kind == self.after:
            self.done = True
            if kind == "SELECT":
                frozen = result.freeze()
                assert frozen().fetchall() == []
                result = frozen()
            with self.other.connect() as c:
                c.execute(sa.insert(throttle_tracking).values(**self.values))
        return result


# PostgreSQL and SQLite count with one upsert: they have no such window.
@pytest.mark.parametrize("database", backend_params("mariadb"), indirect=True)
@pytest.mark.parametrize(
    ("two_rows", "after"), [(False, "UPDATE"), (False, "SELECT"), (True, "SELECT")]
)
async def test_counter_created_by_another_daemon_meanwhile(
    th: Env, two_rows: bool, after: str
) -> None:
    """MySQL: UPDATE finds no row, another daemon inserts it, the message still counts.

    (With two rows the UPDATE runs in a transaction, whose gap lock makes the
    other daemon's INSERT wait for it: there the row can only appear after it.)
    """
    from iredapd.storage.throttle import Charge, charge_message

    assert th.engine.dialect.name in ("mysql", "mariadb")
    tid = th.add("alice@example.com", "external", max_msgs=10)
    charges = [Charge(tid, "alice@example.com", 3600, max_msgs=10)]
    if two_rows:
        tid2 = th.add("@example.com", "external", max_quota=1000)
        charges.append(Charge(tid2, "alice@example.com", 3600, max_quota=1000))
    values = {"tid": tid, "account": "alice@example.com", "period": 3600, "cur_msgs": 4}
    values.update(init_time=T0, last_time=T0)
    with th.engine.connect() as conn:
        proxy = RowAppears(conn, th.engine, values, after)
        result = charge_message(proxy, charges, now=T0 + 1, msgs=3, size=50)  # type: ignore[arg-type]
        assert proxy.done
    assert result.accepted
    rows = th.tracking()
    assert rows[(tid, "alice@example.com")]["cur_msgs"] == 7
    if two_rows:
        assert rows[(tid2, "alice@example.com")]["cur_quota"] == 50


@pytest.fixture
def old_mysql(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A MariaDB database with iRedAPD's own throttle tables (UNSIGNED, MEDIUMINT)."""
    from sqlalchemy.dialects import mysql

    require_service("mariadb")
    with temporary_database("mariadb") as url:
        md = sa.MetaData()
        u_int = mysql.INTEGER(unsigned=True)
        sa.Table(
            "throttle",
            md,
            sa.Column("id", mysql.BIGINT(unsigned=True), primary_key=True),
            sa.Column("account", sa.String(255), nullable=False),
            sa.Column("kind", sa.String(10), nullable=False, server_default="outbound"),
            sa.Column("priority", mysql.TINYINT(1, unsigned=True), server_default="0"),
            sa.Column("period", u_int, nullable=False, server_default="0"),
            *(
                sa.Column(c, mysql.BIGINT(), nullable=False, server_default="-1")
                for c in ("msg_size", "max_msgs", "max_quota", "max_rcpts")
            ),
            sa.UniqueConstraint("account", "kind", name="account_kind"),
            mysql_engine="InnoDB",
        )
        sa.Table(
            "throttle_tracking",
            md,
            sa.Column("id", mysql.BIGINT(unsigned=True), primary_key=True),
            sa.Column(
                "tid",
                mysql.BIGINT(unsigned=True),
                sa.ForeignKey("throttle.id"),
                nullable=False,
                server_default="0",
            ),
            sa.Column("account", sa.String(255), nullable=False, server_default=""),
            sa.Column("period", u_int, nullable=False, server_default="0"),
            sa.Column(
                "cur_msgs", mysql.MEDIUMINT(unsigned=True), nullable=False, server_default="0"
            ),
            sa.Column("cur_quota", u_int, nullable=False, server_default="0"),
            *(
                sa.Column(c, u_int, nullable=False, server_default="0")
                for c in ("init_time", "last_time", "last_notify_time")
            ),
            sa.UniqueConstraint("tid", "account", name="tid_account"),
            mysql_engine="InnoDB",
        )
        engine = sa.create_engine(url)
        md.create_all(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
        engine.dispose()
        yield _with_schema(db_settings("mariadb", url, tmp_path))


async def test_iredapd_mysql_column_types(old_mysql: dict[str, Any]) -> None:
    """Windows reset and notifications on UNSIGNED columns: no negative values anywhere."""
    env = Env(old_mysql)
    try:
        chain, _ = env.chain()
        env.clear()
        reflected = sa.inspect(env.engine).get_columns("throttle_tracking")
        cur_msgs = next(c["type"] for c in reflected if c["name"] == "cur_msgs")
        assert str(cur_msgs) == "MEDIUMINT" and cur_msgs.unsigned  # iRedAPD's, unchanged
        tid = env.add("alice@example.com", "external", period=60, max_msgs=3, max_quota=1000)
        assert [await ask(chain, recipient_count="2") for _ in range(2)] == ["DUNNO", QUOTA]
        env.clock.now = T0 + 61
        assert await ask(chain, recipient_count="3", size="1000") == "DUNNO"  # window reset
        assert await ask(chain, size="1") == QUOTA
        await env.drain()
        row = env.tracking()[(tid, "alice@example.com")]
        assert (row["cur_msgs"], row["cur_quota"], row["init_time"]) == (3, 1000, T0 + 61)
        assert row["last_notify_time"] == T0 + 61
    finally:
        await env.close()
