"""Self-test of tests/support/slapd.py: a throwaway slapd with the iRedMail tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.services import require_module
from tests.support.slapd import BASEDN, VMAIL_DN, SlapdInstance, ldif_entry, user_entry

pytest_plugins = ["tests.support.slapd"]
pytestmark = [pytest.mark.integration, pytest.mark.ldap]

USER1_DN = f"mail=user1@example.com,ou=Users,domainName=example.com,{BASEDN}"


@pytest.fixture
def ldap() -> Any:
    """python-ldap, with its ``ldap.filter`` submodule loaded."""
    reason = "python-ldap (pip; needs libldap2-dev, libsasl2-dev)"
    require_module("ldap.filter", reason)
    return require_module("ldap", reason)


@pytest.fixture
def slapd(ldap: Any, slapd_instance_factory: Callable[..., SlapdInstance]) -> SlapdInstance:
    return slapd_instance_factory()


def find_user(ldap: Any, conn: Any, address: str) -> list[tuple[str, dict[str, list[bytes]]]]:
    """iRedAPD's user lookup: by mail or shadowAddress, active accounts only."""
    escaped = ldap.filter.escape_filter_chars(address)
    query = (
        "(&(objectClass=mailUser)(accountStatus=active)"
        f"(|(mail={escaped})(shadowAddress={escaped})))"
    )
    result: list[tuple[str, dict[str, list[bytes]]]] = conn.search_s(
        BASEDN, ldap.SCOPE_SUBTREE, query, ["mail", "shadowAddress", "enabledService"]
    )
    return result


def test_vmail_bind_and_search(ldap: Any, slapd: SlapdInstance) -> None:
    conn = slapd.connect()  # cn=vmail
    assert conn.whoami_s() == f"dn:{VMAIL_DN}"

    ((dn, attrs),) = find_user(ldap, conn, "alias1@example.com")
    assert dn == USER1_DN
    assert attrs["mail"] == [b"user1@example.com"]
    assert b"smtp" in attrs["enabledService"]
    assert find_user(ldap, conn, "disabled@example.com") == []

    domains = conn.search_s(
        BASEDN,
        ldap.SCOPE_ONELEVEL,
        "(&(objectClass=mailDomain)(|(domainName=example.com)(domainAliasName=example.com)))",
        ["domainName", "accountStatus"],
    )
    assert [attrs["accountStatus"] for _, attrs in domains] == [[b"active"]]


def test_wrong_password_refused(ldap: Any, slapd: SlapdInstance) -> None:
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(VMAIL_DN, "wrong")
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(USER1_DN, "wrong")
    # A user may bind with its own (cleartext test) password.
    assert slapd.connect(USER1_DN, "user1pass").whoami_s() == f"dn:{USER1_DN}"


def test_anonymous_cannot_read(ldap: Any, slapd: SlapdInstance) -> None:
    conn = ldap.initialize(slapd.uri)
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        conn.search_s(BASEDN, ldap.SCOPE_SUBTREE, "(objectClass=mailUser)")


def test_add_modify_delete(ldap: Any, slapd: SlapdInstance) -> None:
    slapd.add(user_entry("new@example.com", "newpass", mailForwardingAddress="x@example.org"))
    conn = slapd.connect()
    assert len(find_user(ldap, conn, "new@example.com")) == 1

    new_dn = f"mail=new@example.com,ou=Users,domainName=example.com,{BASEDN}"
    slapd.modify(
        f"dn: {new_dn}\nchangetype: modify\nreplace: accountStatus\naccountStatus: disabled\n"
    )
    assert find_user(ldap, conn, "new@example.com") == []

    slapd.delete(new_dn)
    assert conn.search_s(BASEDN, ldap.SCOPE_SUBTREE, "(mail=new@example.com)") == []


def test_ldif_entry_encodes_unsafe_values() -> None:
    text = ldif_entry("cn=x", {"cn": "x", "description": ["Zoë", " leading"], "drop": None})
    assert text == "dn: cn=x\ncn: x\ndescription:: Wm/Dqw==\ndescription:: IGxlYWRpbmc=\n\n"


def test_empty_database_and_ipv6(
    ldap: Any, slapd_instance_factory: Callable[..., SlapdInstance]
) -> None:
    slapd = slapd_instance_factory("", ipv6=True)
    assert slapd.uri6 == f"ldap://[::1]:{slapd.port}"
    conn = slapd.connect(slapd.rootdn, slapd.rootpw, uri=slapd.uri6)
    with pytest.raises(ldap.NO_SUCH_OBJECT):
        conn.search_s(slapd.suffix, ldap.SCOPE_BASE)
