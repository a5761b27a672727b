"""ldap_force_change_password: make users change an old password before sending.

What it does
    iRedAPD's name of ``sql_force_change_password`` for LDAP servers; both
    ask the account backend, so either works with either backend.  A
    logged-in (SMTP AUTH) user whose password was last changed
    ``CHANGE_PASSWORD_DAYS`` days ago or more -- or never -- is refused with
    ``REJECT <CHANGE_PASSWORD_MESSAGE>``.  Logins and domains in
    ``CHANGE_PASSWORD_NEVER_EXPIRE_USERS`` are never refused.  Mail from
    clients that did not log in is not checked.  Ages are computed in UTC
    (``shadowLastChange`` counts days since 1970-01-01 UTC).

Settings
    ``CHANGE_PASSWORD_DAYS`` (90), ``CHANGE_PASSWORD_MESSAGE``,
    ``CHANGE_PASSWORD_NEVER_EXPIRE_USERS`` (entries: ``user@domain`` or
    ``domain``, lower case).

Tables
    The account backend: the user's ``shadowLastChange`` (LDAP), or vmail
    ``mailbox.passwordlastchange`` (SQL).

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.passwords import LDAP, ForceChangePassword


class LdapForceChangePassword(ForceChangePassword):
    """Refuse logged-in users whose password is too old (iRedAPD's LDAP trace texts)."""

    texts = LDAP
