"""Address predicates (iRedAPD's, anchored at both ends)."""

from __future__ import annotations

import pytest

from iredapd.addr import domain_of, is_domain, is_email, is_tld_domain


@pytest.mark.parametrize(
    "value",
    [
        "user@example.com",
        "first.last+tag@sub.example.co.uk",
        "ü@bücher.de",
        "#hash@example.com",
        "a=b/c&d@example.com",
        "user@example.xn--vermgensberatung-pwb",
        "  user@example.com  ",
    ],
)
def test_valid_emails(value: str) -> None:
    assert is_email(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "user@localhost",
        "user@x.c",
        ".x@y.com",
        "a b@x.com",
        "o'brien@x.com",
        "a%b@x.com",
        "user@[1.2.3.4]",
        "user@example.com>",
        "x@y.com,z@w.com",
        "user@example.com@other.com",
        "(x)@y.com",
    ],
)
def test_invalid_emails(value: str) -> None:
    assert not is_email(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", True),
        ("a-b.example.co", True),
        ("xn--p1ai.xn--p1ai", True),
        ("192.0.2.1", False),
        ("localhost", False),
        ("-x.com", True),  # iRedAPD allows a leading '-'
        ("x..com", True),
        ("ex ample.com", False),
        ("ex+ample.com", False),
    ],
)
def test_is_domain(value: str, expected: bool) -> None:
    assert is_domain(value) is expected


def test_is_tld_domain() -> None:
    assert is_tld_domain("com")
    assert is_tld_domain("xn--p1ai")
    assert not is_tld_domain("c")
    assert not is_tld_domain("example.com")


def test_domain_of() -> None:
    assert domain_of("a@b.com") == "b.com"
    assert domain_of("a@b@c.com") == "b@c.com"
    assert domain_of("john") == "john"
    assert domain_of("") == ""
