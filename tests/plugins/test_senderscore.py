"""senderscore: cache hit/miss, DNS outcomes, concurrency (core-and-stateful.md §12).

Runs on SQLite, MariaDB and PostgreSQL.  DNS answers come from an in-memory
zone (:class:`ZoneSource`); one test goes through the real :class:`Resolver`
and the stub DNS server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from iredapd.resolver import DNSAnswer, DNSStatus
from iredapd.services import Services
from iredapd.storage.schema import senderscore_cache
from tests.plugins.test_amavisd_wblist import NOW, backend_services, chain_for, rcpt
from tests.support.databases import backend_params
from tests.support.dnsfixtures import ZoneSource, stub_resolver

REJECT = "REJECT Server IP address has bad reputation. FYI: https://www.senderscore.org/lookup.php?lookup="
ZONE = "score.senderscore.com"

DNS = {
    f"20.113.0.203.{ZONE}": [{"A": "127.0.4.20"}],
    f"30.113.0.203.{ZONE}": [{"A": "127.0.4.30"}],
    f"31.113.0.203.{ZONE}": [{"A": "127.0.4.31"}],
    f"0.113.0.203.{ZONE}": [{"A": "127.0.4.0"}],
    f"200.113.0.203.{ZONE}": [{"A": "127.0.4.200"}],  # not a score
    f"41.113.0.203.{ZONE}": [{"TXT": "listed, but no A record"}],  # NODATA
    f"42.113.0.203.{ZONE}": ["TIMEOUT"],
    f"43.113.0.203.{ZONE}": ["SERVFAIL"],
    # 203.0.113.40 is not in the zone: NXDOMAIN
}


@pytest.fixture(scope="module", params=backend_params())
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(backend, services), one database per backend."""
    backend: str = request.param
    with backend_services(backend, tmp_path_factory.mktemp(f"score-{backend}")) as services:
        yield backend, services


@pytest.fixture
def services(env: Any) -> Iterator[Services]:
    """The backend's services with an empty cache and a fresh in-memory zone."""
    _backend, services = env
    assert services.iredapd_db is not None
    with services.iredapd_db.engine.begin() as conn:
        conn.execute(sa.delete(senderscore_cache))
    services.resolver = ZoneSource(DNS)
    yield services
    services.resolver = None


def cache_rows(services: Services) -> dict[str, tuple[int | None, int]]:
    assert services.iredapd_db is not None
    with services.iredapd_db.engine.connect() as conn:
        rows = conn.execute(sa.select(senderscore_cache)).all()
    return {r.client_address: (r.score, r.time) for r in rows}


def seed(services: Services, ip: str, score: int | None) -> None:
    assert services.iredapd_db is not None
    with services.iredapd_db.engine.begin() as conn:
        conn.execute(senderscore_cache.insert().values(client_address=ip, score=score, time=1))


def request_from(ip: str, sasl: str = "") -> Any:
    return rcpt(
        client_address=ip, sasl_username=sasl, sender="a@example.org", recipient="b@example.com"
    )


# ip -> (expected action, cache row after the request, DNS queries made)
MISSES = {
    "listed-low": ("203.0.113.20", REJECT + "203.0.113.20", (20, int(NOW))),
    "listed-at-threshold": ("203.0.113.30", REJECT + "203.0.113.30", (30, int(NOW))),
    "listed-above-threshold": ("203.0.113.31", "DUNNO", (31, int(NOW))),
    "listed-zero": ("203.0.113.0", REJECT + "203.0.113.0", (0, int(NOW))),
    "nxdomain-is-100-cached": ("203.0.113.40", "DUNNO", (100, int(NOW))),
    "nodata-is-100-cached": ("203.0.113.41", "DUNNO", (100, int(NOW))),
    "timeout-not-cached": ("203.0.113.42", "DUNNO", None),
    "servfail-not-cached": ("203.0.113.43", "DUNNO", None),
    "invalid-score-not-cached": ("203.0.113.200", "DUNNO", None),
}


@pytest.mark.parametrize("row", [pytest.param(v, id=k) for k, v in MISSES.items()])
async def test_cache_miss_asks_dns(services: Services, row: tuple[str, str, Any]) -> None:
    ip, expected, cached = row
    chain = chain_for(services, "senderscore")
    decision = await chain.evaluate(request_from(ip))
    assert decision.action.text == expected
    source = services.resolver
    assert isinstance(source, ZoneSource)
    reversed_ip = ".".join(reversed(ip.split(".")))
    assert source.queries == {(f"{reversed_ip}.{ZONE}", "A"): 1}
    assert cache_rows(services) == ({ip: cached} if cached else {})


@pytest.mark.parametrize(
    ("score", "expected"),
    [(10, REJECT + "203.0.113.31"), (30, REJECT + "203.0.113.31"), (31, "DUNNO"), (None, "DUNNO")],
)
async def test_cache_hit_wins_without_dns(
    services: Services, score: int | None, expected: str
) -> None:
    seed(services, "203.0.113.31", score)  # the DNS would say 31
    chain = chain_for(services, "senderscore")
    assert (await chain.evaluate(request_from("203.0.113.31"))).action.text == expected
    source = services.resolver
    assert isinstance(source, ZoneSource)
    assert source.total == 0
    assert cache_rows(services) == {"203.0.113.31": (score, 1)}  # untouched


async def test_second_request_uses_the_cache(services: Services) -> None:
    chain = chain_for(services, "senderscore")
    for _ in range(2):
        decision = await chain.evaluate(request_from("203.0.113.20"))
        assert decision.action.text == REJECT + "203.0.113.20"
    source = services.resolver
    assert isinstance(source, ZoneSource)
    assert source.total == 1


@pytest.mark.parametrize(
    ("ip", "sasl", "mynetworks"),
    [
        pytest.param("203.0.113.20", "u@example.com", [], id="smtp-auth"),
        pytest.param("2001:db8::20", "", [], id="ipv6"),
        pytest.param("127.0.0.1", "", [], id="localhost"),
        pytest.param("203.0.113.20", "", ["203.0.113.0/24"], id="mynetworks"),
        pytest.param("203.0.113.20", "", ["203.0.113.*"], id="mynetworks-wildcard"),
        pytest.param("unknown", "", [], id="not-an-ip"),
    ],
)
async def test_not_checked(services: Services, ip: str, sasl: str, mynetworks: list[str]) -> None:
    chain = chain_for(services, "senderscore", MYNETWORKS=mynetworks)
    assert (await chain.evaluate(request_from(ip, sasl))).action.text == "DUNNO"
    source = services.resolver
    assert isinstance(source, ZoneSource)
    assert source.total == 0
    assert cache_rows(services) == {}


async def test_threshold_setting(services: Services) -> None:
    chain = chain_for(services, "senderscore", SENDERSCORE_REJECT_SCORE=19)
    assert (await chain.evaluate(request_from("203.0.113.20"))).action.text == "DUNNO"
    chain = chain_for(services, "senderscore", SENDERSCORE_REJECT_SCORE=20)
    decision = await chain.evaluate(request_from("203.0.113.20"))
    assert decision.action.text == REJECT + "203.0.113.20"


async def test_dry_run_decides_but_does_not_cache(services: Services) -> None:
    chain = chain_for(services, "senderscore")
    decision = await chain.evaluate(request_from("203.0.113.20"), dry_run=True)
    assert decision.action.text == REJECT + "203.0.113.20"
    assert cache_rows(services) == {}


async def test_cache_time_is_the_request_time(services: Services) -> None:
    chain = chain_for(services, "senderscore")
    await chain.evaluate(request_from("203.0.113.31"), now=1_234_567_890.7)
    assert cache_rows(services) == {"203.0.113.31": (31, 1_234_567_890)}


class BarrierSource:
    """Answers only once ``n`` queries are waiting, so every request has missed the cache."""

    def __init__(self, n: int, answer: str) -> None:
        self.n = n
        self.answer = answer
        self.waiting = 0
        self.all_here = asyncio.Event()

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        self.waiting += 1
        if self.waiting >= self.n:
            self.all_here.set()
        await self.all_here.wait()
        return DNSAnswer(DNSStatus.OK, (self.answer,), 60)


async def test_concurrent_misses_store_one_row_without_errors(services: Services) -> None:
    n = 8
    services.resolver = BarrierSource(n, "127.0.4.20")
    chain = chain_for(services, "senderscore")
    decisions = await asyncio.gather(
        *(chain.evaluate(request_from("203.0.113.20")) for _ in range(n))
    )
    assert [d.action.text for d in decisions] == [REJECT + "203.0.113.20"] * n
    stats = chain.stats()["senderscore"]
    assert (stats.failures, stats.timeouts) == (0, 0)
    assert cache_rows(services) == {"203.0.113.20": (20, int(NOW))}


class HangingSource:
    """A DNS source that never answers."""

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_dns_deadline_is_kept(services: Services) -> None:
    services.resolver = HangingSource()
    chain = chain_for(services, "senderscore", DNS_QUERY_TIMEOUT=0.2)
    started = time.monotonic()
    decision = await chain.evaluate(request_from("203.0.113.20"))
    assert decision.action.text == "DUNNO"
    assert chain.stats()["senderscore"].timeouts == 0  # the plugin's own deadline, not the chain's
    assert time.monotonic() - started < 2
    assert cache_rows(services) == {}


async def test_through_the_resolver_and_a_dns_server(services: Services) -> None:
    async with stub_resolver(DNS, timeout=0.3) as (_stub, resolver):
        services.resolver = resolver
        chain = chain_for(services, "senderscore")
        listed = await chain.evaluate(request_from("203.0.113.20"))
        assert listed.action.text == REJECT + "203.0.113.20"
        timeout = await chain.evaluate(request_from("203.0.113.42"))
        assert timeout.action.text == "DUNNO"
        unlisted = await chain.evaluate(request_from("203.0.113.40"))
        assert unlisted.action.text == "DUNNO"
    assert cache_rows(services) == {
        "203.0.113.20": (20, int(NOW)),
        "203.0.113.40": (100, int(NOW)),
    }
