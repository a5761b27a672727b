"""Exact throttle counters with two daemons on one database (MariaDB, PostgreSQL).

Two ``iredapd`` subprocesses share one database; 100 connections (50 to each)
send 5,000 END-OF-MESSAGE requests for two throttled senders with varying
recipient counts and sizes:

* ``a@example.com``: one rule (max_msgs), counted by single statements;
* ``b@example.net``: max_msgs from its own rule and max_quota from the
  ``@example.net`` rule, so each message is counted in two rows by one
  transaction;
* every tenth request comes from ``c@example.org``, whose limit is never
  reached: none of them may be refused (the first messages race to create
  the counters).

About half the demand is over the limits.  Afterwards the stored counters must
equal exactly what the accepted requests carried, stay within the limits, and
every refused request must really be over a limit (it would not fit even into
the final counters, which only grow within the window).

The daemons read alias domains from a vmail database: its tables are created
in the same test database (no table names clash).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iredapd.app import load_namespace
from iredapd.lookup import account_priority
from iredapd.services import Services
from iredapd.storage.migrate import upgrade
from iredapd.storage.schema import throttle, throttle_tracking
from tests.support.daemon import PolicyClient, subprocess_daemon
from tests.support.databases import backend_params, require_service, temporary_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUOTA = "REJECT Throttling quota exceeded"
FAILED = "DEFER_IF_PERMIT throttle failed"
REQUESTS = 5000
CONNECTIONS = 100
SENDER_A = "a@example.com"
SENDER_B = "b@example.net"
SENDER_C = "c@example.org"
LIMIT_A = 3500  # recipients; demand is about 2,250 x 3 = 6,750
LIMIT_B = 4000
QUOTA_B = 5_000_000  # bytes; demand is about 2,250 x 5,000 = 11,250,000


def db_overrides(backend: str, url: URL) -> dict[str, Any]:
    """Settings that point the iredapd and vmail databases at ``url``."""
    out: dict[str, Any] = {"backend": "mysql" if backend == "mariadb" else "pgsql"}
    for name in ("iredapd", "vmail"):
        out.update(
            {
                f"{name}_db_server": url.host,
                f"{name}_db_port": url.port,
                f"{name}_db_name": url.database,
                f"{name}_db_user": url.username,
                f"{name}_db_password": url.password or "",
            }
        )
    return out


def settings_text(overrides: dict[str, Any]) -> str:
    return "".join(f"{name} = {value!r}\n" for name, value in overrides.items())


def create_schema(overrides: dict[str, Any]) -> sa.Engine:
    """Create the iredapd tables; return an engine for checking them."""
    loaded = load_namespace({}, overrides=overrides)
    services = Services(loaded.settings)
    services.open_databases()
    db = services.iredapd_db
    assert db is not None
    upgrade(db.engine, "vmail", create_foreign=True)
    return db.engine


def add_rule(engine: sa.Engine, account: str, kind: str, **cols: int) -> int:
    values = {"priority": account_priority(account), "period": 3600, **cols}
    with engine.connect() as conn:
        conn.execute(sa.insert(throttle).values(account=account, kind=kind, **values))
        return int(
            conn.execute(
                sa.select(throttle.c.id).where(
                    throttle.c.account == account, throttle.c.kind == kind
                )
            ).scalar_one()
        )


def counters(engine: sa.Engine, tid: int, account: str) -> tuple[int, int]:
    t = throttle_tracking.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.cur_msgs, t.cur_quota).where(t.tid == tid, t.account == account)
        ).all()
    assert len(rows) == 1, rows
    return int(rows[0][0]), int(rows[0][1])


@dataclass
class Sent:
    sender: str
    rcpts: int
    size: int
    reply: str = ""


def make_requests(seed: int) -> list[Sent]:
    rng = random.Random(seed)
    senders = [SENDER_C if i % 10 == 9 else (SENDER_A, SENDER_B)[i % 2] for i in range(REQUESTS)]
    return [Sent(s, rng.randint(1, 5), rng.randint(100, 9_900)) for s in senders]


def attributes(item: Sent) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "END-OF-MESSAGE",
        "protocol_name": "ESMTP",
        "client_address": "198.51.100.20",
        "client_name": "mx.example.org",
        "sender": item.sender,
        "recipient": "",
        "recipient_count": str(item.rcpts),
        "size": str(item.size),
        "sasl_username": "",
    }


async def drive(ports: list[int], items: list[Sent]) -> None:
    """CONNECTIONS clients, split between the daemons, each one request at a time."""
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def client(port: int) -> None:
        conn = await PolicyClient.connect("127.0.0.1", port)
        try:
            while True:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                item.reply = await conn.ask(attributes(item), timeout=30)
        finally:
            await conn.close()

    await asyncio.gather(*(client(ports[i % len(ports)]) for i in range(CONNECTIONS)))


@pytest.fixture(params=backend_params("mariadb", "pgsql"))
def shared_db(request: pytest.FixtureRequest) -> Iterator[tuple[str, URL]]:
    backend: str = request.param
    require_service(backend)
    with temporary_database(backend) as url:
        yield backend, url


def test_two_daemons_count_exactly(shared_db: tuple[str, URL], tmp_path: Path) -> None:
    backend, url = shared_db
    overrides = db_overrides(backend, url)
    engine = create_schema(overrides)
    try:
        tid_a = add_rule(engine, SENDER_A, "external", max_msgs=LIMIT_A)
        tid_b = add_rule(engine, SENDER_B, "external", max_msgs=LIMIT_B)
        tid_bq = add_rule(engine, "@example.net", "external", max_quota=QUOTA_B)
        tid_c = add_rule(engine, SENDER_C, "external", max_msgs=10**12)
        text = settings_text(
            {
                **overrides,
                "plugins": ["throttle"],
                "PLUGIN_FAILURE_ACTIONS": {"throttle": FAILED},
                "PLUGIN_TIMEOUT": 20.0,
                "REQUEST_TIMEOUT": 25.0,
                "CMD_SENDMAIL": "/bin/true",
                "log_level": "info",  # subprocess_daemon waits for the "listening" line
                # no more threads than pooled connections: a request waits in
                # the thread pool's queue, never past the SQL pool's 5 s timeout
                # (both daemons together stay under PostgreSQL's 100 connections)
                "THREAD_POOL_SIZE": 20,
                "SQL_CONNECTION_POOL_SIZE": 20,
                "SQL_CONNECTION_MAX_OVERFLOW": 0,
            }
        )
        items = make_requests(seed=20240611)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            subprocess_daemon(tmp_path / "a", text) as one,
            subprocess_daemon(tmp_path / "b", text) as two,
        ):
            asyncio.run(asyncio.wait_for(drive([one.port, two.port], items), 120))
        replies = {item.reply for item in items}
        assert replies <= {"DUNNO", QUOTA}, replies
        assert all(item.reply for item in items)

        a_ok = [i for i in items if i.sender == SENDER_A and i.reply == "DUNNO"]
        a_no = [i for i in items if i.sender == SENDER_A and i.reply == QUOTA]
        msgs_a, _quota_a = counters(engine, tid_a, SENDER_A)
        assert msgs_a == sum(i.rcpts for i in a_ok)
        assert msgs_a <= LIMIT_A
        assert a_no, "the limit was never reached: the test proves nothing"
        assert all(msgs_a + i.rcpts > LIMIT_A for i in a_no)

        b_ok = [i for i in items if i.sender == SENDER_B and i.reply == "DUNNO"]
        b_no = [i for i in items if i.sender == SENDER_B and i.reply == QUOTA]
        msgs_b, quota_b = counters(engine, tid_b, SENDER_B)
        # both rows of B were counted together, message for message
        assert counters(engine, tid_bq, SENDER_B) == (msgs_b, quota_b)
        assert msgs_b == sum(i.rcpts for i in b_ok)
        assert quota_b == sum(i.size for i in b_ok)
        assert msgs_b <= LIMIT_B and quota_b <= QUOTA_B
        assert b_no
        assert all(msgs_b + i.rcpts > LIMIT_B or quota_b + i.size > QUOTA_B for i in b_no)
        c_all = [i for i in items if i.sender == SENDER_C]
        assert {i.reply for i in c_all} == {"DUNNO"}
        assert counters(engine, tid_c, SENDER_C) == (
            sum(i.rcpts for i in c_all),
            sum(i.size for i in c_all),
        )
        assert len(a_ok) + len(a_no) + len(b_ok) + len(b_no) + len(c_all) == REQUESTS
    finally:
        engine.dispose()
