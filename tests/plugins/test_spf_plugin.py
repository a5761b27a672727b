"""The spf plugin: verdicts, the Received-SPF header, once per transaction, settings.

DNS answers come from an in-memory zone (tests/support/dnsfixtures.ZoneSource),
so every result, TIMEOUT included, is immediate and the queries are counted;
tests/integration/test_spf_dns.py runs the same plugin against the stub DNS
server over real sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iredapd.actions import MAX_ACTION_LENGTH, Action
from iredapd.app import load_namespace
from iredapd.chain import Chain
from iredapd.config import ConfigError
from iredapd.plugin import Context, Plugin
from iredapd.request import PolicyRequest
from iredapd.resolver import DNSAnswer
from iredapd.services import Services
from iredapd.spf import SPFResult
from tests.support.dnsfixtures import TIME_SCALE, FakeClock, ZoneSource
from tests.support.plugins import write_plugin

REPO = Path(__file__).resolve().parents[2]
HOSTNAME = "mx.example.test"
CLIENT = "203.0.113.5"
HEADER = "PREPEND Received-SPF: "

ZONE: dict[str, list[Any]] = {
    "pass.example.net": [{"TXT": "v=spf1 ip4:203.0.113.0/24 -all"}],
    "fail.example.net": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "exp.example.net": [{"TXT": "v=spf1 -all exp=why.exp.example.net"}],
    "why.exp.example.net": [{"TXT": "%{i} may not send mail for %{d}"}],
    "helo-exp.example.net": [{"TXT": "v=spf1 -all exp=why.helo-exp.example.net"}],
    "why.helo-exp.example.net": [{"TXT": "your HELO was %{h}"}],
    "softfail.example.net": [{"TXT": "v=spf1 ~all"}],
    "neutral.example.net": [{"TXT": "v=spf1 ?all"}],
    "none.example.net": [{"A": "192.0.2.1"}],
    "permerror.example.net": [{"TXT": "v=spf1 ip4:203.0.113.0/33 -all"}],
    "temperror.example.net": ["TIMEOUT"],
    "ip6.example.net": [{"TXT": "v=spf1 ip6:2001:db8::/32 -all"}],
    "helo.example.org": [{"TXT": "v=spf1 ip4:203.0.113.5 -all"}],
    "badhelo.example.org": [{"TXT": "v=spf1 -all"}],
}


def rcpt(
    sender: str = "someone@pass.example.net",
    *,
    client: str = CLIENT,
    helo: str = "mail.example.net",
    instance: str = "4a1.6b07547d.629d1.0",
    recipient: str = "user1@example.com",
    state: str = "RCPT",
    **extra: str,
) -> PolicyRequest:
    """A request as Postfix sends it at RCPT from an outside, anonymous client."""
    attrs = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": client,
        "helo_name": helo,
        "sender": sender,
        "recipient": recipient,
        "instance": instance,
        **extra,
    }
    return PolicyRequest.from_attributes(attrs)


@dataclass
class Harness:
    """One spf plugin in a chain of its own, with a counted DNS and a fixed clock."""

    chain: Chain
    plugin: Any
    source: Any
    clock: FakeClock
    module: ModuleType

    async def ask(self, request: PolicyRequest, **kwargs: Any) -> str:
        return (await self.chain.evaluate(request, **kwargs)).action.text

    @property
    def queries(self) -> int:
        return int(self.source.total)


def harness(source: Any = None, **overrides: Any) -> Harness:
    overrides.setdefault("plugins", ["spf"])
    overrides.setdefault("SERVER_HOSTNAME", HOSTNAME)
    overrides.setdefault("DNS_NAMESERVERS", ["127.0.0.1"])  # never read /etc/resolv.conf
    loaded = load_namespace({}, overrides=overrides)
    clock = FakeClock(1_700_000_000.0)
    services = Services(loaded.settings, clock=clock)
    services.resolver = source if source is not None else ZoneSource(ZONE)
    cls = loaded.specs["spf"].cls
    plugin = cls("spf", loaded.settings, services)
    module = sys.modules[cls.__module__]
    chain = Chain([plugin], loaded.settings, services)
    return Harness(chain, plugin, services.resolver, clock, module)


def parse_received_spf(value: str) -> tuple[str, str, dict[str, list[str]]]:
    """Split a Received-SPF value (RFC 7208 9.1) into result, comment and key=value pairs.

    Strict: anything that is not ``result (comment) key=value; ...`` fails.
    """
    result, sep, rest = value.partition(" ")
    assert sep and rest.startswith("("), value
    depth, i, comment = 0, 0, []
    while True:
        c = rest[i]
        if c == "\\":
            comment.append(rest[i + 1])
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        i += 1
        if depth == 0:
            break
        if i > 1:
            comment.append(c)
    pair = re.compile(r' ([A-Za-z][A-Za-z0-9_.-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s;"()\\]+));')
    pairs: dict[str, list[str]] = {}
    pos, tail = 0, rest[i:]
    while pos < len(tail):
        m = pair.match(tail, pos)
        assert m is not None, f"malformed pair at {tail[pos:]!r} in {value!r}"
        text = re.sub(r"\\(.)", r"\1", m[2]) if m[2] is not None else m[3]
        pairs.setdefault(m[1], []).append(text)
        pos = m.end()
    return result, "".join(comment), pairs


def header_of(action: str) -> tuple[str, str, dict[str, str]]:
    """The parsed header of a PREPEND action; every key must appear once."""
    assert action.startswith(HEADER), action
    result, comment, pairs = parse_received_spf(action[len(HEADER) :])
    assert all(len(v) == 1 for v in pairs.values()), pairs
    return result, comment, {k: v[0] for k, v in pairs.items()}


# -- the seven results --------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "result", "mechanism"),
    [
        ("pass.example.net", "pass", "ip4:203.0.113.0/24"),
        ("softfail.example.net", "softfail", "~all"),
        ("neutral.example.net", "neutral", "?all"),
        ("none.example.net", "none", None),
        ("permerror.example.net", "permerror", None),
    ],
)
async def test_results_that_pass_get_the_header(
    domain: str, result: str, mechanism: str | None
) -> None:
    h = harness()
    action = await h.ask(rcpt(f"someone@{domain}"))

    got, comment, pairs = header_of(action)
    assert got == result
    assert comment.startswith(f"{HOSTNAME}: ")
    assert pairs["client-ip"] == CLIENT
    assert pairs["envelope-from"] == f"someone@{domain}"
    assert pairs["helo"] == "mail.example.net"
    assert pairs["receiver"] == HOSTNAME
    assert pairs["identity"] == "mailfrom"
    assert pairs.get("mechanism") == mechanism
    if result == "permerror":
        assert "invalid CIDR length" in pairs["problem"]
    else:
        assert "problem" not in pairs


async def test_fail_is_rejected_with_5_7_23() -> None:
    h = harness()
    action = await h.ask(rcpt("someone@fail.example.net"))
    assert action == (
        "550 5.7.23 SPF fail: fail.example.net does not designate 203.0.113.5 as permitted sender"
    )


async def test_fail_quotes_the_domains_explanation() -> None:
    h = harness()
    action = await h.ask(rcpt("someone@exp.example.net"))
    assert action == (
        "550 5.7.23 SPF fail: explanation from exp.example.net: "
        "203.0.113.5 may not send mail for exp.example.net"
    )


async def test_temperror_is_deferred_with_4_7_24() -> None:
    h = harness()
    action = await h.ask(rcpt("someone@temperror.example.net"))
    assert action == (
        "451 4.7.24 SPF temperror: temporary DNS error checking the SPF record of "
        "temperror.example.net, try again later (TXT lookup of temperror.example.net: timeout)"
    )


async def test_ipv6_client() -> None:
    h = harness()
    result, _, pairs = header_of(await h.ask(rcpt("a@ip6.example.net", client="2001:db8::25")))
    assert (result, pairs["client-ip"]) == ("pass", "2001:db8::25")
    refused = await h.ask(rcpt("a@ip6.example.net", client="2001:db9::25", instance="x"))
    assert refused.startswith(
        "550 5.7.23 SPF fail: ip6.example.net does not designate 2001:db9::25"
    )


async def test_null_sender_checks_the_helo_identity() -> None:
    h = harness()
    action = await h.ask(rcpt("", helo="helo.example.org"))
    result, comment, pairs = header_of(action)
    assert result == "pass"
    assert pairs["envelope-from"] == "postmaster@helo.example.org"
    assert pairs["helo"] == "helo.example.org"
    assert "postmaster@helo.example.org designates 203.0.113.5" in comment
    assert h.source.queries[("helo.example.org", "TXT")] == 1

    refused = await h.ask(rcpt("", helo="badhelo.example.org", instance="other"))
    assert refused.startswith("550 5.7.23 SPF fail: badhelo.example.org does not designate")


# -- who is checked -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "extra"),
    [
        (CLIENT, {"sasl_username": "user1@example.com"}),  # SMTP AUTH
        ("127.0.0.1", {}),  # localhost is always trusted
        ("::1", {}),
        ("198.51.100.7", {}),  # MYNETWORKS network
        ("10.1.2.3", {}),  # MYNETWORKS wildcard
        ("", {}),  # no client address: nothing to check
        ("not-an-ip", {}),
    ],
)
async def test_trusted_and_authenticated_clients_are_not_checked(
    client: str, extra: dict[str, str]
) -> None:
    h = harness(MYNETWORKS=["198.51.100.0/24", "10.*.*.*"])
    assert await h.ask(rcpt("someone@fail.example.net", client=client, **extra)) == "DUNNO"
    assert h.queries == 0


async def test_an_outside_client_next_to_mynetworks_is_checked() -> None:
    h = harness(MYNETWORKS=["198.51.100.0/24"])
    action = await h.ask(rcpt("someone@fail.example.net", client="198.51.101.7"))
    assert action.startswith("550 5.7.23 ")


@pytest.mark.parametrize("state", ["END-OF-MESSAGE", "DATA", "MAIL", "CONNECT"])
async def test_no_action_outside_rcpt(state: str) -> None:
    # Postfix ignores PREPEND at END-OF-MESSAGE; the plugin is RCPT-only.
    h = harness()
    for sender in ("someone@pass.example.net", "someone@fail.example.net"):
        assert await h.ask(rcpt(sender, state=state)) == "DUNNO"
    assert h.queries == 0
    assert h.plugin.states == frozenset({"RCPT"})


# -- once per transaction -------------------------------------------------------------


async def test_header_only_on_the_first_recipient_of_a_transaction() -> None:
    h = harness()
    first = await h.ask(rcpt(recipient="user1@example.com"))
    asked = h.queries
    second = await h.ask(rcpt(recipient="user2@example.com"))
    third = await h.ask(rcpt(recipient="user3@example.com"))

    assert first.startswith(HEADER + "pass ")
    assert (second, third) == ("DUNNO", "DUNNO")
    assert h.queries == asked  # the result was reused, DNS not asked again
    # The next transaction of the same connection (new instance) gets its own header.
    fourth = await h.ask(rcpt(instance="4a1.6b07547d.629d1.1"))
    assert fourth.startswith(HEADER + "pass ")


async def test_a_rejected_transaction_stays_rejected_without_new_lookups() -> None:
    h = harness()
    replies = [
        await h.ask(rcpt("a@fail.example.net", recipient=f"u{i}@example.com")) for i in range(3)
    ]
    assert len(set(replies)) == 1
    assert replies[0].startswith("550 5.7.23 ")
    assert h.source.queries[("fail.example.net", "TXT")] == 1


async def test_a_deferred_transaction_reuses_the_temperror() -> None:
    h = harness()
    first = await h.ask(rcpt("a@temperror.example.net", recipient="u1@example.com"))
    asked = h.queries
    second = await h.ask(rcpt("a@temperror.example.net", recipient="u2@example.com"))
    assert first == second
    assert first.startswith("451 4.7.24 ")
    assert h.queries == asked


async def test_same_instance_with_other_sender_or_client_is_checked_again() -> None:
    h = harness()
    assert (await h.ask(rcpt("a@pass.example.net"))).startswith(HEADER + "pass ")
    assert (await h.ask(rcpt("a@softfail.example.net"))).startswith(HEADER + "softfail ")
    other_client = await h.ask(rcpt("a@pass.example.net", client="203.0.113.6"))
    assert other_client.startswith(HEADER + "pass ")


async def test_without_instance_every_request_is_checked() -> None:
    # Postfix always sends "instance"; other clients (iredapd-query) may not.
    h = harness()
    first = await h.ask(rcpt(instance=""))
    second = await h.ask(rcpt(instance=""))
    assert first == second
    assert first.startswith(HEADER)
    assert len(h.plugin.transactions) == 0


async def test_transactions_expire() -> None:
    h = harness()
    assert (await h.ask(rcpt())).startswith(HEADER)
    h.clock.advance(h.module.INSTANCE_TTL - 1)
    assert await h.ask(rcpt()) == "DUNNO"
    h.clock.advance(2)
    assert (await h.ask(rcpt())).startswith(HEADER)


async def test_transactions_are_bounded_oldest_first() -> None:
    h = harness()
    h.plugin.transactions.size = 3
    for i in range(5):
        assert (await h.ask(rcpt(instance=f"i{i}"))).startswith(HEADER)
    assert len(h.plugin.transactions) == 3
    assert await h.ask(rcpt(instance="i4")) == "DUNNO"  # still remembered
    assert (await h.ask(rcpt(instance="i0"))).startswith(HEADER)  # evicted: checked again


async def test_dry_run_remembers_nothing() -> None:
    h = harness()
    assert (await h.ask(rcpt(), dry_run=True)).startswith(HEADER)
    assert len(h.plugin.transactions) == 0
    assert (await h.ask(rcpt())).startswith(HEADER)


async def test_concurrent_requests_of_one_transaction_add_one_header() -> None:
    # Postfix asks one RCPT at a time; if two came at once, one header still.
    h = harness()
    replies = await asyncio.gather(*(h.ask(rcpt(recipient=f"u{i}@example.com")) for i in range(4)))
    assert sum(r.startswith(HEADER) for r in replies) == 1
    assert replies.count("DUNNO") == 3


# -- header safety --------------------------------------------------------------------


@pytest.mark.parametrize(
    "helo",
    [
        "evil.example.net\r\nX-Injected: yes",
        'a" ; receiver=evil.example; x="',
        "(comment) \\ ) ( ; identity=helo;",
        "ünïcödé.example",
        "x" * 1000,
        "",
        "[203.0.113.5]",
        "\x00\x1b[31m\t;",
    ],
)
@pytest.mark.parametrize("sender", ["someone@pass.example.net", "", 'we"ird;(x)@pass.example.net'])
async def test_header_injection_is_impossible(helo: str, sender: str) -> None:
    h = harness()
    action = await h.ask(rcpt(sender, helo=helo))

    assert Action.parse(action).text == action  # no control characters, within the limit
    assert len(action) <= MAX_ACTION_LENGTH
    assert action.isascii() and action.isprintable()
    _result, _comment, pairs = header_of(action)
    assert set(pairs) <= {
        "client-ip",
        "envelope-from",
        "helo",
        "receiver",
        "identity",
        "mechanism",
        "problem",
    }
    assert pairs["receiver"] == HOSTNAME
    assert pairs["identity"] == "mailfrom"
    assert pairs["client-ip"] == CLIENT
    if helo:
        shown = "".join(c if " " <= c <= "~" else "?" for c in helo)
        assert shown.startswith(pairs["helo"])
        assert len(pairs["helo"]) >= min(len(shown), 24)


async def test_explanation_with_control_characters_is_cleaned() -> None:
    # exp= may expand %{h}: the HELO name the client chose ends up in the reply.
    h = harness()
    action = await h.ask(rcpt("a@helo-exp.example.net", helo="bad\r\nX-Injected: 1"))
    assert action.startswith("550 5.7.23 SPF fail: explanation from helo-exp.example.net: ")
    assert action.isprintable()
    assert Action.parse(action).text == action


@pytest.mark.parametrize("cap", [0, 1, 50, 2000])
def test_header_action_always_fits(cap: int) -> None:
    h = harness()
    nasty = '"\\(' * cap
    result = SPFResult(
        "permerror",
        problem=nasty,
        client_ip="2001:db8::1",
        domain=nasty,
        sender=nasty,
        helo=nasty,
        receiver=nasty,
        mechanism=nasty,
    )
    action = h.module.header_action(result)
    if action is not None:
        assert len(action.text) <= MAX_ACTION_LENGTH
        assert header_of(action.text)[0] == "permerror"
    else:
        assert cap > 0


# -- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "sender", "expected"),
    [
        ({"softfail": "reject"}, "a@softfail.example.net", "550 5.7.23 SPF softfail: "),
        ({"permerror": "reject"}, "a@permerror.example.net", "550 5.7.24 SPF permerror: "),
        ({"permerror": "defer"}, "a@permerror.example.net", "451 4.7.24 SPF permerror: "),
        ({"NONE": "Defer"}, "a@none.example.net", "451 4.7.23 SPF none: "),
        ({"fail": "dunno"}, "a@fail.example.net", HEADER + "fail "),
        ({"fail": "DUNNO"}, "a@fail.example.net", HEADER + "fail "),
        ({"temperror": "dunno"}, "a@temperror.example.net", HEADER + "temperror "),
        (
            {"neutral": "WARN SPF {result} for {sender} from {ip}"},
            "a@neutral.example.net",
            "WARN SPF neutral for a@neutral.example.net from 203.0.113.5",
        ),
        ({"softfail": "HOLD"}, "a@softfail.example.net", "HOLD"),
        (
            {"fail": "554 5.7.1 {domain} says no {unknown}"},
            "a@fail.example.net",
            "554 5.7.1 fail.example.net says no {unknown}",
        ),
        ({"pass": "DEFER_IF_PERMIT later"}, "a@pass.example.net", "DEFER_IF_PERMIT later"),
    ],
)
async def test_configurable_actions(actions: Mapping[str, str], sender: str, expected: str) -> None:
    h = harness(SPF_ACTIONS=actions)
    assert (await h.ask(rcpt(sender))).startswith(expected)
    # Results not listed keep their defaults.
    if "fail" not in {k.lower() for k in actions}:
        assert (await h.ask(rcpt("a@fail.example.net", instance="x"))).startswith("550 5.7.23 ")


async def test_reject_and_defer_texts() -> None:
    h = harness(
        SPF_ACTIONS={"softfail": "defer"},
        SPF_REJECT_TEXT="Go away, {ip} ({reason}) {helo}",
        SPF_DEFER_TEXT="Later please: {result} for {domain}",
    )
    assert await h.ask(rcpt("a@fail.example.net")) == (
        "550 5.7.23 Go away, 203.0.113.5 (fail.example.net does not designate 203.0.113.5 "
        "as permitted sender) mail.example.net"
    )
    assert await h.ask(rcpt("a@softfail.example.net")) == (
        "451 4.7.23 Later please: softfail for softfail.example.net"
    )


async def test_long_reject_text_is_cut_to_the_limit() -> None:
    h = harness(SPF_REJECT_TEXT="{sender} " * 40)
    action = await h.ask(rcpt(("x" * 60) + "@fail.example.net"))
    assert len(action) <= MAX_ACTION_LENGTH
    assert action.startswith("550 5.7.23 xxx")


async def test_header_can_be_turned_off() -> None:
    h = harness(SPF_ADD_HEADER=False)
    assert await h.ask(rcpt()) == "DUNNO"
    assert h.queries > 0  # still checked: fail is still rejected
    assert (await h.ask(rcpt("a@fail.example.net", instance="x"))).startswith("550 ")


async def test_receiver_name() -> None:
    h = harness(SPF_RECEIVER="spf.example.test")
    _, comment, pairs = header_of(await h.ask(rcpt()))
    assert pairs["receiver"] == "spf.example.test"
    assert comment.startswith("spf.example.test: ")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SPF_ACTIONS": {"softfial": "reject"}}, "'softfial' is not an SPF result"),
        ({"SPF_ACTIONS": {"fail": "OK"}}, "OK is not allowed"),
        ({"SPF_ACTIONS": {"fail": "123"}}, "123 is not allowed"),
        ({"SPF_ACTIONS": {"fail": "PREPEND X-Spam: yes"}}, "PREPEND is not allowed"),
        ({"SPF_ACTIONS": {"fail": "FILTER smtp:[127.0.0.1]:10025"}}, "FILTER is not allowed"),
        ({"SPF_ACTIONS": {"fail": "no such verb"}}, "unknown action verb"),
        ({"SPF_ACTIONS": {"fail": ""}}, "empty action"),
        ({"SPF_ACTIONS": {"fail": 5}}, "must be a string"),
        ({"SPF_REJECT_TEXT": "bell \x07"}, "SPF_REJECT_TEXT: action contains a control"),
        ({"SPF_DEFER_TEXT": "x" * 500}, "SPF_DEFER_TEXT: action longer than"),
        ({"SPF_TIMEOUT": 0}, "SPF_TIMEOUT must be a number greater than 0"),
        ({"SPF_TIMEOUT": -1.5}, "SPF_TIMEOUT must be a number greater than 0"),
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        harness(**overrides)


def test_settings_of_the_wrong_type_are_refused_when_loading() -> None:
    with pytest.raises(ConfigError, match="SPF_ACTIONS must be a dict"):
        load_namespace({}, overrides={"plugins": ["spf"], "SPF_ACTIONS": ["fail"]})
    with pytest.raises(ConfigError, match="SPF_ADD_HEADER must be a bool"):
        load_namespace({}, overrides={"plugins": ["spf"], "SPF_ADD_HEADER": "yes"})


def test_defaults() -> None:
    h = harness()
    config = h.plugin.config
    assert config.add_header is True
    assert config.receiver == HOSTNAME
    assert config.timeout == 4.0
    assert {r: rule.kind for r, rule in config.actions.items()} == {
        "pass": "dunno",
        "fail": "reject",
        "softfail": "dunno",
        "neutral": "dunno",
        "none": "dunno",
        "permerror": "dunno",
        "temperror": "defer",
    }
    assert h.plugin.requires == frozenset({"dns"})
    assert h.chain.describe() == [("spf", 20, ["RCPT"])]


def test_spf_timeout_is_kept_below_the_plugin_deadline(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        h = harness(SPF_TIMEOUT=10, PLUGIN_TIMEOUTS={"spf": 2.5})
    assert h.plugin.config.timeout == pytest.approx(2.0)
    assert "SPF_TIMEOUT (10s) is not below the spf plugin's deadline (2.5s)" in caplog.text


# -- deadlines ------------------------------------------------------------------------


class Silent:
    """A DNSSource whose queries never end (a name server that never answers)."""

    def __init__(self) -> None:
        self.total = 0

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        self.total += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_the_spf_deadline_gives_temperror_before_the_plugin_deadline() -> None:
    spf_timeout = 0.2 * TIME_SCALE
    h = harness(Silent(), SPF_TIMEOUT=spf_timeout, PLUGIN_TIMEOUT=10 * TIME_SCALE)
    started = time.monotonic()
    action = await h.ask(rcpt("a@pass.example.net"))
    elapsed = time.monotonic() - started

    assert action.startswith("451 4.7.24 SPF temperror: ")
    assert "SPF evaluation took more than" in action
    assert spf_timeout * 0.9 <= elapsed < spf_timeout + 2 * TIME_SCALE
    # The next recipient of the transaction gets the same answer at once.
    started = time.monotonic()
    assert await h.ask(rcpt("a@pass.example.net", recipient="u2@example.com")) == action
    assert time.monotonic() - started < 0.1 * TIME_SCALE
    assert h.queries == 1


# -- the plugin in a chain ---------------------------------------------------------------


def test_loaded_from_the_plugins_setting_and_needs_dns() -> None:
    loaded = load_namespace({}, overrides={"plugins": ["spf"]})
    cls = loaded.specs["spf"].cls
    assert issubclass(cls, Plugin)
    assert inspect.getsourcefile(cls) == str(REPO / "plugins" / "spf.py")


async def test_a_later_plugin_still_decides_on_the_first_recipient(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "custom_block",
        """
        class P(Plugin):
            async def check(self, ctx):
                if ctx.request.recipient == "blocked@example.com":
                    return "REJECT blocked"
                return None
        """,
    )
    loaded = load_namespace(
        {},
        overrides={
            "plugins": ["spf", "custom_block"],
            "PLUGIN_DIRS": [str(tmp_path)],
            "SERVER_HOSTNAME": HOSTNAME,
            "DNS_NAMESERVERS": ["127.0.0.1"],
        },
    )
    services = Services(loaded.settings)
    services.resolver = ZoneSource(ZONE)
    chain = Chain.build(loaded.settings, services, loaded.specs)
    blocked = await chain.evaluate(rcpt(recipient="blocked@example.com"))
    assert blocked.action.text == "REJECT blocked"
    # same transaction: the header was not sent with the refused recipient,
    # so the next recipient carries it, and only that one
    header = await chain.evaluate(rcpt(recipient="user1@example.com"))
    assert header.action.text.startswith(HEADER)
    assert header.plugin == "spf"
    again = await chain.evaluate(rcpt(recipient="user2@example.com"))
    assert again.action.text == "DUNNO"


async def test_context_now_is_used_for_expiry() -> None:
    # The plugin reads the request's arrival time (ctx.now), not the wall clock.
    h = harness()
    ctx = Context(rcpt(), h.chain.settings, h.chain.services, now=5.0)
    action = await h.plugin.check(ctx)
    assert action is not None and action.text.startswith(HEADER)
    key = ("4a1.6b07547d.629d1.0", CLIENT, "someone@pass.example.net", "mail.example.net")
    assert h.plugin.transactions.get(key, 5.0 + h.module.INSTANCE_TTL - 1) is not None
    assert h.plugin.transactions.get(key, 5.0 + h.module.INSTANCE_TTL) is None
