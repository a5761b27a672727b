"""whitelist_outbound_recipient (core-and-stateful.md §11) on SQLite, MariaDB, PostgreSQL.

A decision table of settings and requests against the rows written, then the
whole loop: a user writes to someone, who is then not greylisted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iredapd.request import PolicyRequest
from tests.plugins.test_greylisting import (  # noqa: F401 - fixtures
    GREYLISTED,
    GreylistEnv,
    gl_database,
    gl_env,
)

USER = "user@local.example"
EXTERNAL = "friend@remote.example"
AUTO = "AUTO-WHITELISTED"
HOSTNAME = "mx.local.example"


@pytest.fixture
def env(gl_env: GreylistEnv) -> Iterator[GreylistEnv]:  # noqa: F811
    gl_env.accounts.add_domain("local.example")
    gl_env.accounts.add_domain("backup.example", backupmx=True)
    gl_env.accounts.add_alias_domain("alias.example", "local.example")
    yield gl_env


def eom(**attrs: str) -> PolicyRequest:
    values = {
        "request": "smtpd_access_policy",
        "protocol_state": "END-OF-MESSAGE",
        "client_address": "192.0.2.50",
        "sasl_username": USER,
        "sender": USER,
        "recipient": EXTERNAL,
        "recipient_count": "1",
    }
    values.update(attrs)
    return PolicyRequest.from_attributes(values)


# (id, settings, request changes, whitelist rows (account, sender, comment), domains)
CASES: list[tuple[str, dict[str, Any], dict[str, str], list[tuple[str, str, str]], list[str]]] = [
    ("default", {}, {}, [(USER, EXTERNAL, AUTO)], []),
    ("extension removed", {}, {"recipient": "Friend+News@Remote.Example"},
     [(USER, EXTERNAL, AUTO)], []),
    ("no sasl", {}, {"sasl_username": ""}, [], []),
    ("no recipient (multi-recipient message)", {}, {"recipient": ""}, [], []),
    ("same domain", {}, {"recipient": "other@local.example"}, [], []),
    ("hosted domain", {}, {"sasl_username": "u@elsewhere.example",
                           "recipient": "x@local.example"}, [], []),
    ("alias domain", {}, {"recipient": "x@alias.example"}, [], []),
    ("backup mx domain", {}, {"recipient": "x@backup.example"}, [], []),
    ("server hostname", {}, {"recipient": f"root@{HOSTNAME}"}, [], []),
    ("both off", {"WL_RCPT_FOR_GREYLISTING": False}, {}, [], []),
    ("domain for greylisting", {"WL_RCPT_WHITELIST_DOMAIN_FOR_GREYLISTING": True}, {}, [],
     ["remote.example"]),
    ("without spf: user/user",
     {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True}, {},
     [(USER, EXTERNAL, "")], []),
    ("without spf: domain/user (bug 34 fixed)",
     {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True,
      "WL_RCPT_LOCAL_ACCOUNT": "domain"}, {},
     [("@local.example", EXTERNAL, "")], []),
    ("without spf: global/user",
     {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True,
      "WL_RCPT_LOCAL_ACCOUNT": "global"}, {},
     [("@.", EXTERNAL, "")], []),
    ("without spf: user/domain (bug 34 fixed)",
     {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True, "WL_RCPT_RCPT": "domain"},
     {}, [(USER, "@remote.example", "")], []),
    ("without spf: domain/domain",
     {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True,
      "WL_RCPT_LOCAL_ACCOUNT": "domain", "WL_RCPT_RCPT": "domain"}, {},
     [("@local.example", "@remote.example", "")], []),
    ("both: same row, the first insert's comment stays",
     {"WL_RCPT_WITHOUT_SPF": True}, {}, [(USER, EXTERNAL, "")], []),
    ("both: different rows",
     {"WL_RCPT_WITHOUT_SPF": True, "WL_RCPT_RCPT": "domain"}, {},
     [(USER, "@remote.example", ""), (USER, EXTERNAL, AUTO)], []),
    ("both with domain list",
     {"WL_RCPT_WITHOUT_SPF": True, "WL_RCPT_WHITELIST_DOMAIN_FOR_GREYLISTING": True}, {},
     [(USER, EXTERNAL, "")], ["remote.example"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "changes", "rows", "domains"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
async def test_decision_table(
    env: GreylistEnv,
    settings: dict[str, Any],
    changes: dict[str, str],
    rows: list[tuple[str, str, str]],
    domains: list[str],
) -> None:
    chain = env.chain(("whitelist_outbound_recipient",), SERVER_HOSTNAME=HOSTNAME, **settings)
    for _ in range(2):  # a second message changes nothing (idempotent, no error)
        decision = await chain.evaluate(eom(**changes), trace=True)
        assert decision.action.text == "DUNNO"
        assert [step.outcome for step in decision.steps] == ["pass"]
    got = env.rows("whitelists", "account", "sender", "comment")
    assert sorted((r["account"], r["sender"], r["comment"]) for r in got) == sorted(rows)
    assert [r["domain"] for r in env.rows("domains", "domain")] == domains


async def test_runs_at_end_of_message_only_and_honours_dry_run(env: GreylistEnv) -> None:
    chain = env.chain(("whitelist_outbound_recipient",))
    await chain.evaluate(eom(protocol_state="RCPT"))
    await chain.evaluate(eom(), dry_run=True)
    assert env.rows("whitelists") == []
    await chain.evaluate(eom())
    assert len(env.rows("whitelists")) == 1


async def test_backend_down_fails_the_plugin(env: GreylistEnv) -> None:
    chain = env.chain(("whitelist_outbound_recipient",))
    env.accounts.down = True
    decision = await chain.evaluate(eom(), trace=True)
    assert [s.outcome for s in decision.steps] == ["failed"]
    assert decision.action.text == "DUNNO"
    assert env.rows("whitelists") == []


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({}, id="user"),
        pytest.param(
            {"WL_RCPT_FOR_GREYLISTING": False, "WL_RCPT_WITHOUT_SPF": True,
             "WL_RCPT_LOCAL_ACCOUNT": "domain", "WL_RCPT_RCPT": "domain"},
            id="domain-domain",
        ),
    ],
)  # fmt: skip
async def test_the_answer_is_not_greylisted(env: GreylistEnv, settings: dict[str, Any]) -> None:
    """The loop the plugin exists for, including the +extension quirk (§11 step 7)."""
    chain = env.chain(("greylisting", "whitelist_outbound_recipient"), **settings)
    env.enable()
    reply = {
        "protocol_state": "RCPT",
        "sasl_username": "",
        "sender": "friend+reply@remote.example",
        "recipient": USER,
        "client_address": "198.51.100.20",
    }
    assert (await chain.evaluate(eom(**reply))).action.text == GREYLISTED
    await chain.evaluate(eom(recipient="Friend+Tag@remote.example"))
    reply["client_address"] = "198.51.100.21"
    assert (await chain.evaluate(eom(**reply))).action.text == "DUNNO"
