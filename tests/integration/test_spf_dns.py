"""The spf plugin in the daemon, against the stub DNS server on loopback.

Real sockets on both sides: clients speak the policy protocol to the daemon
(tests/support/daemon.running_server, in this event loop), and the daemon's
resolver asks tests/support/stubdns.StubDNS over UDP.  What is shown:

* the verdict and header for each of the seven SPF results;
* a lookup that never answers costs only its own request its deadline: 50
  other connections keep their latency meanwhile;
* the RFC 7208 lookup limit holds against a record that includes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from tests.support.daemon import InProcess, PolicyClient, running_server
from tests.support.dnsfixtures import TIME_SCALE
from tests.support.stubdns import StubDNS

pytestmark = pytest.mark.integration

HOSTNAME = "mx.example.test"
CLIENT = "203.0.113.5"
HEADER = "PREPEND Received-SPF: "
# Clients that keep working while one request waits for a silent name server.
CONNECTIONS = 50
ROUNDS = 4

ZONE: dict[str, list[Any]] = {
    "pass.example.net": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}],
    "fail.example.net": [{"TXT": "v=spf1 mx -all exp=why.fail.example.net"}],
    "why.fail.example.net": [{"TXT": "See https://%{d}/spf for why %{i} was refused"}],
    "softfail.example.net": [{"TXT": "v=spf1 a:mail.softfail.example.net ~all"}],
    "neutral.example.net": [{"TXT": "v=spf1 ?all"}],
    "none.example.net": [{"MX": [10, "mail.none.example.net"]}],
    "permerror.example.net": [{"TXT": "v=spf1 -all"}, {"TXT": "v=spf1 +all"}],
    "temperror.example.net": ["SERVFAIL"],
    "slow.example.net": ["TIMEOUT"],
    "loop.example.net": [{"TXT": "v=spf1 include:loop.example.net -all"}],
    "ping.example.net": [{"TXT": "v=spf1 include:pong.example.net -all"}],
    "pong.example.net": [{"TXT": "v=spf1 include:ping.example.net -all"}],
    "self.example.net": [{"TXT": "v=spf1 redirect=self.example.net"}],
    # one domain per request of the latency test, so each one asks the stub
    **{
        f"d{i}.example.org": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}]
        for i in range(2 * CONNECTIONS * ROUNDS)
    },
}


def rcpt(sender: str, instance: str, **extra: str) -> dict[str, str]:
    return {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "protocol_name": "ESMTP",
        "client_address": CLIENT,
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "helo_name": "mail.example.net",
        "sender": sender,
        "recipient": "user1@example.com",
        "recipient_count": "0",
        "instance": instance,
        "sasl_username": "",
        **extra,
    }


@contextlib.asynccontextmanager
async def daemon(
    zone: Mapping[str, Any] = ZONE, **overrides: Any
) -> AsyncIterator[tuple[StubDNS, InProcess]]:
    """The stub DNS and the daemon with the spf plugin asking it."""
    async with StubDNS(zone) as stub:
        settings: dict[str, Any] = {
            "plugins": ["spf"],
            "DNS_NAMESERVERS": ["127.0.0.1"],
            "DNS_PORT": stub.port,
            "DNS_QUERY_TIMEOUT": 1.0 * TIME_SCALE,
            "SPF_TIMEOUT": 1.5 * TIME_SCALE,
            "PLUGIN_TIMEOUT": 3.0 * TIME_SCALE,
            "SERVER_HOSTNAME": HOSTNAME,
            **overrides,
        }
        async with running_server(**settings) as server:
            yield stub, server


async def ask(server: InProcess, attrs: Mapping[str, str]) -> str:
    client = await PolicyClient.connect(server.host, server.port)
    try:
        return await client.ask(attrs)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        (
            "pass.example.net",
            HEADER + "pass (mx.example.test: domain of someone@pass.example.net designates "
            "203.0.113.5 as permitted sender) client-ip=203.0.113.5; "
            'envelope-from="someone@pass.example.net"; helo=mail.example.net; '
            'receiver=mx.example.test; identity=mailfrom; mechanism="ip4:203.0.113.0/24";',
        ),
        (
            "fail.example.net",
            "550 5.7.23 SPF fail: explanation from fail.example.net: "
            "See https://fail.example.net/spf for why 203.0.113.5 was refused",
        ),
        (
            "softfail.example.net",
            HEADER + "softfail (mx.example.test: domain of transitioning "
            "someone@softfail.example.net does not designate 203.0.113.5 as permitted sender) "
            'client-ip=203.0.113.5; envelope-from="someone@softfail.example.net"; '
            "helo=mail.example.net; receiver=mx.example.test; identity=mailfrom; "
            "mechanism=~all;",
        ),
        (
            "neutral.example.net",
            HEADER + "neutral (mx.example.test: 203.0.113.5 is neither permitted nor denied by "
            "domain of someone@neutral.example.net) client-ip=203.0.113.5; "
            'envelope-from="someone@neutral.example.net"; helo=mail.example.net; '
            "receiver=mx.example.test; identity=mailfrom; mechanism=?all;",
        ),
        (
            "none.example.net",
            HEADER + "none (mx.example.test: domain of someone@none.example.net does not "
            "designate permitted sender hosts) client-ip=203.0.113.5; "
            'envelope-from="someone@none.example.net"; helo=mail.example.net; '
            "receiver=mx.example.test; identity=mailfrom;",
        ),
        (
            "permerror.example.net",
            HEADER + "permerror (mx.example.test: permanent error in processing domain of "
            "someone@permerror.example.net: permerror.example.net has 2 v=spf1 records) "
            'client-ip=203.0.113.5; envelope-from="someone@permerror.example.net"; '
            "helo=mail.example.net; receiver=mx.example.test; identity=mailfrom; "
            'problem="permerror.example.net has 2 v=spf1 records";',
        ),
        (
            "temperror.example.net",
            "451 4.7.24 SPF temperror: temporary DNS error checking the SPF record of "
            "temperror.example.net, try again later "
            "(TXT lookup of temperror.example.net: servfail)",
        ),
    ],
)
async def test_verdicts_and_headers(domain: str, expected: str) -> None:
    async with daemon() as (stub, server):
        assert await ask(server, rcpt(f"someone@{domain}", "i1")) == expected
        assert stub.queries[domain, "TXT"] >= 1


async def test_header_once_per_transaction_over_the_wire() -> None:
    async with daemon() as (stub, server):
        client = await PolicyClient.connect(server.host, server.port)
        try:
            replies = [
                await client.ask(rcpt("a@pass.example.net", "i7", recipient=f"u{n}@example.com"))
                for n in range(3)
            ]
            eom = await client.ask(
                rcpt("a@pass.example.net", "i7", protocol_state="END-OF-MESSAGE")
            )
        finally:
            await client.close()
        assert replies[0].startswith(HEADER + "pass ")
        assert replies[1:] == ["DUNNO", "DUNNO"]
        assert eom == "DUNNO"
        assert stub.queries["pass.example.net", "TXT"] == 1


async def _timed(client: PolicyClient, attrs: Mapping[str, str]) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await client.ask(attrs, timeout=30)
    return reply, loop.time() - started


async def _workload(clients: list[PolicyClient], first: int) -> list[float]:
    """ROUNDS requests on each connection, all connections at once; their latencies.

    Each request names a domain not asked before, so each one waits for the
    stub over UDP.  Every reply must be the pass header.
    """

    async def one_connection(k: int, client: PolicyClient) -> list[float]:
        latencies = []
        for r in range(ROUNDS):
            n = first + r * len(clients) + k
            reply, elapsed = await _timed(client, rcpt(f"user@d{n}.example.org", f"w{n}"))
            assert reply.startswith(HEADER + "pass "), reply
            latencies.append(elapsed)
        return latencies

    results = await asyncio.gather(*(one_connection(k, c) for k, c in enumerate(clients)))
    return [t for latencies in results for t in latencies]


async def test_a_silent_name_server_costs_only_its_own_request() -> None:
    # Every request here costs ~3 ms of CPU (resolver, stub, server share one
    # loop), so 50 connections at once see ~150-250 ms: the "normal latency".
    dns_timeout = 3.0 * TIME_SCALE
    async with daemon(
        DNS_QUERY_TIMEOUT=dns_timeout,
        SPF_TIMEOUT=dns_timeout + 0.5 * TIME_SCALE,
        PLUGIN_TIMEOUT=dns_timeout * 2,
    ) as (stub, server):
        clients = [await PolicyClient.connect(server.host, server.port) for _ in range(CONNECTIONS)]
        slow_client = await PolicyClient.connect(server.host, server.port)
        try:
            baseline = await _workload(clients, 0)

            slow = asyncio.create_task(_timed(slow_client, rcpt("a@slow.example.net", "slow")))
            async with asyncio.timeout(5 * TIME_SCALE):
                # The stub offers nothing to await: poll its query counter.
                while not stub.queries["slow.example.net", "TXT"]:  # noqa: ASYNC110
                    await asyncio.sleep(0.002)
            during = await _workload(clients, CONNECTIONS * ROUNDS)
            assert not slow.done(), "the workload must run while the lookup is pending"
            reply, slow_elapsed = await slow
        finally:
            for client in [*clients, slow_client]:
                await client.close()

    # The silent lookup ends in temperror at its own deadline: the request is deferred.
    assert reply.startswith("451 4.7.24 SPF temperror: ")
    assert "TXT lookup of slow.example.net: timeout" in reply
    assert dns_timeout * 0.9 <= slow_elapsed <= dns_timeout + 1.5 * TIME_SCALE
    # The others did not wait for it.  Generous bounds: a loaded 2-core machine.
    base_median, base_max = statistics.median(baseline), max(baseline)
    median, worst = statistics.median(during), max(during)
    assert len(during) == CONNECTIONS * ROUNDS
    assert median <= 3 * base_median + 0.02 * TIME_SCALE, (median, base_median)
    assert worst <= 5 * base_max + 0.05 * TIME_SCALE, (worst, base_max)
    assert worst < dns_timeout / 2, (worst, dns_timeout)


@pytest.mark.parametrize(
    ("domain", "problem"),
    [
        ("loop.example.net", "more than 10 DNS lookups (include:loop.example.net)"),
        ("ping.example.net", "more than 10 DNS lookups (include:"),
        ("self.example.net", "more than 10 DNS lookups (redirect)"),
    ],
)
async def test_a_record_that_includes_itself_is_a_quick_permerror(
    domain: str, problem: str
) -> None:
    async with daemon() as (stub, server):
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await ask(server, rcpt(f"a@{domain}", "i1"))
        elapsed = loop.time() - started
        rejected = await ask(server, rcpt(f"b@{domain}", "i2"))

    assert reply.startswith(HEADER + "permerror ")
    assert f'problem="{problem}' in reply
    assert elapsed < 1.0 * TIME_SCALE
    # The resolver's cache answers the repeated TXT questions.
    assert sum(n for (name, _), n in stub.queries.items() if name.endswith("example.net")) <= 3
    assert rejected.startswith(HEADER + "permerror ")


async def test_permerror_can_be_rejected_with_5_7_24() -> None:
    async with daemon(SPF_ACTIONS={"permerror": "reject"}) as (_stub, server):
        reply = await ask(server, rcpt("a@loop.example.net", "i1"))
    assert reply == (
        "550 5.7.24 SPF permerror: the SPF record of loop.example.net is invalid "
        "(more than 10 DNS lookups (include:loop.example.net))"
    )
