"""The caches of iredapd.storage.cache: TTLCache, Snapshot and KeyedQuery (on SQLite)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from iredapd.storage.cache import MISSING, KeyedQuery, Snapshot, TTLCache
from tests.support.dnsfixtures import FakeClock as Clock

# -- TTLCache -------------------------------------------------------------------


def test_values_expire_after_the_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(60, 10, clock=clock)
    assert cache.get("a") is MISSING
    cache.put("a", 1)
    clock.now += 59.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is MISSING
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_falsy_values_are_values() -> None:
    cache: TTLCache[str, Any] = TTLCache(60, 10)
    for key, value in (("none", None), ("zero", 0), ("empty", ())):
        cache.put(key, value)
        assert cache.get(key) == value


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: TTLCache[str, int] = TTLCache(60, 2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest use
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, MISSING, 3)


@pytest.mark.parametrize("ttl", [0, -1])
def test_a_ttl_of_zero_keeps_nothing(ttl: float) -> None:
    cache: TTLCache[str, int] = TTLCache(ttl, 10)
    assert not cache.enabled
    cache.put("a", 1)
    assert cache.get("a") is MISSING


def test_discard_and_clear() -> None:
    cache: TTLCache[str, int] = TTLCache(60, 10)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.discard("a")
    cache.discard("nothing")
    assert (cache.get("a"), cache.get("b")) == (MISSING, 2)
    cache.clear()
    assert len(cache) == 0


def test_get_many_fetches_only_the_missing_keys_once() -> None:
    clock = Clock()
    cache: TTLCache[str, str] = TTLCache(60, 10, clock=clock)
    asked: list[list[str]] = []

    async def fetch(keys: list[str]) -> dict[str, str]:
        asked.append(keys)
        return {k: k.upper() for k in keys}

    async def main() -> None:
        assert await cache.get_many(["a", "b", "a"], fetch) == {"a": "A", "b": "B"}
        assert await cache.get_many(["b", "c"], fetch) == {"b": "B", "c": "C"}
        assert await cache.get_many(["a", "c"], fetch) == {"a": "A", "c": "C"}
        clock.now += 60
        assert await cache.get_many(["a"], fetch) == {"a": "A"}

    asyncio.run(main())
    assert asked == [["a", "b"], ["c"], ["a"]]


def test_get_many_keeps_nothing_when_fetch_fails() -> None:
    cache: TTLCache[str, str] = TTLCache(60, 10)

    async def broken(keys: list[str]) -> dict[str, str]:
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        asyncio.run(cache.get_many(["a"], broken))
    assert len(cache) == 0


# -- Snapshot -------------------------------------------------------------------


def test_concurrent_callers_share_one_load_and_the_value_is_kept_for_the_ttl() -> None:
    clock = Clock()
    release = asyncio.Event()
    loaded: list[int] = []

    async def load() -> int:
        loaded.append(1)
        await release.wait()
        return len(loaded)

    async def main() -> None:
        snap = Snapshot(30, load, clock=clock)
        assert snap.current() is MISSING
        waiters = [asyncio.create_task(snap.get()) for _ in range(5)]
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*waiters) == [1] * 5
        assert snap.loads == 1
        assert snap.current() == 1
        clock.now += 29.9
        assert await snap.get() == 1
        clock.now += 0.1
        assert await snap.get() == 2
        snap.clear()
        assert snap.current() is MISSING
        assert await snap.get() == 3

    asyncio.run(main())


def test_a_failed_load_is_not_kept_and_the_next_caller_tries_again() -> None:
    attempts: list[int] = []

    async def load() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("down")
        return "rows"

    async def main() -> None:
        snap = Snapshot(30, load)
        with pytest.raises(ConnectionError):
            await snap.get()
        assert snap.current() is MISSING
        assert await snap.get() == "rows"

    asyncio.run(main())


def test_a_caller_cancelled_by_its_deadline_does_not_cancel_the_load() -> None:
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        return "value"

    async def main() -> None:
        snap = Snapshot(30, load)
        impatient = asyncio.create_task(snap.get())
        patient = asyncio.create_task(snap.get())
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.sleep(0)
        release.set()
        assert await patient == "value"
        assert impatient.cancelled()
        assert snap.loads == 1

    asyncio.run(main())


# -- KeyedQuery -----------------------------------------------------------------

_md = sa.MetaData()
_items = sa.Table(
    "items",
    _md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account", sa.String(255)),
    sa.Column("value", sa.String(255)),
    sa.Column("active", sa.Integer),
)


@pytest.fixture
def conn() -> Any:
    engine = sa.create_engine("sqlite://")
    _md.create_all(engine)
    with engine.begin() as c:
        c.execute(
            sa.insert(_items),
            [
                {"account": "a@x.org", "value": "1", "active": 1},
                {"account": "a@x.org", "value": "2", "active": 1},
                {"account": "a@x.org", "value": "3", "active": 1},
                {"account": "b@x.org", "value": "4", "active": 1},
                {"account": "b@x.org", "value": "5", "active": 0},
                {"account": "x' OR '1'='1", "value": "6", "active": 1},
            ],
        )
    with engine.connect() as c:
        yield c
    engine.dispose()


def test_rows_come_back_per_key_and_every_key_is_present(conn: Any) -> None:
    q = KeyedQuery(
        _items.c.account,
        [_items.c.value],
        where=[_items.c.active == sa.bindparam("active")],
    )
    rows = q.run(conn, ["a@x.org", "b@x.org", "nobody@x.org", "a@x.org"], {"active": 1})
    assert {k: sorted(v) for k, v in rows.items()} == {
        "a@x.org": [("1",), ("2",), ("3",)],
        "b@x.org": [("4",)],
        "nobody@x.org": [],
    }
    assert q.run(conn, [], {"active": 1}) == {}
    # one key: no UNION; the statement per number of keys is built once
    assert q.statement(1) is q.statement(1)
    assert list(q.run(conn, ["b@x.org"], {"active": 0}).values()) == [[("5",)]]


def test_keys_are_bound_not_spliced(conn: Any) -> None:
    q = KeyedQuery(_items.c.account, [_items.c.value])
    assert q.run(conn, ["' OR '1'='1", "x' OR '1'='1"]) == {
        "' OR '1'='1": [],
        "x' OR '1'='1": [("6",)],
    }


def test_a_key_with_more_rows_than_the_limit_is_answered_none(conn: Any) -> None:
    q = KeyedQuery(_items.c.account, [_items.c.value], limit=2)
    rows = q.run_bounded(conn, ["a@x.org", "b@x.org", "c@x.org"])
    assert rows["a@x.org"] is None  # three rows, limit two
    assert sorted(rows["b@x.org"] or []) == [("4",), ("5",)]
    assert rows["c@x.org"] == []
    single = q.run_bounded(conn, ["a@x.org"])
    assert single == {"a@x.org": None}
