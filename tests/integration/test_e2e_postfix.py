"""End to end: mail through a real Postfix smtpd gets the chain's verdicts.

A private Postfix (tests/support/postfix.py) asks the daemon, started as a
real subprocess, at RCPT and at END-OF-MESSAGE; the SMTP client (smtplib) sees
the replies.  Mail from "outside" comes from 127.0.0.2: only 127.0.0.1 and ::1
are trusted without MYNETWORKS, as in iRedAPD.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Subprocess, subprocess_daemon
from tests.support.plugins import write_plugin
from tests.support.postfix import PostfixInstance, make_message
from tests.support.services import deadline_in

pytestmark = [pytest.mark.integration, pytest.mark.postfix]

USER = ("user1@example.com", "user1pass")
HOSTNAME = "mx.example.test"


def write_e2e_plugins(directory: Path) -> None:
    write_plugin(
        directory,
        "custom_e2e_rcpt",
        """
        class P(Plugin):
            states = frozenset({"RCPT"})
            async def check(self, ctx):
                if ctx.request.sender == "spammer@example.net":
                    return Action("REJECT e2e test plugin says no")
                return None
        """,
    )
    write_plugin(
        directory,
        "custom_e2e_eom",
        """
        class P(Plugin):
            states = frozenset({"END-OF-MESSAGE"})
            async def check(self, ctx):
                r = ctx.request
                if r.sender == "bulk@example.net" and int(r.recipient_count) > 1:
                    return Action("REJECT e2e: one recipient at a time")
                return None
        """,
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Subprocess]:
    write_e2e_plugins(tmp_path / "plugins")
    settings = (
        f"PLUGIN_DIRS = [{str(tmp_path / 'plugins')!r}]\n"
        "plugins = ['reject_null_sender', 'reject_to_hostname', "
        "'custom_e2e_rcpt', 'custom_e2e_eom']\n"
        f"SERVER_HOSTNAME = {HOSTNAME!r}\n"
    )
    with subprocess_daemon(tmp_path, settings) as d:
        yield d


@pytest.fixture
def postfix(daemon: Subprocess, postfix_instance_factory: Any) -> PostfixInstance:
    pfx: PostfixInstance = postfix_instance_factory(
        policy_port=daemon.port, myhostname=HOSTNAME, deliver=True
    )
    return pfx


def send_from_outside(
    pfx: PostfixInstance, sender: str, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    """One transaction from 127.0.0.2 (an untrusted client)."""
    with smtplib.SMTP(
        "127.0.0.1",
        pfx.smtp_port,
        local_hostname="client.example.net",
        timeout=30,
        source_address=("127.0.0.2", 0),
    ) as client:
        client.ehlo()
        client.mail(sender)
        return {rcpt: client.rcpt(rcpt) for rcpt in recipients}


def test_null_sender_with_smtp_auth_is_rejected(postfix: PostfixInstance) -> None:
    result = postfix.send("", ["friend@example.com"], login=USER)
    code, text = result.rcpt["friend@example.com"]
    assert code == 554
    assert "Policy rejection due to null sender" in text


def test_null_sender_without_auth_is_a_bounce_and_accepted(postfix: PostfixInstance) -> None:
    result = postfix.send("", ["user2@example.com"])
    assert result.accepted, result


def test_mail_to_the_hostname_from_outside_is_rejected(postfix: PostfixInstance) -> None:
    replies = send_from_outside(postfix, "someone@example.net", [f"root@{HOSTNAME}"])
    code, text = replies[f"root@{HOSTNAME}"]
    assert code == 554
    assert b"Not authorized" in text


def test_test_plugins_reject_reaches_the_client(
    postfix: PostfixInstance, daemon: Subprocess
) -> None:
    result = postfix.send("spammer@example.net", ["user2@example.com"])
    code, text = result.rcpt["user2@example.com"]
    assert code == 554
    assert "e2e test plugin says no" in text
    daemon.wait_log(r"RCPT, spammer@example\.net -> user2@example\.com, REJECT e2e test plugin")


def test_end_of_message_verdict(postfix: PostfixInstance) -> None:
    rcpts = ["user1@example.com", "user2@example.com"]
    result = postfix.send("bulk@example.net", rcpts)
    assert all(code == 250 for code, _ in result.rcpt.values())
    assert result.data is not None
    code, text = result.data
    assert code == 554
    assert "one recipient at a time" in text


def test_accepted_message_is_delivered(postfix: PostfixInstance, daemon: Subprocess) -> None:
    message = make_message("friend@example.net", ["user2@example.com"], subject="e2e hello")
    result = postfix.send("friend@example.net", ["user2@example.com"], message)
    assert result.accepted, result
    delivered = postfix.wait_for_delivery(
        result.queue_id, deadline_in(30), recipient="user2@example.com"
    )
    assert delivered["Subject"] == "e2e hello"
    daemon.wait_log(r"END-OF-MESSAGE, friend@example\.net -> user2@example\.com, DUNNO")


def test_authenticated_user_sends_out(postfix: PostfixInstance) -> None:
    result = postfix.send("user1@example.com", ["user2@example.com"], login=USER)
    assert result.accepted, result
