"""The database stops mid-load: the daemon keeps answering, counters stay exact.

A private MariaDB (never the shared server) is stopped while 20 connections
send END-OF-MESSAGE requests for two throttled senders, then started again.

* Every request is answered within the request deadline: DUNNO (counted) or
  the plugin's failure action (here a distinct DEFER_IF_PERMIT text, so the
  test can tell them apart) while the database is down.
* Nothing counted is lost and nothing is counted twice: the stored counters
  equal the recipients (and bytes) of the requests answered DUNNO, plus at
  most those of failed requests that were in flight at the very moment the
  server stopped (a commit whose answer was lost with the connection).
* The two rows of a message counted by one transaction always agree.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import TIMEOUT_SCALE
from tests.integration.test_throttle_concurrency import (
    add_rule,
    attributes,
    counters,
    create_schema,
    db_overrides,
    settings_text,
)
from tests.support.daemon import PolicyClient, subprocess_daemon
from tests.support.private_servers import private_mariadb

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.mariadb]

FAILED = "DEFER_IF_PERMIT throttle failed"
REQUEST_TIMEOUT = 3.0
CLIENTS = 20
SENDER_A = "a@example.com"
SENDER_B = "b@example.net"
HUGE = 10**12  # limits never reached: this test is about counting


@dataclass
class Item:
    sender: str
    rcpts: int
    size: int
    sent: float = 0.0
    answered: float = 0.0
    reply: str = ""


@dataclass
class Outage:
    stop_begin: float = 0.0
    stop_end: float = 0.0
    start_begin: float = 0.0
    start_end: float = 0.0


async def load(port: int, items: list[Item], done: asyncio.Event, n: int) -> None:
    """One Postfix-like connection sending requests until ``done``."""
    conn = await PolicyClient.connect("127.0.0.1", port)
    try:
        i = n
        while not done.is_set():
            item = Item(SENDER_A if i % 2 else SENDER_B, 1 + i % 4, 100 + 37 * (i % 50))
            i += CLIENTS
            item.sent = time.monotonic()
            item.reply = await conn.ask(attributes(item), timeout=REQUEST_TIMEOUT + 10)
            item.answered = time.monotonic()
            items.append(item)
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def scenario(port: int, server: object, items: list[Item], outage: Outage) -> None:
    done = asyncio.Event()
    clients = [asyncio.create_task(load(port, items, done, n)) for n in range(CLIENTS)]
    await asyncio.sleep(1.5 * TIMEOUT_SCALE)
    outage.stop_begin = time.monotonic()
    await asyncio.to_thread(server.stop)  # type: ignore[attr-defined]
    outage.stop_end = time.monotonic()
    await asyncio.sleep(4.0 * TIMEOUT_SCALE)  # load goes on against a stopped database
    outage.start_begin = time.monotonic()
    await asyncio.to_thread(server.start)  # type: ignore[attr-defined]
    outage.start_end = time.monotonic()
    deadline = time.monotonic() + 30 * TIMEOUT_SCALE
    while time.monotonic() < deadline:
        recovered = [i for i in items if i.sent > outage.start_end and i.reply == "DUNNO"]
        if len(recovered) >= 200:
            break
        await asyncio.sleep(0.1)
    done.set()
    await asyncio.gather(*clients)


def test_database_stopped_mid_load(tmp_path: Path) -> None:
    with private_mariadb() as server:
        server.sql("CREATE DATABASE iredapd_faults CHARACTER SET utf8mb4")
        url = server.url("iredapd_faults")
        overrides = db_overrides("mariadb", url)
        engine = create_schema(overrides)
        tid_a = add_rule(engine, SENDER_A, "external", max_msgs=HUGE)
        tid_b = add_rule(engine, SENDER_B, "external", max_msgs=HUGE)
        tid_bq = add_rule(engine, "@example.net", "external", max_quota=HUGE)
        engine.dispose()
        text = settings_text(
            {
                **overrides,
                "plugins": ["throttle"],
                "PLUGIN_FAILURE_ACTIONS": {"throttle": FAILED},
                "PLUGIN_TIMEOUT": 2.0,
                "REQUEST_TIMEOUT": REQUEST_TIMEOUT,
                "CMD_SENDMAIL": "/bin/true",
                "log_level": "info",
            }
        )
        items: list[Item] = []
        outage = Outage()
        (tmp_path / "d").mkdir()
        with subprocess_daemon(tmp_path / "d", text) as daemon:
            asyncio.run(asyncio.wait_for(scenario(daemon.port, server, items, outage), 120))
            assert daemon.proc.poll() is None, "the daemon died"

        # every request answered within the deadline, with one of the two replies
        assert {i.reply for i in items} <= {"DUNNO", FAILED}
        slowest = max(i.answered - i.sent for i in items)
        assert slowest < (REQUEST_TIMEOUT + 1.0) * TIMEOUT_SCALE, slowest
        during = [i for i in items if outage.stop_end < i.sent and i.answered < outage.start_begin]
        assert during and all(i.reply == FAILED for i in during), "the outage was not seen"
        after = [i for i in items if i.sent > outage.start_end + 5 * TIMEOUT_SCALE]
        assert all(i.reply == "DUNNO" for i in after)
        assert any(i.reply == "DUNNO" and i.sent > outage.start_end for i in items)

        # in flight when the server went away: counted or not, we cannot know
        maybe = [
            i
            for i in items
            if i.reply == FAILED and i.sent <= outage.stop_end and i.answered >= outage.stop_begin
        ]
        check = sa.create_engine(url, poolclass=NullPool)
        try:
            for sender, tid in ((SENDER_A, tid_a), (SENDER_B, tid_b)):
                ok = [i for i in items if i.sender == sender and i.reply == "DUNNO"]
                unsure = [i for i in maybe if i.sender == sender]
                msgs, quota = counters(check, tid, sender)
                low_m, low_q = sum(i.rcpts for i in ok), sum(i.size for i in ok)
                assert low_m <= msgs <= low_m + sum(i.rcpts for i in unsure), (sender, msgs)
                assert low_q <= quota <= low_q + sum(i.size for i in unsure), (sender, quota)
            # both rows of B moved together, message for message
            assert counters(check, tid_bq, SENDER_B) == counters(check, tid_b, SENDER_B)
        finally:
            check.dispose()
