"""iredapd-accounts: manage vmail accounts, then get a real verdict from iredapd-query."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from iredapd.accounts import CachedAccounts, unwrap
from iredapd.backends.sql import SQLAccounts
from iredapd.cli.accounts import main
from iredapd.config import build_settings
from iredapd.services import Services
from iredapd.storage.migrate import upgrade
from tests.support.databases import backend_params, require_service, temporary_database
from tests.support.services import scaled

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults only: no settings.py of the checkout or the machine."""
    monkeypatch.setenv("IREDAPD_SETTINGS", os.devnull)


def run(*args: str, data_dir: Path | None = None, extra: tuple[str, ...] = ()) -> Any:
    """``python -m iredapd.cli.accounts`` with ``-o DATA_DIR=...``; returns the process."""
    opts = ["-o", f"DATA_DIR={data_dir}"] if data_dir is not None else []
    env = dict(os.environ, IREDAPD_SETTINGS=os.devnull, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "iredapd.cli.accounts", *opts, *extra, *args],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env=env,
        cwd=ROOT,
        check=False,
    )


def ok(*args: str, data_dir: Path | None = None, extra: tuple[str, ...] = ()) -> str:
    """The tool run in-process (a subprocess costs seconds on a loaded machine)."""
    import contextlib
    import io

    opts = ["-o", f"DATA_DIR={data_dir}"] if data_dir is not None else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*opts, *extra, *args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def test_as_a_program(tmp_path: Path) -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "domain" in proc.stdout and "maillist" in proc.stdout
    proc = run("domain", "add", "example.com", data_dir=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "added domain example.com\n")
    proc = run("domain", "add", "example.com", data_dir=tmp_path)
    assert proc.returncode == 65
    assert proc.stderr == "iredapd-accounts: error: domain example.com exists already\n"


def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "data"
    ok("domain", "add", "Example.COM", data_dir=d)
    ok("domain", "add", "backup.example.net", "--backup-mx", data_dir=d)
    ok("alias-domain", "add", "alias.example.com", "example.com", data_dir=d)
    ok("mailbox", "add", "user@example.com", "--password-changed", "2024-01-15", data_dir=d)
    ok("mailbox", "add", "never@example.com", "--password-changed", "never", data_dir=d)
    ok("user-alias", "add", "user-alias@example.com", "user@example.com", data_dir=d)
    ok(
        "alias",
        "add",
        "all@example.com",
        "--policy",
        "membersonly",
        "--member",
        "user@example.com",
        "--member",
        "ext@external.test",
        "--moderator",
        "*@example.net",
        data_dir=d,
    )
    ok(
        "maillist",
        "add",
        "list@example.com",
        "--policy",
        "moderatorsonly",
        "--moderator",
        "mod@example.com",
        "--owner",
        "owner@example.com",
        data_dir=d,
    )
    domains = json.loads(ok("--json", "domain", "list", data_dir=d))
    assert domains == [
        {"domain": "backup.example.net", "active": True, "backupmx": True},
        {"domain": "example.com", "active": True, "backupmx": False},
    ]
    aliases = json.loads(ok("--json", "alias", "list", data_dir=d))
    assert aliases == [
        {
            "address": "all@example.com",
            "policy": "membersonly",
            "active": True,
            "members": ["ext@external.test", "user@example.com"],
            "moderators": ["*@example.net"],
        }
    ]
    assert "user-alias@example.com  user@example.com" in ok("user-alias", "list", data_dir=d)

    async def check() -> None:
        settings = build_settings({}, overrides={"DATA_DIR": str(d)})
        services = Services(settings)
        try:
            await asyncio.get_running_loop().run_in_executor(None, services.open_databases)
            vmail = services.vmail
            assert isinstance(vmail, CachedAccounts)
            assert isinstance(unwrap(vmail), SQLAccounts)
            assert await vmail.is_local_domain("example.com")
            assert await vmail.is_local_domain("alias.example.com")
            assert not await vmail.is_local_domain("backup.example.net", include_backupmx=False)
            match = await vmail.login_match(
                "user@example.com", "user-alias@example.com", strictly=True, list_member=False
            )
            assert match.allowed
            assert await vmail.access_policy("all@example.com", "alias") == "membersonly"
            assert await vmail.access_policy("list@example.com", "maillist") == "moderatorsonly"
            assert await vmail.has_owner(["list@example.com"], "owner@example.com")
            local = dt.datetime(2024, 1, 15).astimezone()  # stored as local time
            assert await vmail.password_last_change("user@example.com") == local
            when = await vmail.password_last_change("never@example.com")
            assert when == dt.datetime(1970, 1, 1).astimezone()
        finally:
            await services.close()

    asyncio.run(check())

    ok("maillist", "remove", "list@example.com", data_dir=d)
    ok("alias", "remove", "all@example.com", data_dir=d)
    ok("user-alias", "remove", "user-alias@example.com", data_dir=d)
    ok("mailbox", "remove", "user@example.com", data_dir=d)
    ok("mailbox", "remove", "never@example.com", data_dir=d)
    ok("domain", "remove", "example.com", data_dir=d)
    assert json.loads(ok("--json", "alias-domain", "list", data_dir=d)) == []
    assert json.loads(ok("--json", "mailbox", "list", data_dir=d)) == []


CUSTOM_PLUGIN = '''
from iredapd.plugin import Action, Context, Plugin

class LocalSenderNeedsAuth(Plugin):
    """Test plugin: unauthenticated mail from a hosted domain is refused."""
    requires = frozenset({"vmail"})

    async def check(self, ctx: Context) -> Action | None:
        r = ctx.request
        if not r.sasl_username and await ctx.services.vmail.is_local_domain(r.sender_domain):
            return Action.named("reject_forged_sender")
        return None
'''


def test_a_verdict_from_iredapd_query_within_a_minute(tmp_path: Path) -> None:
    """The README's first steps: add a domain and a mailbox, ask for a verdict."""
    d = tmp_path / "data"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "custom_local_sender.py").write_text(CUSTOM_PLUGIN)
    ok("domain", "add", "example.com", data_dir=d)
    ok("mailbox", "add", "user@example.com", data_dir=d)
    env = dict(os.environ, IREDAPD_SETTINGS=os.devnull, PYTHONPATH=str(ROOT))
    query = [
        sys.executable,
        "-m",
        "iredapd.cli.query",
        "-o",
        f"DATA_DIR={d}",
        "-o",
        f"PLUGIN_DIRS=[{str(plugins)!r}]",
        "-o",
        "plugins=['custom_local_sender']",
        "--json",
        "sender=user@example.com",
        "recipient=someone@example.org",
        "client_address=203.0.113.9",
    ]
    proc = subprocess.run(
        query, capture_output=True, text=True, timeout=scaled(60), env=env, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["action"] == "REJECT SMTP AUTH is required for users under this sender domain"
    query[-3] = "sender=user@elsewhere.test"
    proc = subprocess.run(
        query, capture_output=True, text=True, timeout=scaled(60), env=env, cwd=ROOT, check=False
    )
    assert json.loads(proc.stdout)["action"] == "DUNNO"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["domain", "add", "not a domain"], 2, "not a domain name: 'not a domain'"),
        (["domain", "add", "example.com"], 65, "domain example.com exists already"),
        (["domain", "remove", "nowhere.test"], 65, "domain nowhere.test is not hosted here"),
        (["domain", "remove", "example.com"], 65, "still has mailboxes"),
        (["mailbox", "add", "user@elsewhere.test"], 65, "elsewhere.test is not hosted here"),
        (["mailbox", "add", "user@example.com"], 65, "user@example.com is already a mailbox"),
        (["mailbox", "add", "x@example.com", "--password-changed", "soon"], 2, "not a date"),
        (["mailbox", "add", "x'y@example.com"], 2, "not an e-mail address"),
        (["mailbox", "remove", "ghost@example.com"], 65, "is not a mailbox"),
        (["alias", "add", "a@example.com", "--policy", "open"], 2, "unknown access policy"),
        (["alias", "add", "user@example.com"], 65, "is already a mailbox"),
        (["user-alias", "add", "a@example.com", "ghost@example.com"], 65, "is not a mailbox"),
        (["alias-domain", "add", "x.example.net", "nowhere.test"], 65, "is not hosted here"),
        (["maillist", "remove", "nolist@example.com"], 65, "is not a mailing list"),
        (["-o", "backend=ldap", "domain", "list"], 78, "accounts live in the LDAP directory"),
        (["-o", "no_such_setting=1", "domain", "list"], 78, "no_such_setting"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    base = ["-o", f"DATA_DIR={tmp_path}"]
    ok("domain", "add", "example.com", data_dir=tmp_path)
    ok("mailbox", "add", "user@example.com", data_dir=tmp_path)
    assert main([*base, *args]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("iredapd-accounts: error: ")
    assert message in err


def test_unreachable_database_is_exit_69(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.services import free_port

    args = ["-o", "backend=pgsql", "-o", f"vmail_db_port={free_port()}", "domain", "list"]
    assert main(["-o", "vmail_db_server=127.0.0.1", *args]) == 69
    assert "vmail database" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("server", backend_params("mariadb", "pgsql"))
def test_on_an_iredmail_vmail_database(server: str, tmp_path: Path) -> None:
    """On MySQL/PostgreSQL the tool writes into iRedMail's tables (it never creates them)."""
    admin = require_service(server)
    with temporary_database(server) as url:
        options = (
            "-o",
            f"backend={'mysql' if server == 'mariadb' else 'pgsql'}",
            "-o",
            f"vmail_db_server={url.host}",
            "-o",
            f"vmail_db_port={url.port}",
            "-o",
            f"vmail_db_name={url.database}",
            "-o",
            f"vmail_db_user={admin.username}",
            "-o",
            "vmail_db_password=''",
        )
        with pytest.raises(AssertionError, match="vmail database"):
            ok("domain", "list", extra=options)  # no tables: the tool does not create them
        engine = sa.create_engine(url)
        try:
            upgrade(engine, "vmail", create_foreign=True)  # as iRedMail's installer would
        finally:
            engine.dispose()
        ok("domain", "add", "example.com", extra=options)
        ok("mailbox", "add", "user@example.com", "--password-changed", "2024-01-15", extra=options)
        ok("alias", "add", "all@example.com", "--member", "user@example.com", extra=options)
        assert "user@example.com  2024-01-15 00:00:00" in ok("mailbox", "list", extra=options)
        assert json.loads(ok("--json", "domain", "list", extra=options)) == [
            {"domain": "example.com", "active": True, "backupmx": False}
        ]
