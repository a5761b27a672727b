"""DNS test helpers: an in-memory DNSSource, and the stub server with a Resolver.

* :class:`ZoneSource` answers :meth:`query` from a :class:`~tests.support.stubdns.Zone`
  (the SPF test-suite zone format) without sockets, and counts queries.
* :func:`stub_resolver` starts :class:`~tests.support.stubdns.StubDNS` in the
  running loop and yields a :class:`~iredapd.resolver.Resolver` aimed at it.
* :func:`run` runs a coroutine to completion (the project has no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from iredapd.resolver import MX, DNSAnswer, DNSStatus, Record, Resolver
from tests.conftest import TIMEOUT_SCALE
from tests.support.stubdns import StubDNS, Zone

__all__ = ["TIME_SCALE", "FakeClock", "ZoneSource", "run", "stub_resolver"]

T = TypeVar("T")

# The project's one scale for time limits (IREDAPD_TEST_TIMEOUT_SCALE).
TIME_SCALE = TIMEOUT_SCALE

_STATUS = {
    "OK": DNSStatus.OK,
    "NXDOMAIN": DNSStatus.NXDOMAIN,
    "NODATA": DNSStatus.NODATA,
    "TIMEOUT": DNSStatus.TIMEOUT,
    "SERVFAIL": DNSStatus.SERVFAIL,
    "REFUSED": DNSStatus.SERVFAIL,
}


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` in a fresh event loop."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _plain(rtype: str, value: Any) -> Record:
    if rtype in ("TXT", "SPF"):
        return "".join(value)  # RFC 7208 3.3: strings of one record joined
    if rtype == "MX":
        return MX(value[0], value[1])
    return str(value)


class ZoneSource:
    """A :class:`~iredapd.resolver.DNSSource` over zone data, no network.

    Answers as :meth:`Zone.resolve` says (CNAMEs chased; TIMEOUT, SERVFAIL
    markers honoured).  ``queries`` counts questions by ``(name, type)``.
    """

    def __init__(self, zone: Zone | Mapping[str, Iterable[Any]]) -> None:
        self.zone = zone if isinstance(zone, Zone) else Zone(zone)
        self.queries: Counter[tuple[str, str]] = Counter()

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        rdtype = rdtype.upper()
        self.queries[name.lower().rstrip("."), rdtype] += 1
        result = self.zone.resolve(name, rdtype)
        status = _STATUS[result.status]
        if status is not DNSStatus.OK:
            ttl = self.zone.negative_ttl if not status.is_error else 0
            return DNSAnswer(status, (), ttl)
        finals = [a for a in result.answers if a[1] == rdtype]
        records = tuple(_plain(rtype, value) for _owner, rtype, value, _ttl in finals)
        return DNSAnswer(DNSStatus.OK, records, min(a[3] for a in result.answers))

    @property
    def total(self) -> int:
        """Queries answered so far."""
        return sum(self.queries.values())


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def stub_resolver(
    zone: Zone | Mapping[str, Iterable[Any]],
    *,
    timeout: float = 1.0,
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[StubDNS, Resolver]]:
    """Start a stub server for ``zone``; yield it and a Resolver that uses it."""
    async with StubDNS(zone) as stub:
        extra: dict[str, Any] = dict(options)
        if clock is not None:
            extra["clock"] = clock
        resolver = Resolver(["127.0.0.1"], port=stub.port, timeout=timeout, **extra)
        yield stub, resolver
