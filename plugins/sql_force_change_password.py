"""sql_force_change_password: make users change an old password before sending.

What it does
    A logged-in (SMTP AUTH) user whose password was last changed
    ``CHANGE_PASSWORD_DAYS`` days ago or more -- or never -- is refused with
    ``REJECT <CHANGE_PASSWORD_MESSAGE>`` until they change it (in webmail,
    say).  Logins and domains in ``CHANGE_PASSWORD_NEVER_EXPIRE_USERS`` are
    never refused.  Mail from clients that did not log in is not checked.
    Ages are computed in UTC.  ``ldap_force_change_password`` is the same
    check under iRedAPD's name for LDAP servers.

Settings
    ``CHANGE_PASSWORD_DAYS`` (90), ``CHANGE_PASSWORD_MESSAGE``,
    ``CHANGE_PASSWORD_NEVER_EXPIRE_USERS`` (entries: ``user@domain`` or
    ``domain``, lower case).

Tables
    The account backend: vmail ``mailbox.passwordlastchange`` (SQL), or
    ``shadowLastChange`` (LDAP).

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.passwords import SQL, ForceChangePassword


class SqlForceChangePassword(ForceChangePassword):
    """Refuse logged-in users whose password is too old (iRedAPD's SQL trace texts)."""

    texts = SQL
