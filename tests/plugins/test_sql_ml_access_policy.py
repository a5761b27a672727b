"""Decision table of sql_ml_access_policy (access-policies.md section 8).

One FakeAccounts dataset (:func:`dataset`) and plain-data cases, so the table
can run on every account backend.  Each list's local part names its policy.
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

PLUGIN = "sql_ml_access_policy"
REJECT = "REJECT Not authorized"
DUNNO = "DUNNO"
NOT_LIST = "DUNNO Recipient is not a mailing list account."
NOT_LIST_AT_TARGET = "DUNNO (Recipient is not a mailing list account)"
PUBLIC = "DUNNO (Access policy is public)"
MLMMJ = "DUNNO (Let mlmmj handle the ACL)"
LONG = "x" * 250


def dataset() -> FakeAccounts:
    """mlmmj lists named after their policy at test.com (alias domains test-alias*.com)."""
    fake = FakeAccounts()
    fake.add_domain("test.com")
    fake.add_alias_domain("test-alias.com", "test.com")
    fake.add_alias_domain("test-alias2.com", "test.com")
    fake.add_domain("other.com")
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
        "upper": "Domain",
        "custom": "custom",
    }
    for name, policy in policies.items():
        address = f"{name}@test.com"
        fake.maillists[address] = FakeList(
            address,
            policy=policy,
            members=["member@external.com"],
            moderators=["mod@external.com"],
            owners=["owner@external.org"],
        )
    fake.maillists["other-list@other.com"] = FakeList(
        "other-list@other.com", policy="domain", moderators=["mod@test.com"]
    )
    fake.aliases["alias@test.com"] = FakeList("alias@test.com", policy="domain")
    return fake


def build(fake: FakeAccounts, **overrides: Any) -> Chain:
    overrides = {"plugins": [PLUGIN], **overrides}
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
    # not a mailing list
    ("x@external.com", "user@test.com", NOT_LIST),
    ("x@external.com", "alias@test.com", NOT_LIST),  # a mail alias, not a list
    ("x@external.com", "nobody@unknown.com", NOT_LIST),
    ("x@external.com", "nobody@test-alias.com", NOT_LIST_AT_TARGET),
    ("x@external.com", "alias@test-alias.com", NOT_LIST_AT_TARGET),
    ("x@external.com", "domain@sub.test.com", NOT_LIST),
    # public
    ("x@external.com", "public@test.com", PUBLIC),
    ("x@external.com", "public2@test.com", PUBLIC),
    ("x@external.com", "public+tag@test-alias.com", PUBLIC),
    # mlmmj enforces these itself
    ("x@external.com", "membersonly@test.com", MLMMJ),
    ("x@external.com", "moderatorsonly@test.com", MLMMJ),
    ("x@external.com", "allowedonly@test.com", MLMMJ),
    ("x@external.com", "both@test.com", MLMMJ),
    ("", "both@test-alias.com", MLMMJ),
    # domain
    ("u@test.com", "domain@test.com", DUNNO),
    ("u@test-alias.com", "domain@test.com", DUNNO),
    ("u@test-alias2.com", "domain@test-alias.com", DUNNO),
    ("u+tag@test.com", "domain+tag@test.com", DUNNO),
    ("u@sub.test.com", "domain@test.com", REJECT),
    ("u@external.com", "domain@test.com", REJECT),
    ("u@other.com", "domain@test.com", REJECT),
    ("", "domain@test.com", REJECT),
    ("member@external.com", "domain@test.com", REJECT),  # members are mlmmj's business
    # moderators and owners pass whatever the policy
    ("mod@external.com", "domain@test.com", DUNNO),
    ("mod+tag@external.com", "domain@test.com", DUNNO),
    ("owner@external.org", "domain@test.com", DUNNO),
    ("mod@external.com", "domain@test-alias.com", DUNNO),  # iRedAPD: REJECT (bug 23)
    ("owner@external.org", "domain@test-alias2.com", DUNNO),  # iRedAPD: REJECT (bug 23)
    ("mod@external.org", "domain@test.com", REJECT),
    ("owner@external.com", "domain@test.com", REJECT),
    ("mod@test.com", "other-list@other.com", DUNNO),
    ("u@test.com", "other-list@other.com", REJECT),
    # subdomain
    ("u@test.com", "subdomain@test.com", DUNNO),
    ("u@sub.test.com", "subdomain@test.com", DUNNO),
    ("u@a.b.test-alias.com", "subdomain@test.com", DUNNO),  # iRedAPD: REJECT (bug 20)
    ("u@sub.test.com", "subdomain@test-alias.com", DUNNO),
    ("u@nottest.com", "subdomain@test.com", REJECT),
    ("u@test.com.evil.com", "subdomain@test.com", REJECT),
    ("mod@external.com", "subdomain@test.com", DUNNO),
    ("", "subdomain@test.com", REJECT),
    # the policy is read case-insensitively; unknown policies are not enforced
    ("u@test.com", "upper@test.com", DUNNO),
    ("u@external.com", "upper@test.com", REJECT),
    ("u@external.com", "custom@test.com", "DUNNO (Unsupported policy: custom. Bypass.)"),
    ("mod@external.com", "custom@test.com", DUNNO),  # moderators are checked first
    # hostile values get normal verdicts
    ("o'brien@test.com", "domain@test.com", DUNNO),
    ('"a\\b"@test.com', "subdomain@test.com", DUNNO),
    (f"{LONG}@test.com", "domain@test.com", DUNNO),
    ("o'brien@external.com", "domain@test.com", REJECT),
    ("%@external.com", "domain@test.com", REJECT),
    ("mod_external.com@x.com", "domain@test.com", REJECT),
    ("*@external.com", "domain@test.com", REJECT),
    ("üser@tëst.com", "domain@test.com", REJECT),
    ("x@external.com", "o'brien@test.com", NOT_LIST),
    ("x@external.com", "dom%@test.com", NOT_LIST),
    ("x@external.com", "d_main@test.com", NOT_LIST),
    ("x@external.com", "domain@te_t.com", NOT_LIST),
    ("x@external.com", "a\\b@test-alias.com", NOT_LIST_AT_TARGET),
    ("x@external.com", f"{LONG}@test-alias.com", NOT_LIST_AT_TARGET),
]


@pytest.mark.parametrize(("sender", "recipient", "expected"), CASES)
async def test_ml_access_policy(sender: str, recipient: str, expected: str) -> None:
    chain = build(dataset())
    assert await plugin_answer(chain, rcpt(sender, recipient)) == expected


async def test_mlmmj_policies_need_no_further_lookups() -> None:
    fake = dataset()
    await build(fake).evaluate(rcpt("x@external.com", "membersonly@test.com"))
    assert fake.calls == {"access_policy": 1}


OUTAGE = "DEFER_IF_PERMIT Service temporarily unavailable"


@pytest.mark.parametrize(
    "request_",
    [
        rcpt("x@external.com", "user@test.com"),
        rcpt("x@external.com", "domain@test.com"),
        rcpt("u@test.com", "domain@test-alias.com"),
    ],
)
async def test_backend_outage_is_a_failure_not_a_verdict(request_: PolicyRequest) -> None:
    fake = dataset()
    fake.down = True
    chain = build(fake, PLUGIN_FAILURE_ACTION=OUTAGE)
    decision = await chain.evaluate(request_, trace=True)
    assert decision.action.text == OUTAGE
    assert [s.outcome for s in decision.steps] == ["failed"]
