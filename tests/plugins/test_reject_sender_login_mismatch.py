"""Decision tables of reject_sender_login_mismatch (access-policies.md section 4).

The accounts are one FakeAccounts dataset built by :func:`dataset`; the cases
are plain data, so the same tables can run on every account backend.  The SPF
escape is served by a Services subclass (``spf`` names the (domain, client)
pairs that pass); mlmmjadmin by a tiny HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import pytest

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts, FakeList
from iredapd.chain import Chain
from iredapd.config import Settings
from iredapd.request import PolicyRequest
from iredapd.services import Services
from tests.support.plugins import make_chain

PLUGIN = "reject_sender_login_mismatch"
FORGED = "REJECT SMTP AUTH is required for users under this sender domain"
MISMATCH = "REJECT Sender is not same as SMTP authenticate username"
DUNNO = "DUNNO"
HOSTNAME = "mx.example.net"
UNTRUSTED = "203.0.113.9"
MYNETWORKS = ["192.168.0.0/24", "10.1.*.*"]
LONG = "x" * 250
TOKEN = "token-123"
SUBSCRIBED = {("list@test.com", "user@test.com")}


def dataset() -> FakeAccounts:
    """The accounts every table below runs against."""
    fake = FakeAccounts()
    fake.add_domain("test.com")
    fake.add_domain("backup.com", backupmx=True)
    fake.add_domain("inactive.com", active=False)
    fake.add_alias_domain("test-alias.com", "test.com")
    fake.add_alias_domain("alias-of-inactive.com", "inactive.com")
    for user in ("user@test.com", "other@test.com", "a_b@test.com", "o'brien@test.com"):
        fake.add_user(user)
    fake.add_user_alias("user-alias@test.com", "user@test.com")
    # a per-user alias whose target carries an extension (iRedAPD's LIKE 'user+%@domain')
    fake.add_user_alias("ext-alias@test.com", "user+tag@test.com")
    # matched by iRedAPD's LIKE 'a_b+%@test.com' for the login a_b@test.com ('_' is a wildcard)
    fake.add_user_alias("boss@test.com", "axb+x@test.com")
    fake.aliases["alias@test.com"] = FakeList("alias@test.com", members=["user@test.com"])
    fake.aliases["off-alias@test.com"] = FakeList(
        "off-alias@test.com", active=False, members=["user@test.com"]
    )
    fake.maillists["list@test.com"] = FakeList("list@test.com")
    fake.maillists["old-list@test.com"] = FakeList("old-list@test.com", active=False)
    return fake


class SpfServices(Services):
    """Services whose SPF hook passes exactly the (domain, client) pairs given."""

    def __init__(self, settings: Settings, passing: frozenset[tuple[str, str]]) -> None:
        super().__init__(settings)
        self.passing = passing
        self.spf_calls: list[tuple[str, str]] = []

    async def spf_allows(self, domain: str, client_address: str) -> bool:
        self.spf_calls.append((domain, client_address))
        return (domain, client_address) in self.passing


def build(
    fake: FakeAccounts, spf: frozenset[tuple[str, str]] = frozenset(), **overrides: Any
) -> tuple[Chain, SpfServices]:
    overrides = {
        "plugins": [PLUGIN],
        "SERVER_HOSTNAME": HOSTNAME,
        "MYNETWORKS": MYNETWORKS,
        **overrides,
    }
    settings = load_namespace({}, overrides=overrides).settings
    services = SpfServices(settings, spf)
    services.vmail = fake
    return make_chain(None, services, **overrides), services


def rcpt(sender: str, recipient: str, sasl: str = "", client: str = UNTRUSTED) -> PolicyRequest:
    return PolicyRequest.from_attributes(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "sender": sender,
            "recipient": recipient,
            "sasl_username": sasl,
            "client_address": client,
        }
    )


async def decide(
    request: PolicyRequest,
    overrides: Mapping[str, Any],
    spf: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[str, FakeAccounts, SpfServices]:
    fake = dataset()
    chain, services = build(fake, spf, **overrides)
    decision = await chain.evaluate(request)
    assert decision.plugin == ("" if decision.action.text == DUNNO else PLUGIN)
    return decision.action.text, fake, services


# --- unauthenticated: forged sender -------------------------------------------

SPF_TEST = frozenset({("test.com", UNTRUSTED)})  # test.com's SPF lists the client
NO_SPF: frozenset[tuple[str, str]] = frozenset()
EXT = "r@external.com"
U = UNTRUSTED


def forged_ok(*entries: str) -> dict[str, Any]:
    return {"ALLOWED_FORGED_SENDERS": list(entries)}


# (sender, recipient, client, settings, SPF passes for, expected)
FORGED_CASES = [
    ("user@test.com", EXT, U, {}, NO_SPF, FORGED),
    ("user@test.com", "user@test.com", U, {}, NO_SPF, FORGED),
    ("user+ext@test.com", EXT, U, {}, NO_SPF, FORGED),
    ("nobody@test.com", EXT, U, {}, NO_SPF, FORGED),  # any name at a hosted domain
    ("user@test-alias.com", EXT, U, {}, NO_SPF, FORGED),
    (f"root@{HOSTNAME}", EXT, U, {}, NO_SPF, FORGED),
    # trusted clients
    ("user@test.com", EXT, "127.0.0.1", {}, NO_SPF, DUNNO),
    ("user@test.com", EXT, "::1", {}, NO_SPF, DUNNO),
    ("user@test.com", EXT, "192.168.0.77", {}, NO_SPF, DUNNO),
    ("user@test.com", EXT, "10.1.2.3", {}, NO_SPF, DUNNO),
    ("user@test.com", EXT, "10.2.2.3", {}, NO_SPF, FORGED),
    # switched off
    ("user@test.com", EXT, U, {"CHECK_FORGED_SENDER": False}, NO_SPF, DUNNO),
    # ALLOWED_FORGED_SENDERS: address, domain, name@* (exact, lower case)
    ("user@test.com", EXT, U, forged_ok("user@test.com"), NO_SPF, DUNNO),
    ("user+ext@test.com", EXT, U, forged_ok("user@test.com"), NO_SPF, DUNNO),
    ("other@test.com", EXT, U, forged_ok("user@test.com"), NO_SPF, FORGED),
    ("any@test.com", EXT, U, forged_ok("test.com"), NO_SPF, DUNNO),
    ("user@test.com", EXT, U, forged_ok("user@*"), NO_SPF, DUNNO),
    ("user@test-alias.com", EXT, U, forged_ok("user@*"), NO_SPF, DUNNO),
    ("other@test.com", EXT, U, forged_ok("user@*"), NO_SPF, FORGED),
    ("user@test.com", EXT, U, forged_ok("TEST.COM"), NO_SPF, FORGED),
    ("user@test.com", EXT, U, forged_ok("@test.com"), NO_SPF, FORGED),
    ("user@test-alias.com", EXT, U, forged_ok("test.com"), NO_SPF, FORGED),
    # not a domain whose users must log in
    ("someone@external.com", "user@test.com", U, {}, NO_SPF, DUNNO),
    ("user@backup.com", EXT, U, {}, NO_SPF, DUNNO),
    ("user@inactive.com", EXT, U, {}, NO_SPF, DUNNO),
    ("user@alias-of-inactive.com", EXT, U, {}, NO_SPF, DUNNO),
    ("user@sub.test.com", EXT, U, {}, NO_SPF, DUNNO),
    (f"root@sub.{HOSTNAME}", EXT, U, {}, NO_SPF, DUNNO),
    ("", "user@test.com", U, {}, NO_SPF, DUNNO),  # a bounce
    # same sender and recipient domain: iRedAPD says FORGED without asking (bug 10)
    ("user@backup.com", "other@backup.com", U, {}, NO_SPF, DUNNO),
    ("a@external.com", "b@external.com", U, {}, NO_SPF, DUNNO),
    # the SPF escape
    ("user@test.com", EXT, U, {}, SPF_TEST, DUNNO),
    ("user@test.com", EXT, U, {"CHECK_SPF_IF_LOGIN_MISMATCH": False}, SPF_TEST, FORGED),
    ("user@test.com", EXT, "198.51.100.1", {}, SPF_TEST, FORGED),  # another client
    ("user@test-alias.com", EXT, U, {}, SPF_TEST, FORGED),  # asks test-alias.com's SPF
    # hostile values get normal verdicts
    ("o'brien@test.com", EXT, U, {}, NO_SPF, FORGED),
    ('"a\\b"@test.com', EXT, U, {}, NO_SPF, FORGED),
    ("a*(b)%_c@test.com", EXT, U, {}, NO_SPF, FORGED),
    ("üser@test.com", EXT, U, {}, NO_SPF, FORGED),
    (f"{LONG}@test.com", EXT, U, {}, NO_SPF, FORGED),
    ("user@te'st.com", EXT, U, {}, NO_SPF, DUNNO),
    ("user@%.com", EXT, U, {}, NO_SPF, DUNNO),
    ("user@test.com'", EXT, U, {}, NO_SPF, DUNNO),
    ("user@test.com", EXT, "not-an-ip", {}, NO_SPF, FORGED),  # not trusted
]


@pytest.mark.parametrize("case", FORGED_CASES, ids=str)
async def test_forged_sender(case: tuple[Any, ...]) -> None:
    sender, recipient, client, settings, spf, expected = case
    action, _, _ = await decide(rcpt(sender, recipient, client=client), settings, spf)
    assert action == expected


async def test_spf_is_asked_only_for_hosted_domains_and_once() -> None:
    _, _, services = await decide(rcpt("user@test.com", "r@external.com"), {}, SPF_TEST)
    assert services.spf_calls == [("test.com", UNTRUSTED)]
    _, _, services = await decide(rcpt("u@external.com", "r@test.com"), {}, SPF_TEST)
    assert services.spf_calls == []
    off = {"CHECK_SPF_IF_LOGIN_MISMATCH": False}
    _, _, services = await decide(rcpt("user@test.com", "r@external.com"), off, SPF_TEST)
    assert services.spf_calls == []


async def test_spf_without_a_resolver_is_no_escape() -> None:
    """The real hook: no DNS configured, so nothing is allowed by SPF."""
    fake = dataset()
    overrides: dict[str, Any] = {"plugins": [PLUGIN], "SERVER_HOSTNAME": HOSTNAME}
    services = Services(load_namespace({}, overrides=overrides).settings)
    services.vmail = fake
    chain = make_chain(None, services, **overrides)
    decision = await chain.evaluate(rcpt("user@test.com", "r@external.com"))
    assert decision.action.text == FORGED


# --- authenticated: login mismatch ---------------------------------------------

LIST_MEMBER = {"ALLOWED_LOGIN_MISMATCH_LIST_MEMBER": True}
NOT_STRICT = {"ALLOWED_LOGIN_MISMATCH_STRICTLY": False}
MEMBER_ONLY = {**LIST_MEMBER, **NOT_STRICT}
NO_TOKEN = {**LIST_MEMBER, "mlmmjadmin_api_auth_token": ""}


def may(*entries: str, **more: Any) -> dict[str, Any]:
    return {"ALLOWED_LOGIN_MISMATCH_SENDERS": list(entries), **more}


# (login, sender, settings, expected)
MISMATCH_CASES = [
    ("user@test.com", "user@test.com", {}, DUNNO),
    ("user@test.com", "user+ext@test.com", {}, DUNNO),
    ("user@test.com", "", {}, DUNNO),  # null sender: reject_null_sender's business
    ("user@test.com", "other@test.com", {}, MISMATCH),
    ("user@test.com", "user@external.com", {}, MISMATCH),
    ("user+ext@test.com", "user@test.com", {}, MISMATCH),  # the login keeps its extension
    # STRICTLY (default on): per-user alias addresses, the same name at an alias domain
    ("user@test.com", "user-alias@test.com", {}, DUNNO),
    ("user@test.com", "user-alias+x@test.com", {}, DUNNO),
    ("other@test.com", "user-alias@test.com", {}, MISMATCH),
    ("user@test.com", "ext-alias@test.com", {}, DUNNO),  # alias of user+tag@test.com
    # a per-user alias at an alias domain (iRedAPD: MISMATCH, bug 8)
    ("user@test.com", "user-alias@test-alias.com", {}, DUNNO),
    ("other@test.com", "user-alias@test-alias.com", {}, MISMATCH),
    ("user@test.com", "user@test-alias.com", {}, DUNNO),
    ("user@test.com", "other@test-alias.com", {}, MISMATCH),
    ("user@test-alias.com", "user@test.com", {}, MISMATCH),  # only alias -> primary
    ("user@test.com", "user-alias@test.com", NOT_STRICT, MISMATCH),
    ("user@test.com", "user@test-alias.com", NOT_STRICT, MISMATCH),
    ("user@test.com", "user@test-alias.com", MEMBER_ONLY, MISMATCH),
    # '_' and '%' are literal, not LIKE wildcards (iRedAPD: DUNNO for these)
    ("a_b@test.com", "boss@test.com", {}, MISMATCH),
    ("%@test.com", "ext-alias@test.com", {}, MISMATCH),
    ("____@test.com", "ext-alias@test.com", {}, MISMATCH),
    # LIST_MEMBER: members of a mail alias, subscribers of an mlmmj list
    ("user@test.com", "alias@test.com", {}, MISMATCH),
    ("user@test.com", "alias@test.com", LIST_MEMBER, DUNNO),
    ("user@test.com", "alias@test.com", MEMBER_ONLY, DUNNO),
    ("user@test.com", "alias@test-alias.com", LIST_MEMBER, DUNNO),  # via STRICTLY's mapping
    ("user@test.com", "alias@test-alias.com", MEMBER_ONLY, MISMATCH),
    ("other@test.com", "alias@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", "list@test.com", LIST_MEMBER, DUNNO),  # subscribed (mlmmjadmin)
    ("user@test.com", "list+x@test.com", LIST_MEMBER, DUNNO),
    ("other@test.com", "list@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", "list@test.com", {}, MISMATCH),
    ("user@test.com", "list@test.com", NO_TOKEN, MISMATCH),  # mlmmjadmin not asked
    ("user@test.com", "old-list@test.com", LIST_MEMBER, MISMATCH),
    # ALLOWED_LOGIN_MISMATCH_SENDERS forms
    ("user@test.com", "x@external.com", may("user@test.com"), DUNNO),
    ("other@test.com", "x@external.com", may("user@test.com"), MISMATCH),
    ("user@test.com", "x@external.com", may("test.com"), DUNNO),
    ("u@external.com", "x@test.com", may("test.com"), MISMATCH),
    ("user@test.com", "other@test.com", may("@test.com"), DUNNO),
    ("user@test.com", "x@external.com", may("@test.com"), MISMATCH),
    ("user@test.com", "x@test-alias.com", may("@test.com"), MISMATCH),
    ("user@test.com", "other@test.com", may("@."), DUNNO),
    ("u@external.com", "v@external.com", may("@."), DUNNO),
    ("user@test.com", "x@external.com", may("@."), MISMATCH),
    ("user@test.com", "x@external.com", may("USER@TEST.COM"), MISMATCH),
    ("user@test.com", "x@external.com", may("user@*"), MISMATCH),
    # an entry that does not match falls through to the backend checks
    ("user@test.com", "user-alias@test.com", may("x@y.com"), DUNNO),
    ("user@test.com", "user-alias@test.com", may("x@y.com", **NOT_STRICT), MISMATCH),
    # hostile values get normal verdicts
    ("o'brien@test.com", "o'brien@test.com", {}, DUNNO),
    # not an address (is_email), so its "+x" is not an extension
    ("o'brien@test.com", "o'brien+x@test.com", {}, MISMATCH),
    ("user@test.com", "o'brien@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", '"a\\b"@test.com', LIST_MEMBER, MISMATCH),
    ("user@test.com", "a*(b)%_c@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", "üser@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", f"{LONG}@test.com", LIST_MEMBER, MISMATCH),
    ("user@test.com", "user@te'st.com", LIST_MEMBER, MISMATCH),
    ("'; drop table x; --@test.com", "user@test.com", LIST_MEMBER, MISMATCH),
    (f"{LONG}@test.com", f"{LONG}@test.com", {}, DUNNO),
]


# Where the backends differ, as in iRedAPD: SQL counts only active member rows
# of a mail alias, LDAP does not look at the alias's status (FakeAccounts is SQL).
SQL_ONLY_CASES = [
    ("user@test.com", "off-alias@test.com", LIST_MEMBER, MISMATCH),
]


@asynccontextmanager
async def mlmmjadmin() -> AsyncIterator[str]:
    """A minimal mlmmjadmin (has_subscriber only); yields its endpoint."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readline()).decode().split(" ")[1]
        token = ""
        while (line := (await reader.readline()).decode()) not in ("\r\n", ""):
            name, _, value = line.partition(":")
            if name.lower() == "x-mlmmjadmin-api-auth-token":
                token = value.strip()
        mailing_list, _, address = path.removeprefix("/api/").partition("/has_subscriber/")
        ok = token == TOKEN and (unquote(mailing_list), unquote(address)) in SUBSCRIBED
        body = json.dumps({"_success": ok}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("login", "sender", "settings", "expected"), MISMATCH_CASES + SQL_ONLY_CASES
)
async def test_login_mismatch(
    login: str, sender: str, settings: dict[str, Any], expected: str
) -> None:
    async with mlmmjadmin() as endpoint:
        overrides = {
            "mlmmjadmin_api_endpoint": endpoint,
            "mlmmjadmin_api_auth_token": TOKEN,
            **settings,
        }
        action, _, _ = await decide(rcpt(sender, "rcpt@external.com", sasl=login), overrides)
    assert action == expected


@pytest.mark.parametrize(
    ("settings", "asked"),
    [
        ({}, True),
        (LIST_MEMBER, True),
        (MEMBER_ONLY, True),
        (NOT_STRICT, False),  # nothing to ask: reject at once
        ({**NOT_STRICT, "ALLOWED_LOGIN_MISMATCH_SENDERS": ["x@y.com"]}, False),
    ],
)
async def test_backend_is_asked_only_when_a_rule_needs_it(
    settings: dict[str, Any], asked: bool
) -> None:
    action, fake, _ = await decide(
        rcpt("x@test.com", "r@external.com", sasl="user@test.com"), settings
    )
    assert action == MISMATCH
    assert (fake.calls["login_match"] == 1) is asked


async def test_authenticated_client_is_not_checked_for_forgery() -> None:
    action, fake, services = await decide(
        rcpt("user@test.com", "r@external.com", sasl="user@test.com"), {}, SPF_TEST
    )
    assert action == DUNNO
    assert fake.calls["is_local_domain"] == 0 and services.spf_calls == []


async def test_only_at_rcpt() -> None:
    fake = dataset()
    chain, _ = build(fake)
    request = rcpt("user@test.com", "r@external.com")._replace(
        protocol_state="END-OF-MESSAGE", state="END-OF-MESSAGE"
    )
    assert (await chain.evaluate(request)).action.text == DUNNO
    assert sum(fake.calls.values()) == 0


OUTAGE = "DEFER_IF_PERMIT Service temporarily unavailable"


@pytest.mark.parametrize(
    ("request_", "settings"),
    [
        (rcpt("user@test.com", "r@external.com"), {}),  # is this domain hosted?
        (rcpt("user@test.com", "user@test.com"), {}),  # even with equal domains
        (rcpt("user-alias@test.com", "r@x.com", sasl="user@test.com"), {}),  # login_match
        (rcpt("alias@test.com", "r@x.com", sasl="user@test.com"), LIST_MEMBER),
    ],
)
async def test_backend_outage_is_a_failure_not_a_verdict(
    request_: PolicyRequest, settings: dict[str, Any]
) -> None:
    fake = dataset()
    fake.down = True
    chain, _ = build(fake, PLUGIN_FAILURE_ACTION=OUTAGE, **settings)
    decision = await chain.evaluate(request_, trace=True)
    assert decision.action.text == OUTAGE
    assert [s.outcome for s in decision.steps] == ["failed"]


async def test_outage_does_not_matter_when_no_lookup_is_needed() -> None:
    fake = dataset()
    fake.down = True
    chain, _ = build(fake, PLUGIN_FAILURE_ACTION=OUTAGE)
    trusted = rcpt("user@test.com", "r@external.com", client="127.0.0.1")
    assert (await chain.evaluate(trusted)).action.text == DUNNO
    same = rcpt("user@test.com", "r@external.com", sasl="user@test.com")
    assert (await chain.evaluate(same)).action.text == DUNNO
