"""iredapd.resolver against the stub DNS server (tests/support/stubdns.py) on loopback.

Real UDP and TCP: statuses as a name server sends them, record forms, TCP
retry of big answers, negative TTLs from the SOA, the cache with an injected
clock, deadline isolation under concurrency, query coalescing, the stub as a
subprocess, and the whole RFC 7208 suite evaluated over the wire.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from iredapd.resolver import MX, DNSStatus, Resolver
from iredapd.spf import check_mail_from
from tests.support.dnsfixtures import TIME_SCALE, FakeClock, run, stub_resolver
from tests.support.stubdns import Zone

pytestmark = pytest.mark.integration

STUBDNS = Path(__file__).resolve().parent.parent / "support" / "stubdns.py"
SUITE = Path(__file__).resolve().parent.parent / "data" / "spf" / "rfc7208-tests.yml"
# Deadline of one query in these tests: short, so TIMEOUT cases stay cheap.
TIMEOUT = 0.3 * TIME_SCALE

ZONE: dict[str, list[Any]] = {
    "example.com": [
        {"TXT": "v=spf1 ip4:192.0.2.0/24 mx -all"},
        {"TXT": ["v=DMARC1; ", "p=reject"]},
        {"MX": [20, "mx2.example.com."]},
        {"MX": [10, "mx1.example.com"]},
        {"A": "192.0.2.1", "TTL": 30},
    ],
    "mx1.example.com": [{"A": "192.0.2.10"}, {"AAAA": "2001:DB8::10"}],
    "mx2.example.com": [{"A": "192.0.2.11"}, {"A": "192.0.2.12"}],
    "alias.example.com": [{"CNAME": "mx1.example.com"}],
    "loop.example.com": [{"CNAME": "loop.example.com"}],
    "20.2.0.192.in-addr.arpa": [{"PTR": "mail.example.net."}],
    "spf99.example.com": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}],
    "big.example.com": [{"TXT": ["x" * 255] * 12}],
    "null-mx.example.com": [{"MX": [0, ""]}],
    "slow.example.com": ["TIMEOUT"],
    "broken.example.com": ["SERVFAIL"],
    "refused.example.com": ["REFUSED"],
    "lazy.example.com": [{"DELAY": 0.1 * TIME_SCALE}, {"A": "192.0.2.30"}],
    **{f"h{i}.example.com": [{"A": f"198.51.100.{i}"}] for i in range(60)},
}


def with_stub(test: Any, zone: Any = None, **options: Any) -> Any:
    """Run ``test(stub, resolver)`` with a stub for ``zone`` (default ZONE)."""

    async def main() -> Any:
        options.setdefault("timeout", TIMEOUT)
        async with stub_resolver(ZONE if zone is None else zone, **options) as (stub, r):
            return await test(stub, r)

    return run(main())


@pytest.mark.parametrize(
    ("name", "rdtype", "status"),
    [
        ("example.com", "A", DNSStatus.OK),
        ("nowhere.example.com", "A", DNSStatus.NXDOMAIN),
        ("mx1.example.com", "MX", DNSStatus.NODATA),
        ("broken.example.com", "A", DNSStatus.SERVFAIL),
        ("refused.example.com", "A", DNSStatus.SERVFAIL),
        ("loop.example.com", "A", DNSStatus.SERVFAIL),
        ("slow.example.com", "TXT", DNSStatus.TIMEOUT),
    ],
)
def test_statuses_are_distinguished(name: str, rdtype: str, status: DNSStatus) -> None:
    async def test(stub: Any, r: Resolver) -> None:
        answer = await r.query(name, rdtype)
        assert answer.status is status
        assert stub.queries[name, rdtype] >= 1  # it really went over the wire

    with_stub(test)


def test_record_forms() -> None:
    async def test(stub: Any, r: Resolver) -> None:
        # record order in an answer is not defined; strings of one record are joined
        assert sorted(await r.txt("example.com")) == [
            "v=DMARC1; p=reject",
            "v=spf1 ip4:192.0.2.0/24 mx -all",
        ]
        assert await r.mx("example.com") == (MX(10, "mx1.example.com"), MX(20, "mx2.example.com"))
        assert await r.a("alias.example.com") == ("192.0.2.10",)  # CNAME followed
        assert await r.aaaa("mx1.example.com") == ("2001:db8::10",)
        assert sorted(await r.a("mx2.example.com")) == ["192.0.2.11", "192.0.2.12"]
        assert await r.ptr("192.0.2.20") == ("mail.example.net",)
        assert await r.mx("null-mx.example.com") == (MX(0, ""),)
        assert (await r.query("alias.example.com", "CNAME")).records == ("mx1.example.com",)
        assert (await r.query("spf99.example.com", "SPF")).records == ("v=spf1 -all",)
        assert await r.txt("spf99.example.com") == ()
        assert await r.a("h7.example.com") == ("198.51.100.7",)

    with_stub(test)


def test_big_answer_retried_over_tcp() -> None:
    async def test(stub: Any, r: Resolver) -> None:
        assert await r.txt("big.example.com") == ("x" * 255 * 12,)
        assert [t for n, _t, t in stub.log if n == "big.example.com"] == ["udp", "tcp"]

    with_stub(test)


@pytest.mark.parametrize(("soa_minimum", "cap", "expected"), [(5, 60, 5), (300, 2, 2)])
def test_negative_ttl_from_soa_and_cap(soa_minimum: int, cap: float, expected: float) -> None:
    async def test(stub: Any, r: Resolver) -> None:
        assert (await r.query("nowhere.example.com", "A")).ttl == expected  # NXDOMAIN
        assert (await r.query("mx1.example.com", "MX")).ttl == expected  # NODATA

    with_stub(test, Zone(ZONE, negative_ttl=soa_minimum), negative_ttl=cap)


def test_cache_honours_record_ttl_with_injected_clock() -> None:
    clock = FakeClock()

    async def test(stub: Any, r: Resolver) -> None:
        for _ in range(3):
            assert (await r.query("example.com", "A")).records == ("192.0.2.1",)
        assert stub.queries["example.com", "A"] == 1
        clock.advance(29.9)
        await r.query("example.com", "A")
        assert stub.queries["example.com", "A"] == 1
        clock.advance(0.2)  # past the record's TTL of 30 s
        await r.query("example.com", "A")
        assert stub.queries["example.com", "A"] == 2
        # negative answers are cached too, failures are not
        await r.query("nowhere.example.com", "A")
        await r.query("nowhere.example.com", "A")
        assert stub.queries["nowhere.example.com", "A"] == 1
        await r.query("broken.example.com", "A")
        await r.query("broken.example.com", "A")
        assert stub.queries["broken.example.com", "A"] == 2

    with_stub(test, clock=clock)


def test_one_silent_server_answer_costs_only_its_own_deadline() -> None:
    deadline = 1.0 * TIME_SCALE

    async def test(stub: Any, r: Resolver) -> None:
        started = time.monotonic()
        done: dict[str, float] = {}

        async def ask(name: str) -> DNSStatus:
            status = (await r.query(name, "A")).status
            done[name] = time.monotonic() - started
            return status

        slow = asyncio.create_task(ask("slow.example.com"))
        others = await asyncio.gather(*(ask(f"h{i}.example.com") for i in range(50)))
        assert set(others) == {DNSStatus.OK}
        # had they waited behind the silent query, they would take the deadline
        assert max(done[f"h{i}.example.com"] for i in range(50)) < deadline / 2
        assert await slow is DNSStatus.TIMEOUT
        assert deadline * 0.9 <= done["slow.example.com"] < deadline * 1.5

    with_stub(test, timeout=deadline)


def test_concurrent_identical_queries_coalesce() -> None:
    async def test(stub: Any, r: Resolver) -> None:
        answers = await asyncio.gather(*(r.query("lazy.example.com", "A") for _ in range(50)))
        assert {a.records for a in answers} == {("192.0.2.30",)}
        assert stub.queries["lazy.example.com", "A"] == 1
        assert r.stats.coalesced == 49

    with_stub(test, attempts=1)  # one query on the wire, however slow the machine


@pytest.mark.parametrize(
    ("attempts", "status", "sent"), [(1, DNSStatus.TIMEOUT, 1), (2, DNSStatus.OK, 2)]
)
def test_a_lost_datagram_costs_a_resend_not_the_deadline(
    attempts: int, status: DNSStatus, sent: int
) -> None:
    """The first query goes unanswered (a lost datagram); the resend is answered."""
    deadline = 1.0 * TIME_SCALE

    async def test(stub: Any, r: Resolver) -> None:
        async def answer_from_now_on() -> None:
            while not stub.queries["lost.example.com", "A"]:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            stub.zone = Zone({"lost.example.com": [{"A": "192.0.2.40"}]})

        swap = asyncio.create_task(answer_from_now_on())
        started = time.monotonic()
        answer = await r.query("lost.example.com", "A")
        elapsed = time.monotonic() - started
        await swap
        assert answer.status is status
        assert stub.queries["lost.example.com", "A"] == sent
        if status is DNSStatus.OK:
            assert answer.records == ("192.0.2.40",)
            assert elapsed < deadline
        else:
            assert elapsed >= deadline * 0.9

    with_stub(test, {"lost.example.com": ["TIMEOUT"]}, timeout=deadline, attempts=attempts)


def test_stub_as_a_subprocess(tmp_path: Path) -> None:
    zone_file = tmp_path / "zone.yml"
    zone_file.write_text(yaml.safe_dump({"zonedata": {"example.com": [{"A": "192.0.2.1"}]}}))
    port_file = tmp_path / "stub.port"

    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(STUBDNS),
            str(port_file),
            str(zone_file),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 10 * TIME_SCALE)
            port = int(port_file.read_text())
            assert f"127.0.0.1:{port}" in line.decode()
            r = Resolver(["127.0.0.1"], port=port, timeout=TIMEOUT)
            assert await r.a("example.com") == ("192.0.2.1",)
            assert (await r.query("nowhere.example.com", "A")).status is DNSStatus.NXDOMAIN
        finally:
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 10 * TIME_SCALE) == 0

    run(main())


def test_stub_serves_one_scenario_of_the_spf_suite(tmp_path: Path) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(STUBDNS),
            str(tmp_path / "port"),
            str(SUITE),
            "3",  # "Record evaluation"
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 10 * TIME_SCALE)
            port = int((tmp_path / "port").read_text())
            r = Resolver(["127.0.0.1"], port=port, timeout=TIMEOUT)
            assert await r.txt("t1.example.com") == ("v=spf1 ip4:1.2.3.4 -all moo",)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10 * TIME_SCALE)

    run(main())


def test_rfc7208_suite_over_the_wire() -> None:
    """Every RFC 7208 suite case, with DNS answered by the stub through Resolver.

    One stub and Resolver per scenario; cases run concurrently, so the cases
    that wait for a TIMEOUT cost about one deadline in all.
    """
    from tests.unit.test_spf_suite import Case, load, problems

    async def one(case: Case, r: Resolver) -> list[str]:
        d = case.data
        got = await check_mail_from(d["host"], d["mailfrom"], d["helo"], resolver=r)
        return [f"{case}: {p}" for p in problems(case, got)]

    async def scenario(cases: list[Case]) -> list[str]:
        # the cases of a scenario start at once: a burst of datagrams, some of
        # which a busy machine may drop (the resolver sends again)
        async with stub_resolver(cases[0].zone, timeout=2.0 * TIME_SCALE) as (_stub, r):
            found = await asyncio.gather(*(one(case, r) for case in cases))
        return [p for problems_of_case in found for p in problems_of_case]

    async def main() -> list[str]:
        by_scenario: dict[int, list[Case]] = {}
        for case in load("rfc7208"):
            by_scenario.setdefault(case.scenario, []).append(case)
        found = await asyncio.gather(*(scenario(cases) for cases in by_scenario.values()))
        return [p for problems_of_scenario in found for p in problems_of_scenario]

    assert len(load("rfc7208")) == 203
    assert run(main()) == []
