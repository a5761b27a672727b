"""tools/throttle_admin.py and tools/fix_throttle_priority.py as subprocesses,
against SQLite, MariaDB and PostgreSQL, checking the rows they change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from iredapd.app import load_namespace
from iredapd.services import Services
from iredapd.storage.schema import throttle, throttle_tracking
from tests.support.daemon import REPO
from tests.support.databases import backend_params, require_service, temporary_database
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def settings_for(backend: str, tmp_path: Path, url: Any = None) -> dict[str, Any]:
    if backend == "sqlite":
        return {"backend": "sqlite", "DATA_DIR": str(tmp_path / "data")}
    return {
        "backend": "mysql" if backend == "mariadb" else "pgsql",
        "iredapd_db_server": url.host,
        "iredapd_db_port": url.port,
        "iredapd_db_name": url.database,
        "iredapd_db_user": url.username,
        "iredapd_db_password": url.password or "",
    }


class Setup:
    """A schema-ready iredapd database, a settings file for the tools, an engine."""

    def __init__(self, overrides: dict[str, Any], tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.settings_path = tmp_path / "settings.py"
        self.write_settings(overrides)
        loaded = load_namespace({}, overrides=overrides)
        services = Services(loaded.settings)
        services.open_databases()
        assert services.iredapd_db is not None
        self.engine = services.iredapd_db.engine

    def write_settings(self, overrides: dict[str, Any]) -> None:
        self.settings_path.write_text("".join(f"{k} = {v!r}\n" for k, v in overrides.items()))

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("IREDAPD_SETTINGS", None)
        cmd = [sys.executable, str(REPO / "tools" / f"{tool}.py"), "-c", str(self.settings_path)]
        return subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=self.tmp_path,
        )

    def rules(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(throttle).order_by(throttle.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def tracking(self) -> list[tuple[int, str]]:
        t = throttle_tracking.c
        with self.engine.connect() as conn:
            return [(int(a), str(b)) for a, b in conn.execute(sa.select(t.tid, t.account))]

    def add(self, account: str, kind: str = "outbound", **cols: Any) -> int:
        with self.engine.connect() as conn:
            conn.execute(sa.insert(throttle).values(account=account, kind=kind, **cols))
            return int(
                conn.execute(
                    sa.select(throttle.c.id).where(
                        throttle.c.account == account, throttle.c.kind == kind
                    )
                ).scalar_one()
            )


@pytest.fixture(params=backend_params())
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    backend: str = request.param
    if backend == "sqlite":
        s = Setup(settings_for(backend, tmp_path), tmp_path)
        yield s
        s.engine.dispose()
        return
    require_service(backend)
    with temporary_database(backend) as url:
        s = Setup(settings_for(backend, tmp_path, url), tmp_path)
        yield s
        s.engine.dispose()


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "id"} for r in rows]


# ---------------------------------------------------------------------------
# throttle_admin
# ---------------------------------------------------------------------------


def test_set_list_update_remove(setup: Setup) -> None:
    r = setup.run(
        "throttle_admin", "set", "User@Example.com", "--period", "60", "--max-msgs", "10", "--json"
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] is True
    r = setup.run(
        "throttle_admin", "add", "@example.com", "--kind", "external", "--msg-size", "500"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Created throttle setting (priority 60):")
    assert _strip(setup.rules()) == [
        {
            "account": "user@example.com",
            "kind": "outbound",
            "priority": 100,
            "period": 60,
            "msg_size": -1,
            "max_msgs": 10,
            "max_quota": -1,
            "max_rcpts": -1,
        },
        {
            "account": "@example.com",
            "kind": "external",
            "priority": 60,
            "period": 0,
            "msg_size": 500,
            "max_msgs": -1,
            "max_quota": -1,
            "max_rcpts": -1,
        },
    ]
    # change only what is given
    r = setup.run("throttle_admin", "set", "user@example.com", "--max-quota", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["created"] is False
    rule = setup.rules()[0]
    assert (rule["period"], rule["max_msgs"], rule["max_quota"]) == (60, 10, 0)

    r = setup.run("throttle_admin", "list", "--json")
    listed = json.loads(r.stdout)
    assert [(x["account"], x["kind"]) for x in listed] == [
        ("@example.com", "external"),
        ("user@example.com", "outbound"),
    ]
    r = setup.run("throttle_admin", "list", "--account", "@example.com")
    assert r.returncode == 0
    assert "@example.com" in r.stdout and "user@example.com" not in r.stdout

    # remove takes the counters with it (they refer to the rule)
    tid = setup.rules()[0]["id"]
    with setup.engine.connect() as conn:
        conn.execute(
            sa.insert(throttle_tracking).values(tid=tid, account="user@example.com", cur_msgs=3)
        )
    r = setup.run("throttle_admin", "remove", "user@example.com", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["removed"] == 1
    assert [x["account"] for x in setup.rules()] == ["@example.com"]
    assert setup.tracking() == []
    r = setup.run("throttle_admin", "remove", "user@example.com")
    assert r.returncode == 1
    assert "No throttle setting of user@example.com" in r.stderr
    # --kind limits what is removed
    r = setup.run("throttle_admin", "remove", "@example.com", "--kind", "inbound")
    assert r.returncode == 1
    assert len(setup.rules()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "not an account", "--max-rcpts", "1"], "not a valid throttle account"),
        (["set", "10.0.0.0/8", "--max-rcpts", "1"], "never looked up by the throttle plugin"),
        (["set", "user@*", "--max-rcpts", "1"], "never looked up by the throttle plugin"),
        (["set", "@example.com"], "give at least one of"),
        (["set", "@example.com", "--max-msgs", "5"], "give --period greater than 0"),
        (["set", "@example.com", "--max-msgs", "-2", "--period", "5"], "--max-msgs must be"),
        (["set", "@example.com", "--period", "-1", "--msg-size", "1"], "--period must be"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    setup = Setup(settings_for("sqlite", tmp_path), tmp_path)  # input checks: one backend
    r = setup.run("throttle_admin", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("throttle_admin: error: "), r.stderr
    assert message in lines[0]
    assert setup.rules() == []


def test_bad_kind_is_an_argparse_error(setup: Setup) -> None:
    r = setup.run("throttle_admin", "set", "@example.com", "--kind", "sideways", "--msg-size", "1")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr


def test_usage_shows_the_current_window(setup: Setup) -> None:
    now = int(time.time())
    live = setup.add("@example.com", "external", period=3600, max_msgs=100, max_quota=5000)
    old = setup.add("@ip", "inbound", period=60, max_msgs=10)
    with setup.engine.connect() as conn:
        conn.execute(
            sa.insert(throttle_tracking),
            [
                {
                    "tid": live,
                    "account": "joe@example.com",
                    "period": 3600,
                    "cur_msgs": 7,
                    "cur_quota": 1234,
                    "init_time": now - 600,
                    "last_time": now - 5,
                },
                {
                    "tid": old,
                    "account": "192.0.2.9",
                    "period": 60,
                    "cur_msgs": 9,
                    "cur_quota": 99,
                    "init_time": now - 3600,
                    "last_time": now - 3500,
                },
            ],
        )
    r = setup.run("throttle_admin", "usage", "--json")
    assert r.returncode == 0, r.stderr
    items = {u["account"]: u for u in json.loads(r.stdout)}
    joe = items["joe@example.com"]
    assert (joe["rule_account"], joe["kind"], joe["cur_msgs"], joe["max_msgs"]) == (
        "@example.com",
        "external",
        7,
        100,
    )
    assert (joe["cur_quota"], joe["max_quota"], joe["window_start"]) == (1234, 5000, now - 600)
    assert 2990 <= joe["seconds_left"] <= 3000
    ip = items["192.0.2.9"]
    # the window has ended: nothing counts any more (the stored values are shown too)
    assert (ip["cur_msgs"], ip["seconds_left"], ip["window_start"]) == (0, 0, None)
    assert ip["stored"]["cur_msgs"] == 9
    # by counter key or by rule account
    r = setup.run("throttle_admin", "usage", "joe@example.com", "--json")
    assert [u["account"] for u in json.loads(r.stdout)] == ["joe@example.com"]
    r = setup.run("throttle_admin", "usage", "@ip")
    assert r.returncode == 0
    assert "192.0.2.9" in r.stdout and "window ended" in r.stdout
    assert "joe@example.com" not in r.stdout


def test_unreachable_database(tmp_path: Path) -> None:
    s = tmp_path / "settings.py"
    s.write_text(
        "backend = 'mysql'\niredapd_db_server = '127.0.0.1'\n"
        f"iredapd_db_port = {free_port()}\niredapd_db_user = 'x'\n"
    )
    env = dict(os.environ)
    env.pop("IREDAPD_SETTINGS", None)
    for tool, args, code, text in (
        ("throttle_admin", ["list"], 69, "throttle_admin: error: iredapd database:"),
        ("fix_throttle_priority", [], 1, "ERROR: Failed to connect to iredapd database."),
    ):
        r = subprocess.run(
            [sys.executable, str(REPO / "tools" / f"{tool}.py"), "-c", str(s), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == code, r.stderr
        assert r.stderr.startswith(text)
        assert len(r.stderr.strip().splitlines()) == 1


def test_help_works_from_a_checkout(tmp_path: Path) -> None:
    for tool in ("throttle_admin", "fix_throttle_priority", "cleanup_db"):
        r = subprocess.run(
            [sys.executable, str(REPO / "tools" / f"{tool}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"usage: {tool}")


# ---------------------------------------------------------------------------
# fix_throttle_priority (core-and-stateful.md §14.7)
# ---------------------------------------------------------------------------


def test_fix_priorities(setup: Setup) -> None:
    r = setup.run("fix_throttle_priority")
    assert (r.returncode, r.stdout) == (0, "No throttle settings, no need to fix. Skip.\n")
    rows = [
        ("user@example.com", 0, 100),
        ("@example.com", 100, 60),
        ("@.example.com", 50, 50),  # already right: not touched, not printed
        ("@.com", 0, 40),
        ("@.", 10, 0),
        ("192.0.2.1", 0, 80),
        ("192.0.2.*", 0, 70),
        ("10.0.0.0/8", 0, 70),  # iRedAPD: 0 (its table has no cidr_network)
        ("@ip", 9, 0),
        ("no such form", 7, 0),
    ]
    for account, prio, _ in rows:
        setup.add(account, priority=prio)
    r = setup.run("fix_throttle_priority")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"Fixed throttle priority: account={a}, priority: {old} -> {new}."
        for a, old, new in rows
        if old != new
    ]
    assert [(x["account"], x["priority"]) for x in setup.rules()] == [(a, n) for a, _, n in rows]
    r = setup.run("fix_throttle_priority")
    assert (r.returncode, r.stdout) == (0, "")


def test_fix_priorities_pages_through_many_rules(setup: Setup) -> None:
    with setup.engine.connect() as conn:
        conn.execute(
            sa.insert(throttle),
            [
                {"account": f"u{i}@example.com", "kind": "outbound", "priority": 1}
                for i in range(250)
            ],
        )
    r = setup.run("fix_throttle_priority")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 250
    assert {x["priority"] for x in setup.rules()} == {100}
