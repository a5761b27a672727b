"""wblist_admin and senderscore_admin run as iRedAPD's cron/admin scripts do.

Each tool runs as a subprocess (``python3 tools/<name>.py``, no PYTHONPATH)
against a new database on SQLite, MariaDB and PostgreSQL; the rows it leaves
are read back with SQLAlchemy.  Follow-up steps of a scenario call the same
``main()`` in-process (``Tools.call``): starting Python costs seconds on a
loaded machine.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from iredapd.storage.migrate import upgrade
from iredapd.storage.schema import mailaddr, outbound_wblist, senderscore_cache, users, wblist
from tests.support.daemon import REPO
from tests.support.databases import backend_params, require_service, temporary_database
from tests.support.services import free_port

pytestmark = pytest.mark.integration

TIMEOUT = 60


@dataclass
class Tools:
    """A settings file for the tools and engines on the same databases."""

    config: Path
    engine: Engine  # the amavisd database
    iredapd: Engine
    cwd: Path

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The tool as a subprocess, with this database's settings."""
        return run_tool(tool, "--config", str(self.config), *args, cwd=self.cwd)

    def call(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The tool's main() in this process, with this database's settings."""
        return call_tool(tool, "--config", str(self.config), *args)


def call_tool(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``iredapd.cli.<tool>.main(args)`` here, capturing its output."""
    module = importlib.import_module(f"iredapd.cli.{tool}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main(list(args))
    return subprocess.CompletedProcess([tool, *args], code, out.getvalue(), err.getvalue())


def run_tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "IREDAPD_SETTINGS")}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{tool}.py"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=cwd,
        check=False,
    )


def _settings_text(backend: str, url: URL | None, data_dir: Path) -> str:
    if url is None:
        return f"backend = 'sqlite'\nDATA_DIR = {str(data_dir)!r}\n"
    lines = [f"backend = {'mysql' if backend == 'mariadb' else 'pgsql'!r}"]
    for name in ("iredapd", "amavisd"):
        lines += [
            f"{name}_db_server = {url.host!r}",
            f"{name}_db_port = {url.port!r}",
            f"{name}_db_name = {url.database!r}",
            f"{name}_db_user = {url.username!r}",
            f"{name}_db_password = ''",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(params=backend_params())
def tools(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tools]:
    """New iredapd and amavisd databases (one database on MariaDB/PostgreSQL)."""
    backend: str = request.param
    config = tmp_path / "settings.py"
    if backend == "sqlite":
        config.write_text(_settings_text(backend, None, tmp_path))
        amavisd = sa.create_engine(f"sqlite:///{tmp_path / 'amavisd.sqlite'}", poolclass=NullPool)
        iredapd = sa.create_engine(f"sqlite:///{tmp_path / 'iredapd.sqlite'}", poolclass=NullPool)
        try:
            upgrade(amavisd, "amavisd")
            upgrade(iredapd, "iredapd")
            yield Tools(config, amavisd, iredapd, tmp_path)
        finally:
            amavisd.dispose()
            iredapd.dispose()
        return
    require_service(backend)
    with temporary_database(backend) as url:
        engine = sa.create_engine(url, poolclass=NullPool)
        try:
            upgrade(engine, "amavisd", create_foreign=True)
            upgrade(engine, "iredapd")
            config.write_text(_settings_text(backend, url, tmp_path))
            yield Tools(config, engine, engine, tmp_path)
        finally:
            engine.dispose()


def inbound(engine: Engine) -> set[tuple[str, str, str]]:
    """(account, address, wb) of every wblist row."""
    return _pairs(engine, wblist, "rid", "sid")


def outbound(engine: Engine) -> set[tuple[str, str, str]]:
    """(account, address, wb) of every outbound_wblist row."""
    return _pairs(engine, outbound_wblist, "sid", "rid")


def _pairs(engine: Engine, table: sa.Table, local: str, external: str) -> set[tuple[str, str, str]]:
    query = sa.select(users.c.email, mailaddr.c.email.label("address"), table.c.wb).select_from(
        table.join(users, users.c.id == table.c[local]).join(
            mailaddr, mailaddr.c.id == table.c[external]
        )
    )
    with engine.connect() as conn:
        return {(r.email, r.address, r.wb) for r in conn.execute(query)}


def rows(engine: Engine, table: sa.Table, *columns: str) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.select(*(table.c[c] for c in columns)))}


def lines(text: str) -> list[str]:
    return text.splitlines()


# ---------------------------------------------------------------------------
# wblist_admin
# ---------------------------------------------------------------------------


def test_wblist_admin_inbound(tools: Tools) -> None:
    r = tools.run("wblist_admin", "--add", "--whitelist", "192.168.1.10", "User@Example.com", "bad")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == [
        "* Establishing SQL connection.",
        "* Add inbound whitelist for account: @.",
        "* Add senders: 192.168.1.10, user@example.com",
    ]
    assert "skipped invalid address: bad" in r.stderr
    assert rows(tools.engine, users, "email", "priority", "policy_id") == {("@.", 0, 0)}
    assert rows(tools.engine, mailaddr, "email", "priority") == {
        ("192.168.1.10", 9),
        ("user@example.com", 10),
    }
    assert inbound(tools.engine) == {("@.", "192.168.1.10", "W"), ("@.", "user@example.com", "W")}

    acct = ("--account", "user@mydomain.com")
    r = tools.call("wblist_admin", *acct, "--add", "--blacklist", "172.16.1.0/24", "@.bad.org")
    assert r.returncode == 0, r.stderr
    assert "* Add inbound blacklist for account: user@mydomain.com" in r.stdout
    assert ("user@mydomain.com", 10, 0) in rows(
        tools.engine, users, "email", "priority", "policy_id"
    )
    assert {("172.16.1.0/24", 7), ("@.bad.org", 3)} <= rows(
        tools.engine, mailaddr, "email", "priority"
    )
    # whitelisting replaces the blacklist entry (one row per pair)
    r = tools.call("wblist_admin", *acct, "--add", "--whitelist", "@.bad.org")
    assert r.returncode == 0, r.stderr
    assert inbound(tools.engine) == {
        ("@.", "192.168.1.10", "W"),
        ("@.", "user@example.com", "W"),
        ("user@mydomain.com", "172.16.1.0/24", "B"),
        ("user@mydomain.com", "@.bad.org", "W"),
    }

    r = tools.run("wblist_admin", "--list", "--whitelist")
    assert lines(r.stdout) == [
        "* Establishing SQL connection.",
        "* List all inbound whitelist for account: @.",
        "192.168.1.10",
        "user@example.com",
    ]
    r = tools.call("wblist_admin", "--list", "--blacklist")
    assert lines(r.stdout)[-1] == "* No whitelist/blacklist."

    # delete: only the listed addresses of the chosen type
    r = tools.run("wblist_admin", "--delete", "--whitelist", "192.168.1.10", "nothere@x.org")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout)[1:] == [
        "* Delete inbound whitelist for account: @.",
        "- Deleted: 192.168.1.10",
    ]
    r = tools.call("wblist_admin", *acct, "--delete-all", "--blacklist")
    assert r.returncode == 0, r.stderr
    assert "* Delete all inbound blacklist for account: user@mydomain.com" in r.stdout
    assert inbound(tools.engine) == {
        ("@.", "user@example.com", "W"),
        ("user@mydomain.com", "@.bad.org", "W"),
    }


def test_wblist_admin_outbound(tools: Tools) -> None:
    acct = ("--outbound", "--account", "@mydomain.com")
    r = tools.run("wblist_admin", *acct, "--add", "--blacklist", "@competitor.com", "a@b.org")
    assert r.returncode == 0, r.stderr
    assert "* Add outbound blacklist for account: @mydomain.com" in r.stdout
    assert ("@mydomain.com", 5, 0) in rows(tools.engine, users, "email", "priority", "policy_id")
    assert outbound(tools.engine) == {
        ("@mydomain.com", "@competitor.com", "B"),
        ("@mydomain.com", "a@b.org", "B"),
    }
    assert inbound(tools.engine) == set()
    r = tools.call("wblist_admin", *acct, "--list", "--blacklist")
    assert lines(r.stdout)[2:] == ["@competitor.com", "a@b.org"]
    r = tools.call("wblist_admin", *acct, "--delete", "--blacklist", "a@b.org")
    assert lines(r.stdout)[-1] == "- Deleted: a@b.org"
    assert outbound(tools.engine) == {("@mydomain.com", "@competitor.com", "B")}


def test_wblist_admin_keeps_existing_mailaddr_priority_and_creates_accounts(tools: Tools) -> None:
    with tools.engine.begin() as conn:
        conn.execute(mailaddr.insert().values(email="x@y.org", priority=3))
    r = tools.call("wblist_admin", "--add", "--blacklist", "x@y.org")
    assert r.returncode == 0, r.stderr
    assert rows(tools.engine, mailaddr, "email", "priority") == {("x@y.org", 3)}
    assert inbound(tools.engine) == {("@.", "x@y.org", "B")}
    # as iRedAPD, --delete creates the account's users row when it is missing
    r = tools.call(
        "wblist_admin", "--account", "new@mydomain.com", "--delete", "--blacklist", "x@y.org"
    )
    assert r.returncode == 0, r.stderr
    assert ("new@mydomain.com", 10, 0) in rows(
        tools.engine, users, "email", "priority", "policy_id"
    )
    assert inbound(tools.engine) == {("@.", "x@y.org", "B")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--add", "a@b.org"], "No --whitelist or --blacklist specified. Exit."),
        (["--whitelist", "a@b.org"], "No --add, --delete or --list specified. Exit."),
        (["--account", "nodomain", "--add", "--whitelist", "a@b.org"], "Invalid account format."),
        (["--account", "@not a domain", "--list", "--whitelist"], "Invalid account format."),
        (["--add", "--whitelist", "bad value"], "--add needs at least one valid address"),
        (["--list"], "No --whitelist or --blacklist specified. Exit."),
    ],
)
def test_wblist_admin_bad_input(args: list[str], message: str) -> None:
    r = call_tool("wblist_admin", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(lines(r.stderr)) in (1, 2)  # the error (after a skipped-address warning)
    assert message in lines(r.stderr)[-1]


def test_wblist_admin_usage_and_help(tmp_path: Path) -> None:
    r = run_tool("wblist_admin", cwd=tmp_path)
    assert r.returncode == 0
    assert "--outbound" in r.stdout and "--delete-all" in r.stdout
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        importlib.import_module("iredapd.cli.wblist_admin").main(["--help"])
    assert exit_info.value.code == 0
    assert "--account" in out.getvalue()


def test_wblist_admin_database_down(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    r = run_tool(
        "wblist_admin",
        "-o",
        "backend=mysql",
        "-o",
        "amavisd_db_server=127.0.0.1",
        "-o",
        f"amavisd_db_port={port}",
        "--list",
        "--whitelist",
        cwd=tmp_path,
    )
    assert r.returncode == 69
    assert len(lines(r.stderr)) == 1
    assert "amavisd database unavailable" in r.stderr


def test_wblist_admin_bad_settings(tmp_path: Path) -> None:
    empty = tmp_path / "settings.py"
    empty.write_text("")
    args = ["--config", str(empty), "-o", "NO_SUCH_SETTING=1", "--list", "--whitelist"]
    r = call_tool("wblist_admin", *args)
    assert r.returncode == 78
    assert "NO_SUCH_SETTING" in r.stderr


# ---------------------------------------------------------------------------
# senderscore_admin
# ---------------------------------------------------------------------------


def test_senderscore_admin_whitelists(tools: Tools) -> None:
    table = senderscore_cache
    with tools.iredapd.begin() as conn:
        conn.execute(table.insert().values(client_address="192.0.2.1", score=5, time=123))
        conn.execute(table.insert().values(client_address="192.0.2.9", score=7, time=456))
    r = tools.run("senderscore_admin", "-w", "192.0.2.1", "2001:db8::1", "bad", "192.0.2.1")
    assert r.returncode == 0, r.stderr
    assert lines(r.stdout) == ["Whitelisted: 192.0.2.1, 2001:db8::1"]
    assert "bad" in r.stderr
    assert rows(tools.iredapd, table, "client_address", "score", "time") == {
        ("192.0.2.1", 100, 4102444799),
        ("2001:db8::1", 100, 4102444799),
        ("192.0.2.9", 7, 456),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["192.0.2.1", "192.0.2.2"], "Invalid argument."),
        (["-w", "not-an-ip"], "No valid IP address."),
        (["-w"], "No valid IP address."),
    ],
)
def test_senderscore_admin_bad_input(args: list[str], message: str) -> None:
    r = call_tool("senderscore_admin", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert message in lines(r.stderr)[-1]


def test_senderscore_admin_usage(tmp_path: Path) -> None:
    r = run_tool("senderscore_admin", cwd=tmp_path)
    assert r.returncode == 0
    assert "-w" in r.stdout


def test_senderscore_admin_database_down(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    empty = tmp_path / "settings.py"
    empty.write_text("")
    r = call_tool(
        "senderscore_admin",
        "--config",
        str(empty),
        "-o",
        "backend=pgsql",
        "-o",
        "iredapd_db_server=127.0.0.1",
        "-o",
        f"iredapd_db_port={port}",
        "-w",
        "192.0.2.1",
    )
    assert r.returncode == 69
    assert len(lines(r.stderr)) == 1
    assert "iredapd database unavailable" in r.stderr
