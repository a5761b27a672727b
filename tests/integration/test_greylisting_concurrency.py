"""Greylisting tracking is exact under concurrency and across daemon instances.

"Concurrent first sightings of one greylisting triplet create exactly one
row", and every deferred attempt is counted once: many requests at the same
time through two daemons' connection pools (in-process), then through two
real daemon processes on one MariaDB and one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from iredapd.chain import Chain
from iredapd.storage.migrate import upgrade
from tests.plugins.test_greylisting import (  # noqa: F401 - fixtures
    CLIENT,
    DAY,
    GREYLISTED,
    MINUTE,
    T0,
    GreylistEnv,
    gl_database,
    gl_env,
    request,
    triplet_row,
)
from tests.support.daemon import PolicyClient, subprocess_daemon
from tests.support.requests import encode

pytestmark = pytest.mark.integration

# Requests in flight at once: enough that SELECT-then-write races happen on
# every run, small enough to stay well within the pools and a second or two.
CONCURRENT = 40
# Pools big enough for the burst; deadlines generous, since opening forty
# connections at once can take seconds on a busy test server (MariaDB here
# spends ~75 ms per connect) and these tests are about counts, not latency.
DAEMON_SETTINGS: dict[str, Any] = {
    "SQL_CONNECTION_POOL_SIZE": 20,
    "THREAD_POOL_SIZE": 20,
    "PLUGIN_TIMEOUT": 60.0,
    "REQUEST_TIMEOUT": 60.0,
}


@pytest.fixture
def env(gl_env: GreylistEnv) -> GreylistEnv:  # noqa: F811
    """A GreylistEnv per backend, with greylisting enabled for everyone."""
    gl_env.enable()
    return gl_env


@pytest.fixture
def base(gl_database: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    """The settings naming the test database."""
    return gl_database


def two_daemons(env: GreylistEnv) -> tuple[Chain, Chain]:
    """Two chains with their own pools on one database, as two daemons."""
    return env.chain(**DAEMON_SETTINGS), env.chain(**DAEMON_SETTINGS)


async def burst(chains: tuple[Chain, Chain], **attrs: str) -> list[str]:
    """CONCURRENT identical requests at once, alternating between the two daemons."""
    req = request(**attrs)
    decisions = await asyncio.gather(*(chains[i % 2].evaluate(req) for i in range(CONCURRENT)))
    return [d.action.text for d in decisions]


async def test_concurrent_first_sightings_make_one_row(env: GreylistEnv) -> None:
    chains = two_daemons(env)
    assert await burst(chains) == [GREYLISTED] * CONCURRENT
    assert env.tracking() == [triplet_row(blocked_count=CONCURRENT)]
    # the retries after the block all pass; the count stays
    env.clock.advance(15 * MINUTE)
    assert await burst(chains) == ["DUNNO"] * CONCURRENT
    assert env.tracking() == [
        triplet_row(blocked_count=CONCURRENT, passed=1, record_expired=T0 + 15 * MINUTE + 30 * DAY)
    ]


async def test_concurrent_attempts_on_an_expired_record(env: GreylistEnv) -> None:
    """One attempt restarts the record, every other one counts on the new record."""
    env.insert("tracking", **triplet_row(init_time=1, record_expired=T0 - 1, blocked_count=9))
    assert await burst(two_daemons(env)) == [GREYLISTED] * CONCURRENT
    assert env.tracking() == [triplet_row(blocked_count=CONCURRENT)]


async def test_concurrent_distinct_triplets_of_one_client(env: GreylistEnv) -> None:
    chains = two_daemons(env)
    recipients = [f"user{i}@example.com" for i in range(CONCURRENT // 2)]
    requests = [request(recipient=r) for r in recipients for _ in range(2)]
    decisions = await asyncio.gather(*(chains[i % 2].evaluate(r) for i, r in enumerate(requests)))
    assert {d.action.text for d in decisions} == {GREYLISTED}
    rows = env.tracking()
    assert sorted(r["recipient"] for r in rows) == sorted(recipients)
    assert {r["blocked_count"] for r in rows} == {2}


# ---------------------------------------------------------------------------
# Two daemon processes on one database
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("gl_database", ["mariadb", "pgsql"], indirect=True)
async def test_two_daemon_processes_count_exactly(
    env: GreylistEnv, base: dict[str, Any], tmp_path: Path
) -> None:
    """Two daemons on one MariaDB / PostgreSQL database (SQLite is one host's file)."""
    # The real plugin: its alias-domain lookup goes to the vmail tables, here
    # in the same database.
    upgrade(env.engine, "vmail", create_foreign=True)
    vmail = {
        key.replace("iredapd_db_", "vmail_db_"): value
        for key, value in base.items()
        if key.startswith("iredapd_db_")
    }
    values = {
        **base,
        **vmail,
        **DAEMON_SETTINGS,
        "plugins": ["greylisting"],
        "LOG_SMTP_SESSIONS": False,
    }
    settings = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data = encode(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "client_address": CLIENT,
            "sender": "alice@example.org",
            "recipient": "bob@example.com",
        }
    )
    with (
        subprocess_daemon(tmp_path / "a", settings) as a,
        subprocess_daemon(tmp_path / "b", settings) as b,
    ):
        clients = [
            await PolicyClient.connect("127.0.0.1", (a, b)[i % 2].port) for i in range(CONCURRENT)
        ]
        try:
            for client in clients:
                client.writer.write(data)
            await asyncio.gather(*(c.writer.drain() for c in clients))
            replies = await asyncio.gather(*(c.reply(timeout=60) for c in clients))
        finally:
            for client in clients:
                await client.close()
    assert replies == [GREYLISTED] * CONCURRENT
    rows = env.tracking()
    assert len(rows) == 1
    assert rows[0]["blocked_count"] == CONCURRENT
    assert rows[0]["passed"] == 0
