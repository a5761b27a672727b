"""One contract for every account backend: fake, SQLite, MariaDB, PostgreSQL, slapd.

The same FakeAccounts data is loaded into each backend (tests/support/accounts.py)
and every AccountBackend method must give the same answers: present, absent,
and BackendUnavailable when the server does not answer.  Hostile values
(quotes, backslashes, LDAP filter syntax, LIKE wildcards, odd UTF-8, NUL, very
long local parts) must match nothing and leave the backend working.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from iredapd.backends.base import AccountBackend, BackendUnavailable, LoginMatch
from iredapd.backends.fake import EPOCH, FakeAccounts, FakeList
from iredapd.backends.sql import SQLAccounts
from iredapd.storage.db import Database
from tests.support.accounts import kind_params, populated, require_kind
from tests.support.databases import temporary_database
from tests.support.services import free_port, scaled

pytest_plugins = ["tests.support.accounts"]  # fixtures: populate, account_backend_kind

UTC = dt.UTC
CHANGED = dt.datetime(2024, 1, 15, tzinfo=UTC)


def contract_data() -> FakeAccounts:
    """The data every backend is loaded with (lower-case, as iRedMail stores it)."""
    f = FakeAccounts()
    f.add_domain("example.com")
    f.add_domain("backup.example.net", backupmx=True)
    f.add_domain("disabled.example.org", active=False)
    f.add_alias_domain("alias.example.com", "example.com")
    f.add_alias_domain("alias2.example.com", "example.com")
    f.add_alias_domain("mirror.example.net", "backup.example.net")
    f.add_alias_domain("alias-of-disabled.example", "disabled.example.org")
    f.add_user("user@example.com", changed=CHANGED)
    f.add_user("never@example.com")
    f.add_user("axb@example.com", changed=CHANGED)
    f.add_user("member@example.com", changed=CHANGED)
    f.add_user_alias("user-alias@example.com", "user@example.com")
    f.add_user_alias("tagged@example.com", "axb+tag@example.com")
    f.aliases["all@example.com"] = FakeList(
        "all@example.com",
        policy="membersonly",
        members=["member@example.com", "ext@external.test"],
        moderators=["mod@example.com", "*@example.net"],
    )
    f.aliases["old@example.com"] = FakeList(
        "old@example.com", policy="Domain", active=False, members=["member@example.com"]
    )
    f.aliases["public@example.com"] = FakeList("public@example.com")
    f.maillists["list@example.com"] = FakeList(
        "list@example.com",
        policy="moderatorsonly",
        moderators=["mod@example.com"],
        owners=["owner@example.com"],
    )
    f.maillists["dead@example.com"] = FakeList("dead@example.com", active=False)
    return f


# ---------------------------------------------------------------------------
# present / absent
# ---------------------------------------------------------------------------


async def test_is_local_domain(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert await b.is_local_domain("example.com")
        assert await b.is_local_domain("alias.example.com")
        assert not await b.is_local_domain("alias.example.com", include_alias=False)
        assert await b.is_local_domain("backup.example.net")
        assert not await b.is_local_domain("backup.example.net", include_backupmx=False)
        # an alias of a backup-MX domain is a backup-MX name too
        assert await b.is_local_domain("mirror.example.net")
        assert not await b.is_local_domain("mirror.example.net", include_backupmx=False)
        assert await b.is_local_domain("example.com", include_alias=False, include_backupmx=False)
        assert not await b.is_local_domain("disabled.example.org")
        assert not await b.is_local_domain("alias-of-disabled.example")
        for absent in ("unknown.example", "sub.example.com", "com", "example", "", "not a domain"):
            assert not await b.is_local_domain(absent), absent


async def test_alias_target_domain(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert await b.alias_target_domain("alias.example.com") == "example.com"
        assert await b.alias_target_domain("mirror.example.net") == "backup.example.net"
        assert await b.alias_target_domain("alias-of-disabled.example") is None
        for absent in ("example.com", "unknown.example", "", "alias"):
            assert await b.alias_target_domain(absent) is None, absent


async def test_is_alias_domain_of(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert await b.is_alias_domain_of("alias.example.com", "example.com")
        assert await b.is_alias_domain_of("alias-of-disabled.example", "disabled.example.org")
        assert not await b.is_alias_domain_of("alias.example.com", "backup.example.net")
        assert not await b.is_alias_domain_of("example.com", "example.com")
        assert not await b.is_alias_domain_of("example.com", "alias.example.com")
        assert not await b.is_alias_domain_of("", "")


async def test_domain_names(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        names = ["example.com", "alias.example.com", "alias2.example.com"]
        assert await b.domain_names("example.com") == names
        assert await b.domain_names("alias2.example.com") == names
        assert await b.domain_names("disabled.example.org") == [
            "disabled.example.org",
            "alias-of-disabled.example",
        ]
        assert await b.domain_names("backup.example.net") == [
            "backup.example.net",
            "mirror.example.net",
        ]
        for absent in ("unknown.example", "", "example"):
            assert await b.domain_names(absent) == [], absent


LOGIN_CASES = [
    # sasl, sender, strictly, list_member, allowed, mlmmj_list
    ("user@example.com", "user-alias@example.com", True, False, True, ""),
    ("user@example.com", "user@alias.example.com", True, False, True, ""),
    # the per-user alias at the alias domain (iRedAPD forgot to look: §15 item 8)
    ("user@example.com", "user-alias@alias.example.com", True, False, True, ""),
    ("user@example.com", "user-alias@example.com", False, False, False, ""),
    ("user@example.com", "user@alias.example.com", False, False, False, ""),
    ("axb@example.com", "tagged@example.com", True, False, True, ""),  # alias -> axb+tag
    ("a_b@example.com", "tagged@example.com", True, False, False, ""),  # '_' is no wildcard
    ("a%@example.com", "tagged@example.com", True, False, False, ""),
    ("member@example.com", "all@example.com", False, True, True, ""),
    ("member@example.com", "all@example.com", True, False, False, ""),
    ("member@example.com", "all@alias.example.com", True, True, True, ""),
    ("stranger@example.com", "all@example.com", True, True, False, ""),
    ("user@example.com", "list@example.com", False, True, False, "list@example.com"),
    ("user@example.com", "list@example.com", True, False, False, ""),
    ("user@example.com", "list@alias.example.com", True, True, False, "list@example.com"),
    ("user@example.com", "dead@example.com", False, True, False, ""),  # inactive list
    ("user@example.com", "stranger@example.com", True, True, False, ""),
    ("user@example.com", "user-alias@example.com", True, True, True, ""),
    ("user@example.com", "other@external.test", True, True, False, ""),
]


async def test_login_match(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        for sasl, sender, strictly, member, allowed, mlmmj in LOGIN_CASES:
            got = await b.login_match(sasl, sender, strictly=strictly, list_member=member)
            assert isinstance(got, LoginMatch)
            assert (got.allowed, got.mlmmj_list) == (allowed, mlmmj), (sasl, sender, strictly)


async def test_login_match_inactive_alias(account_backend_kind: str, populate: Any) -> None:
    """SQL (and the fake) need an active membership row; LDAP, like iRedAPD's LDAP
    backend, does not look at the alias's status (access-policies.md §4.5.2)."""
    async with populate(contract_data()) as b:
        got = await b.login_match(
            "member@example.com", "old@example.com", strictly=False, list_member=True
        )
        assert got.allowed is (account_backend_kind == "ldap")


async def test_access_policy(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert await b.access_policy("all@example.com", "alias") == "membersonly"
        assert await b.access_policy("old@example.com", "alias") == "domain"  # lower-cased
        assert await b.access_policy("public@example.com", "alias") == "public"  # '' = public
        assert await b.access_policy("list@example.com", "maillist") == "moderatorsonly"
        assert await b.access_policy("dead@example.com", "maillist") == "public"
        assert await b.access_policy("list@example.com", "alias") is None
        assert await b.access_policy("all@example.com", "maillist") is None
        assert await b.access_policy("nobody@example.com", "alias") is None
        assert await b.access_policy("user@example.com", "alias") is None
        assert await b.access_policy("", "alias") is None


async def test_members_and_moderators(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert sorted(await b.alias_members("all@example.com")) == [
            "ext@external.test",
            "member@example.com",
        ]
        assert await b.alias_members("old@example.com") == ["member@example.com"]
        assert await b.alias_members("list@example.com") == []
        assert await b.alias_members("nobody@example.com") == []
        assert sorted(await b.moderators("all@example.com")) == ["*@example.net", "mod@example.com"]
        assert await b.moderators("list@example.com") == ["mod@example.com"]
        assert await b.moderators("public@example.com") == []
        assert await b.moderators("nobody@example.com") == []


async def test_has_moderator_and_owner(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        assert await b.has_moderator(["all@example.com"], "mod@example.com")
        assert await b.has_moderator(["nobody@example.com", "list@example.com"], "mod@example.com")
        assert await b.has_moderator(["all@example.com"], "*@example.net")  # a literal row
        assert not await b.has_moderator(["all@example.com"], "member@example.com")
        assert not await b.has_moderator(["public@example.com"], "mod@example.com")
        assert not await b.has_moderator([], "mod@example.com")
        assert await b.has_owner(["list@example.com"], "owner@example.com")
        assert await b.has_owner(["x@example.com", "list@example.com"], "owner@example.com")
        assert not await b.has_owner(["all@example.com"], "owner@example.com")
        assert not await b.has_owner(["list@example.com"], "mod@example.com")
        assert not await b.has_owner([], "owner@example.com")


async def test_password_last_change(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        when = await b.password_last_change("user@example.com")
        assert when == CHANGED
        assert when is not None and when.tzinfo is not None
        assert await b.password_last_change("never@example.com") == EPOCH
        assert await b.password_last_change("nobody@example.com") is None
        assert await b.password_last_change("all@external.test") is None
        assert await b.password_last_change("all@example.com") is None  # an alias
        assert await b.password_last_change("list@example.com") is None  # a list
        assert await b.password_last_change("") is None


async def test_password_last_change_of_an_alias_address(
    account_backend_kind: str, populate: Any
) -> None:
    """LDAP finds the user by an alias address too (iRedMail users may log in with
    one); SQL reads ``mailbox.username`` only (access-policies.md §10)."""
    async with populate(contract_data()) as b:
        when = await b.password_last_change("user-alias@example.com")
        assert when == (CHANGED if account_backend_kind == "ldap" else None)


# ---------------------------------------------------------------------------
# hostile values
# ---------------------------------------------------------------------------

HOSTILE = [
    "x' OR '1'='1@example.com",
    "x' OR '1'='1",
    "'; DROP TABLE domain; --@example.com",
    'a"b@example.com',
    "a\\b@example.com",
    "\\",
    "*",
    "*@example.com",
    "*)(mail=*",
    "*)(|(mail=*)",
    "user@example.com)(mail=*",
    "(objectClass=*)",
    "%",
    "%@example.com",
    "_ser@example.com",
    "us%@example.com",
    "%.com",
    "ex_mple.com",
    "exampl%",
    "üñíçødé@exämple.com",
    "😀@example.com",
    "example.com\u200b",
    "user@example.com\x00",
    "\x00",
    "\ud800@example.com",  # a lone surrogate (not encodable)
    "a" * 5000 + "@example.com",
    "user@" + "b" * 300 + ".com",
    " user@example.com",
    "user@example.com ",
    "",
]


async def _assert_all_absent(b: AccountBackend, h: str) -> None:
    assert not await b.is_local_domain(h), h
    assert await b.alias_target_domain(h) is None, h
    assert not await b.is_alias_domain_of(h, "example.com"), h
    assert not await b.is_alias_domain_of("alias.example.com", h), h
    assert await b.domain_names(h) == [], h
    for strictly, member in ((True, True), (True, False), (False, True)):
        got = await b.login_match(
            h, "user-alias@example.com", strictly=strictly, list_member=member
        )
        assert got == LoginMatch(False, reason=got.reason) and not got.allowed, h
        got = await b.login_match("user@example.com", h, strictly=strictly, list_member=member)
        assert not got.allowed and not got.mlmmj_list, h
        got = await b.login_match("member@example.com", h, strictly=strictly, list_member=member)
        assert not got.allowed and not got.mlmmj_list, h
    assert await b.access_policy(h, "alias") is None, h
    assert await b.access_policy(h, "maillist") is None, h
    assert await b.alias_members(h) == [], h
    assert await b.moderators(h) == [], h
    assert not await b.has_moderator([h], "mod@example.com"), h
    assert not await b.has_moderator(["all@example.com", "list@example.com"], h), h
    assert not await b.has_owner([h], "owner@example.com"), h
    assert not await b.has_owner(["list@example.com"], h), h
    assert await b.password_last_change(h) is None, h


async def test_hostile_values_match_nothing(populate: Callable[..., Any]) -> None:
    async with populate(contract_data()) as b:
        for h in HOSTILE:
            await _assert_all_absent(b, h)
        # the backend still answers normally afterwards
        assert await b.is_local_domain("example.com")
        assert await b.access_policy("all@example.com", "alias") == "membersonly"
        assert await b.password_last_change("user@example.com") == CHANGED


def hostile_data() -> FakeAccounts:
    """Stored values with quotes, backslashes and wildcards: found exactly, only by themselves."""
    f = contract_data()
    for user in ("o'brien@example.com", "a_b@example.com", "pc%t@example.com", "b\\s@example.com"):
        f.add_user(user, changed=CHANGED)
    f.add_user_alias("quote-alias@example.com", "o'brien@example.com")
    f.add_user_alias("under-alias@example.com", "a_b+x@example.com")
    f.aliases["q'list@example.com"] = FakeList(
        "q'list@example.com", policy="domain", members=["o'brien@example.com"]
    )
    f.maillists["st*r@example.com"] = FakeList(
        "st*r@example.com", moderators=["(mod)@example.com"], owners=["b\\s@example.com"]
    )
    return f


async def test_stored_special_characters_are_literal(populate: Callable[..., Any]) -> None:
    async with populate(hostile_data()) as b:
        assert await b.password_last_change("o'brien@example.com") == CHANGED
        assert await b.password_last_change("b\\s@example.com") == CHANGED
        assert await b.password_last_change("pc%t@example.com") == CHANGED
        assert await b.password_last_change("pcxt@example.com") is None
        assert await b.password_last_change("a_b@example.com") == CHANGED
        assert await b.password_last_change("axb@example.com") == CHANGED  # its own row
        ok = await b.login_match(
            "o'brien@example.com", "quote-alias@example.com", strictly=True, list_member=False
        )
        assert ok.allowed
        ok = await b.login_match(
            "a_b@example.com", "under-alias@example.com", strictly=True, list_member=False
        )
        assert ok.allowed
        # 'axb' must not match the pattern built from 'a_b' nor the other way round
        no = await b.login_match(
            "axb@example.com", "under-alias@example.com", strictly=True, list_member=False
        )
        assert not no.allowed
        assert await b.access_policy("q'list@example.com", "alias") == "domain"
        assert await b.alias_members("q'list@example.com") == ["o'brien@example.com"]
        member = await b.login_match(
            "o'brien@example.com", "q'list@example.com", strictly=False, list_member=True
        )
        assert member.allowed
        assert await b.access_policy("st*r@example.com", "maillist") == "public"
        assert await b.access_policy("stxr@example.com", "maillist") is None
        assert await b.has_moderator(["st*r@example.com"], "(mod)@example.com")
        assert not await b.has_moderator(["st*r@example.com"], "*")
        assert await b.has_owner(["st*r@example.com"], "b\\s@example.com")
        assert not await b.has_owner(["st*r@example.com"], "b\\\\s@example.com")


# ---------------------------------------------------------------------------
# unavailable
# ---------------------------------------------------------------------------


async def _run_blocking(func: Callable[..., Any], *args: Any) -> Any:
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _dead_backend(kind: str, tmp_path: Path) -> AccountBackend:
    """A backend of ``kind`` whose server does not answer."""
    if kind == "fake":
        fake = contract_data()
        fake.down = True
        return fake
    if kind == "ldap":
        from iredapd.backends.ldap import LDAPAccounts, LDAPConfig

        config = LDAPConfig(
            uri=f"ldap://127.0.0.1:{free_port()}",
            basedn="o=domains,dc=iredmail,dc=org",
            binddn="cn=vmail,dc=iredmail,dc=org",
            bindpw="x",
            timeout=2.0,
        )
        return LDAPAccounts(config, _run_blocking)
    if kind == "sqlite":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        url = URL.create("sqlite", database=str(blocker / "vmail.db"))
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    else:
        drivers = {
            "mariadb": ("mysql+pymysql", "root"),
            "pgsql": ("postgresql+psycopg2", "postgres"),
        }
        driver, user = drivers[kind]
        url = URL.create(driver, username=user, host="127.0.0.1", port=free_port(), database="x")
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    return SQLAccounts(Database("vmail", engine, _run_blocking))


CALLS: list[tuple[str, Callable[[AccountBackend], Any]]] = [
    ("is_local_domain", lambda b: b.is_local_domain("example.com")),
    ("alias_target_domain", lambda b: b.alias_target_domain("alias.example.com")),
    ("is_alias_domain_of", lambda b: b.is_alias_domain_of("alias.example.com", "example.com")),
    ("domain_names", lambda b: b.domain_names("example.com")),
    (
        "login_match",
        lambda b: b.login_match(
            "user@example.com", "user-alias@example.com", strictly=True, list_member=True
        ),
    ),
    ("access_policy", lambda b: b.access_policy("all@example.com", "alias")),
    ("alias_members", lambda b: b.alias_members("all@example.com")),
    ("moderators", lambda b: b.moderators("all@example.com")),
    ("has_moderator", lambda b: b.has_moderator(["all@example.com"], "mod@example.com")),
    ("has_owner", lambda b: b.has_owner(["list@example.com"], "owner@example.com")),
    ("password_last_change", lambda b: b.password_last_change("user@example.com")),
]


@pytest.mark.parametrize("kind", kind_params())
async def test_unavailable_raises_and_never_reads_as_absent(kind: str, tmp_path: Path) -> None:
    require_kind(kind)
    backend = _dead_backend(kind, tmp_path)
    try:
        for name, call in CALLS:
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await call(backend)
            assert time.monotonic() - started < scaled(5.0), name
    finally:
        await backend.close()


# ---------------------------------------------------------------------------
# MySQL: iRedMail's vmail tables are utf8 (3-byte); a 4-byte character in a
# value must read as "no match", not as a database outage
# ---------------------------------------------------------------------------


@pytest.mark.mariadb
@pytest.mark.integration
async def test_mysql_utf8mb3_columns_and_four_byte_characters() -> None:
    from iredapd.storage.migrate import upgrade
    from tests.support.accounts import sql_rows

    require_kind("mariadb")
    with temporary_database("mariadb") as url:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:  # iRedMail: CREATE DATABASE vmail ... utf8
                conn.exec_driver_sql(
                    f"ALTER DATABASE `{url.database}` CHARACTER SET utf8 COLLATE utf8_general_ci"
                )
            upgrade(engine, "vmail", create_foreign=True)
            with engine.begin() as conn:
                charset = conn.exec_driver_sql(
                    "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'alias' "
                    "AND COLUMN_NAME = 'address'"
                ).scalar()
                assert charset in ("utf8", "utf8mb3")
                for table, rows in sql_rows(contract_data()).items():
                    if rows:
                        conn.execute(table.insert(), rows)
        finally:
            engine.dispose()
        db = Database("vmail", sa.create_engine(url, isolation_level="AUTOCOMMIT"), _run_blocking)
        backend = SQLAccounts(db)
        try:
            for h in ("😀@example.com", "user@😀.com", "😀"):
                await _assert_all_absent(backend, h)
            assert await backend.is_local_domain("example.com")
            # MySQL's vmail collation is case-insensitive (a fact of the column)
            assert await backend.access_policy("ALL@example.com", "alias") == "membersonly"
        finally:
            await backend.close()


async def test_populated_fake_is_the_data_itself() -> None:
    fake = contract_data()
    async with populated("fake", fake) as b:
        assert b is fake


def test_contract_covers_every_protocol_method() -> None:
    from iredapd.backends.base import AccountBackend as Proto

    methods = {
        name
        for name, value in vars(Proto).items()
        if callable(value) and not name.startswith("_") and name != "close"
    }
    assert methods == {name for name, _ in CALLS}
