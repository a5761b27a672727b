"""Password age: the logic of ``sql_force_change_password`` and ``ldap_force_change_password``.

iRedAPD ships the check twice, once per account backend; here both plugins
ask the account backend when the user's password last changed and differ only
in their name and in iRedAPD's trace texts (access-policies.md section 10).

A logged-in user whose password is at least ``CHANGE_PASSWORD_DAYS`` days old
(or was never changed) gets ``REJECT <CHANGE_PASSWORD_MESSAGE>``, unless the
login or its domain is in ``CHANGE_PASSWORD_NEVER_EXPIRE_USERS``.  Ages are
computed in UTC from the request's time (iRedAPD mixed local time into it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar

from iredapd.actions import DUNNO, Action, InvalidAction
from iredapd.config import Settings
from iredapd.plugin import Context, Plugin
from iredapd.services import Services

__all__ = ["LDAP", "SQL", "ForceChangePassword", "PasswordAge", "Texts"]

_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Texts:
    """iRedAPD's trace texts (and order of checks) of one of the two plugins."""

    not_authenticated: Action
    no_such_user: Action
    #: LDAP: iRedAPD fetched the account before the never-expire bypass
    lookup_first: bool


SQL = Texts(Action("DUNNO Not a local user"), DUNNO, lookup_first=False)
LDAP = Texts(
    Action("DUNNO Not an authenticated user (no sasl_username in smtp session)"),
    Action("DUNNO Not a local user (no sender ldif)"),
    lookup_first=True,
)
_NEVER_EXPIRES = Action("DUNNO User or domain is allowed to never change password.")


class PasswordAge:
    """The decision, built once per settings generation."""

    def __init__(self, settings: Settings, texts: Texts) -> None:
        self.texts = texts
        self.max_age = float(settings.CHANGE_PASSWORD_DAYS) * _DAY
        self.never_expire = frozenset(settings.CHANGE_PASSWORD_NEVER_EXPIRE_USERS)
        self.error: InvalidAction | None = None
        self.reject: Action | None = None
        try:
            self.reject = Action.parse(f"REJECT {settings.CHANGE_PASSWORD_MESSAGE}")
        except InvalidAction as e:
            self.error = InvalidAction(f"CHANGE_PASSWORD_MESSAGE cannot be sent: {e}")

    def check_settings(self) -> None:
        """Raise if CHANGE_PASSWORD_MESSAGE is not a valid reply (at start-up)."""
        if self.error is not None:
            raise self.error

    async def decide(self, ctx: Context) -> Action:
        """DUNNO with iRedAPD's trace text, or the reject action."""
        request = ctx.request
        sasl = request.sasl_username
        if not sasl:
            return self.texts.not_authenticated
        exempt = sasl in self.never_expire or request.sasl_username_domain in self.never_expire
        if exempt and not self.texts.lookup_first:
            return _NEVER_EXPIRES
        vmail = ctx.services.vmail
        if vmail is None:
            raise RuntimeError("no account backend")
        changed = await vmail.password_last_change(sasl)
        if changed is None:
            return self.texts.no_such_user
        if exempt:
            return _NEVER_EXPIRES
        if changed.tzinfo is None:
            changed = changed.replace(tzinfo=dt.UTC)
        if ctx.now - changed.timestamp() < self.max_age:
            return DUNNO
        self.check_settings()
        assert self.reject is not None
        return self.reject


class ForceChangePassword(Plugin):
    """Base of the two plugins; a subclass sets ``texts`` (SQL or LDAP)."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"vmail"})
    texts: ClassVar[Texts] = SQL

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        self.age = PasswordAge(settings, self.texts)

    async def start(self) -> None:
        """Refuse to start with a CHANGE_PASSWORD_MESSAGE Postfix would not accept."""
        self.age.check_settings()

    async def check(self, ctx: Context) -> Action:
        """See :meth:`PasswordAge.decide`."""
        return await self.age.decide(ctx)
