"""reject_null_sender: refuse a null sender from a logged-in client.

What it does
    A client that authenticated with SMTP AUTH but sends with the null sender
    (``MAIL FROM:<>``) is refused with
    ``REJECT Policy rejection due to null sender``.  Bounces have a null
    sender, but they come from servers, not from logged-in users; a stolen
    password used to send "bounces" is a common spam trick.  Everything else
    passes.

Settings
    None.

Tables
    None.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions`` (it runs at RCPT).
"""

from __future__ import annotations

from iredapd.plugin import Action, Context, Plugin


class RejectNullSender(Plugin):
    """Reject the null sender when the client used SMTP AUTH."""

    task_free = True
    states = frozenset({"RCPT"})

    async def check(self, ctx: Context) -> Action | None:
        """The decision table of iRedAPD's plugin: sasl_username set, sender empty."""
        request = ctx.request
        if request.sasl_username and not request.sender:
            return Action.named("reject_null_sender")
        return None
