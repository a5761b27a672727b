"""Decision table of sql_alias_access_policy (access-policies.md section 7).

One FakeAccounts dataset (:func:`dataset`) and plain-data cases, so the table
can run on every account backend.  Each alias's local part names its policy.
The expected text is the plugin's own answer (iredapd-query shows it), also
for the DUNNO texts Postfix never sees.
"""

from __future__ import annotations

from typing import Any

import pytest

from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts, FakeList
from iredapd.chain import Chain
from iredapd.request import PolicyRequest
from iredapd.services import Services
from tests.support.plugins import make_chain

PLUGIN = "sql_alias_access_policy"
REJECT = "REJECT Not authorized"
DUNNO = "DUNNO"
NOT_ALIAS = "DUNNO Recipient is not a mail alias account or no access policy"
NOT_ALIAS_AT_TARGET = (
    "DUNNO (Recipient domain is an alias domain, but recipient is not a mail alias account)"
)
PUBLIC = "DUNNO (Access policy is public)"
LONG = "x" * 250

MEMBERS = ["member@test.com", "ext@external.com", "stored-at-alias@test-alias.com"]
MODERATORS = ["mod@test.com", "*@trusted.org", "mod-at-alias@test-alias.com"]


def dataset() -> FakeAccounts:
    """Aliases named after their policy at test.com (alias domains test-alias*.com)."""
    fake = FakeAccounts()
    fake.add_domain("test.com")
    fake.add_alias_domain("test-alias.com", "test.com")
    fake.add_alias_domain("test-alias2.com", "test.com")
    fake.add_domain("other.com")
    fake.add_alias_domain("other-alias.com", "other.com")
    fake.add_user("member@test.com")
    fake.add_user("mod@test.com")
    fake.add_user("user@test.com")
    policies = {
        "public": "",
        "public2": "public",
        "domain": "domain",
        "subdomain": "subdomain",
        "membersonly": "membersonly",
        "moderatorsonly": "moderatorsonly",
        "allowedonly": "allowedonly",
        "both": "membersandmoderatorsonly",
        "upper": "MembersOnly",
        "custom": "custom",
        "none": "none",
    }
    for name, policy in policies.items():
        address = f"{name}@test.com"
        fake.aliases[address] = FakeList(
            address, policy=policy, members=list(MEMBERS), moderators=list(MODERATORS)
        )
    fake.aliases["null-ok@test.com"] = FakeList(
        "null-ok@test.com", policy="moderatorsonly", moderators=["*@"]
    )
    fake.aliases["other-list@other.com"] = FakeList(
        "other-list@other.com", policy="membersonly", members=["member@other.com"]
    )
    fake.maillists["mlmmj@test.com"] = FakeList("mlmmj@test.com", policy="membersonly")
    return fake


def build(fake: FakeAccounts, plugins: list[str] | None = None, **overrides: Any) -> Chain:
    overrides = {"plugins": plugins or [PLUGIN], **overrides}
    services = Services(load_namespace({}, overrides=overrides).settings)
    services.vmail = fake
    return make_chain(None, services, **overrides)


def rcpt(sender: str, recipient: str) -> PolicyRequest:
    return PolicyRequest.from_attributes(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "sender": sender,
            "recipient": recipient,
            "client_address": "203.0.113.9",
        }
    )


async def plugin_answer(chain: Chain, request: PolicyRequest) -> str:
    """The plugin's own text (a DUNNO text too), as iredapd-query shows it."""
    decision = await chain.evaluate(request, trace=True)
    (step,) = decision.steps
    assert step.outcome in ("action", "pass"), step
    assert decision.action.text == (step.action if step.outcome == "action" else DUNNO)
    return step.action


# (sender, recipient, expected)
CASES = [
    # not a mail alias
    ("x@external.com", "user@test.com", NOT_ALIAS),
    ("x@external.com", "nobody@unknown.com", NOT_ALIAS),
    ("x@external.com", "mlmmj@test.com", NOT_ALIAS),  # a mailing list, not an alias
    ("x@external.com", "nobody@test-alias.com", NOT_ALIAS_AT_TARGET),
    ("x@external.com", "mlmmj@test-alias.com", NOT_ALIAS_AT_TARGET),
    ("x@external.com", "membersonly@sub.test.com", NOT_ALIAS),
    # public
    ("x@external.com", "public@test.com", PUBLIC),
    ("x@external.com", "public2@test.com", PUBLIC),
    ("x@external.com", "public+tag@test.com", PUBLIC),
    ("x@external.com", "public@test-alias.com", PUBLIC),
    ("", "public@test.com", PUBLIC),
    # domain: the alias's domain and its alias domains
    ("u@test.com", "domain@test.com", DUNNO),
    ("u@test-alias.com", "domain@test.com", DUNNO),
    ("u@test-alias2.com", "domain@test.com", DUNNO),
    ("u@test.com", "domain@test-alias.com", DUNNO),
    ("u@test-alias.com", "domain@test-alias2.com", DUNNO),
    ("u+tag@test.com", "domain+tag@test.com", DUNNO),
    ("u@sub.test.com", "domain@test.com", REJECT),
    ("u@external.com", "domain@test.com", REJECT),
    ("u@other.com", "domain@test.com", REJECT),
    ("u@other-alias.com", "domain@test.com", REJECT),
    ("u@nottest.com", "domain@test.com", REJECT),
    ("", "domain@test.com", REJECT),
    # subdomain: also below those domains
    ("u@test.com", "subdomain@test.com", DUNNO),
    ("u@sub.test.com", "subdomain@test.com", DUNNO),
    ("u@a.b.test.com", "subdomain@test.com", DUNNO),
    ("u@test-alias.com", "subdomain@test.com", DUNNO),
    ("u@sub.test-alias.com", "subdomain@test.com", DUNNO),  # iRedAPD: REJECT (bug 20)
    ("u@sub.test-alias2.com", "subdomain@test-alias.com", DUNNO),  # iRedAPD: REJECT
    ("u@sub.test.com", "subdomain@test-alias.com", DUNNO),
    ("u@nottest.com", "subdomain@test.com", REJECT),
    ("u@external.com", "subdomain@test.com", REJECT),
    ("u@test.com.evil.com", "subdomain@test.com", REJECT),
    ("", "subdomain@test.com", REJECT),
    # membersonly
    ("member@test.com", "membersonly@test.com", DUNNO),
    ("member+tag@test.com", "membersonly@test.com", DUNNO),
    ("ext@external.com", "membersonly@test.com", DUNNO),
    ("member@test-alias.com", "membersonly@test.com", DUNNO),
    ("member@test.com", "membersonly@test-alias.com", DUNNO),
    ("member@test-alias.com", "membersonly@test-alias.com", DUNNO),  # iRedAPD: REJECT (bug 19)
    ("member@test-alias2.com", "membersonly@test-alias.com", DUNNO),  # iRedAPD: REJECT
    ("stored-at-alias@test-alias.com", "membersonly@test.com", DUNNO),
    ("stored-at-alias@test.com", "membersonly@test.com", DUNNO),  # iRedAPD: REJECT
    ("member@sub.test.com", "membersonly@test.com", REJECT),
    ("member@other.com", "membersonly@test.com", REJECT),
    ("member@other-alias.com", "membersonly@test.com", REJECT),
    ("ext@test.com", "membersonly@test.com", REJECT),  # an external member is not a user here
    ("user@test.com", "membersonly@test.com", REJECT),
    ("mod@test.com", "membersonly@test.com", REJECT),
    ("x@trusted.org", "membersonly@test.com", REJECT),  # no *@domain for members
    ("x@external.com", "membersonly@test.com", REJECT),
    ("", "membersonly@test.com", REJECT),
    ("member@other.com", "other-list@other.com", DUNNO),
    ("member@other-alias.com", "other-list@other.com", DUNNO),
    ("member@test.com", "other-list@other.com", REJECT),
    # moderatorsonly, and its old name allowedonly
    ("mod@test.com", "moderatorsonly@test.com", DUNNO),
    ("mod@test-alias.com", "moderatorsonly@test.com", DUNNO),
    ("mod-at-alias@test.com", "moderatorsonly@test.com", DUNNO),  # iRedAPD: REJECT
    ("x@trusted.org", "moderatorsonly@test.com", DUNNO),  # moderator *@trusted.org
    ("x@trusted.org", "moderatorsonly@test-alias.com", DUNNO),
    ("x@sub.trusted.org", "moderatorsonly@test.com", REJECT),
    ("member@test.com", "moderatorsonly@test.com", REJECT),
    ("x@external.com", "moderatorsonly@test.com", REJECT),
    ("", "moderatorsonly@test.com", REJECT),
    ("", "null-ok@test.com", DUNNO),  # a moderator row '*@' lets the null sender in
    ("x@external.com", "null-ok@test.com", REJECT),
    ("mod@test.com", "allowedonly@test.com", DUNNO),
    ("x@trusted.org", "allowedonly@test.com", DUNNO),
    ("member@test.com", "allowedonly@test.com", REJECT),
    # membersandmoderatorsonly
    ("member@test.com", "both@test.com", DUNNO),
    ("ext@external.com", "both@test.com", DUNNO),
    ("mod@test.com", "both@test.com", DUNNO),
    ("x@trusted.org", "both@test.com", DUNNO),
    ("member@test-alias.com", "both@test-alias.com", DUNNO),
    ("mod-at-alias@test-alias2.com", "both@test.com", DUNNO),
    ("user@test.com", "both@test.com", REJECT),
    ("", "both@test.com", REJECT),
    # the policy is read case-insensitively; unknown policies are not enforced
    ("member@test.com", "upper@test.com", DUNNO),
    ("x@external.com", "upper@test.com", REJECT),
    ("x@external.com", "custom@test.com", "DUNNO (Unsupported policy: custom. Bypass.)"),
    ("x@external.com", "none@test.com", "DUNNO (Unsupported policy: none. Bypass.)"),
    # hostile values get normal verdicts
    ("o'brien@test.com", "domain@test.com", DUNNO),
    ('"a\\b"@test.com', "domain@test.com", DUNNO),
    (f"{LONG}@test.com", "domain@test.com", DUNNO),
    ("o'brien@test.com", "membersonly@test.com", REJECT),
    ("a*(b)%_c@test.com", "membersonly@test.com", REJECT),
    ("%@test.com", "membersonly@test.com", REJECT),
    ("*@trusted.org", "membersonly@test.com", REJECT),
    ("*@test.com", "moderatorsonly@test.com", REJECT),
    ("üser@tëst.com", "moderatorsonly@test.com", REJECT),
    (f"{LONG}@test.com", "both@test.com", REJECT),
    ("x@external.com", "o'brien@test.com", NOT_ALIAS),
    ("x@external.com", "member%@test.com", NOT_ALIAS),
    ("x@external.com", "members_nly@test.com", NOT_ALIAS),
    ("x@external.com", "membersonly@te%t.com", NOT_ALIAS),
    ("x@external.com", "membersonly@test-alias.com'", NOT_ALIAS),
    ("x@external.com", "a\\b@test-alias.com", NOT_ALIAS_AT_TARGET),
    ("x@external.com", f"{LONG}@test-alias.com", NOT_ALIAS_AT_TARGET),
]


@pytest.mark.parametrize(("sender", "recipient", "expected"), CASES)
async def test_alias_access_policy(sender: str, recipient: str, expected: str) -> None:
    chain = build(dataset())
    assert await plugin_answer(chain, rcpt(sender, recipient)) == expected


async def test_only_the_lookups_a_policy_needs() -> None:
    fake = dataset()
    chain = build(fake)
    await chain.evaluate(rcpt("x@external.com", "public@test.com"))
    assert fake.calls == {"access_policy": 1}
    fake.calls.clear()
    await chain.evaluate(rcpt("mod@test.com", "moderatorsonly@test.com"))
    assert fake.calls["alias_members"] == 0 and fake.calls["moderators"] == 1


OUTAGE = "DEFER_IF_PERMIT Service temporarily unavailable"


@pytest.mark.parametrize(
    "request_",
    [
        rcpt("x@external.com", "user@test.com"),
        rcpt("x@external.com", "public@test.com"),
        rcpt("member@test.com", "membersonly@test-alias.com"),
    ],
)
async def test_backend_outage_is_a_failure_not_a_verdict(request_: PolicyRequest) -> None:
    fake = dataset()
    fake.down = True
    chain = build(fake, PLUGIN_FAILURE_ACTION=OUTAGE)
    decision = await chain.evaluate(request_, trace=True)
    assert decision.action.text == OUTAGE
    assert [s.outcome for s in decision.steps] == ["failed"]


async def test_alias_domain_target_is_asked_once_for_both_policy_plugins() -> None:
    fake = dataset()
    chain = build(fake, ["sql_ml_access_policy", PLUGIN])
    decision = await chain.evaluate(rcpt("member@test.com", "membersonly@test-alias.com"))
    assert decision.action.text == DUNNO
    assert fake.calls["alias_target_domain"] == 1
