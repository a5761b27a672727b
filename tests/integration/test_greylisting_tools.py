"""greylisting_admin.py and spf_to_greylist_whitelists.py as subprocesses, real databases.

Run from the checkout as cron runs them (``python3 tools/<name>.py``), against
SQLite, MariaDB and PostgreSQL, checking their output and the rows they leave
(core-and-stateful.md §14.3, §14.4).  The SPF tool asks the stub DNS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iredapd.cli import greylisting_admin
from tests.conftest import TIMEOUT_SCALE
from tests.plugins.test_greylisting import (  # noqa: F401 - fixtures
    GreylistEnv,
    gl_database,
    gl_env,
    triplet_row,
)
from tests.support.services import free_port
from tests.support.stubdns import StubDNS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ADMIN = REPO / "tools" / "greylisting_admin.py"
SPF_TOOL = REPO / "tools" / "spf_to_greylist_whitelists.py"
RULE = "-" * 78


@pytest.fixture
def env(gl_env: GreylistEnv) -> GreylistEnv:  # noqa: F811
    return gl_env


@pytest.fixture
def settings_path(gl_database: dict[str, Any], tmp_path: Path) -> Path:  # noqa: F811
    """An iRedAPD-style settings file naming the test database."""
    path = tmp_path / "settings.py"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in gl_database.items()))
    return path


def run(tool: Path, settings: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    config = ["--config", str(settings)] if settings is not None else []
    return subprocess.run(
        [sys.executable, str(tool), *config, *args],
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_SCALE,
        cwd="/",  # works from anywhere, as from cron
        check=False,
    )


async def run_async(
    tool: Path, *args: str, gate: asyncio.Semaphore | None = None
) -> tuple[int, str, str]:
    """Run a tool without blocking the loop; (status, stdout, stderr)."""
    async with gate or contextlib.nullcontext():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(tool),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
        )
        async with asyncio.timeout(60 * TIMEOUT_SCALE):
            out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def admin(settings: Path, *args: str) -> tuple[int, list[str], str]:
    """The tool's main() in this process: (status, stdout lines, stderr).

    Each process costs a second of imports, so most checks call main()
    directly; ``test_admin_as_a_subprocess`` runs the real thing per backend.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = greylisting_admin.main(["--config", str(settings), *args])
    return code, out.getvalue().splitlines(), err.getvalue().strip()


def settings_rows(env: GreylistEnv) -> list[tuple[str, int, str, int, int]]:
    return [
        (r["account"], r["priority"], r["sender"], r["sender_priority"], r["active"])
        for r in env.rows(
            "greylisting", "account", "priority", "sender", "sender_priority", "active"
        )
    ]


def whitelist_rows(env: GreylistEnv, table: str = "whitelists") -> set[tuple[str, str, str]]:
    return {
        (r["account"], r["sender"], r["comment"])
        for r in env.rows(table, "account", "sender", "comment")
    }


# ---------------------------------------------------------------------------
# greylisting_admin.py
# ---------------------------------------------------------------------------


async def test_admin_usage_and_errors_as_a_subprocess(tmp_path: Path) -> None:
    settings = tmp_path / "settings.py"
    settings.write_text(f"backend = 'sqlite'\nDATA_DIR = {str(tmp_path)!r}\n")
    config = ("--config", str(settings))
    results = await asyncio.gather(
        run_async(ADMIN),  # no arguments at all: usage, as iRedAPD
        run_async(ADMIN, *config),
        run_async(ADMIN, *config, "--enable", "--from", "example.org"),
        run_async(ADMIN, *config, "--enable", "--bogus"),
    )
    usage, no_op, bad_sender, bad_option = results
    assert usage[0] == 0 and "--enable" in usage[1] and "--from" in usage[1]
    assert no_op == (1, "", "<<< ERROR >>> No valid operation specified. Exit.\n")
    assert bad_sender == (1, "", "<<< ERROR >>> Invalid sender address.\n")
    assert bad_option[0] == 2 and "unrecognized arguments: --bogus" in bad_option[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "No valid operation specified. Exit."),
        (("--from", "@.example.org"), "No valid operation specified. Exit."),
        (("--enable", "--from", "example.org"), "Invalid sender address."),
        (("--enable", "--from", "192.0.2.1/24"), "Invalid sender address."),
        (("--enable", "--from", "192.0.2.*"), "Invalid sender address."),
        (("--enable", "--to", "example.com"), "Invalid recipient address."),
        (("--list", "--from", "bad sender"), "Invalid sender address."),
        (("--whitelist-domain", "--from", "user@example.net"), "INVALID_DOMAIN"),
        (("--whitelist-domain", "--from", "@.example.net"), "INVALID_DOMAIN"),
    ],
)
def test_admin_input_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    settings = tmp_path / "settings.py"
    settings.write_text(f"backend = 'sqlite'\nDATA_DIR = {str(tmp_path)!r}\n")
    assert admin(settings, *args) == (1, [], f"<<< ERROR >>> {message}")


def test_admin_as_a_subprocess(env: GreylistEnv, settings_path: Path) -> None:
    done = run(ADMIN, settings_path, "--enable", "--from", "2001:db8::/32", "--to", "@example.com")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "* Enable greylisting: 2001:db8::/32 -> @example.com\n",
        "",
    )
    assert settings_rows(env) == [("@example.com", 60, "2001:db8::/32", 70, 1)]
    done = run(ADMIN, settings_path, "--add-whitelist", "--from", "@example.org")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert whitelist_rows(env) == {("@.", "@example.org", "")}


def test_admin_settings(env: GreylistEnv, settings_path: Path) -> None:
    assert admin(settings_path, "--list") == (0, ["* No greylisting settings."], "")
    assert admin(settings_path, "--enable") == (0, ["* Enable greylisting: @. -> @."], "")
    assert admin(settings_path, "--disable", "--from", "2001:DB8::/32", "--to", "@Example.com") == (
        0,
        ["* Disable greylisting: 2001:db8::/32 -> @example.com"],
        "",
    )
    admin(settings_path, "--enable", "--from", "192.0.2.0/24", "--to", "user@example.com")
    admin(settings_path, "--disable", "--from", "@example.org", "--to", "user@example.com")
    # the first operation of iRedAPD's order wins: --enable before --list
    admin(settings_path, "--list", "--enable", "--from", "@.org", "--to", "@.example.com")
    assert sorted(settings_rows(env)) == sorted(
        [
            ("@.", 0, "@.", 0, 1),
            ("@example.com", 60, "2001:db8::/32", 70, 0),
            ("user@example.com", 100, "192.0.2.0/24", 70, 1),
            ("user@example.com", 100, "@example.org", 60, 0),
            ("@.example.com", 50, "@.org", 40, 1),
        ]
    )
    fmt = "%-8s %-34s -> %-30s"
    assert admin(settings_path, "--list") == (
        0,
        [
            fmt % ("Status", "Sender", "Local Account"),
            RULE,
            fmt % ("enabled", "192.0.2.0/24", "user@example.com"),
            fmt % ("disabled", "@example.org", "user@example.com"),
            fmt % ("disabled", "2001:db8::/32", "@example.com"),
            fmt % ("enabled", "@.org", "@.example.com"),
            fmt % ("enabled", "@. (anyone)", "@. (anyone)"),
        ],
        "",
    )
    _, out, _ = admin(settings_path, "--list", "--to", "@example.com")
    assert out[2:] == [fmt % ("disabled", "2001:db8::/32", "@example.com")]
    # enabling again replaces the row (one row, new state)
    admin(settings_path, "--enable", "--from", "2001:db8::/32", "--to", "@example.com")
    assert ("@example.com", 60, "2001:db8::/32", 70, 1) in settings_rows(env)
    assert len(settings_rows(env)) == 5
    assert admin(settings_path, "--delete", "--from", "@example.org", "--to", "user@example.com")[
        1
    ] == ["* Delete greylisting setting: @example.org -> user@example.com"]
    assert len(settings_rows(env)) == 4


def test_admin_whitelists(env: GreylistEnv, settings_path: Path) -> None:
    for args in [
        ("--add-whitelist", "--from", "203.0.113.0/24"),
        ("--add-whitelist", "--from", "2001:db8::/48"),
        ("--add-whitelist", "--from", "@Example.org", "--to", "user@example.com"),
        ("--add-whitelist", "--from", "@example.org", "--to", "user@example.com"),  # again: fine
        ("--whitelist-domain", "--from", "@example.net"),
        ("--whitelist-domain", "--from", "@example.net"),
        ("--whitelist-domain", "--from", "@big.example"),
    ]:
        assert admin(settings_path, *args) == (0, [], ""), args
    assert whitelist_rows(env) == {
        ("@.", "203.0.113.0/24", ""),
        ("@.", "2001:db8::/48", ""),
        ("user@example.com", "@example.org", ""),
    }
    assert admin(settings_path, "--list-whitelist-domains")[1] == ["big.example", "example.net"]
    env.insert("spf", account="@.", sender="192.0.2.0/24", comment="AUTO-UPDATE: example.net")
    env.insert("spf", account="@.", sender="198.51.100.1", comment="AUTO-UPDATE: big.example")
    assert admin(settings_path, "--list-whitelists")[1] == [
        "2001:db8::/48 -> @., ''",
        "203.0.113.0/24 -> @., ''",
        "@example.org -> user@example.com, ''",
        "192.0.2.0/24 -> @., 'AUTO-UPDATE: example.net'",
        "198.51.100.1 -> @., 'AUTO-UPDATE: big.example'",
    ]
    assert admin(settings_path, "--list-whitelists", "--to", "user@example.com")[1] == [
        "@example.org -> user@example.com, ''"
    ]
    # the domain's SPF rows go with it (iRedAPD left them: bug 33)
    assert admin(settings_path, "--remove-whitelist-domain", "--from", "@example.net") == (
        0,
        [],
        "",
    )
    assert [r["domain"] for r in env.rows("domains", "domain")] == ["big.example"]
    assert whitelist_rows(env, "spf") == {("@.", "198.51.100.1", "AUTO-UPDATE: big.example")}


def test_admin_database_down(tmp_path: Path) -> None:
    path = tmp_path / "settings.py"
    path.write_text(
        "backend = 'pgsql'\niredapd_db_server = '127.0.0.1'\n"
        f"iredapd_db_port = {free_port()}\niredapd_db_user = 'x'\n"
    )
    done = run(ADMIN, path, "--list")
    assert done.returncode == 69
    assert done.stderr.startswith("greylisting_admin.py: error: iredapd database:")
    assert len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# spf_to_greylist_whitelists.py
# ---------------------------------------------------------------------------

ZONE: dict[str, list[Any]] = {
    "big.example": [
        {"TXT": "v=spf1 include:_spf.shared.example ip4:192.0.2.0/24 ip4:198.51.100.7 "
                "ip6:2001:db8:1::/48 a mx ptr -ip4:10.1.1.1 -all"},
        {"A": "203.0.113.10"},
        {"MX": [10, "mx.big.example"]},
    ],
    "mx.big.example": [{"A": "203.0.113.20"}, {"AAAA": "2001:db8:2::20"}],
    "_spf.shared.example": [{"TXT": "v=spf1 ip4:192.0.2.128/25 ip4:100.64.0.0/10 ~all"}],
    "other.example": [{"TXT": "v=spf1 include:_spf.shared.example ip4:192.0.2.99 -all"}],
    "nospf.example": [{"TXT": "NONE"}, {"MX": [10, "mx1.nospf.example"]}],
    "mx1.nospf.example": [{"A": "198.51.100.30"}],
    "broken.example": ["SERVFAIL"],
    "brokeninclude.example": [{"TXT": "v=spf1 ip4:192.0.2.5 include:broken.example -all"}],
    "ptronly.example": [{"TXT": "v=spf1 ptr -all"}],
}  # fmt: skip

BIG = {
    "192.0.2.0/24",  # with the shared include's 192.0.2.128/25, collapsed
    "100.64.0.0/10",
    "198.51.100.7",
    "2001:db8:1::/48",
    "203.0.113.10",  # a
    "203.0.113.20",  # mx
    "2001:db8:2::20",
}


async def spf_tool(settings: Path, port: int, *args: str) -> tuple[int, str, str]:
    dns = ["DNS_NAMESERVERS=['127.0.0.1']", f"DNS_PORT={port}", "DNS_QUERY_TIMEOUT=2.0"]
    options = [x for o in dns for x in ("-o", o)]
    return await run_async(SPF_TOOL, "--config", str(settings), *options, *args)


def spf_rows(env: GreylistEnv) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for account, sender, comment in whitelist_rows(env, "spf"):
        assert account == "@."
        out.setdefault(comment, set()).add(sender)
    return out


async def test_spf_tool_expands_each_domain(env: GreylistEnv, settings_path: Path) -> None:
    for domain in ("big.example", "other.example", "nospf.example"):
        env.insert("domains", domain=domain)
    # rows the run replaces, and rows it must leave alone
    env.insert("spf", account="@.", sender="10.0.0.1", comment="AUTO-UPDATE: big.example")
    env.insert("whitelists", account="@.", sender="10.0.0.2", comment="AUTO-UPDATE: big.example")
    env.insert("whitelists", account="@.", sender="10.0.0.3", comment="manual")
    env.insert("tracking", **triplet_row(client_address="203.0.113.10"))
    env.insert("tracking", **triplet_row(client_address="203.0.113.99"))
    async with StubDNS(ZONE) as dns:
        code, out, err = await spf_tool(settings_path, dns.port)
    assert (code, err) == (0, "")
    assert spf_rows(env) == {
        "AUTO-UPDATE: big.example": BIG,
        # each domain expanded on its own: the shared include counts here too
        # (iRedAPD: nothing, bug 36); 100.64.0.0/10 is already whitelisted
        "AUTO-UPDATE: other.example": {"192.0.2.128/25", "192.0.2.99"},
        "AUTO-UPDATE: nospf.example": {"198.51.100.30"},  # no SPF: its MX hosts
    }
    assert "@big.example" not in str(spf_rows(env))  # ptr whitelists nobody (bug 35)
    assert whitelist_rows(env) == {("@.", "10.0.0.3", "manual")}
    assert [r["client_address"] for r in env.tracking()] == ["203.0.113.99"]
    assert "* [big.example] 7 IP addresses/networks whitelisted." in out.splitlines()
    # a second run gives the same table
    async with StubDNS(ZONE) as dns:
        assert (await spf_tool(settings_path, dns.port))[0] == 0
    assert spf_rows(env)["AUTO-UPDATE: big.example"] == BIG


async def test_spf_tool_keeps_rows_when_dns_fails(env: GreylistEnv, settings_path: Path) -> None:
    env.insert("spf", account="@.", sender="192.0.2.1", comment="AUTO-UPDATE: broken.example")
    env.insert(
        "spf", account="@.", sender="192.0.2.2", comment="AUTO-UPDATE: brokeninclude.example"
    )
    async with StubDNS(ZONE) as dns:
        code, _, err = await spf_tool(
            settings_path, dns.port, "broken.example", "brokeninclude.example", "nospf.example"
        )
    assert code == 1
    assert "[broken.example] DNS lookup failed" in err
    assert "[brokeninclude.example] DNS lookup failed" in err
    assert spf_rows(env) == {
        "AUTO-UPDATE: broken.example": {"192.0.2.1"},
        "AUTO-UPDATE: brokeninclude.example": {"192.0.2.2"},
        "AUTO-UPDATE: nospf.example": {"198.51.100.30"},  # the others are still done
    }


async def test_spf_tool_nothing_found_or_no_domains(env: GreylistEnv, settings_path: Path) -> None:
    env.insert("spf", account="@.", sender="192.0.2.1", comment="AUTO-UPDATE: ptronly.example")
    env.insert("domains", domain="not a domain")
    async with StubDNS(ZONE) as dns:
        assert await spf_tool(settings_path, dns.port) == (
            0,
            "* No valid domain names. Abort.\n",
            "",
        )
        code, out, _ = await spf_tool(settings_path, dns.port, "--submit", "PTRonly.example")
    assert (code, out) == (0, "* No IP address/network found. Exit.\n")
    # iRedAPD exits before touching the database: old rows and the domain list stay
    assert spf_rows(env) == {"AUTO-UPDATE: ptronly.example": {"192.0.2.1"}}
    assert [r["domain"] for r in env.rows("domains", "domain")] == ["not a domain"]


async def test_spf_tool_submit(env: GreylistEnv, settings_path: Path) -> None:
    env.insert("domains", domain="nospf.example")
    async with StubDNS(ZONE) as dns:
        code, _, err = await spf_tool(
            settings_path, dns.port, "--submit", "--debug", "Other.Example", "nospf.example"
        )
    assert (code, err) == (0, "")
    assert sorted(r["domain"] for r in env.rows("domains", "domain")) == [
        "nospf.example",
        "other.example",
    ]
    assert spf_rows(env)["AUTO-UPDATE: other.example"] == {
        "192.0.2.128/25",
        "100.64.0.0/10",
        "192.0.2.99",
    }
