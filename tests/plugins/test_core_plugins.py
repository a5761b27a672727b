"""Decision tables of reject_null_sender and reject_to_hostname (iRedAPD's)."""

from __future__ import annotations

import pytest

from iredapd.request import PolicyRequest
from tests.support.plugins import make_chain

NULL_SENDER = "REJECT Policy rejection due to null sender"
NOT_AUTHORIZED = "REJECT Not authorized"


@pytest.mark.parametrize(
    ("sasl_username", "sender", "state", "expected"),
    [
        ("user@example.com", "", "RCPT", NULL_SENDER),
        ("user@example.com", "user@example.com", "RCPT", "DUNNO"),
        ("", "", "RCPT", "DUNNO"),  # a bounce from a server
        ("", "someone@example.org", "RCPT", "DUNNO"),
        ("user@example.com", "", "END-OF-MESSAGE", "DUNNO"),  # RCPT only
        ("user@example.com", "", "rcpt", NULL_SENDER),  # state compared upper-cased
    ],
)
async def test_reject_null_sender(
    sasl_username: str, sender: str, state: str, expected: str
) -> None:
    chain = make_chain(None, plugins=["reject_null_sender"])
    request = PolicyRequest.from_attributes(
        {"protocol_state": state, "sasl_username": sasl_username, "sender": sender}
    )
    d = await chain.evaluate(request)
    assert d.action.text == expected
    assert d.plugin == ("reject_null_sender" if expected != "DUNNO" else "")


@pytest.mark.parametrize(
    ("sasl", "client", "recipient", "expected"),
    [
        ("", "203.0.113.5", "root@mx.example.test", NOT_AUTHORIZED),
        ("", "203.0.113.5", "Root@MX.Example.TEST", NOT_AUTHORIZED),  # recipient lower-cased
        ("", "203.0.113.5", "user+ext@mx.example.test", NOT_AUTHORIZED),
        ("u@example.com", "203.0.113.5", "root@mx.example.test", "DUNNO"),  # SMTP AUTH
        ("", "127.0.0.1", "root@mx.example.test", "DUNNO"),  # localhost is trusted
        ("", "::1", "root@mx.example.test", "DUNNO"),
        ("", "192.168.1.20", "root@mx.example.test", "DUNNO"),  # MYNETWORKS network
        ("", "10.9.8.7", "root@mx.example.test", "DUNNO"),  # MYNETWORKS wildcard
        ("", "203.0.113.5", "srs0=hash=tt=example.org=user@mx.example.test", "DUNNO"),
        ("", "203.0.113.5", "SRS1=x=example.org==hash=tt=a.com=u@mx.example.test", "DUNNO"),
        ("", "203.0.113.5", "root@example.test", "DUNNO"),  # another domain
        ("", "203.0.113.5", "root@sub.mx.example.test", "DUNNO"),
    ],
)
async def test_reject_to_hostname(sasl: str, client: str, recipient: str, expected: str) -> None:
    chain = make_chain(
        None,
        plugins=["reject_to_hostname"],
        SERVER_HOSTNAME="mx.example.test",
        MYNETWORKS=["192.168.1.0/24", "10.*.*.*"],
    )
    request = PolicyRequest.from_attributes(
        {
            "protocol_state": "RCPT",
            "sasl_username": sasl,
            "client_address": client,
            "sender": "someone@example.org",
            "recipient": recipient,
        }
    )
    assert (await chain.evaluate(request)).action.text == expected


async def test_reject_to_hostname_uses_the_system_hostname_by_default() -> None:
    import socket

    chain = make_chain(None, plugins=["reject_to_hostname"])
    host = socket.gethostname().lower()
    request = PolicyRequest.from_attributes(
        {"protocol_state": "RCPT", "client_address": "203.0.113.5", "recipient": f"root@{host}"}
    )
    assert (await chain.evaluate(request)).action.text == NOT_AUTHORIZED
