"""tools/cleanup_db.py as a subprocess on SQLite, MariaDB and PostgreSQL: it removes
exactly the expired rows (core-and-stateful.md §14.2), in batches, printing
iRedAPD's progress lines; and a row refreshed between a batch's SELECT and its
DELETE is kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.cli.cleanup_db import cleanup_table, targets
from iredapd.config import default_settings
from iredapd.storage.schema import (
    greylisting_tracking,
    senderscore_cache,
    smtp_sessions,
    throttle,
    throttle_tracking,
)
from tests.integration.test_throttle_tools import Setup, settings_for
from tests.support.databases import backend_params, require_service, temporary_database

pytestmark = pytest.mark.integration

DAY = 86400


@pytest.fixture(params=backend_params())
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    backend: str = request.param
    extra = {"CLEANUP_QUERY_SIZE_LIMIT": 3}
    if backend == "sqlite":
        s = Setup({**settings_for(backend, tmp_path), **extra}, tmp_path)
        yield s
        s.engine.dispose()
        return
    require_service(backend)
    with temporary_database(backend) as url:
        s = Setup({**settings_for(backend, tmp_path, url), **extra}, tmp_path)
        yield s
        s.engine.dispose()


def fill(conn: Connection, now: int) -> dict[str, set[Any]]:
    """Expired and live rows in the four tables; returns the keys that must stay."""
    tid = conn.execute(
        sa.insert(throttle).values(account="@ip", kind="inbound", period=60, max_msgs=5)
    ).inserted_primary_key[0]
    tracking = [
        # ended windows: init_time + period < now
        *({"init_time": now - 100 - i, "period": 60} for i in range(7)),
        {"init_time": 0, "period": 60},  # never started (a notification placeholder)
        # running windows
        {"init_time": now - 30, "period": 60},
        {"init_time": now, "period": 60},
    ]
    conn.execute(
        sa.insert(throttle_tracking),
        [{"tid": tid, "account": f"192.0.2.{i}", **row} for i, row in enumerate(tracking)],
    )
    conn.execute(
        sa.insert(greylisting_tracking),
        [
            {
                "sender": f"s{i}@example.net",
                "recipient": "r@example.com",
                "client_address": "192.0.2.1",
                "record_expired": now + (1000 if i >= 3 else -1000),
            }
            for i in range(5)
        ],
    )
    conn.execute(
        sa.insert(senderscore_cache),
        [
            {"client_address": "198.51.100.1", "score": 10, "time": now - 2 * DAY - 10},
            {"client_address": "198.51.100.2", "score": 10, "time": now - 3 * DAY},
            {"client_address": "198.51.100.3", "score": 90, "time": now - 2 * DAY + 600},
            {"client_address": "198.51.100.4", "score": 90, "time": now},
        ],
    )
    conn.execute(
        sa.insert(smtp_sessions),
        [
            {"time_num": now - 7 * DAY - 10 - i, "action": "DUNNO", "instance": f"old{i}"}
            for i in range(4)
        ]
        + [{"time_num": now - 6 * DAY, "action": "DUNNO", "instance": "new"}],
    )
    return {
        "throttle_tracking": {"192.0.2.8", "192.0.2.9"},
        "greylisting_tracking": {"s3@example.net", "s4@example.net"},
        "senderscore_cache": {"198.51.100.3", "198.51.100.4"},
        "smtp_sessions": {"new"},
    }


def left(conn: Connection) -> dict[str, set[Any]]:
    return {
        "throttle_tracking": set(conn.execute(sa.select(throttle_tracking.c.account)).scalars()),
        "greylisting_tracking": set(
            conn.execute(sa.select(greylisting_tracking.c.sender)).scalars()
        ),
        "senderscore_cache": set(
            conn.execute(sa.select(senderscore_cache.c.client_address)).scalars()
        ),
        "smtp_sessions": set(conn.execute(sa.select(smtp_sessions.c.instance)).scalars()),
    }


def test_cleanup_removes_exactly_the_expired_rows(setup: Setup) -> None:
    now = int(time.time())
    with setup.engine.connect() as conn:
        keep = fill(conn, now)
    r = setup.run("cleanup_db")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "* throttle_tracking   : 3 records removed.",
        "* throttle_tracking   : 6 records removed.",
        "* throttle_tracking   : 8 records removed.",
        "* throttle_tracking: 2 left.",
        "* greylisting_tracking: 3 records removed.",
        "* greylisting_tracking: 2 left.",
        "* senderscore_cache   : 2 records removed.",
        "* senderscore_cache: 2 left.",
        "* smtp_sessions       : 3 records removed.",
        "* smtp_sessions       : 4 records removed.",
        "* smtp_sessions: 1 left.",
    ]
    with setup.engine.connect() as conn:
        assert left(conn) == keep
        assert conn.execute(sa.select(sa.func.count()).select_from(throttle)).scalar_one() == 1
    # nothing more to do: only the "left" lines
    r = setup.run("cleanup_db")
    assert r.stdout.splitlines() == [
        "* throttle_tracking: 2 left.",
        "* greylisting_tracking: 2 left.",
        "* senderscore_cache: 2 left.",
        "* smtp_sessions: 1 left.",
    ]


def test_retention_settings_and_log_level(setup: Setup) -> None:
    now = int(time.time())
    with setup.engine.connect() as conn:
        fill(conn, now)
    text = setup.settings_path.read_text()
    setup.settings_path.write_text(
        text
        + "SENDERSCORE_CACHE_DAYS = 4\nLOG_SMTP_SESSIONS_EXPIRE_DAYS = 1\nlog_level = 'warning'\n"
    )
    r = setup.run("cleanup_db")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    with setup.engine.connect() as conn:
        rest = left(conn)
    assert rest["senderscore_cache"] == {f"198.51.100.{i}" for i in (1, 2, 3, 4)}
    assert rest["smtp_sessions"] == set()


class RefreshingConnection:
    """A connection that lets the daemon "refresh" a row right after a SELECT."""

    def __init__(self, conn: Connection, refresh: sa.Executable) -> None:
        self.conn = conn
        self.refresh = refresh
        self.done = False

    def execute(self, stmt: Any, *args: Any) -> Any:
        result = self.conn.execute(stmt, *args)
        if isinstance(stmt, sa.Select) and not self.done:
            rows = result.fetchall()
            self.conn.execute(self.refresh)
            self.done = True
            return rows
        return result


def test_a_row_refreshed_meanwhile_is_kept(setup: Setup) -> None:
    now = int(time.time())
    with setup.engine.connect() as conn:
        fill(conn, now)
        # the daemon restarts the window of 192.0.2.0 between SELECT and DELETE
        refresh = (
            sa.update(throttle_tracking)
            .where(throttle_tracking.c.account == "192.0.2.0")
            .values(init_time=now, cur_msgs=1)
        )
        proxy = RefreshingConnection(conn, refresh)
        tt = targets(default_settings(), now)[0]
        lines: list[str] = []
        removed, remaining = cleanup_table(proxy, tt, 100, lines.append)  # type: ignore[arg-type]
        assert (removed, remaining) == (7, 3)
        assert lines == [
            "* throttle_tracking   : 7 records removed.",
            "* throttle_tracking: 3 left.",
        ]
        assert left(conn)["throttle_tracking"] == {"192.0.2.0", "192.0.2.8", "192.0.2.9"}
