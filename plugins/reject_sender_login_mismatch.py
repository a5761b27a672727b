"""reject_sender_login_mismatch: forged local senders and senders who are not their login.

What it does
    Two checks, at RCPT:

    *Forged sender* (the client did not log in).  Mail that claims to come
    from one of this server's own domains must be sent by a logged-in user.
    An untrusted client (not in ``MYNETWORKS``, not localhost) using a sender
    address at a hosted domain (an active domain that is not a backup-MX one,
    an alias domain of one, or the server's hostname) is refused with
    ``REJECT SMTP AUTH is required for users under this sender domain`` --
    unless the sender is in ``ALLOWED_FORGED_SENDERS``, or
    ``CHECK_SPF_IF_LOGIN_MISMATCH`` is on and the sender domain's SPF record
    lists the client (another server of the domain, say).

    *Login mismatch* (the client logged in).  The envelope sender (without
    its ``+extension``) must be the login name, or the user must be allowed
    to send as it, else
    ``REJECT Sender is not same as SMTP authenticate username``.  Allowed:

    * logins in ``ALLOWED_LOGIN_MISMATCH_SENDERS`` (see below);
    * with ``ALLOWED_LOGIN_MISMATCH_STRICTLY`` (default on): the user's own
      alias addresses, and the same name at an alias domain of the user's
      domain (``john@alias.example`` for ``john@example.com``);
    * with ``ALLOWED_LOGIN_MISMATCH_LIST_MEMBER``: a mail alias the user is a
      member of, and an mlmmj mailing list the user is subscribed to (asked
      of mlmmjadmin, when its endpoint and token are set).

    A logged-in client with the null sender is left to ``reject_null_sender``.

Settings
    ``CHECK_FORGED_SENDER`` (True), ``ALLOWED_FORGED_SENDERS`` (entries:
    ``user@domain``, ``domain``, ``user@*``), ``CHECK_SPF_IF_LOGIN_MISMATCH``
    (True), ``ALLOWED_LOGIN_MISMATCH_SENDERS`` (entries: ``user@domain`` --
    that user may send as anybody; ``domain`` -- every user of the domain may;
    ``@domain`` -- users of the domain may send as any address of the same
    domain; ``@.`` -- every user may send as any address of their own
    domain), ``ALLOWED_LOGIN_MISMATCH_STRICTLY`` (True),
    ``ALLOWED_LOGIN_MISMATCH_LIST_MEMBER`` (False), ``MYNETWORKS``,
    ``mlmmjadmin_api_endpoint``, ``mlmmjadmin_api_auth_token``,
    ``MLMMJADMIN_API_AUTH_TOKEN_HEADER_NAME``, ``MLMMJADMIN_API_TIMEOUT``,
    ``MLMMJADMIN_API_VERIFY_TLS``.  Entries are compared exactly (lower case).

Tables
    The account backend (vmail SQL: ``domain``, ``alias_domain``,
    ``forwardings``, ``maillists``; or LDAP); DNS for the SPF check.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.addr import is_domain
from iredapd.backends.base import AccountBackend
from iredapd.config import Settings
from iredapd.mlmmj import MlmmjAdmin
from iredapd.plugin import DUNNO, Action, Context, Plugin
from iredapd.services import Services


class RejectSenderLoginMismatch(Plugin):
    """Forged local senders (no SMTP AUTH) and login/sender mismatches."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"vmail"})

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        self.mlmmj = MlmmjAdmin(settings)

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's decision: null sender, forged-sender branch, login-mismatch branch."""
        request = ctx.request
        if not request.sasl_username:
            return await self._forged_sender(ctx)
        if not request.sender_without_ext:
            return DUNNO  # a null sender after SMTP AUTH: reject_null_sender's business
        return await self._login_mismatch(ctx)

    async def _forged_sender(self, ctx: Context) -> Action:
        request, s = ctx.request, ctx.settings
        sender = request.sender_without_ext
        sender_name, _, sender_domain = sender.partition("@")
        client = request.client_address
        if client in s.trusted_networks:
            return DUNNO
        if not s.CHECK_FORGED_SENDER:
            return DUNNO
        allowed = s.ALLOWED_FORGED_SENDERS
        if sender in allowed or sender_domain in allowed or f"{sender_name}@*" in allowed:
            return DUNNO
        # iRedAPD counts sender domain == recipient domain as local without asking;
        # we always ask, so backup-MX and relayed domains are not "forged".
        if not await self._hosted(ctx, sender_domain):
            return DUNNO
        if s.CHECK_SPF_IF_LOGIN_MISMATCH and await ctx.once(
            ("spf_allows", sender_domain, client),
            lambda: ctx.services.spf_allows(sender_domain, client),
        ):
            return DUNNO
        return Action.named("reject_forged_sender")

    @staticmethod
    async def _hosted(ctx: Context, domain: str) -> bool:
        """A domain whose users must log in: hosted here (not backup MX), or the hostname."""
        if not domain or not is_domain(domain):
            return False
        if domain == ctx.services.hostname:
            return True
        vmail = _vmail(ctx)
        return await ctx.once(
            ("is_local_domain", domain, True, False),
            lambda: vmail.is_local_domain(domain, include_alias=True, include_backupmx=False),
        )

    async def _login_mismatch(self, ctx: Context) -> Action:
        request, s = ctx.request, ctx.settings
        sasl = request.sasl_username
        sasl_domain = request.sasl_username_domain
        sender = request.sender_without_ext
        sender_domain = sender.partition("@")[2]
        if sender == sasl:
            return DUNNO
        allowed = s.ALLOWED_LOGIN_MISMATCH_SENDERS
        strictly = s.ALLOWED_LOGIN_MISMATCH_STRICTLY
        list_member = s.ALLOWED_LOGIN_MISMATCH_LIST_MEMBER
        if not allowed and not strictly and not list_member:
            return Action.named("reject_sender_login_mismatch")
        if allowed:
            if sasl in allowed or sasl_domain in allowed:
                return DUNNO
            if (f"@{sasl_domain}" in allowed or "@." in allowed) and sasl_domain == sender_domain:
                return DUNNO
        if strictly or list_member:
            match = await _vmail(ctx).login_match(
                sasl, sender, strictly=strictly, list_member=list_member
            )
            if match.allowed:
                return DUNNO
            if match.mlmmj_list and await self.mlmmj.has_subscriber(match.mlmmj_list, sasl):
                return DUNNO
        return Action.named("reject_sender_login_mismatch")


def _vmail(ctx: Context) -> AccountBackend:
    vmail = ctx.services.vmail
    if vmail is None:  # guarded by requires={'vmail'}; a reload may race
        raise RuntimeError("no account backend")
    return vmail
