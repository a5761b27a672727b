"""smtp_sessions: which requests get a row, the row's values, and nothing lost on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from iredapd.actions import Action
from iredapd.config import default_settings
from iredapd.request import PolicyRequest
from iredapd.services import Services
from iredapd.storage.schema import smtp_sessions
from iredapd.storage.sessions import SessionLog, session_row, should_log
from tests.support.daemon import PolicyClient, running_server, subprocess_daemon
from tests.support.requests import EOM, RCPT_AUTH

NULL_SENDER_RCPT = dict(RCPT_AUTH, sender="")


@pytest.mark.parametrize(
    ("state", "action", "settings", "expected"),
    [
        ("END-OF-MESSAGE", "DUNNO", {}, True),
        ("RCPT", "DUNNO", {}, False),
        ("RCPT", "REJECT Not authorized", {}, True),
        ("DATA", "REJECT x", {}, False),
        ("rcpt", "REJECT x", {}, False),  # iRedAPD compares the state case-sensitively
        ("RCPT", "451 4.7.1 Try later", {"LOG_SMTP_SESSIONS_BYPASS_GREYLISTING": True}, False),
        ("RCPT", "451 4.7.1 Try later", {}, True),
        ("RCPT", "OK", {"LOG_SMTP_SESSIONS_BYPASS_WHITELIST": True}, False),
        ("END-OF-MESSAGE", "DUNNO", {"LOG_SMTP_SESSIONS_BYPASS_DUNNO": True}, False),
        ("END-OF-MESSAGE", "DUNNO", {"LOG_SMTP_SESSIONS": False}, False),
    ],
)
def test_which_requests_are_logged(
    state: str, action: str, settings: dict[str, object], expected: bool
) -> None:
    request = PolicyRequest.from_attributes({"protocol_state": state})
    assert should_log(default_settings(**settings), request, Action(action)) is expected


def test_row_values_follow_iredapd() -> None:
    request = PolicyRequest.from_attributes(RCPT_AUTH)
    row = session_row(request, Action("451 4.7.1 " + "x" * 300), 1700000000.9)
    assert row["time_num"] == 1700000000
    assert str(row["time"]) == "2023-11-14 22:13:20"  # UTC
    assert row["action"] == "451"
    assert row["reason"].startswith("4.7.1 x") and len(row["reason"]) == 150
    assert row["sender"] == "john.doe@example.com"  # without extension
    assert row["sasl_domain"] == "example.com"
    assert row["recipient_domain"] == "example.org"
    assert session_row(request, Action("DUNNO text"), 0)["reason"] == ""


async def test_a_batch_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """SQLite: one transaction per batch (not one per row), so a batch that
    fails leaves no row behind to be written twice when it is retried."""
    services = Services(default_settings(DATA_DIR=str(tmp_path)))
    services.open_databases()
    db = services.iredapd_db
    assert db is not None
    try:
        log = SessionLog(db)
        good = session_row(PolicyRequest.from_attributes(EOM), Action("DUNNO"), 1700000000)
        log.pending.extend([good, {**good, "action": None}])  # NOT NULL column
        assert await log.flush() is False
        assert len(log.pending) == 2  # kept for the next try
        count = sa.select(sa.func.count()).select_from(smtp_sessions)
        assert await db.run(lambda conn: conn.execute(count).scalar_one()) == 0
        log.pending[1]["action"] = "REJECT"
        assert await log.flush() is True
        assert await db.run(lambda conn: conn.execute(count).scalar_one()) == 2
    finally:
        await services.close()


async def test_rows_are_written_in_the_background(tmp_path: Path) -> None:
    async with running_server(DATA_DIR=str(tmp_path)) as srv:
        c = await PolicyClient.connect(srv.host, srv.port)
        assert await c.ask(NULL_SENDER_RCPT) == "REJECT Policy rejection due to null sender"
        assert await c.ask(RCPT_AUTH) == "DUNNO"  # RCPT + DUNNO: no row
        assert await c.ask(EOM) == "DUNNO"
        await c.close()
        session_log = srv.handler.chain.services.session_log
        assert session_log is not None
        for _ in range(100):
            if session_log.written == 2:
                break
            await asyncio.sleep(0.05)
    rows = sqlite3.connect(tmp_path / "iredapd.sqlite").execute(
        "SELECT action, reason, sender, sasl_username FROM smtp_sessions ORDER BY id"
    )
    assert list(rows) == [
        ("REJECT", "Policy rejection due to null sender", "", "john.doe@example.com"),
        ("DUNNO", "", "", ""),
    ]


def test_nothing_lost_on_sigterm(tmp_path: Path) -> None:
    with subprocess_daemon(tmp_path) as d:

        async def send() -> None:
            c = await PolicyClient.connect("127.0.0.1", d.port)
            for _ in range(50):
                assert await c.ask(EOM) == "DUNNO"
            await c.close()

        asyncio.run(send())
        d.signal(signal.SIGTERM)  # right away: rows are still in memory
        assert d.wait() == 0
    db = sqlite3.connect(tmp_path / "data" / "iredapd.sqlite")
    assert db.execute("SELECT COUNT(*) FROM smtp_sessions").fetchone() == (50,)
