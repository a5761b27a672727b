"""Decision table of ldap_maillist_access_policy on a real slapd (access-policies.md §9).

Rows marked "fix" differ from iRedAPD on purpose (§15 items 24-31; listed in
docs/differences-from-iredapd.md); every other row is iRedAPD's answer.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from iredapd.accounts import CachedAccounts
from iredapd.app import load_namespace
from iredapd.backends.fake import FakeAccounts, FakeList
from iredapd.chain import Chain, PluginLoadError
from iredapd.request import PolicyRequest
from iredapd.services import Services
from tests.support.accounts import AccountStores, ldif_for, require_kind

pytestmark = [pytest.mark.ldap, pytest.mark.integration]
pytest_plugins = ["tests.support.accounts"]  # the account_stores fixture

PLUGIN = "ldap_maillist_access_policy"
NOT_AUTHORIZED = "REJECT Not authorized"
POLICY_REJECTION = "REJECT Policy rejection"
NO_LDIF = "DUNNO (Recipient is not a local account - no LDIF data)"
NOT_A_LIST = "DUNNO (Recipient is not a mailing list account)"
SASL_IS_RCPT = "DUNNO (sasl_username == recipient, not a mail list account)"
PUBLIC = "DUNNO (Access policy: public, no restriction)"
PASS = "DUNNO"

USER_SERVICES = ["mail", "smtp", "shadowaddress"]


def _fake() -> FakeAccounts:
    f = FakeAccounts()
    f.add_domain("example.com")
    f.add_alias_domain("alias.example.com", "example.com")
    f.add_domain("aliased.test")
    f.add_alias_domain("aliased-alias.test", "aliased.test")
    f.add_user("other@example.com", changed=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    f.aliases["alias@example.com"] = FakeList(
        "alias@example.com", policy="membersonly", members=["other@example.com"]
    )
    return f


def _extra_ldif(basedn: str) -> str:
    from tests.support.slapd import ldif_entry

    dom = f"domainName=example.com,{basedn}"

    def user(mail: str, **attrs: Any) -> str:
        local = mail.partition("@")[0]
        values: dict[str, Any] = {
            "objectClass": ["inetOrgPerson", "shadowAccount", "mailUser"],
            "mail": mail,
            "uid": local,
            "cn": local,
            "sn": local,
            "accountStatus": "active",
            "enabledService": USER_SERVICES,
        }
        values.update(attrs)
        return ldif_entry(f"mail={mail},ou=Users,{dom}", values)

    def ml(mail: str, policy: str | None, **attrs: Any) -> str:
        values: dict[str, Any] = {
            "objectClass": "mailList",
            "mail": mail,
            "accountStatus": "active",
            "accessPolicy": policy,
            "enabledService": ["mail"],
        }
        values.update(attrs)
        return ldif_entry(f"mail={mail},ou=Groups,{dom}", values)

    return "".join(
        [
            user(
                "user@example.com",
                shadowAddress="user.alias@example.com",
                memberOfGroup=["members@example.com", "mmo@example.com"],
            ),
            user(
                "inactive@example.com",
                accountStatus="disabled",
                memberOfGroup=["members@example.com", "mmo@example.com"],
            ),
            user(
                "noshadow@example.com",
                enabledService=["mail", "smtp"],
                shadowAddress="ns.alias@example.com",
            ),
            ldif_entry(
                f"mail=ext@external.test,ou=Externals,{dom}",
                {
                    "objectClass": "mailExternalUser",
                    "mail": "ext@external.test",
                    "accountStatus": "active",
                    "memberOfGroup": "members@example.com",
                },
            ),
            ml("public@example.com", "public"),
            ml("nopolicy@example.com", None),
            ml("domain@example.com", "domain"),
            ml("sub@example.com", "subdomain"),
            ml(
                "members@example.com",
                "membersonly",
                shadowAddress="members@alias.example.com",
                listModerator="mod@external.test",
                listOwner="owner@external.test",
                listAllowedUser=[
                    "allowed@external.test",
                    "friend.test",
                    "*@star.test",
                    ".subs.test",
                ],
            ),
            ml(
                "mmo@example.com",
                "membersAndModeratorsOnly",
                shadowAddress="mmo.alias@example.com",
                listAllowedUser="mmoallowed@external.test",
            ),
            ml(
                "mods@example.com",
                "moderatorsonly",
                listAllowedUser=[
                    "user@example.com",
                    "noshadow@example.com",
                    "remote@external.test",
                    "aliased.test",
                ],
            ),
            ml("allowedonly@example.com", "allowedonly", listAllowedUser="user@example.com"),
            ml("disabled@example.com", "public", accountStatus="disabled"),
            ml("nostatus@example.com", "public", accountStatus=None),
            ml("upper@example.com", "domain", accountStatus="Active"),
            ml("mlmmj@example.com", "membersonly", enabledService=["mail", "mlmmj"]),
            ml("mlmmj-mods@example.com", "moderatorsonly", enabledService=["mail", "mlmmj"]),
            ml("mlmmj-mmo@example.com", "membersandmoderatorsonly", enabledService=["mlmmj"]),
            ml("mlmmj-domain@example.com", "domain", enabledService=["mlmmj"]),
            ml("weird@example.com", "closed"),
        ]
    )


@pytest.fixture(scope="module")
def directory(account_stores: AccountStores) -> Iterator[tuple[Any, str]]:
    """The session slapd with this module's tree under a base of its own."""
    require_kind("ldap")
    server = account_stores.slapd()
    basedn = f"o=domains-{secrets.token_hex(4)},{server.suffix}"
    server.add(ldif_for(_fake(), basedn) + _extra_ldif(basedn))
    yield server, basedn


@asynccontextmanager
async def ldap_chain(directory: tuple[Any, str], *, cache: bool = False) -> AsyncIterator[Chain]:
    from iredapd.backends.ldap import LDAPAccounts, LDAPConfig

    server, basedn = directory
    loaded = load_namespace(
        {},
        overrides={
            "plugins": [PLUGIN],
            "backend": "ldap",
            "ldap_uri": server.uri,
            "ldap_basedn": basedn,
            "ldap_binddn": server.binddn,
            "ldap_bindpw": server.bindpw,
        },
    )
    services = Services(loaded.settings)
    backend = LDAPAccounts(LDAPConfig.from_settings(loaded.settings), services.run_blocking)
    await services.run_blocking(backend.open)
    services.vmail = CachedAccounts(backend, ttl=60.0) if cache else backend
    chain = Chain.build(loaded.settings, services, loaded.specs)
    await chain.start()
    try:
        yield chain
    finally:
        await chain.close()
        await services.close()


def _request(sender: str, recipient: str, sasl: str = "", state: str = "RCPT") -> PolicyRequest:
    return PolicyRequest.from_attributes(
        {
            "protocol_state": state,
            "sender": sender,
            "recipient": recipient,
            "sasl_username": sasl,
            "client_address": "192.0.2.10",
        }
    )


CASES = [
    # sender, sasl_username, recipient, expected (reply, or the plugin's DUNNO text)
    ("a@external.test", "", "nobody@example.com", NO_LDIF),
    ("a@external.test", "members@example.com", "members@example.com", SASL_IS_RCPT),
    ("a@external.test", "", "user@example.com", NOT_A_LIST),
    ("a@external.test", "", "alias@example.com", NOT_A_LIST),  # mailAlias: not policed
    ("a@external.test", "", "disabled@example.com", POLICY_REJECTION),
    ("a@external.test", "", "nostatus@example.com", POLICY_REJECTION),
    ("a@example.com", "", "upper@example.com", PASS),  # fix (29): 'Active' is active
    ("a@external.test", "", "public@example.com", PUBLIC),
    ("a@external.test", "", "nopolicy@example.com", PUBLIC),
    # domain / subdomain: the list's domain and its alias domains
    ("a@example.com", "", "domain@example.com", PASS),
    ("a@alias.example.com", "", "domain@example.com", PASS),
    ("a@sub.example.com", "", "domain@example.com", NOT_AUTHORIZED),
    ("a@external.test", "", "domain@example.com", NOT_AUTHORIZED),
    ("", "", "domain@example.com", NOT_AUTHORIZED),  # null sender
    ("a@sub.example.com", "", "sub@example.com", PASS),
    ("a@deep.sub.alias.example.com", "", "sub@example.com", PASS),
    ("a@example.com", "", "sub@example.com", PASS),
    ("a@notexample.com", "", "sub@example.com", NOT_AUTHORIZED),
    # membersonly: active members (users and external users)
    ("user@example.com", "", "members@example.com", PASS),
    ("user.alias@example.com", "", "members@example.com", PASS),
    ("ext@external.test", "", "members@example.com", PASS),
    ("inactive@example.com", "", "members@example.com", NOT_AUTHORIZED),
    ("other@example.com", "", "members@example.com", NOT_AUTHORIZED),
    ("user+tag@example.com", "", "members@example.com", PASS),  # sender without extension
    # moderators, owners and listAllowedUser (address, domain, *@domain, .domain)
    ("mod@external.test", "", "members@example.com", PASS),
    ("owner@external.test", "", "members@example.com", PASS),
    ("allowed@external.test", "", "members@example.com", PASS),
    ("a@friend.test", "", "members@example.com", PASS),
    ("a@sub.friend.test", "", "members@example.com", NOT_AUTHORIZED),
    ("a@star.test", "", "members@example.com", PASS),
    ("a@subs.test", "", "members@example.com", PASS),
    ("a@x.subs.test", "", "members@example.com", PASS),
    ("a@other.test", "", "members@example.com", NOT_AUTHORIZED),
    ("", "", "members@example.com", NOT_AUTHORIZED),
    # fix (26): list+tag is the list
    ("other@example.com", "", "members+tag@example.com", NOT_AUTHORIZED),
    ("user@example.com", "", "members+tag@example.com", PASS),
    # fix (27): reached at the alias domain, members are still found
    ("user@example.com", "", "members@alias.example.com", PASS),
    ("other@example.com", "", "members@alias.example.com", NOT_AUTHORIZED),
    # membersandmoderatorsonly: members of any status, the list's own addresses
    ("user@example.com", "", "mmo@example.com", PASS),
    ("inactive@example.com", "", "mmo@example.com", PASS),
    ("mmo.alias@example.com", "", "mmo@example.com", PASS),
    ("mmoallowed@external.test", "", "mmo@example.com", PASS),
    ("other@example.com", "", "mmo@example.com", NOT_AUTHORIZED),
    # moderatorsonly: listAllowedUser, logged-in senders only (after the allow-lists)
    ("remote@external.test", "", "mods@example.com", PASS),
    ("other@example.com", "", "mods@example.com", NOT_AUTHORIZED),
    ("user.alias@example.com", "", "mods@example.com", NOT_AUTHORIZED),
    ("user.alias@example.com", "user@example.com", "mods@example.com", PASS),
    ("ns.alias@example.com", "noshadow@example.com", "mods@example.com", NOT_AUTHORIZED),
    ("a@aliased.test", "a@aliased.test", "mods@example.com", PASS),
    ("a@aliased-alias.test", "a@aliased.test", "mods@example.com", PASS),  # fix (24)
    ("stranger@external.test", "x@example.com", "mods@example.com", NOT_AUTHORIZED),
    ("user@example.com", "user@example.com", "allowedonly@example.com", PASS),
    ("user.alias@example.com", "user@example.com", "allowedonly@example.com", PASS),
    ("other@example.com", "other@example.com", "allowedonly@example.com", NOT_AUTHORIZED),
    # mlmmj lists: mlmmj checks its subscribers
    ("other@example.com", "", "mlmmj@example.com", PASS),
    ("other@example.com", "", "mlmmj-mods@example.com", PASS),
    ("other@example.com", "", "mlmmj-mmo@example.com", PASS),  # fix (28)
    ("a@external.test", "", "mlmmj-domain@example.com", NOT_AUTHORIZED),
    (
        "a@external.test",
        "",
        "weird@example.com",
        "DUNNO (Unknown access policy: closed, no restriction)",
    ),
]


@pytest.mark.parametrize(("sender", "sasl", "recipient", "expected"), CASES)
async def test_decision_table(
    directory: tuple[Any, str], sender: str, sasl: str, recipient: str, expected: str
) -> None:
    async with ldap_chain(directory) as chain:
        decision = await chain.evaluate(_request(sender, recipient, sasl), trace=True)
    (step,) = decision.steps
    if expected.startswith("DUNNO"):
        assert decision.action.text == "DUNNO"
        assert step.action == expected, step
    else:
        assert decision.action.text == expected
        assert decision.plugin == PLUGIN


async def test_runs_at_rcpt_only(directory: tuple[Any, str]) -> None:
    async with ldap_chain(directory) as chain:
        rcpt = await chain.evaluate(_request("a@external.test", "domain@example.com"))
        eom = await chain.evaluate(
            _request("a@external.test", "domain@example.com", state="END-OF-MESSAGE")
        )
    assert rcpt.action.text == NOT_AUTHORIZED
    assert eom.action.text == "DUNNO"


async def test_lookups_go_through_the_account_cache(directory: tuple[Any, str]) -> None:
    async with ldap_chain(directory, cache=True) as chain:
        vmail = chain.services.vmail
        assert isinstance(vmail, CachedAccounts)
        first = await chain.evaluate(_request("other@example.com", "members@example.com"))
        misses = vmail.misses
        assert misses > 0
        again = await chain.evaluate(_request("other@example.com", "members@example.com"))
        assert vmail.misses == misses  # all answered from the cache
    assert first.action.text == again.action.text == NOT_AUTHORIZED


async def test_refuses_to_start_without_the_ldap_backend() -> None:
    loaded = load_namespace({}, overrides={"plugins": [PLUGIN]})
    services = Services(loaded.settings)
    services.vmail = FakeAccounts()
    chain = Chain.build(loaded.settings, services, loaded.specs)
    try:
        with pytest.raises(PluginLoadError, match="needs backend = 'ldap'"):
            await chain.start()
    finally:
        await services.close()
