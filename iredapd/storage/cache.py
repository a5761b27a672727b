"""Caches for what rarely changes: settings and list entries, for CACHE_TTL seconds.

DESIGN §4: cache what rarely changes (list policies, throttle and greylisting
settings, white/blacklists), never counters.  Plugins keep these on their
instance, so a reload (a new chain) starts empty.  Invalidation is by age
only: a change an admin makes is seen within CACHE_TTL seconds; ``CACHE_TTL =
0`` turns every cache off (each request asks the database, as iRedAPD does).

* :class:`TTLCache`: answers per key, bounded (least recently used go first).
* :class:`Snapshot`: one value for the whole table (a small table read in one
  query), loaded by one request while the others wait for the same load.
* :class:`KeyedQuery`: one SELECT for several keys whose rows say which key
  they matched, compared by the database itself (MySQL's collations included),
  so that answers can be cached per key without guessing how the database
  compares.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["MISSING", "KeyedQuery", "Snapshot", "TTLCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: what :meth:`TTLCache.get` returns for a key it does not hold
MISSING: Final[Any] = object()


class TTLCache(Generic[K, V]):
    """Values per key for ``ttl`` seconds; at most ``max_entries`` (LRU).

    A ``ttl`` of 0 or less keeps nothing.  Not thread-safe: the event loop's
    thread only.
    """

    __slots__ = ("_data", "clock", "max_entries", "ttl")

    def __init__(
        self, ttl: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self.clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False with CACHE_TTL = 0."""
        return self.ttl > 0

    def get(self, key: K) -> Any:
        """The value of ``key``, or :data:`MISSING` (never stored, or expired)."""
        entry = self._data.get(key)
        if entry is None:
            return MISSING
        if entry[0] <= self.clock():
            del self._data[key]
            return MISSING
        self._data.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` for ``key`` (nothing when the cache is off)."""
        if self.ttl <= 0:
            return
        data = self._data
        data[key] = (self.clock() + self.ttl, value)
        data.move_to_end(key)
        while len(data) > self.max_entries:
            data.popitem(last=False)

    async def get_many(
        self, keys: Iterable[K], fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]]
    ) -> dict[K, V]:
        """The values of ``keys``: the cached ones, the others from one ``fetch``.

        ``fetch(missing)`` answers every key it is given (it is called only
        when some are missing); its answers are kept.
        """
        out: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            value = self.get(key)
            if value is MISSING:
                missing.append(key)
            else:
                out[key] = value
        if missing:
            fresh = await fetch(list(dict.fromkeys(missing)))
            for key, value in fresh.items():
                self.put(key, value)
            out.update(fresh)
        return out

    def discard(self, key: K) -> None:
        """Forget ``key`` (this process changed what it stands for)."""
        self._data.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Snapshot(Generic[V]):
    """A value loaded at most every ``ttl`` seconds, shared by concurrent callers.

    When the value is missing or old, the first caller starts ``load()`` and
    every caller meanwhile awaits that same load (a task of its own: a
    caller cancelled by its deadline does not cancel it for the others).  A
    load that fails is not kept: each waiting caller gets the error, the next
    one tries again.
    """

    def __init__(
        self,
        ttl: float,
        load: Callable[[], Awaitable[V]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self._load = load
        self._value: Any = MISSING
        self._expires = 0.0
        self._pending: asyncio.Future[V] | None = None
        #: loads started (tests, stats)
        self.loads = 0

    def current(self) -> Any:
        """The value if it is fresh, else :data:`MISSING` (no waiting)."""
        if self._value is not MISSING and self.clock() < self._expires:
            return self._value
        return MISSING

    async def get(self) -> V:
        """The fresh value, loading it first if needed."""
        value = self.current()
        if value is not MISSING:
            result: V = value
            return result
        pending = self._pending
        if pending is None:
            self.loads += 1
            pending = asyncio.ensure_future(self._load())
            self._pending = pending
            pending.add_done_callback(self._settle)
        return await asyncio.shield(pending)

    def _settle(self, task: asyncio.Future[V]) -> None:
        if self._pending is task:
            self._pending = None
        if task.cancelled() or task.exception() is not None:  # also marks it retrieved
            return
        self._value = task.result()
        self._expires = self.clock() + self.ttl

    def clear(self) -> None:
        """Forget the value (the next caller loads it again)."""
        self._value = MISSING


class KeyedQuery:
    """``SELECT <key>, columns FROM … WHERE key_column = <key> AND …`` for several keys.

    One statement (a ``UNION ALL`` of one branch per key, built once per
    number of keys) whose first column is the key a row matched.  The
    database compares, so a row is attributed to a key exactly as a plain
    ``key_column IN (...)`` would have found it: on MySQL ``@Example.com``
    is found for the key ``@example.com``, on PostgreSQL it is not.

    Args:
        key_column: the column the keys are compared with (its type binds them).
        columns: what each row returns after the key.
        where: further conditions, the same in every branch (bound values
            must be named bind parameters given to :meth:`run`).
        select_from: the FROM clause when it is not the columns' table (a join).
        limit: at most this many rows per key are wanted; :meth:`run` then
            reads one more to tell "more than ``limit``" (answered as None).
    """

    def __init__(
        self,
        key_column: sa.ColumnElement[Any],
        columns: Sequence[sa.ColumnElement[Any]],
        *,
        where: Sequence[sa.ColumnElement[bool]] = (),
        select_from: sa.FromClause | None = None,
        limit: int | None = None,
    ) -> None:
        self.key_column = key_column
        self.columns = tuple(columns)
        self.where = tuple(where)
        self.select_from = select_from
        self.limit = limit

    @functools.lru_cache(maxsize=64)  # noqa: B019 - a few instances, alive for the process
    def statement(self, n: int) -> sa.Executable:
        """The statement for ``n`` keys (parameters ``k0`` … ``k<n-1>``)."""
        branches: list[sa.Select[Any]] = []
        for i in range(n):
            key = sa.bindparam(f"k{i}", type_=self.key_column.type)
            branch = sa.select(key.label("matched_key"), *self.columns)
            if self.select_from is not None:
                branch = branch.select_from(self.select_from)
            branch = branch.where(self.key_column == key, *self.where)
            if self.limit is not None:
                # a LIMIT per branch needs a subquery in a UNION (SQLite)
                branch = branch.limit(self.limit + 1)
                if n > 1:
                    branch = sa.select(*branch.subquery(f"k{i}").c)
            branches.append(branch)
        if n == 1:
            return branches[0]
        return sa.union_all(*branches)

    def run(
        self, conn: Connection, keys: Iterable[Any], params: dict[str, Any] | None = None
    ) -> dict[Any, list[tuple[Any, ...]]]:
        """Rows (without the key column) per key; every key asked for is present."""
        wanted = list(dict.fromkeys(keys))
        out: dict[Any, list[tuple[Any, ...]]] = {k: [] for k in wanted}
        if not wanted:
            return out
        bound = {f"k{i}": k for i, k in enumerate(wanted)}
        if params:
            bound.update(params)
        for row in conn.execute(self.statement(len(wanted)), bound):
            bucket = out.get(row[0])
            if bucket is not None:
                bucket.append(tuple(row[1:]))
        return out

    def run_bounded(
        self, conn: Connection, keys: Iterable[Any], params: dict[str, Any] | None = None
    ) -> dict[Any, list[tuple[Any, ...]] | None]:
        """:meth:`run`, but a key with more rows than ``limit`` gets None."""
        limit = self.limit
        rows = self.run(conn, keys, params)
        return {k: (None if limit is not None and len(v) > limit else v) for k, v in rows.items()}
