"""Self-test of tests/support/postfix.py: a private Postfix asks a policy server.

The policy server here is a tiny inline asyncio one (not the project's
daemon), so these tests only prove the fixture: Postfix asks at RCPT and
END-OF-MESSAGE, the reply text reaches the SMTP client, SMTP AUTH works, and an
accepted message can be read back with its headers.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.support.postfix import PostfixInstance, make_message
from tests.support.services import deadline_in, free_port, scaled

pytest_plugins = ["tests.support.postfix"]
pytestmark = [pytest.mark.integration, pytest.mark.postfix]

REJECTED_SENDER = "blocked@example.net"
PREPEND_SENDER = "prepend@example.net"
PREPENDED = "X-Infra-Test: prepended by the policy server"

Decide = Callable[[Mapping[str, str]], str]


def decide(request: Mapping[str, str]) -> str:
    """REJECT RCPT from one sender, PREPEND a header for another, else DUNNO."""
    state = request.get("protocol_state")
    sender = request.get("sender", "").lower()
    if state == "RCPT" and sender == REJECTED_SENDER:
        return "REJECT infra test"
    if state == "RCPT" and sender == PREPEND_SENDER:
        return f"PREPEND {PREPENDED}"
    return "DUNNO"


class PolicyStub:
    """A Postfix policy server (postconf(5) SMTPD_POLICY_README protocol) in a thread.

    Every request is kept in :attr:`requests`; the reply is ``decide(request)``.
    """

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.requests: list[dict[str, str]] = []
        self.port = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    def __enter__(self) -> PolicyStub:
        self._thread.start()
        if not self._ready.wait(scaled(10)):
            raise TimeoutError("policy stub did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(10))

    def seen(self, **attrs: str) -> list[dict[str, str]]:
        """The requests whose attributes include all of ``attrs``."""
        with self._lock:
            return [r for r in self.requests if all(r.get(k) == v for k, v in attrs.items())]

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        # asyncio.run() cancels the connection handlers still running.

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: dict[str, str] = {}
        try:
            # One connection carries many requests; Postfix closes it when idle.
            while line := await reader.readline():
                line = line.rstrip(b"\r\n")
                if line:
                    name, _, value = line.decode("utf-8", "replace").partition("=")
                    request[name] = value
                    continue
                with self._lock:
                    self.requests.append(request)
                writer.write(f"action={self.decide(request)}\n\n".encode())
                await writer.drain()
                request = {}
        finally:
            writer.close()


@pytest.fixture
def policy() -> Iterator[PolicyStub]:
    with PolicyStub(decide) as stub:
        yield stub


@pytest.fixture
def postfix(
    policy: PolicyStub, postfix_instance_factory: Callable[..., PostfixInstance]
) -> PostfixInstance:
    return postfix_instance_factory(policy.port, deliver=True)


def test_policy_reject_reaches_client(postfix: PostfixInstance, policy: PolicyStub) -> None:
    mark = postfix.log_mark()
    result = postfix.send(REJECTED_SENDER, ["user1@example.com"])

    code, text = result.rcpt["user1@example.com"]
    assert code == 554
    assert text == "5.7.1 <user1@example.com>: Recipient address rejected: infra test"
    assert result.data is None
    # The client is outside mynetworks and did not log in.
    (request,) = policy.seen(protocol_state="RCPT", sender=REJECTED_SENDER)
    assert request["client_address"] == "127.0.0.1"
    assert request["recipient"] == "user1@example.com"
    assert request["sasl_username"] == ""
    assert request["helo_name"] == "client.example.net"
    postfix.wait_for_log(r"NOQUEUE: reject: RCPT from .*: 554 5\.7\.1 .*infra test", start=mark)


def test_accepted_message_is_delivered_with_headers(
    postfix: PostfixInstance, policy: PolicyStub
) -> None:
    message = make_message(PREPEND_SENDER, ["user1@example.com"], subject="infra delivery")
    result = postfix.send(PREPEND_SENDER, ["user1@example.com"], message)

    assert result.rcpt["user1@example.com"][0] == 250
    assert result.accepted, result.data
    assert result.queue_id
    delivered = postfix.wait_for_delivery(result.queue_id, recipient="user1@example.com")
    assert delivered["Subject"] == "infra delivery"
    assert delivered["Delivered-To"] == "user1@example.com"
    assert delivered["Return-Path"] == f"<{PREPEND_SENDER}>"
    # The header the policy server asked Postfix to PREPEND at RCPT.
    name, _, value = PREPENDED.partition(": ")
    assert delivered[name] == value
    received = delivered.get_all("Received")
    assert received and f"by {postfix.config.myhostname} (Postfix)" in received[0]
    # Postfix also asked at END-OF-MESSAGE, with the queue id.
    (eom,) = policy.seen(protocol_state="END-OF-MESSAGE", sender=PREPEND_SENDER)
    assert eom["queue_id"] == result.queue_id
    assert eom["recipient_count"] == "1"


def test_smtp_auth(postfix: PostfixInstance, policy: PolicyStub) -> None:
    login = ("user1@example.com", "user1pass")
    # Authenticated: relaying to a foreign domain is allowed (and discarded).
    result = postfix.send("user1@example.com", ["someone@example.org"], login=login)
    assert result.rcpt["someone@example.org"][0] == 250
    assert result.accepted
    (request,) = policy.seen(protocol_state="RCPT", recipient="someone@example.org")
    assert request["sasl_username"] == "user1@example.com"
    assert request["sasl_method"] == "PLAIN"

    # The policy server still rejects an authenticated client.
    result = postfix.send(REJECTED_SENDER, ["someone@example.org"], login=login)
    assert result.rcpt["someone@example.org"][0] == 554

    with pytest.raises(smtplib.SMTPAuthenticationError) as excinfo:
        postfix.send("user1@example.com", ["user2@example.com"], login=(login[0], "wrong"))
    assert excinfo.value.smtp_code == 535


def test_outside_client_cannot_relay(postfix: PostfixInstance, policy: PolicyStub) -> None:
    result = postfix.send("someone@example.net", ["someone@example.org"])

    assert result.rcpt["someone@example.org"] == (
        554,
        "5.7.1 <someone@example.org>: Relay access denied",
    )
    # ... but the policy server was asked first.
    assert policy.seen(protocol_state="RCPT", recipient="someone@example.org")


def test_policy_service_down_uses_default_action(
    postfix_instance_factory: Callable[..., PostfixInstance],
) -> None:
    # Nothing listens on this port: Postfix gives up and uses the default action.
    postfix = postfix_instance_factory(
        free_port(),
        policy_default_action="450 4.7.1 policy service down (infra test)",
        extra={"smtpd_policy_service_try_limit": "1"},
    )
    result = postfix.send("someone@example.net", ["user1@example.com"])

    assert result.rcpt["user1@example.com"] == (
        450,
        "4.7.1 <user1@example.com>: Recipient address rejected: policy service down (infra test)",
    )


def test_postconf_reload(postfix: PostfixInstance) -> None:
    postfix.postconf({"smtpd_banner": "$myhostname ESMTP reloaded"})

    assert postfix.wait_for_banner(deadline_in(10)).endswith("ESMTP reloaded")
