"""Decision tables of sql_force_change_password and ldap_force_change_password (section 10).

One FakeAccounts dataset (:func:`dataset`), a fixed clock, plain-data cases.
Both plugins ask the account backend; they differ only in iRedAPD's trace
texts and in when the never-expire list is consulted.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts
from iredapd.chain import Chain, PluginLoadError
from iredapd.request import PolicyRequest
from iredapd.services import Services
from tests.support.plugins import make_chain

SQL = "sql_force_change_password"
LDAP = "ldap_force_change_password"
NOW = dt.datetime(2024, 6, 15, 12, 0, 0, tzinfo=dt.UTC)
DEFAULT_MESSAGE = (
    "Password expired or never changed, please change your password in webmail before sending email"
)
EXPIRED = f"REJECT {DEFAULT_MESSAGE}"
DUNNO = "DUNNO"
EXEMPT = "DUNNO User or domain is allowed to never change password."
SQL_NO_AUTH = "DUNNO Not a local user"
LDAP_NO_AUTH = "DUNNO Not an authenticated user (no sasl_username in smtp session)"
LDAP_NO_USER = "DUNNO Not a local user (no sender ldif)"
LONG = "x" * 64  # stored: the longest local part RFC 5321 allows
VERY_LONG = "y" * 1000  # looked up only


def day(month: int, day: int, year: int = 2024) -> dt.datetime:
    """Midnight UTC: every backend stores it exactly (LDAP keeps whole days)."""
    return dt.datetime(year, month, day, tzinfo=dt.UTC)


def dataset() -> FakeAccounts:
    fake = FakeAccounts()
    fake.add_domain("test.com")
    fake.add_domain("free.com")
    fake.add_user("fresh@test.com", changed=day(6, 5))  # 10.5 days before NOW
    fake.add_user("old@test.com", changed=day(3, 1))
    fake.add_user("never@test.com")  # never changed: 1970-01-01
    fake.add_user("edge@test.com", changed=day(3, 17))  # 90 days before 06-15 00:00
    fake.add_user("future@test.com", changed=day(6, 18))
    fake.add_user("old@free.com", changed=day(5, 1, 2023))
    fake.add_user("o'brien@test.com", changed=day(3, 1))
    fake.add_user(f"{LONG}@test.com", changed=day(6, 14))
    return fake


def build(fake: FakeAccounts, plugin: str, **overrides: Any) -> Chain:
    overrides = {"plugins": [plugin], **overrides}
    settings = load_namespace({}, overrides=overrides).settings
    services = Services(settings, clock=NOW.timestamp)
    services.vmail = fake
    return make_chain(None, services, **overrides)


def rcpt(sasl: str) -> PolicyRequest:
    return PolicyRequest.from_attributes(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "sasl_username": sasl,
            "sender": sasl,
            "recipient": "rcpt@external.com",
            "client_address": "203.0.113.9",
        }
    )


async def plugin_answer(chain: Chain, request: PolicyRequest, now: float | None = None) -> str:
    """The plugin's own text (a DUNNO text too), as iredapd-query shows it."""
    decision = await chain.evaluate(request, trace=True, now=now)
    (step,) = decision.steps
    assert step.outcome in ("action", "pass"), step
    assert decision.action.text == (step.action if step.outcome == "action" else DUNNO)
    return step.action


def never(*entries: str) -> dict[str, Any]:
    return {"CHANGE_PASSWORD_NEVER_EXPIRE_USERS": list(entries)}


def days(n: int) -> dict[str, Any]:
    return {"CHANGE_PASSWORD_DAYS": n}


EDGE = day(6, 15)  # edge@test.com's password is exactly 90 days old
JUST_BEFORE = EDGE - dt.timedelta(seconds=1)

# (login, settings, request time (None: NOW), SQL plugin's answer, LDAP plugin's answer)
CASES = [
    ("", {}, None, SQL_NO_AUTH, LDAP_NO_AUTH),
    ("fresh@test.com", {}, None, DUNNO, DUNNO),
    ("old@test.com", {}, None, EXPIRED, EXPIRED),
    ("never@test.com", {}, None, EXPIRED, EXPIRED),
    ("edge@test.com", {}, None, EXPIRED, EXPIRED),  # 90 days and 12 hours
    ("edge@test.com", {}, EDGE, EXPIRED, EXPIRED),  # exactly 90 days
    ("edge@test.com", {}, JUST_BEFORE, DUNNO, DUNNO),  # 90 days less one second
    ("future@test.com", {}, None, DUNNO, DUNNO),
    ("nobody@test.com", {}, None, DUNNO, LDAP_NO_USER),
    ("fresh@test.com", days(10), None, EXPIRED, EXPIRED),
    ("fresh@test.com", days(11), None, DUNNO, DUNNO),
    ("fresh@test.com", days(0), None, EXPIRED, EXPIRED),
    ("never@test.com", days(20000), None, DUNNO, DUNNO),  # 54 years
    ("old@test.com", {"CHANGE_PASSWORD_MESSAGE": "Change it"}, None, *["REJECT Change it"] * 2),
    # never-expire list: logins and domains, exact (lower case)
    ("old@test.com", never("old@test.com"), None, EXEMPT, EXEMPT),
    ("old@free.com", never("free.com"), None, EXEMPT, EXEMPT),
    ("old@test.com", never("free.com"), None, EXPIRED, EXPIRED),
    ("old@test.com", never("OLD@TEST.COM"), None, EXPIRED, EXPIRED),
    ("old@test.com", never("@test.com"), None, EXPIRED, EXPIRED),
    ("old@test.com", never("old"), None, EXPIRED, EXPIRED),
    ("nobody@test.com", never("test.com"), None, EXEMPT, LDAP_NO_USER),  # LDAP: lookup first
    # hostile values get normal verdicts
    ("o'brien@test.com", {}, None, EXPIRED, EXPIRED),
    (f"{LONG}@test.com", {}, None, DUNNO, DUNNO),
    (f"{VERY_LONG}@test.com", {}, None, DUNNO, LDAP_NO_USER),
    ("%@test.com", {}, None, DUNNO, LDAP_NO_USER),
    ("*)(uid=*@test.com", {}, None, DUNNO, LDAP_NO_USER),
    ('"a\\b"@test.com', {}, None, DUNNO, LDAP_NO_USER),
    ("üser@tëst.com", {}, None, DUNNO, LDAP_NO_USER),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][:40]}-{c[1]}-{c[2]}")
@pytest.mark.parametrize("plugin", [SQL, LDAP])
async def test_force_change_password(plugin: str, case: tuple[Any, ...]) -> None:
    login, settings, at, sql, ldap = case
    chain = build(dataset(), plugin, **settings)
    now = None if at is None else at.timestamp()
    assert await plugin_answer(chain, rcpt(login), now) == (sql if plugin == SQL else ldap)


@pytest.fixture
def far_timezone() -> Iterator[None]:
    """The process's local time zone set to UTC+14 for one test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XST-14"  # POSIX: 14 hours ahead of UTC, no tzdata needed
    time.tzset()
    assert time.localtime(0).tm_gmtoff == 14 * 3600
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.parametrize("plugin", [SQL, LDAP])
@pytest.mark.usefixtures("far_timezone")
async def test_local_time_zone_does_not_matter(plugin: str) -> None:
    """iRedAPD compared local dates (LDAP) or local naive times (SQL, bug 42)."""
    chain = build(dataset(), plugin)
    for at, expected in [(JUST_BEFORE, DUNNO), (EDGE, EXPIRED)]:
        answer = await plugin_answer(chain, rcpt("edge@test.com"), at.timestamp())
        assert answer == expected, at


@pytest.mark.parametrize("plugin", [SQL, LDAP])
async def test_only_at_rcpt(plugin: str) -> None:
    fake = dataset()
    request = rcpt("old@test.com")._replace(protocol_state="END-OF-MESSAGE", state="END-OF-MESSAGE")
    assert (await build(fake, plugin).evaluate(request)).action.text == DUNNO
    assert sum(fake.calls.values()) == 0


OUTAGE = "DEFER_IF_PERMIT Service temporarily unavailable"


@pytest.mark.parametrize(
    ("plugin", "login", "settings", "expected"),
    [
        (SQL, "old@test.com", {}, OUTAGE),
        (LDAP, "old@test.com", {}, OUTAGE),
        (SQL, "fresh@test.com", {}, OUTAGE),
        (SQL, "", {}, DUNNO),  # nothing to look up
        (SQL, "old@test.com", never("test.com"), DUNNO),  # SQL: exempt before the lookup
        (LDAP, "old@test.com", never("test.com"), OUTAGE),  # LDAP: the lookup comes first
    ],
)
async def test_backend_outage_is_a_failure_not_a_verdict(
    plugin: str, login: str, settings: dict[str, Any], expected: str
) -> None:
    fake = dataset()
    fake.down = True
    chain = build(fake, plugin, PLUGIN_FAILURE_ACTION=OUTAGE, **settings)
    assert (await chain.evaluate(rcpt(login))).action.text == expected


@pytest.mark.parametrize("plugin", [SQL, LDAP])
async def test_a_message_postfix_cannot_take_stops_the_start(plugin: str) -> None:
    chain = build(dataset(), plugin, CHANGE_PASSWORD_MESSAGE="Line one\nline two")
    with pytest.raises(PluginLoadError, match="CHANGE_PASSWORD_MESSAGE"):
        await chain.start()
    # and if it ran anyway, the failure action, never a broken reply
    decision = await chain.evaluate(rcpt("old@test.com"), trace=True)
    assert decision.action.text == DUNNO
    assert [s.outcome for s in decision.steps] == ["failed"]
