"""The SRS channels' decisions: bypass rules in order, reverse gate, backend errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from iredapd.srs import SRS, SRSFormatError
from iredapd.srs_policy import (
    TEXT_BACKEND_UNAVAILABLE,
    TEXT_EXCLUDED,
    TEXT_LOCAL_DOMAIN,
    TEXT_NOT_EMAIL,
    TEXT_NOT_SRS,
    TEXT_SERVER_HOSTNAME,
    TEXT_SRS_DOMAIN,
    SRSForward,
    SRSReverse,
    exclusion_candidates,
)
from iredapd.storage.db import BackendUnavailable
from iredapd.tcptable import Lookup, Status, TcpReply, TcpTableParser, Unexpected, encode

SECRET = "7d86deed2cdee17baa8cf216348efe05"
NOW = 1700000000.0  # TT=G3 (access-policies.md §14.7)
DAY = 86400
SRS_DOMAIN = "srs.mydomain.com"
HOSTNAME = "mx1.mydomain.com"


@dataclass
class FakeBackend:
    """Injected lookups that record their calls and can be made to fail."""

    local: set[str] = field(default_factory=lambda: {"mydomain.com", "alias.mydomain.com"})
    excluded: set[str] = field(default_factory=lambda: {".excluded.org", "tld"})
    local_fails: bool = False
    excluded_fails: bool = False
    calls: list[tuple[str, object]] = field(default_factory=list)

    async def is_local_domain(self, domain: str) -> bool:
        self.calls.append(("local", domain))
        if self.local_fails:
            raise BackendUnavailable("vmail database: gone")
        return domain in self.local

    async def is_excluded(self, candidates: list[str]) -> bool:
        self.calls.append(("excluded", list(candidates)))
        if self.excluded_fails:
            raise BackendUnavailable("iredapd database: gone")
        return any(c in self.excluded for c in candidates)


def forward_channel(backend: FakeBackend, now: float = NOW) -> SRSForward:
    return SRSForward(
        SRS([SECRET]),
        srs_domain=SRS_DOMAIN,
        server_hostname=HOSTNAME,
        is_local_domain=backend.is_local_domain,
        is_excluded=backend.is_excluded,
        clock=lambda: now,
    )


def reverse_channel(now: float = NOW) -> SRSReverse:
    return SRSReverse(SRS([SECRET, "oldsecret"]), clock=lambda: now)


def forward(key: str, backend: FakeBackend | None = None) -> TcpReply:
    return asyncio.run(forward_channel(backend or FakeBackend()).lookup(key))


def reverse(key: str, now: float = NOW) -> TcpReply:
    return asyncio.run(reverse_channel(now).lookup(key))


# -- exclusion candidates ------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "candidates"),
    [
        ("a.b.c", ["a.b.c", ".a.b.c", "c", ".c", "b.c", ".b.c"]),
        (
            "a.b.example.com",
            [
                "a.b.example.com",
                ".a.b.example.com",
                "com",
                ".com",
                "example.com",
                ".example.com",
                "b.example.com",
                ".b.example.com",
            ],
        ),
        ("example.com", ["example.com", ".example.com", "com", ".com"]),
        ("localhost", ["localhost", ".localhost"]),
    ],
)
def test_exclusion_candidates_exactly_as_the_spec_lists(domain: str, candidates: list[str]) -> None:
    assert exclusion_candidates(domain) == candidates


# -- forward: each rule, in order --------------------------------------------------


def test_forward_rewrites_a_foreign_sender() -> None:
    backend = FakeBackend()
    reply = forward("alice@example.com", backend)
    assert reply == TcpReply.found("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com")
    assert reply.render() == b"200 SRS0=bZmn=G3=example.com=alice@srs.mydomain.com\n"
    assert backend.calls == [
        ("local", "example.com"),
        ("excluded", ["example.com", ".example.com", "com", ".com"]),
    ]


@pytest.mark.parametrize(
    "key",
    ["", "alice", "alice@localhost", "a b@x.com", "a%b@x.com", "a@b@x.com>", "o'brien@x.com"],
)
def test_rule_0_not_an_email(key: str) -> None:
    backend = FakeBackend()
    assert forward(key, backend) == TcpReply.not_found(TEXT_NOT_EMAIL)
    assert backend.calls == []


def test_rule_1_srs_domain_before_any_lookup() -> None:
    backend = FakeBackend(local={SRS_DOMAIN}, excluded={SRS_DOMAIN})
    reply = forward("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com", backend)
    assert reply == TcpReply.not_found(TEXT_SRS_DOMAIN)
    assert reply.render() == b"500 Domain is srs_domain, bypassed.\n"
    assert backend.calls == []


def test_rule_2_server_hostname_before_any_lookup() -> None:
    backend = FakeBackend(local={HOSTNAME}, excluded={HOSTNAME})
    assert forward(f"root@{HOSTNAME}", backend) == TcpReply.not_found(TEXT_SERVER_HOSTNAME)
    assert backend.calls == []


def test_rule_1_wins_when_srs_domain_is_the_hostname() -> None:
    channel = SRSForward(
        SRS([SECRET]),
        srs_domain=HOSTNAME,
        server_hostname=HOSTNAME,
        is_local_domain=FakeBackend().is_local_domain,
        is_excluded=FakeBackend().is_excluded,
    )
    reply = asyncio.run(channel.lookup(f"root@{HOSTNAME}"))
    assert reply == TcpReply.not_found(TEXT_SRS_DOMAIN)


@pytest.mark.parametrize("key", ["bob@mydomain.com", "bob@alias.mydomain.com"])
def test_rule_3_local_domain_before_exclusions(key: str) -> None:
    backend = FakeBackend(excluded={"com"})
    assert forward(key, backend) == TcpReply.not_found(TEXT_LOCAL_DOMAIN)
    assert backend.calls == [("local", key.split("@")[1])]


@pytest.mark.parametrize(
    "key",
    ["u@excluded.org", "u@sub.excluded.org", "u@a.b.excluded.org", "u@x.tld", "u@y.x.tld"],
)
def test_rule_5_excluded_domains(key: str) -> None:
    assert forward(key) == TcpReply.not_found(TEXT_EXCLUDED)


def test_rule_5_bare_entry_covers_subdomains() -> None:
    backend = FakeBackend(excluded={"example.com"})
    assert forward("u@mail.example.com", backend) == TcpReply.not_found(TEXT_EXCLUDED)
    assert forward("u@example.com", backend) == TcpReply.not_found(TEXT_EXCLUDED)
    assert forward("u@notexample.com", backend).status is Status.FOUND


def test_rule_6_rewrite_error_answers_empty_500() -> None:
    # Unreachable through is_email today; a broken SRS must still answer "500 ".
    class Broken(SRS):
        __slots__ = ()

        def forward(self, address: str, srs_domain: str, *, now: float | None = None) -> str:
            raise SRSFormatError("boom")

    backend = FakeBackend()
    channel = SRSForward(
        Broken([SECRET]),
        srs_domain=SRS_DOMAIN,
        server_hostname=HOSTNAME,
        is_local_domain=backend.is_local_domain,
        is_excluded=backend.is_excluded,
    )
    reply = asyncio.run(channel.lookup("alice@example.com"))
    assert reply == TcpReply.not_found()
    assert reply.render() == b"500 \n"


def test_forward_of_srs0_from_elsewhere_gives_srs1() -> None:
    reply = forward("SRS0=abcd=AB=orig.com=bob@hop1.com")
    assert reply == TcpReply.found("SRS1=Nm61=hop1.com==abcd=AB=orig.com=bob@srs.mydomain.com")


def test_forward_keeps_case_of_the_address() -> None:
    reply = forward("Alice@Example.COM")
    assert reply == TcpReply.found("SRS0=bZmn=G3=Example.COM=Alice@srs.mydomain.com")


# Difference from iRedAPD: domains are compared and looked up lower-cased.
def test_domain_case_is_folded_for_rules_and_lookups() -> None:
    backend = FakeBackend()
    assert forward("x@SRS.MyDomain.com", backend) == TcpReply.not_found(TEXT_SRS_DOMAIN)
    assert forward("x@MX1.mydomain.COM", backend) == TcpReply.not_found(TEXT_SERVER_HOSTNAME)
    assert forward("x@MyDomain.Com", backend) == TcpReply.not_found(TEXT_LOCAL_DOMAIN)
    assert forward("x@Sub.EXCLUDED.org", backend) == TcpReply.not_found(TEXT_EXCLUDED)
    assert ("local", "sub.excluded.org") in backend.calls


# -- forward: backend errors ----------------------------------------------------------


# Difference from iRedAPD: "500 " there (or "not local"); 400 here so Postfix retries.
def test_local_domain_lookup_failure_is_a_temporary_error() -> None:
    backend = FakeBackend(local_fails=True)
    reply = forward("alice@example.com", backend)
    assert reply == TcpReply.temporary(TEXT_BACKEND_UNAVAILABLE)
    assert reply.render() == b"400 Database unavailable, try again later.\n"
    assert backend.calls == [("local", "example.com")]


def test_exclusion_lookup_failure_is_a_temporary_error() -> None:
    backend = FakeBackend(excluded_fails=True)
    assert forward("alice@example.com", backend) == TcpReply.temporary(TEXT_BACKEND_UNAVAILABLE)


def test_backend_failure_does_not_hide_earlier_rules() -> None:
    backend = FakeBackend(local_fails=True, excluded_fails=True)
    assert forward(f"x@{SRS_DOMAIN}", backend) == TcpReply.not_found(TEXT_SRS_DOMAIN)
    assert forward(f"x@{HOSTNAME}", backend) == TcpReply.not_found(TEXT_SERVER_HOSTNAME)
    backend = FakeBackend(excluded_fails=True)
    assert forward("x@mydomain.com", backend) == TcpReply.not_found(TEXT_LOCAL_DOMAIN)


def test_other_errors_propagate_to_the_server() -> None:
    async def broken(_domain: str) -> bool:
        raise RuntimeError("bug")

    channel = SRSForward(
        SRS([SECRET]),
        srs_domain=SRS_DOMAIN,
        server_hostname=HOSTNAME,
        is_local_domain=broken,
        is_excluded=FakeBackend().is_excluded,
    )
    with pytest.raises(RuntimeError):
        asyncio.run(channel.lookup("alice@example.com"))


# -- reverse -------------------------------------------------------------------------


def test_reverse_restores() -> None:
    reply = reverse("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com")
    assert reply == TcpReply.found("alice@example.com")
    assert reply.render() == b"200 alice@example.com\n"


def test_reverse_srs1_gives_srs0_at_first_hop() -> None:
    reply = reverse("SRS1=Nm61=hop1.com==abcd=AB=orig.com=bob@srs.mydomain.com")
    assert reply == TcpReply.found("SRS0=abcd=AB=orig.com=bob@hop1.com")


def test_reverse_accepts_any_domain_and_case() -> None:
    assert reverse("srs0=BZMN=g3=EXAMPLE.COM=Alice@x.org") == TcpReply.found("Alice@EXAMPLE.COM")


def test_reverse_with_previous_secret() -> None:
    reply = reverse("SRS0=eUOv=G3=ext.org=carol@srs.mydomain.com")
    assert reply == TcpReply.found("carol@ext.org")


@pytest.mark.parametrize("key", ["", "nobody", "a b@x.com", "SRS0=x=y=z=w@localhost"])
def test_reverse_rule_0_not_an_email(key: str) -> None:
    assert reverse(key) == TcpReply.not_found(TEXT_NOT_EMAIL)


@pytest.mark.parametrize(
    "key",
    ["alice@example.com", "SRS0=abc@d.com", "SRS1=abcd=hop1.com=xyz@d.com", "srs0-report@x.com"],
)
def test_reverse_rule_1_not_srs(key: str) -> None:
    reply = reverse(key)
    assert reply == TcpReply.not_found(TEXT_NOT_SRS)
    assert reply.render() == b"500 Not a valid SRS address, bypassed.\n"


@pytest.mark.parametrize(
    ("key", "now"),
    [
        ("SRS0=AAAA=G3=example.com=alice@srs.mydomain.com", NOW),  # forged hash
        ("SRS0=b=G3=example.com=alice@srs.mydomain.com", NOW),  # short hash
        ("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com", NOW + 21 * DAY),  # expired
        ("SRS0=bZmn=G3=example.com=mallory@srs.mydomain.com", NOW),  # changed
        ("SRS1=AAAA=hop1.com==abcd=AB=orig.com=bob@srs.mydomain.com", NOW),
    ],
)
def test_reverse_rule_2_failures_answer_empty_500(key: str, now: float) -> None:
    reply = reverse(key, now)
    assert reply == TcpReply.not_found()
    assert reply.render() == b"500 \n"


def test_reverse_window_last_day() -> None:
    reply = reverse("SRS0=bZmn=G3=example.com=alice@srs.mydomain.com", NOW + 20 * DAY)
    assert reply == TcpReply.found("alice@example.com")


# -- answer(): parsed requests in, replies out -------------------------------------------


def test_answer_unexpected_line_with_iredapds_text() -> None:
    for channel in (forward_channel(FakeBackend()), reverse_channel()):
        reply = asyncio.run(channel.answer(Unexpected("put a b")))
        assert reply.render() == b"500 Unexpected input: put a b\n"


def test_answer_refuses_keys_that_were_not_utf8() -> None:
    backend = FakeBackend()
    request = Lookup("\ufffd@example.com", decode_error=True)
    assert asyncio.run(forward_channel(backend).answer(request)) == TcpReply.not_found(
        TEXT_NOT_EMAIL
    )
    assert backend.calls == []
    assert asyncio.run(reverse_channel().answer(request)) == TcpReply.not_found(TEXT_NOT_EMAIL)


def test_wire_to_wire_forward_and_reverse() -> None:
    """Bytes as Postfix sends them, through parser, decision and rendering."""

    async def run(channel: SRSForward | SRSReverse, wire: bytes) -> bytes:
        out = b""
        for request in TcpTableParser().feed(wire):
            out += (await channel.answer(request)).render()
        return out

    fwd = forward_channel(FakeBackend())
    umlaut = SRS([SECRET]).forward("ü@bücher.de", SRS_DOMAIN, now=NOW)
    wire = b"get alice@example.com\nget bob@mydomain.com\nget %C3%BC@b%C3%BCcher.de\nhello\n"
    assert asyncio.run(run(fwd, wire)) == (
        b"200 SRS0=bZmn=G3=example.com=alice@srs.mydomain.com\n"
        b"500 Domain is a local mail domain, bypassed.\n"
        b"200 " + encode(umlaut) + b"\n"
        b"500 Unexpected input: hello\n"
    )
    assert b"%C3%BC" in encode(umlaut)
    wire = b"get " + encode(umlaut) + b"\n"
    assert asyncio.run(run(reverse_channel(), wire)) == b"200 %C3%BC@b%C3%BCcher.de\n"
