"""The account cache (iredapd.accounts.CachedAccounts) with an injected clock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from iredapd.accounts import CachedAccounts, create_account_backend, unwrap
from iredapd.backends.base import AccountBackend, BackendUnavailable
from iredapd.backends.fake import FakeAccounts, FakeList
from iredapd.backends.sql import SQLAccounts
from iredapd.config import build_settings
from iredapd.services import Services


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake() -> FakeAccounts:
    f = FakeAccounts()
    f.add_domain("example.com")
    f.add_alias_domain("alias.example.com", "example.com")
    f.aliases["all@example.com"] = FakeList("all@example.com", "membersonly", members=["a@x.org"])
    return f


def _cached(fake: AccountBackend, clock: Clock, **kw: object) -> CachedAccounts:
    options: dict[str, object] = {"ttl": 60.0, "clock": clock}
    options.update(kw)
    return CachedAccounts(fake, **options)  # type: ignore[arg-type]


async def test_answers_are_cached_until_the_ttl_passes() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    assert await cache.is_local_domain("example.com")
    assert await cache.is_local_domain("example.com")
    assert fake.calls["is_local_domain"] == 1
    clock.now += 59.9
    assert await cache.is_local_domain("example.com")
    assert fake.calls["is_local_domain"] == 1
    fake.domains.clear()
    clock.now += 0.2  # past the TTL: the change is seen
    assert not await cache.is_local_domain("example.com")
    assert fake.calls["is_local_domain"] == 2


async def test_negative_answers_are_cached_too() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    for _ in range(3):
        assert not await cache.is_local_domain("nope.example")
        assert await cache.access_policy("nobody@example.com", "alias") is None
        assert await cache.alias_target_domain("example.com") is None
        assert await cache.password_last_change("nobody@example.com") is None
    assert fake.calls["is_local_domain"] == 1
    assert fake.calls["access_policy"] == 1
    assert fake.calls["alias_target_domain"] == 1
    assert fake.calls["password_last_change"] == 1


async def test_backend_unavailable_is_never_cached() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await cache.is_local_domain("example.com")
    fake.down = False
    assert await cache.is_local_domain("example.com")
    assert fake.calls["is_local_domain"] == 2
    assert len(cache) == 1


async def test_ttl_zero_turns_the_cache_off() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock, ttl=0.0)
    for _ in range(3):
        assert await cache.access_policy("all@example.com", "alias") == "membersonly"
    assert fake.calls["access_policy"] == 3
    assert len(cache) == 0


async def test_every_argument_is_part_of_the_key() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    assert await cache.is_local_domain("alias.example.com")
    assert not await cache.is_local_domain("alias.example.com", include_alias=False)
    assert await cache.access_policy("all@example.com", "alias") == "membersonly"
    assert await cache.access_policy("all@example.com", "maillist") is None
    one = await cache.login_match("a@x.org", "all@example.com", strictly=False, list_member=True)
    two = await cache.login_match("a@x.org", "all@example.com", strictly=True, list_member=False)
    assert one.allowed and not two.allowed
    assert await cache.has_moderator(["a@example.com"], "m@x.org") is False
    assert await cache.has_moderator(["b@example.com"], "m@x.org") is False
    assert fake.calls["has_moderator"] == 2


async def test_the_server_hostname_is_always_local() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock, hostname="MX.Example.NET")
    fake.down = True  # not even asked
    assert await cache.is_local_domain("mx.example.net")
    assert await cache.is_local_domain("mx.example.net", include_alias=False)
    assert fake.calls["is_local_domain"] == 0
    with pytest.raises(BackendUnavailable):
        await cache.is_local_domain("example.net")


async def test_size_is_bounded_oldest_first() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock, max_entries=3)
    for i in range(5):
        await cache.is_local_domain(f"d{i}.example")
    assert len(cache) == 3
    await cache.is_local_domain("d4.example")  # recent: still cached
    assert fake.calls["is_local_domain"] == 5
    await cache.is_local_domain("d0.example")  # evicted: asked again
    assert fake.calls["is_local_domain"] == 6


async def test_returned_lists_are_copies() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    members = await cache.alias_members("all@example.com")
    members.append("intruder@x.org")
    names = await cache.domain_names("example.com")
    names.clear()
    assert await cache.alias_members("all@example.com") == ["a@x.org"]
    assert await cache.domain_names("example.com") == ["example.com", "alias.example.com"]


class SlowBackend(FakeAccounts):
    """A fake whose is_local_domain waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def is_local_domain(
        self, domain: str, *, include_alias: bool = True, include_backupmx: bool = True
    ) -> bool:
        self.calls["is_local_domain"] += 1
        await self.release.wait()
        if self.down:
            raise BackendUnavailable("down")
        return domain == "example.com"


async def test_concurrent_identical_questions_share_one_lookup() -> None:
    slow, clock = SlowBackend(), Clock()
    cache = _cached(slow, clock)
    tasks = [asyncio.create_task(cache.is_local_domain("example.com")) for _ in range(5)]
    await asyncio.sleep(0)
    slow.release.set()
    assert await asyncio.gather(*tasks) == [True] * 5
    assert slow.calls["is_local_domain"] == 1
    assert cache.misses == 1 and cache.hits == 4


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup() -> None:
    slow, clock = SlowBackend(), Clock()
    cache = _cached(slow, clock)
    first = asyncio.create_task(cache.is_local_domain("example.com"))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.is_local_domain("example.com"))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    slow.release.set()
    assert await second is True
    assert await cache.is_local_domain("example.com") is True  # and it was cached
    assert slow.calls["is_local_domain"] == 1


async def test_a_shared_failure_reaches_every_caller_and_is_not_cached() -> None:
    slow, clock = SlowBackend(), Clock()
    slow.down = True
    cache = _cached(slow, clock)
    tasks = [asyncio.create_task(cache.is_local_domain("example.com")) for _ in range(3)]
    await asyncio.sleep(0)
    slow.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results)
    slow.down = False
    assert await cache.is_local_domain("example.com") is True
    assert slow.calls["is_local_domain"] == 2


async def test_outage_is_logged_once_per_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock, name="vmail database")
    caplog.set_level(logging.INFO, logger="iredapd.accounts")

    def lines(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    fake.down = True
    for i in range(100):
        with pytest.raises(BackendUnavailable):
            await cache.is_local_domain(f"d{i}.example")
        clock.now += 0.5  # 50 s in all
    assert len(lines(logging.ERROR)) == 1
    assert lines(logging.ERROR)[0].startswith("vmail database unavailable: fake backend is down")
    clock.now += 11  # past one minute since the first line
    with pytest.raises(BackendUnavailable):
        await cache.access_policy("all@example.com", "alias")
    errors = lines(logging.ERROR)
    assert len(errors) == 2
    assert "(99 more like this in the last 61s)" in errors[1]
    fake.down = False
    assert await cache.is_local_domain("example.com")
    assert await cache.is_local_domain("alias.example.com")
    assert lines(logging.WARNING) == ["vmail database is back"]
    # a later outage is reported at once
    clock.now += 60
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await cache.is_local_domain("d1000.example")
    assert len(lines(logging.ERROR)) == 3


async def test_a_flapping_backend_logs_at_most_one_line_of_each_kind_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock, name="LDAP server")
    caplog.set_level(logging.INFO, logger="iredapd.accounts")
    for i in range(20):
        fake.down = i % 2 == 0
        if fake.down:
            with pytest.raises(BackendUnavailable):
                await cache.is_local_domain(f"d{i}.example")
        else:
            await cache.is_local_domain(f"d{i}.example")
        clock.now += 1
    levels = [r.levelno for r in caplog.records if r.name == "iredapd.accounts"]
    assert levels == [logging.ERROR, logging.WARNING]
    clock.now += 60
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await cache.is_local_domain("late.example")
    last = caplog.records[-1]
    assert last.levelno == logging.ERROR
    assert "(9 more like this" in last.getMessage()


async def test_cached_serves_backend_specific_questions() -> None:
    fake, clock = _fake(), Clock()
    cache = _cached(fake, clock)
    asked = 0

    async def compute() -> tuple[str, ...]:
        nonlocal asked
        asked += 1
        return ("x",)

    assert await cache.cached(("custom", 1), compute) == ("x",)
    assert await cache.cached(("custom", 1), compute) == ("x",)
    assert await cache.cached(("custom", 2), compute) == ("x",)
    assert asked == 2


def test_unwrap() -> None:
    fake = _fake()
    assert unwrap(CachedAccounts(CachedAccounts(fake, ttl=1), ttl=1)) is fake
    assert unwrap(fake) is fake


async def test_create_account_backend_on_the_embedded_default(tmp_path: Path) -> None:
    settings = build_settings(
        {},
        overrides={"DATA_DIR": str(tmp_path), "CACHE_TTL": 7.5, "SERVER_HOSTNAME": "MX.Test.ORG"},
    )
    services = Services(settings)
    try:
        await asyncio.get_running_loop().run_in_executor(None, services.open_databases)
        vmail = services.vmail
        assert isinstance(vmail, CachedAccounts)
        assert isinstance(unwrap(vmail), SQLAccounts)
        assert vmail.ttl == 7.5
        assert vmail.kind == "sql"
        assert await vmail.is_local_domain("mx.test.org")  # the hostname
        assert not await vmail.is_local_domain("example.com")  # empty vmail database
    finally:
        await services.close()


async def test_create_account_backend_cache_off(tmp_path: Path) -> None:
    settings = build_settings({}, overrides={"DATA_DIR": str(tmp_path), "CACHE_TTL": 0})
    services = Services(settings)
    try:
        await asyncio.get_running_loop().run_in_executor(None, services.open_databases)
        assert create_account_backend(services) is not None
        vmail = services.vmail
        assert isinstance(vmail, CachedAccounts) and vmail.ttl == 0
    finally:
        await services.close()
