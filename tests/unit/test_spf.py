"""Unit tests of iredapd.spf beyond the conformance suites (test_spf_suite.py).

Macros (with RFC 7208 section 7.4's examples), syntax errors, processing limits,
DNS failures, identities, the Received-SPF header and the network expansion.
DNS answers come from an in-memory zone (tests.support.dnsfixtures.ZoneSource).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping
from typing import Any

import pytest

from iredapd.resolver import DNSAnswer
from iredapd.spf import (
    RESULTS,
    SPFLimits,
    SPFResult,
    check_helo,
    check_host,
    check_mail_from,
    is_allowed_server_in_spf,
    received_spf,
    spf_networks,
)
from tests.support.dnsfixtures import TIME_SCALE, ZoneSource, run

Zone = dict[str, list[Any]]


def spf(
    zone: Zone | ZoneSource,
    ip: str = "192.0.2.1",
    mail_from: str = "user@example.com",
    helo: str = "mail.example.org",
    **options: Any,
) -> SPFResult:
    source = zone if isinstance(zone, ZoneSource) else ZoneSource(zone)
    return run(check_mail_from(ip, mail_from, helo, resolver=source, **options))


def record(text: str, more: Zone | None = None) -> Zone:
    """A zone where example.com publishes ``text``, plus the names in ``more``."""
    return {"example.com": [{"TXT": text}], **(more or {})}


# -- macros ---------------------------------------------------------------------

SENDER = "strong-bad@email.example.com"
CLOCK = 1_700_000_000.5
MACRO_ZONE_BASE = {"email.example.com": [{"TXT": "v=spf1 -all exp=why.email.example.com"}]}


def expand(macro: str, ip: str = "192.0.2.3", extra: Zone | None = None) -> str:
    """Expand ``macro`` as explanation text of a fail for SENDER from ``ip``."""
    zone = {**MACRO_ZONE_BASE, "why.email.example.com": [{"TXT": macro}], **(extra or {})}
    result = run(
        check_host(
            ip,
            "email.example.com",
            SENDER,
            resolver=ZoneSource(zone),
            helo="mx.example.org",
            receiver="mx.example.net",
            clock=lambda: CLOCK,
        )
    )
    assert result.result == "fail"
    return result.explanation


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        # RFC 7208 section 7.4, sender strong-bad@email.example.com, IP 192.0.2.3
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        # the other letters, escapes, upper case
        (
            "%{i} %{c} %{h} %{r} %{t}",
            "192.0.2.3 192.0.2.3 mx.example.org mx.example.net 1700000000",
        ),
        ("%{d9}", "email.example.com"),
        ("%{d001}", "com"),
        ("%{l-=}", "strong.bad"),
        ("100%% sure%_%-", "100% sure %20"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("%{p}", "unknown"),
    ],
)
def test_macro_expansion(macro: str, expected: str) -> None:
    assert expand(macro) == expected


def test_macro_ipv6_rfc_example() -> None:
    # RFC 7208 7.4: 2001:db8::cb01
    nibbles = "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    got = expand("%{ir}.%{v}._spf.%{d2} %{c}", ip="2001:DB8::CB01")
    assert got == f"{nibbles}.ip6._spf.example.com 2001:db8::cb01"


def test_macro_ipv4_mapped_is_ipv4() -> None:
    assert expand("%{i} %{v}", ip="::ffff:192.0.2.3") == "192.0.2.3 in-addr"


def test_macro_upper_case_url_escapes() -> None:
    zone = {
        "example.com": [{"TXT": "v=spf1 -all exp=why.example.com"}],
        "why.example.com": [{"TXT": "%{L}/%{l}"}],
    }
    result = spf(zone, mail_from="~a&b=c d/é@example.com")
    assert result.explanation == "~a%26b%3Dc%20d%2F%C3%A9/~a&b=c d/é"


def test_macro_p_prefers_the_domain_and_validates() -> None:
    ptr = {
        "3.2.0.192.in-addr.arpa": [{"PTR": "other.example.net"}, {"PTR": "mx.email.example.com"}]
    }
    validated = {
        "other.example.net": [{"A": "192.0.2.3"}],
        "mx.email.example.com": [{"A": "192.0.2.3"}],
    }
    assert expand("%{p}", extra={**ptr, **validated}) == "mx.email.example.com"
    # a name whose address does not come back is not "validated"
    assert expand("%{p}", extra={**ptr, "other.example.net": [{"A": "192.0.2.3"}]}) == (
        "other.example.net"
    )
    assert expand("%{p}", extra=ptr) == "unknown"


def test_macro_in_domain_spec_used_for_lookup() -> None:
    zone = record(
        "v=spf1 exists:%{ir}.%{l1r+}._spf.%{d} -all",
        {"1.2.0.192.user._spf.example.com": [{"A": "127.0.0.2"}]},
    )
    assert spf(zone, mail_from="user+tag@example.com").result == "pass"
    assert spf(zone, mail_from="other@example.com").result == "fail"


def test_expanded_name_over_253_characters_loses_labels_on_the_left() -> None:
    long_local = ".".join(["x" * 60] * 5)  # 304 characters
    zone = record("v=spf1 exists:%{l}.example.com -all")
    source = ZoneSource(zone)
    spf(source, mail_from=f"{long_local}@example.com")
    asked = [name for name, rtype in source.queries if rtype == "A"]
    assert asked == [".".join(["x" * 60] * 3) + ".example.com"]
    assert len(asked[0]) <= 253


# -- syntax ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 a:%{d0}.example.com -all",  # zero digit transformer
        "v=spf1 exists:%{c}.example.com",  # c only in explanations
        "v=spf1 exists:%{x}.example.com",  # unknown letter
        "v=spf1 exists:100%.example.com",  # bare %
        "v=spf1 a:example.com:8080",  # toplabel with ':'
        "v=spf1 a:localhost",  # one label only
        "v=spf1 a:192.0.2.1",  # numeric toplabel
        "v=spf1 ip4:192.0.2.1/33",
        "v=spf1 ip4:192.0.2.1/08",  # leading zero
        "v=spf1 ip4:192.0.2.01",
        "v=spf1 ip4:192.0.2",
        "v=spf1 ip6:2001:db8::/129",
        "v=spf1 ip6:2001:db8::/" + "9" * 5000,  # no int() on endless digits
        "v=spf1 ip6:fe80::1%eth0",
        "v=spf1 ip6:192.0.2.1",
        "v=spf1 mx/24/64",
        "v=spf1 a//",
        "v=spf1 ptr/24",
        "v=spf1 include",
        "v=spf1 include:",
        "v=spf1 exists",
        "v=spf1 all:example.com",
        "v=spf1 foo",
        "v=spf1 +redirect=example.net",
        "v=spf1 1foo=bar",
        "v=spf1 foo=%",
        "v=spf1 redirect=a.example.net redirect=b.example.net",
        "v=spf1 exp=a.example.net exp=b.example.net -all",
        "v=spf1 exp= -all",
        "v=spf1 ip4:192.0.2.1\t-all",  # only SP separates terms
        "v=spf1 ip4:192.0.2.1 -all\x00",
        "v=spf1 a:bücher.example -all",  # 7-bit ASCII only
    ],
)
def test_syntax_errors_are_permerror(text: str) -> None:
    result = spf(record(text))
    assert result.result == "permerror", result
    assert result.problem


def test_syntax_error_after_a_match_is_still_permerror() -> None:
    # RFC 7208 4.6: errors anywhere in the record are detected.
    assert spf(record("v=spf1 ip4:192.0.2.1 bogus")).result == "permerror"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("V=SPF1 +ALL", "pass"),
        ("v=spf1   ?all   ", "neutral"),
        ("v=spf1 ip4:192.0.2.1 unknown-mod=any%%thing%{d}", "pass"),
        ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
        ("v=spf1 IP4:192.0.2.1/32 -ALL", "pass"),
        ("v=spf1 ip4:198.51.100.0/24 ~all", "softfail"),
        ("v=spf1 -ip4:192.0.2.1 +all", "fail"),
        ("v=spf1 ip6:::/0 -all", "fail"),  # an IPv4 client never matches ip6
        ("v=spf1 ip4:198.51.100.1", "neutral"),  # default result (4.7)
        ("v=spf1 a:%{d" + "9" * 5000 + "}.example.com", "neutral"),  # keeps all parts
        ("v=spf10 +all", "none"),
        ("spf1 +all", "none"),
    ],
)
def test_records(text: str, expected: str) -> None:
    assert spf(record(text)).result == expected


def test_multiple_records_are_permerror_and_other_txt_ignored() -> None:
    zone = {"example.com": [{"TXT": "v=spf1 +all"}, {"TXT": "v=spf1 -all"}]}
    assert spf(zone).result == "permerror"
    zone = {"example.com": [{"TXT": "google-site-verification=x"}, {"TXT": "v=spf1 +all"}]}
    assert spf(zone).result == "pass"


def test_mechanisms_with_dns() -> None:
    zone = record(
        "v=spf1 a mx:mx.example.com/24 ptr:example.com -all",
        {
            "mx.example.com": [{"MX": [10, "mail.example.com"]}],
            "mail.example.com": [{"A": "198.51.100.10"}],
            "10.0.0.10.in-addr.arpa": [{"PTR": "host.example.com"}],
            "host.example.com": [{"A": "10.0.0.10"}],
        },
    )
    zone["example.com"].append({"A": "192.0.2.1"})
    assert spf(zone, ip="192.0.2.1").mechanism == "a"
    assert spf(zone, ip="198.51.100.99").mechanism == "mx:mx.example.com/24"
    assert spf(zone, ip="10.0.0.10").mechanism == "ptr:example.com"
    assert spf(zone, ip="203.0.113.1").result == "fail"


def test_dual_cidr_applies_per_family() -> None:
    zone = record(
        "v=spf1 a:h.example.com/24//64 -all",
        {"h.example.com": [{"A": "192.0.2.200"}, {"AAAA": "2001:db8:1:2::1"}]},
    )
    assert spf(zone, ip="192.0.2.1").result == "pass"
    assert spf(zone, ip="2001:db8:1:2:ffff::1").result == "pass"
    assert spf(zone, ip="2001:db8:1:3::1").result == "fail"


def test_ipv4_mapped_client_is_ipv4() -> None:
    zone = record("v=spf1 ip4:192.0.2.1 -all")
    assert spf(zone, ip="::ffff:192.0.2.1").result == "pass"


def test_include_and_redirect_results() -> None:
    zone = {
        "example.com": [{"TXT": "v=spf1 include:pass.example.net include:fail.example.net ~all"}],
        "pass.example.net": [{"TXT": "v=spf1 ip4:192.0.2.1 -all"}],
        "fail.example.net": [{"TXT": "v=spf1 -all"}],
        "redirect.example.com": [{"TXT": "v=spf1 redirect=pass.example.net"}],
        "none.example.com": [{"TXT": "v=spf1 include:nothing.example.net"}],
    }
    assert spf(zone).result == "pass"
    assert spf(zone, ip="192.0.2.2").result == "softfail"
    assert spf(zone, mail_from="a@redirect.example.com", ip="192.0.2.2").result == "fail"
    assert spf(zone, mail_from="a@none.example.com").result == "permerror"


def test_explanation_only_for_fail_and_from_the_deciding_record() -> None:
    zone = {
        "example.com": [{"TXT": "v=spf1 -ip4:192.0.2.66 ?all exp=why.example.com"}],
        "why.example.com": [{"TXT": "%{i} is not one of ours, see https://example.com/%{L}"}],
    }
    result = spf(zone, ip="192.0.2.66", mail_from="o'hara@example.com")
    assert result.explanation == "192.0.2.66 is not one of ours, see https://example.com/o%27hara"
    assert spf(zone, ip="192.0.2.1").explanation == ""


# -- limits ---------------------------------------------------------------------


def test_record_including_itself_is_permerror_not_a_hang() -> None:
    source = ZoneSource(record("v=spf1 include:example.com -all"))
    started = time.monotonic()
    result = spf(source)
    assert result.result == "permerror"
    assert "DNS lookups" in result.problem
    assert source.total <= 12
    assert time.monotonic() - started < 1


def test_mutual_includes_and_self_redirect_are_permerror() -> None:
    zone = {
        "example.com": [{"TXT": "v=spf1 include:example.net"}],
        "example.net": [{"TXT": "v=spf1 include:example.com"}],
        "loop.example.com": [{"TXT": "v=spf1 redirect=loop.example.com"}],
    }
    assert spf(zone).result == "permerror"
    assert spf(zone, mail_from="a@loop.example.com").result == "permerror"


def _lookups_zone(count: int) -> Zone:
    terms = " ".join(f"a:h{i}.example.com" for i in range(count))
    hosts = {f"h{i}.example.com": [{"A": "198.51.100.1"}] for i in range(count)}
    return record(f"v=spf1 {terms} ip4:192.0.2.1 -all", hosts)


def test_ten_dns_terms_allowed_eleventh_is_permerror() -> None:
    assert spf(_lookups_zone(10)).result == "pass"
    assert spf(_lookups_zone(11)).result == "permerror"
    assert spf(_lookups_zone(3), limits=SPFLimits(dns_terms=2)).result == "permerror"


def test_void_lookup_limit() -> None:
    two = record("v=spf1 a:nx1.example.com a:nx2.example.com ip4:192.0.2.1")
    three = record("v=spf1 a:nx1.example.com a:nx2.example.com a:nx3.example.com ip4:192.0.2.1")
    assert spf(two).result == "pass"
    result = spf(three)
    assert result.result == "permerror"
    assert "void" in result.problem
    assert spf(two, limits=SPFLimits(void_lookups=1)).result == "permerror"
    assert spf(three, limits=SPFLimits(void_lookups=5)).result == "pass"


@pytest.mark.parametrize(("names", "expected"), [(10, "pass"), (11, "permerror")])
def test_mx_names_limit(names: int, expected: str) -> None:
    mx = [{"MX": [i, f"mx{i}.example.com"]} for i in range(names)]
    hosts = {f"mx{i}.example.com": [{"A": f"198.51.100.{i}"}] for i in range(names)}
    zone = record("v=spf1 mx -all", hosts)
    zone["example.com"] += mx
    assert spf(zone, ip=f"198.51.100.{names - 1}").result == expected


def test_ptr_names_beyond_ten_are_ignored() -> None:
    ptrs = [{"PTR": f"h{i}.example.com"} for i in range(11)]
    hosts = {f"h{i}.example.com": [{"A": "192.0.2.1"}] for i in range(11)}
    zone = record("v=spf1 ptr:h10.example.com -all", {**hosts, "1.2.0.192.in-addr.arpa": ptrs})
    assert spf(zone).result == "fail"
    zone = record("v=spf1 ptr:h9.example.com -all", {**hosts, "1.2.0.192.in-addr.arpa": ptrs})
    assert spf(zone).result == "pass"


class _Stalling:
    """A DNS source that never answers."""

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_overall_deadline_gives_temperror() -> None:
    started = time.monotonic()
    result = run(
        check_host(
            "192.0.2.1",
            "example.com",
            "a@example.com",
            resolver=_Stalling(),
            limits=SPFLimits(timeout=0.05),
        )
    )
    assert result.result == "temperror"
    assert time.monotonic() - started < 1 * TIME_SCALE


# -- DNS failures ---------------------------------------------------------------


@pytest.mark.parametrize("marker", ["TIMEOUT", "SERVFAIL"])
def test_dns_errors_are_temperror(marker: str) -> None:
    assert spf({"example.com": [marker]}).result == "temperror"
    zone = record("v=spf1 a:broken.example.com -all", {"broken.example.com": [marker]})
    assert spf(zone).result == "temperror"
    zone = record("v=spf1 include:broken.example.com -all", {"broken.example.com": [marker]})
    assert spf(zone).result == "temperror"


def test_dns_errors_that_do_not_matter() -> None:
    # exp= lookup failing keeps the fail, without explanation (6.2)
    zone = record("v=spf1 -all exp=why.example.com", {"why.example.com": ["TIMEOUT"]})
    result = spf(zone)
    assert (result.result, result.explanation) == ("fail", "")
    # a PTR lookup error makes ptr not match (5.5)
    zone = record("v=spf1 ptr ?all", {"1.2.0.192.in-addr.arpa": ["SERVFAIL"]})
    assert spf(zone).result == "neutral"


def test_no_record_and_nxdomain_are_none() -> None:
    assert spf({"example.com": [{"A": "192.0.2.1"}]}).result == "none"
    assert spf({}).result == "none"


# -- identities -----------------------------------------------------------------


def test_null_sender_checks_postmaster_at_helo() -> None:
    zone = {"mail.example.org": [{"TXT": "v=spf1 ip4:192.0.2.1 -all exp=why.example.org"}]}
    zone["why.example.org"] = [{"TXT": "%{s}"}]
    result = spf(zone, mail_from="", helo="mail.example.org")
    assert (result.result, result.identity, result.domain) == (
        "pass",
        "mailfrom",
        "mail.example.org",
    )
    result = spf(zone, ip="192.0.2.9", mail_from="<>", helo="mail.example.org")
    assert result.explanation == "postmaster@mail.example.org"


def test_check_helo() -> None:
    zone = {"mail.example.org": [{"TXT": "v=spf1 a -all"}, {"A": "192.0.2.1"}]}
    result = run(check_helo("192.0.2.1", "mail.example.org", resolver=ZoneSource(zone)))
    assert (result.result, result.identity, result.sender) == (
        "pass",
        "helo",
        "postmaster@mail.example.org",
    )


@pytest.mark.parametrize(
    "domain",
    ["[192.0.2.1]", "localhost", "a..example.com", "x" * 64 + ".example.com", "192.0.2.1", ""],
)
def test_malformed_domains_are_none(domain: str) -> None:
    result = spf(record("v=spf1 +all"), mail_from=f"user@{domain}")
    assert result.result == "none"
    assert result.problem


def test_invalid_client_address_is_none() -> None:
    result = spf(record("v=spf1 +all"), ip="unknown")
    assert (result.result, result.problem) == ("none", "invalid client IP address")


def test_unicode_domain_is_queried_as_a_label() -> None:
    source = ZoneSource({"xn--bcher-kva.example": [{"TXT": "v=spf1 +all"}]})
    assert spf(source, mail_from="user@bücher.example").result == "pass"


def test_is_allowed_server_in_spf() -> None:
    zone = record("v=spf1 ip4:192.0.2.0/24 ~all")

    async def ask(domain: str, ip: str) -> bool:
        return await is_allowed_server_in_spf(domain, ip, ZoneSource(zone))

    assert run(ask("example.com", "192.0.2.7")) is True
    assert run(ask("example.com", "198.51.100.7")) is False
    assert run(ask("", "192.0.2.7")) is False
    assert run(ask("example.com", "")) is False


# -- Received-SPF ---------------------------------------------------------------


def test_received_spf_pass() -> None:
    result = spf(record("v=spf1 ip4:192.0.2.0/24 -all"), receiver="mx.example.net")
    assert received_spf(result) == (
        "pass (mx.example.net: domain of user@example.com designates 192.0.2.1 as permitted"
        ' sender) client-ip=192.0.2.1; envelope-from="user@example.com";'
        " helo=mail.example.org; receiver=mx.example.net; identity=mailfrom;"
        ' mechanism="ip4:192.0.2.0/24";'
    )


def test_received_spf_error_has_problem() -> None:
    header = received_spf(spf(record("v=spf1 bogus"), ip="2001:db8::1"))
    assert header.startswith("permerror (permanent error in processing domain of user@example")
    assert 'client-ip="2001:db8::1";' in header
    assert "problem=" in header
    assert "mechanism=" not in header


def test_received_spf_cannot_be_used_for_header_injection() -> None:
    evil = 'x"\r\nX-Injected: yes\\(@example.com'
    result = SPFResult(
        "fail",
        client_ip="192.0.2.1",
        sender=evil,
        helo="a)b\nc",
        receiver="mx(1).example.net",
        mechanism="-all",
    )
    header = received_spf(result)
    assert "\r" not in header and "\n" not in header
    assert 'envelope-from="x\\"??X-Injected: yes\\\\(@example.com";' in header
    assert '(mx\\(1\\).example.net: domain of x"??X-Injected: yes\\\\\\(@example.com' in header
    assert 'helo="a)b?c";' in header
    non_ascii = received_spf(SPFResult("pass", sender="jörg@example.com"))
    assert non_ascii.isascii()


@pytest.mark.parametrize("result", RESULTS)
def test_received_spf_starts_with_the_result(result: str) -> None:
    header = received_spf(SPFResult(result, client_ip="192.0.2.1", sender="a@example.com"))
    assert header.startswith(f"{result} (")
    assert header.endswith(";")


# -- spf_networks ---------------------------------------------------------------

BIG_SENDER = {
    "example.com": [
        {
            "TXT": "v=spf1 ip4:192.0.2.0/25 ip4:192.0.2.128/25 +ip6:2001:db8::/32"
            " -ip4:198.51.100.1 ~include:soft.example.net ptr exists:%{i}.example.com"
            " a:www.example.com/30 mx//64 include:_spf.example.net redirect=ignored.example.net"
        },
        {"MX": [10, "mx.example.com"]},
        {"MX": [20, "mx2.example.com"]},
    ],
    "www.example.com": [{"A": "203.0.113.5"}],
    "mx.example.com": [{"A": "203.0.113.10"}, {"AAAA": "2001:db8:ff::10"}],
    "mx2.example.com": [{"AAAA": "2001:db8:ff::20"}],
    "_spf.example.net": [{"TXT": "v=spf1 ip4:198.51.100.0/24 redirect=_spf2.example.net"}],
    "_spf2.example.net": [{"TXT": "v=spf1 ip6:2001:db8:aaaa::/48 +all"}],
    "soft.example.net": [{"TXT": "v=spf1 ip4:10.0.0.0/8"}],
}


def _networks(zone: Mapping[str, Any], domain: str = "example.com", **options: Any) -> Any:
    return run(spf_networks(domain, ZoneSource(zone), **options))


def test_spf_networks_expands_pass_terms() -> None:
    found = _networks(BIG_SENDER)
    nets = [str(n) for n in found.networks]
    assert nets == [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.4/30",
        "203.0.113.10/32",
        "2001:db8::/32",
    ]
    assert found.has_record and not found.truncated
    assert found.skipped == (
        "example.com: ptr",
        "example.com: exists:%{i}.example.com",
        "_spf2.example.net: +all",
    )
    # "~include" is not a pass, "-ip4" is not either; example.com has no "all",
    # so its redirect is followed (to a name without a record).
    assert all(isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in found.networks)


def test_spf_networks_stops_at_all_and_ignores_redirect_then() -> None:
    zone = record(
        "v=spf1 ip4:192.0.2.1 -all ip4:198.51.100.1 redirect=other.example.net",
        {"other.example.net": [{"TXT": "v=spf1 ip4:203.0.113.1"}]},
    )
    found = _networks(zone)
    assert [str(n) for n in found.networks] == ["192.0.2.1/32"]
    assert found.lookups == 1


def test_spf_networks_survives_loops() -> None:
    zone = {
        "example.com": [{"TXT": "v=spf1 ip4:192.0.2.1 include:example.net include:example.com"}],
        "example.net": [{"TXT": "v=spf1 ip4:192.0.2.2 redirect=example.com"}],
    }
    found = _networks(zone)
    assert [str(n) for n in found.networks] == ["192.0.2.1/32", "192.0.2.2/32"]
    assert not found.truncated


def test_spf_networks_lookup_cap_returns_what_it_found() -> None:
    chain = {
        f"d{i}.example.com": [{"TXT": f"v=spf1 ip4:192.0.2.{i} include:d{i + 1}.example.com"}]
        for i in range(30)
    }
    found = _networks(chain, "d0.example.com", max_lookups=5)
    assert found.truncated
    assert found.lookups == 5
    # d0..d4 were read (5 TXT lookups); d5 was not
    assert [str(n) for n in found.networks] == ["192.0.2.0/30", "192.0.2.4/32"]
    assert "stopped after 5 DNS lookups" in found.problems


def test_spf_networks_mx_with_too_many_names_gives_nothing() -> None:
    zone = record("v=spf1 mx ip4:192.0.2.1")
    zone["example.com"] += [{"MX": [i, f"mx{i}.example.com"]} for i in range(11)]
    found = _networks(zone)
    assert [str(n) for n in found.networks] == ["192.0.2.1/32"]
    assert found.problems == ("example.com: more than 10 MX names",)


def test_spf_networks_without_record_and_with_errors() -> None:
    assert not _networks({"example.com": [{"A": "192.0.2.1"}]}).has_record
    found = _networks(record("v=spf1 include:slow.example.net", {"slow.example.net": ["TIMEOUT"]}))
    assert found.has_record
    assert found.problems == ("TXT slow.example.net: timeout",)
    assert _networks({}, "not a domain").problems == ("malformed domain",)
