"""reject_to_hostname: refuse mail from outside to addresses at the server's hostname.

What it does
    Addresses at the mail server's own hostname (``root@mx.example.com``) are
    for local system mail, not for the Internet.  A client that is neither
    logged in (SMTP AUTH) nor trusted (``MYNETWORKS``, localhost) and sends to
    ``<anything>@<hostname>`` is refused with ``REJECT Not authorized``.
    SRS addresses (``SRS0=...``/``SRS1=...``) are let through: with SRS,
    bounces come back to the hostname, which is usually ``srs_domain``.

Settings
    ``SERVER_HOSTNAME`` (default: the system's hostname), ``MYNETWORKS``.

Tables
    None.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.plugin import Action, Context, Plugin


class RejectToHostname(Plugin):
    """Reject unauthenticated, untrusted mail to the server's hostname."""

    task_free = True
    states = frozenset({"RCPT"})

    async def check(self, ctx: Context) -> Action | None:
        """iRedAPD's table: SMTP AUTH passes, trusted passes, hostname rejects."""
        if ctx.authenticated_or_trusted:
            return None
        request = ctx.request
        if request.recipient_domain == ctx.services.hostname and not request.recipient.startswith(
            ("srs0=", "srs1=")
        ):
            return Action.named("reject_not_authorized")
        return None
