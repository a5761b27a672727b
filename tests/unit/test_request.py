"""PolicyRequest normalisation and derived fields (iRedAPD's rules)."""

from __future__ import annotations

import pytest

from iredapd.protocol import PolicyParser
from iredapd.request import PolicyRequest
from tests.support.requests import EOM, RCPT_AUTH, encode


def test_lower_casing_follows_iredapd() -> None:
    r = PolicyRequest.from_attributes(RCPT_AUTH)
    assert r.sender == "john.doe+lists@example.com"
    assert r.recipient == "jane@example.org"
    assert r.sasl_username == "john.doe@example.com"
    assert r.reverse_client_name == "[mail.example.net]"
    # kept as received
    assert r.client_name == "mail.Example.NET"
    assert r.helo_name == "Mail.Example.NET"


def test_derived_fields() -> None:
    r = PolicyRequest.from_attributes(RCPT_AUTH)
    assert r.sender_domain == "example.com"
    assert r.sender_without_ext == "john.doe@example.com"
    assert r.recipient_domain == "example.org"
    assert r.recipient_without_ext == "jane@example.org"
    assert r.sasl_username_domain == "example.com"
    assert r.state == "RCPT"


def test_empty_and_missing_values() -> None:
    r = PolicyRequest.from_attributes(EOM)
    assert (r.sender, r.sender_domain, r.sender_without_ext) == ("", "", "")
    assert r.sasl_username_domain == ""
    assert r.tls_sni == ""  # absent attribute
    assert r.state == "END-OF-MESSAGE"


def test_sasl_username_without_domain() -> None:
    r = PolicyRequest.from_attributes({"sasl_username": "John"})
    assert r.sasl_username == "john"
    assert r.sasl_username_domain == "john"  # iRedAPD: the whole value


@pytest.mark.parametrize(
    ("address", "delimiters", "expected"),
    [
        ("user+a+b@x.com", ["+"], "user@x.com"),
        ("a-b+c@x.com", ["+", "-"], "a-b@x.com"),
        ("a-b@x.com", ["+", "-"], "a@x.com"),
        ("plain@x.com", ["+"], "plain@x.com"),
        ("user+tag@x.com", [], "user+tag@x.com"),
    ],
)
def test_extension_stripping(address: str, delimiters: list[str], expected: str) -> None:
    r = PolicyRequest.from_attributes(
        {"sender": address, "recipient": address}, delimiters=delimiters
    )
    assert r.sender_without_ext == expected
    assert r.recipient_without_ext == expected


def test_protocol_state_upper_cased_for_dispatch_only() -> None:
    r = PolicyRequest.from_attributes({"protocol_state": "rcpt"})
    assert r.protocol_state == "rcpt"
    assert r.state == "RCPT"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"sender": "a@b.com", "recipient": "c@d.org"}, None),
        ({"sender": "", "recipient": "c@d.org"}, None),
        ({"sender": "bad sender@x.com"}, ("sender", "bad sender@x.com")),
        ({"sender": "a@b.com", "recipient": "no-domain"}, ("recipient", "no-domain")),
        ({"sasl_username": "john"}, ("sasl_username", "john")),
        ({"sender": "x@y", "recipient": "also bad"}, ("sender", "x@y")),
        ({"sender": "user@example.com>"}, ("sender", "user@example.com>")),
    ],
)
def test_invalid_address(attrs: dict[str, str], expected: tuple[str, str] | None) -> None:
    assert PolicyRequest.from_attributes(attrs).invalid_address() == expected


def test_from_raw_keeps_unknown_apart() -> None:
    (raw,) = PolicyParser().feed(encode({"sender": "a@b.com", "x_new": "1"}))
    r = PolicyRequest.from_raw(raw)
    assert r.unknown == {"x_new": "1"}
    assert "x_new" not in r.as_dict()


def test_request_is_immutable() -> None:
    r = PolicyRequest.from_attributes({"sender": "a@b.com"})
    with pytest.raises(AttributeError):
        r.sender = "x"  # type: ignore[misc]
