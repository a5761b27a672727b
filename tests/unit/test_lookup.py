"""Lookup keys and address classification (core-and-stateful.md §7, access-policies.md §1.4)."""

from __future__ import annotations

import pytest

from iredapd.lookup import (
    ACCOUNT_PRIORITIES,
    CATCHALL,
    CATCHALL_IP,
    MAILADDR_PRIORITIES,
    AddressType,
    TrustedNetworks,
    account_priority,
    cidr_prefix,
    classify_address,
    ip_candidates,
    ip_in_network,
    is_cidr_network,
    is_ipv4,
    is_wildcard_addr,
    is_wildcard_ipv4,
    mailaddr_priority,
    networks_containing,
    parse_ip,
    policy_addresses,
    rdns_candidates,
    throttle_tracking_key,
    wildcard_address,
    wildcard_ipv4,
)

T = AddressType

# (value, type) -- the order of the rules matters: first hit wins (§7.3).
CLASSIFY = [
    ("@.", T.CATCHALL),
    ("@.example.com", T.SUBDOMAIN),
    ("@.sub.example.co.uk", T.SUBDOMAIN),
    ("@.com", T.TOP_LEVEL_DOMAIN),
    ("@.xn--p1ai", T.TOP_LEVEL_DOMAIN),
    ("@.c", None),  # 1-char TLD
    ("@.-x!", None),  # '@.' forms that fail are invalid at once
    ("@ip", T.CATCHALL_IP),
    ("@example.com", T.DOMAIN),
    ("@EXAMPLE.COM", T.DOMAIN),
    ("@com", None),
    ("@192.0.2.1", None),  # not a domain, and '@' forms stop here
    ("@", None),
    ("user@example.com", T.EMAIL),
    ("first.last+tag@sub.example.org", T.EMAIL),
    ("ü@bücher.de", T.EMAIL),
    ("user@localhost", None),
    ("user@example.com>", None),  # anchored (iRedAPD accepted trailing junk)
    ("user@*", T.WILDCARD_ADDR),
    ("first.last+x=y@*", T.WILDCARD_ADDR),
    ("user@*.com", None),
    (".user@*", None),
    ("192.0.2.1", T.IP),
    ("2001:db8::1", T.IP),
    ("::1", T.IP),
    ("192.0.2.0/24", T.CIDR_NETWORK),
    ("192.0.2.1/32", T.CIDR_NETWORK),
    ("2001:db8::/32", T.CIDR_NETWORK),  # iRedAPD's CLI regex rejects this; the classifier not
    ("192.0.2.1/24", None),  # host bits set: strict
    ("192.0.2.*", T.WILDCARD_IP),
    ("192.168.*.*", T.WILDCARD_IP),
    ("*.*.*.*", T.WILDCARD_IP),
    ("999.*.*.*", T.WILDCARD_IP),  # no range check, as iRedAPD
    ("192.0.2", None),
    ("01.2.3.4", T.WILDCARD_IP),  # not an IP (leading zero), but four digit groups
    ("192.0.2.*/24", None),
    ("", None),
    ("example.com", None),
    ("user", None),
]


@pytest.mark.parametrize(("value", "expected"), CLASSIFY)
def test_classify_address(value: str, expected: AddressType | None) -> None:
    assert classify_address(value) == expected


# (value, ACCOUNT_PRIORITIES, MAILADDR_PRIORITIES)
PRIORITIES = [
    ("user@example.com", 100, 10),
    ("user@*", 90, 7),
    ("192.0.2.1", 80, 9),
    ("192.0.2.*", 70, 8),
    ("192.0.2.0/24", 70, 7),  # iRedAPD: 0 (its table says "cidr") -- fixed
    ("@example.com", 60, 5),
    ("@.example.com", 50, 3),
    ("@.com", 40, 2),
    ("@ip", 0, 1),  # iRedAPD: 0 by accident; 0 on purpose here
    ("@.", 0, 0),
]


@pytest.mark.parametrize(("value", "account", "mailaddr"), PRIORITIES)
def test_priorities(value: str, account: int, mailaddr: int) -> None:
    assert account_priority(value) == account
    assert mailaddr_priority(value) == mailaddr


def test_priority_tables_cover_every_type() -> None:
    assert set(ACCOUNT_PRIORITIES) == set(AddressType)
    assert set(MAILADDR_PRIORITIES) == set(AddressType)
    assert ACCOUNT_PRIORITIES["email"] == 100  # type: ignore[index]  # str keys work too


@pytest.mark.parametrize("value", ["", "junk", "@.-x!", "192.0.2.1/24"])
def test_priority_of_invalid_keys(value: str) -> None:
    assert account_priority(value) == 0  # as iRedAPD's get_account_priority
    assert mailaddr_priority(value) is None


@pytest.mark.parametrize(
    ("func", "value", "expected"),
    [
        (is_wildcard_addr, "user@*", True),
        (is_wildcard_addr, "-user@*", True),
        (is_wildcard_addr, "user@*x", False),
        (is_wildcard_addr, "user@example.com", False),
        (is_wildcard_addr, "us er@*", False),
        (is_wildcard_ipv4, "1.2.3.*", True),
        (is_wildcard_ipv4, "1.2.3.4", True),
        (is_wildcard_ipv4, "1.2.3.*\n", False),
        (is_wildcard_ipv4, "1.2.3.4.5", False),
        (is_wildcard_ipv4, "1.2.3.****", False),
        (is_cidr_network, "10.0.0.0/8", True),
        (is_cidr_network, "10.0.0.1", True),
        (is_cidr_network, "10.0.0.1/8", False),
        (is_cidr_network, "fe80::/10", True),
        (is_cidr_network, "10.0.0.*", False),
        (is_cidr_network, "", False),
        (is_ipv4, "192.0.2.1", True),
        (is_ipv4, "01.2.3.4", False),
        (is_ipv4, "::1", False),
    ],
)
def test_predicates(func: object, value: str, expected: bool) -> None:
    assert callable(func)
    assert func(value) is expected


# ---------------------------------------------------------------------------
# Candidate keys
# ---------------------------------------------------------------------------

ALL_FORMS = [
    "*.2.3.4",
    "*.*.3.4",
    "*.*.*.4",
    "*.*.*.*",
    "1.*.3.4",
    "1.*.*.4",
    "1.*.*.*",
    "1.2.*.4",
    "1.2.*.*",
    "1.2.3.*",
]


@pytest.mark.parametrize(
    ("ip", "all_wildcards", "catchall", "expected"),
    [
        ("1.2.3.4", False, True, ["1.2.3.4", "1.2.3.*", "1.2.*.4", "@ip"]),
        ("1.2.3.4", False, False, ["1.2.3.4", "1.2.3.*", "1.2.*.4"]),
        ("2001:db8::1", False, True, ["2001:db8::1", "@ip"]),
        ("2001:db8::1", True, False, ["2001:db8::1"]),
    ],
)
def test_ip_candidates(ip: str, all_wildcards: bool, catchall: bool, expected: list[str]) -> None:
    assert ip_candidates(ip, all_wildcards, catchall=catchall) == expected


def test_ip_candidates_all_wildcards() -> None:
    keys = ip_candidates("1.2.3.4", True)
    assert keys[0] == "1.2.3.4"
    assert keys[-1] == CATCHALL_IP
    assert sorted(keys[1:-1]) == sorted(ALL_FORMS)  # 10 contiguous forms, §7.6


@pytest.mark.parametrize(
    ("ip", "all_forms", "expected"),
    [
        ("192.0.2.1", False, ["192.0.2.*", "192.0.*.1"]),
        ("2001:db8::1", False, []),
        ("not-an-ip", True, []),
    ],
)
def test_wildcard_ipv4(ip: str, all_forms: bool, expected: list[str]) -> None:
    assert wildcard_ipv4(ip, all_forms=all_forms) == expected


@pytest.mark.parametrize(
    ("mail", "alias_target", "expected"),
    [
        (
            "u@a.b.c.com",
            None,
            ["u@a.b.c.com", "@a.b.c.com", "@.", "@.a.b.c.com", "@.b.c.com", "@.c.com", "@.com"],
        ),
        ("", None, [CATCHALL]),
        ("not-an-address", None, [CATCHALL]),
        (
            "u@alias.org",
            "example.com",
            [
                "u@alias.org",
                "@alias.org",
                "@.",
                "@.alias.org",
                "@.org",
                "u@example.com",
                "@example.com",
                "@.example.com",
                "@.com",
            ],
        ),
        (
            "u@x.com",
            "y.com",
            ["u@x.com", "@x.com", "@.", "@.x.com", "@.com", "u@y.com", "@y.com", "@.y.com"],
        ),
    ],
)
def test_policy_addresses(mail: str, alias_target: str | None, expected: list[str]) -> None:
    assert policy_addresses(mail, alias_target=alias_target) == expected


@pytest.mark.parametrize(
    ("mail", "expected"),
    [
        ("john@sub.ext.org", "john@*"),
        ("john+x@sub.ext.org", "john@*"),
        ("+x@example.com", None),
        ("not-an-address", None),
    ],
)
def test_wildcard_address(mail: str, expected: str | None) -> None:
    assert wildcard_address(mail) == expected


def test_amavisd_sender_candidates_example() -> None:
    """access-policies.md §6.3: unauthenticated john+x@sub.ext.org from 1.2.3.4."""
    sender = "john@sub.ext.org"  # already without extension
    keys = [
        *policy_addresses(sender),
        wildcard_address("john+x@sub.ext.org"),
        *ip_candidates("1.2.3.4", catchall=False),
    ]
    assert keys == [
        "john@sub.ext.org",
        "@sub.ext.org",
        "@.",
        "@.sub.ext.org",
        "@.ext.org",
        "@.org",
        "john@*",
        "1.2.3.4",
        "1.2.3.*",
        "1.2.*.4",
    ]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("192.0.2.1", "192."),
        ("2001:db8::1", "2001:"),
        ("::1", ":"),
        ("junk", None),
    ],
)
def test_cidr_prefix(ip: str, expected: str | None) -> None:
    assert cidr_prefix(ip) == expected


@pytest.mark.parametrize(
    ("ip", "network", "expected"),
    [
        ("192.0.2.1", "192.0.2.0/24", True),
        ("192.0.2.1", "192.0.2.1", True),  # a plain IP is a /32
        ("192.0.2.1", "192.0.3.0/24", False),
        ("192.0.2.1", "192.0.2.1/24", False),  # host bits: not a network
        ("192.0.2.1", "192.0.2.*", False),
        ("2001:db8::1", "2001:db8::/32", True),
        ("2001:db8::1", "192.0.2.0/24", False),
        ("junk", "192.0.2.0/24", False),
    ],
)
def test_ip_in_network(ip: str, network: str, expected: bool) -> None:
    assert ip_in_network(ip, network) is expected


def test_networks_containing_keeps_order_and_skips_junk() -> None:
    rows = [
        (5, "192.0.2.0/25"),
        (3, "192.0.0.0/16"),
        (9, "192.0.2.*"),
        (4, "192.0.2.1/24"),
        (1, "192.0.2.1"),
        (7, "192.99.0.0/16"),
    ]
    assert networks_containing("192.0.2.1", rows) == [5, 3, 1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mail.example.com", ["mail.example.com", ".mail.example.com", ".example.com", ".com"]),
        ("localhost", ["localhost", ".localhost"]),
        ("", ["", "."]),
    ],
)
def test_rdns_candidates(name: str, expected: list[str]) -> None:
    assert rdns_candidates(name) == expected


@pytest.mark.parametrize(
    ("rule_account", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("@ip", "192.0.2.1"),
        ("192.0.2.*", "192.0.2.*"),
        ("user@*", "user@*"),
        ("user@example.com", "user@example.com"),
        ("@example.com", "user@example.com"),  # per user, not per domain (§9.6)
        ("@.", "user@example.com"),
        ("@.com", "user@example.com"),
    ],
)
def test_throttle_tracking_key(rule_account: str, expected: str) -> None:
    assert throttle_tracking_key(rule_account, "user@example.com", "192.0.2.1") == expected


def test_existing_api_unchanged() -> None:
    assert parse_ip(" 192.0.2.1 ") is not None
    trusted = TrustedNetworks.from_entries(["10.0.0.0/8", "192.168.*.*", "203.0.113.5"])
    assert "10.1.2.3" in trusted
    assert "192.168.7.8" in trusted
    assert "203.0.113.5" in trusted
    assert "127.0.0.1" in trusted
    assert "198.51.100.1" not in trusted


def test_trusted_networks_remember_answers_within_a_bound() -> None:
    from iredapd import lookup

    trusted = TrustedNetworks.from_entries(["10.0.0.0/8"])
    for _ in range(2):  # the second round is answered from what was remembered
        assert "10.1.2.3" in trusted
        assert "192.0.2.1" not in trusted
        assert "not an ip" not in trusted
        assert 42 not in trusted
    assert len(trusted._seen) == 3
    for i in range(lookup._SEEN_MAX + 10):
        assert f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" in trusted
    assert len(trusted._seen) <= lookup._SEEN_MAX
    assert "10.1.2.3" in trusted and "192.0.2.1" not in trusted
    # equality and repr ignore the remembered answers
    assert trusted == TrustedNetworks.from_entries(["10.0.0.0/8"])
    assert "_seen" not in repr(trusted)
