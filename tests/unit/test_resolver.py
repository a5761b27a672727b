"""Unit tests of iredapd.resolver without sockets.

The network step (``Resolver._fetch``) is replaced by a scripted one, so the
cache (TTLs with an injected clock, negative answers, bounds), coalescing,
deadlines and the helpers are tested exactly; rdata conversion is tested on
dnspython objects.  The real wire is in tests/integration/test_resolver_stub.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from iredapd import resolver as resolver_module
from iredapd.resolver import MX, DNSAnswer, DNSError, DNSStatus, Resolver, reverse_name
from tests.support.dnsfixtures import FakeClock, run

OK, NX, NODATA = DNSStatus.OK, DNSStatus.NXDOMAIN, DNSStatus.NODATA


class Scripted(Resolver):
    """A Resolver whose network step answers from a script and counts calls."""

    def __init__(self, script: dict[tuple[str, str], DNSAnswer], **options: Any) -> None:
        options.setdefault("clock", FakeClock())
        super().__init__(["192.0.2.53"], port=53, **options)
        self.script = script
        self.fetches: Counter[tuple[str, str]] = Counter()
        self.gate: asyncio.Event | None = None

    async def _fetch(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> DNSAnswer:
        key = (qname.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rdtype))
        self.fetches[key] += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.script.get(key, DNSAnswer(NX, (), 3600))


def test_answer_statuses_and_views() -> None:
    answer = DNSAnswer(OK, ("a", MX(10, "mx.example.com")), 5)
    assert answer.texts == ("a",)
    assert answer.mx == (MX(10, "mx.example.com"),)
    assert [s for s in DNSStatus if s.is_error] == [DNSStatus.SERVFAIL, DNSStatus.TIMEOUT]


def test_cache_honours_ttl() -> None:
    clock = FakeClock()
    r = Scripted({("example.com", "A"): DNSAnswer(OK, ("192.0.2.1",), 30)}, clock=clock)

    async def main() -> None:
        first = await r.query("example.com", "A")
        assert (first.records, first.ttl) == (("192.0.2.1",), 30)
        clock.advance(29)
        again = await r.query("EXAMPLE.com.", "a")  # same question, other spelling
        assert again.records == ("192.0.2.1",) and again.ttl == pytest.approx(1)
        assert r.fetches["example.com", "A"] == 1
        clock.advance(1)
        await r.query("example.com", "A")
        assert r.fetches["example.com", "A"] == 2

    run(main())
    assert r.stats.cache_hits == 1


def test_max_ttl_caps_positive_answers() -> None:
    clock = FakeClock()
    r = Scripted({("example.com", "TXT"): DNSAnswer(OK, ("x",), 86400)}, clock=clock, max_ttl=100)
    assert run(r.query("example.com", "TXT")).ttl == 100
    clock.advance(101)
    run(r.query("example.com", "TXT"))
    assert r.fetches["example.com", "TXT"] == 2


@pytest.mark.parametrize(("soa_ttl", "kept"), [(300, 60), (10, 10)])
@pytest.mark.parametrize("status", [NX, NODATA])
def test_negative_answers_kept_for_min_of_soa_and_negative_ttl(
    status: DNSStatus, soa_ttl: float, kept: float
) -> None:
    clock = FakeClock()
    r = Scripted({("nx.example.com", "A"): DNSAnswer(status, (), soa_ttl)}, clock=clock)
    assert run(r.query("nx.example.com", "A")) == DNSAnswer(status, (), kept)
    clock.advance(kept - 0.5)
    assert run(r.query("nx.example.com", "A")).status is status
    assert r.fetches["nx.example.com", "A"] == 1
    clock.advance(1)
    run(r.query("nx.example.com", "A"))
    assert r.fetches["nx.example.com", "A"] == 2


@pytest.mark.parametrize("status", [DNSStatus.SERVFAIL, DNSStatus.TIMEOUT])
def test_failures_are_never_cached(status: DNSStatus) -> None:
    r = Scripted({("bad.example.com", "A"): DNSAnswer(status)})
    for _ in range(3):
        assert run(r.query("bad.example.com", "A")).status is status
    assert r.fetches["bad.example.com", "A"] == 3


def test_cache_is_bounded_oldest_evicted_first() -> None:
    r = Scripted({}, cache_size=2)
    for name in ("a.example", "b.example", "c.example", "c.example", "b.example"):
        run(r.query(name, "A"))
    assert r.fetches == Counter(
        {("a.example", "A"): 1, ("b.example", "A"): 1, ("c.example", "A"): 1}
    )
    run(r.query("a.example", "A"))  # a was evicted when c came in
    assert r.fetches["a.example", "A"] == 2


def test_cache_can_be_disabled_and_cleared() -> None:
    r = Scripted({}, cache_size=0)
    run(r.query("a.example", "A"))
    run(r.query("a.example", "A"))
    assert r.fetches["a.example", "A"] == 2
    r2 = Scripted({})
    run(r2.query("a.example", "A"))
    r2.clear_cache()
    run(r2.query("a.example", "A"))
    assert r2.fetches["a.example", "A"] == 2


def test_identical_queries_in_flight_share_one_fetch() -> None:
    r = Scripted({("example.com", "A"): DNSAnswer(OK, ("192.0.2.1",), 60)})

    async def main() -> None:
        r.gate = asyncio.Event()
        tasks = [asyncio.create_task(r.query("example.com", "A")) for _ in range(50)]
        other = asyncio.create_task(r.query("example.com", "AAAA"))
        await asyncio.sleep(0)
        tasks[0].cancel()  # one caller giving up does not cancel the query
        r.gate.set()
        answers = await asyncio.gather(*tasks[1:], other)
        assert {a.records for a in answers[:-1]} == {("192.0.2.1",)}
        assert tasks[0].cancelled()

    run(main())
    assert r.fetches == Counter({("example.com", "A"): 1, ("example.com", "AAAA"): 1})
    assert r.stats.coalesced == 49


@pytest.mark.parametrize(
    "name", ["", ".", "a..example.com", "x" * 64 + ".example.com", ("a" * 62 + ".") * 5 + "com"]
)
def test_names_that_cannot_exist_are_nxdomain_without_asking(name: str) -> None:
    r = Scripted({})
    assert run(r.query(name, "A")).status is NX
    assert r.fetches == Counter()


def test_unusual_but_valid_names_are_asked_literally() -> None:
    r = Scripted({})
    run(r.query("foo:bar/baz.example.com", "A"))
    run(r.query("macro%percent  space.example.com", "A"))
    run(r.query("bücher.example", "A"))
    assert set(r.fetches) == {
        ("foo:bar/baz.example.com", "A"),
        ("macro%percent\\032\\032space.example.com", "A"),
        ("xn--bcher-kva.example", "A"),
    }


def test_unknown_record_type_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown record type"):
        run(Scripted({}).query("example.com", "NOPE"))


def test_helpers_three_outcomes() -> None:
    script = {
        ("example.com", "TXT"): DNSAnswer(OK, ("v=spf1 -all", "other"), 60),
        ("example.com", "A"): DNSAnswer(OK, ("192.0.2.1",), 60),
        ("example.com", "AAAA"): DNSAnswer(NODATA, (), 60),
        ("example.com", "MX"): DNSAnswer(
            OK, (MX(20, "b.example.com"), MX(10, "a.example.com")), 60
        ),
        ("1.2.0.192.in-addr.arpa", "PTR"): DNSAnswer(OK, ("host.example.com",), 60),
        ("slow.example.com", "TXT"): DNSAnswer(DNSStatus.TIMEOUT),
        ("bad.example.com", "MX"): DNSAnswer(DNSStatus.SERVFAIL),
    }
    r = Scripted(script)
    assert run(r.txt("example.com")) == ("v=spf1 -all", "other")
    assert run(r.a("example.com")) == ("192.0.2.1",)
    assert run(r.aaaa("example.com")) == ()
    assert run(r.txt("nx.example.com")) == ()
    assert run(r.mx("example.com")) == (MX(10, "a.example.com"), MX(20, "b.example.com"))
    assert run(r.ptr("192.0.2.1")) == ("host.example.com",)
    with pytest.raises(DNSError) as info:
        run(r.txt("slow.example.com"))
    assert info.value.status is DNSStatus.TIMEOUT
    with pytest.raises(DNSError, match="servfail"):
        run(r.mx("bad.example.com"))
    with pytest.raises(ValueError):
        run(r.ptr("not-an-ip"))


def test_reverse_name() -> None:
    assert reverse_name("192.0.2.1") == "1.2.0.192.in-addr.arpa"
    assert reverse_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")


# -- the network step's mapping of dnspython outcomes ---------------------------


def _raising(exc: BaseException) -> Any:
    async def resolve(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return resolve


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (dns.resolver.LifetimeTimeout(timeout=1.0, errors=[]), DNSStatus.TIMEOUT),
        (dns.resolver.NoNameservers(), DNSStatus.SERVFAIL),
        (dns.resolver.YXDOMAIN(), DNSStatus.SERVFAIL),
        (ConnectionRefusedError(), DNSStatus.SERVFAIL),
        (dns.resolver.NXDOMAIN(), DNSStatus.NXDOMAIN),
    ],
)
def test_fetch_maps_dnspython_outcomes(exc: BaseException, status: DNSStatus) -> None:
    r = Resolver(["192.0.2.53"], negative_ttl=42)
    r._dns.resolve = _raising(exc)  # type: ignore[method-assign]
    answer = run(r.query("example.com", "A"))
    assert answer.status is status
    assert answer.ttl == (42 if status is NX else 0)


def test_the_deadline_holds_even_if_dnspython_does_not_return() -> None:
    async def stall(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(3600)

    r = Resolver(["192.0.2.53"], timeout=0.05)
    r._dns.resolve = stall  # type: ignore[method-assign]
    assert run(r.query("example.com", "A")).status is DNSStatus.TIMEOUT
    assert r.stats.timeouts == 1


def test_given_nameservers_never_read_resolv_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def fake_read(self: dns.resolver.BaseResolver, filename: Any) -> None:
        calls.append(filename)
        self.nameservers = ["198.51.100.53"]

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", fake_read)
    r = Resolver(["127.0.0.1"], port=5353)
    assert (r.nameservers, r._dns.port, calls) == (["127.0.0.1"], 5353, [])
    system = Resolver()
    assert system.nameservers == ["198.51.100.53"]
    assert len(calls) == 1


# -- rdata conversion -------------------------------------------------------------


def _rdata(rtype: str, text: str) -> Any:
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), text)


@pytest.mark.parametrize(
    ("rtype", "text", "expected"),
    [
        ("TXT", '"v=spf1 ip4:192.0.2.1" " -all"', "v=spf1 ip4:192.0.2.1 -all"),
        ("TXT", '"\\195\\169t\\195\\169"', "été"),
        ("TXT", '"bad \\150 byte"', "bad \ufffd byte"),
        ("SPF", '"v=spf1 -all"', "v=spf1 -all"),
        ("A", "192.0.2.1", "192.0.2.1"),
        ("AAAA", "2001:DB8::1", "2001:db8::1"),
        ("MX", "10 mx.example.com.", MX(10, "mx.example.com")),
        ("MX", "0 .", MX(0, "")),
        ("PTR", "host.example.com.", "host.example.com"),
        ("CNAME", "target.example.com.", "target.example.com"),
        ("SOA", "ns. host. 1 2 3 4 5", "ns. host. 1 2 3 4 5"),
    ],
)
def test_record_conversion(rtype: str, text: str, expected: object) -> None:
    rdata = _rdata(rtype, text)
    assert resolver_module._record(rdata, dns.rdatatype.from_text(rtype)) == expected


def test_soa_negative_ttl() -> None:
    query = dns.message.make_query("nx.example.com", "A")
    response = dns.message.make_response(query)
    assert resolver_module._soa_negative_ttl(response) is None
    assert resolver_module._soa_negative_ttl(None) is None
    soa = dns.rrset.from_text("example.com.", 300, "IN", "SOA", "ns. host. 1 2 3 4 60")
    response.authority.append(soa)
    assert resolver_module._soa_negative_ttl(response) == 60
    soa.ttl = 30
    assert resolver_module._soa_negative_ttl(response) == 30


def test_attempts_split_the_deadline() -> None:
    r = Resolver(["192.0.2.53"], timeout=3.0, attempts=3)
    assert (r._dns.timeout, r._dns.lifetime, r.timeout) == (1.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Resolver(["192.0.2.53"], attempts=0)
