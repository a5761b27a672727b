"""The plugins' decision tables on every real account backend.

The tables of tests/plugins (test_reject_sender_login_mismatch,
test_sql_alias_access_policy, test_sql_ml_access_policy,
test_force_change_password) run on FakeAccounts.  Here each table's own
dataset is loaded once into SQLite, MariaDB, PostgreSQL or slapd
(tests/support/accounts.py), the chains are built with the table module's own
helpers (once per settings variant), and every case must give the table's
answer.  All the cases that do not are listed in one failure message.

Skipped: only what a table marks as not applicable to a backend (the login
mismatch table's SQL_ONLY_CASES on LDAP).  Both force_change_password plugins
ask the account backend, so both columns of that table run everywhere.
"""

from __future__ import annotations

import reprlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from iredapd.chain import Chain, Decision
from iredapd.request import PolicyRequest
from tests.plugins import test_force_change_password as password_table
from tests.plugins import test_reject_sender_login_mismatch as mismatch_table
from tests.plugins import test_sql_alias_access_policy as alias_table
from tests.plugins import test_sql_ml_access_policy as ml_table
from tests.support.accounts import AccountStores, kind_params, populated

pytest_plugins = ["tests.support.accounts"]  # the account_stores fixture
pytestmark = pytest.mark.integration

REAL_KINDS = ("sqlite", "mariadb", "pgsql", "ldap")

# Why the login mismatch table marks SQL_ONLY_CASES: its comment above them
# (the module has no constant to import), which iRedAPD's two backends share.
SQL_ONLY_REASON = (
    "SQL counts only active member rows of a mail alias, "
    "LDAP does not look at the alias's status (as in iRedAPD)"
)

# Case tuples hold 250-character local parts: keep the failure message readable.
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxdict = _short.maxlist = _short.maxtuple = 12


@dataclass
class Tally:
    """What the cases of one table did on one backend."""

    table: str
    kind: str
    run: int = 0
    skipped: list[tuple[Any, str]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def check(self, case: Any, expected: str, actual: str) -> None:
        self.run += 1
        if actual != expected:
            self.mismatches.append(
                f"  {_short.repr(case)}\n    expected {expected!r}\n    got      {actual!r}"
            )

    def skip(self, case: Any, reason: str) -> None:
        self.skipped.append((case, reason))

    def report(self) -> str:
        return (
            f"{len(self.mismatches)} of {self.run} cases of the {self.table} table "
            f"differ on {self.kind} ({len(self.skipped)} skipped):\n" + "\n".join(self.mismatches)
        )


def _failures(decision: Decision) -> str:
    """A plugin that failed or timed out gives its failure action: not a verdict."""
    broken = [f"{s.plugin} {s.outcome}: {s.error}" for s in decision.steps if s.error]
    return f" [{'; '.join(broken)}]" if broken else ""


async def _plugin_answer(answer: Awaitable[str]) -> str:
    """A table module's plugin_answer(); its own assertion (a failed step) is an answer too."""
    try:
        return await answer
    except AssertionError as e:
        return f"<plugin_answer: {e}>"


# ---------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------


async def run_login_mismatch(vmail: Any, tally: Tally) -> None:
    """FORGED_CASES, MISMATCH_CASES and (not on LDAP) SQL_ONLY_CASES."""
    t = mismatch_table
    chains: dict[str, Chain] = {}

    def chain_for(overrides: Mapping[str, Any], spf: frozenset[tuple[str, str]]) -> Chain:
        key = repr((sorted(overrides.items()), sorted(spf)))
        if key not in chains:
            chains[key], _ = t.build(vmail, spf, **overrides)
        return chains[key]

    async def verdict(chain: Chain, request: PolicyRequest) -> str:
        # as the table's decide(): the action, and who decided it
        decision = await chain.evaluate(request, trace=True)
        text = decision.action.text + _failures(decision)
        if decision.plugin != ("" if decision.action.text == t.DUNNO else t.PLUGIN):
            text += f" (decided by {decision.plugin!r})"
        return text

    async def login_case(case: tuple[Any, ...], endpoint: str) -> None:
        # as the table's test_login_mismatch: mlmmjadmin is asked for list members
        login, sender, settings, expected = case
        overrides = {
            "mlmmjadmin_api_endpoint": endpoint,
            "mlmmjadmin_api_auth_token": t.TOKEN,
            **settings,
        }
        request = t.rcpt(sender, "rcpt@external.com", sasl=login)
        tally.check(case, expected, await verdict(chain_for(overrides, frozenset()), request))

    try:
        forged: Sequence[tuple[Any, ...]] = t.FORGED_CASES  # rows of mixed types
        for case in forged:
            sender, recipient, client, settings, spf, expected = case
            request = t.rcpt(sender, recipient, client=client)
            tally.check(case, expected, await verdict(chain_for(settings, spf), request))
        async with t.mlmmjadmin() as endpoint:
            for case in t.MISMATCH_CASES:
                await login_case(case, endpoint)
            for case in t.SQL_ONLY_CASES:
                if vmail.kind == "ldap":
                    tally.skip(case, SQL_ONLY_REASON)
                else:
                    await login_case(case, endpoint)
    finally:
        await _close(chains.values())


async def run_alias_policy(vmail: Any, tally: Tally) -> None:
    """sql_alias_access_policy's CASES."""
    chain = alias_table.build(vmail)
    try:
        for case in alias_table.CASES:
            sender, recipient, expected = case
            answer = alias_table.plugin_answer(chain, alias_table.rcpt(sender, recipient))
            tally.check(case, expected, await _plugin_answer(answer))
    finally:
        await _close([chain])


async def run_ml_policy(vmail: Any, tally: Tally) -> None:
    """sql_ml_access_policy's CASES."""
    chain = ml_table.build(vmail)
    try:
        for case in ml_table.CASES:
            sender, recipient, expected = case
            answer = ml_table.plugin_answer(chain, ml_table.rcpt(sender, recipient))
            tally.check(case, expected, await _plugin_answer(answer))
    finally:
        await _close([chain])


async def run_force_change_password(vmail: Any, tally: Tally) -> None:
    """CASES for both plugins (each column: that plugin's answer)."""
    t = password_table
    chains: dict[str, Chain] = {}
    rows: Sequence[tuple[Any, ...]] = t.CASES  # the table mixes types in its rows
    try:
        for plugin in (t.SQL, t.LDAP):
            for case in rows:
                login, settings, at, sql, ldap = case
                key = repr((plugin, sorted(settings.items())))
                if key not in chains:
                    chains[key] = t.build(vmail, plugin, **settings)
                now = None if at is None else at.timestamp()
                answer = t.plugin_answer(chains[key], t.rcpt(login), now)
                expected = sql if plugin == t.SQL else ldap
                tally.check((plugin, login, settings, at), expected, await _plugin_answer(answer))
    finally:
        await _close(chains.values())


async def _close(chains: Iterable[Chain]) -> None:
    """Close the chains and their Services; the populated backend is closed by its owner."""
    for chain in chains:
        await chain.close()
        chain.services.vmail = None
        await chain.services.close()


@dataclass(frozen=True)
class Table:
    """A table module and how to run its cases on a populated backend.

    ``run(vmail, tally)`` gets the real backend where the module's helpers say
    FakeAccounts: they only set it as ``services.vmail``.
    """

    name: str
    module: ModuleType
    run: Callable[[Any, Tally], Awaitable[None]]


TABLES = [
    Table("reject_sender_login_mismatch", mismatch_table, run_login_mismatch),
    Table("sql_alias_access_policy", alias_table, run_alias_policy),
    Table("sql_ml_access_policy", ml_table, run_ml_policy),
    Table("force_change_password", password_table, run_force_change_password),
]


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", kind_params(*REAL_KINDS))
async def test_decision_table_on_backend(
    kind: str,
    table: Table,
    account_stores: AccountStores,
    request: pytest.FixtureRequest,
) -> None:
    tally = Tally(table.name, kind)
    async with populated(kind, table.module.dataset(), account_stores) as vmail:
        await table.run(vmail, tally)
    # for --junitxml (record_property warns under xunit2)
    request.node.user_properties += [
        ("cases_run", tally.run),
        ("cases_skipped", [(_short.repr(c), reason) for c, reason in tally.skipped]),
    ]
    assert tally.run > 0
    assert not tally.mismatches, tally.report()
