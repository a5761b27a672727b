"""Policy actions (access(5) verbs) and the table of iRedAPD's reply texts.

Every reply text the daemon can send lives in :data:`SMTP_ACTIONS`, with
iRedAPD's keys and exact strings, so an admin's log filters keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "DUNNO",
    "OK",
    "SMTP_ACTIONS",
    "Action",
    "InvalidAction",
]

SMTP_ACTIONS: Final = MappingProxyType(
    {
        "default": "DUNNO",
        "whitelist": "OK",
        "discard": "DISCARD Policy discard",
        "reject": "REJECT Policy rejection",
        "reject_null_sender": "REJECT Policy rejection due to null sender",
        "reject_forged_sender": "REJECT SMTP AUTH is required for users under this sender domain",
        "reject_sender_login_mismatch": "REJECT Sender is not same as SMTP authenticate username",
        "reject_blacklisted": "REJECT Blacklisted",
        "reject_not_authorized": "REJECT Not authorized",
        "reject_message_size_exceeded": (
            "REJECT Message size exceed (maybe caused by big attachment file)"
        ),
        "reject_blacklisted_rdns": "REJECT Blacklisted reverse DNS name of server IP address",
        "reject_quota_exceeded": "REJECT Throttling quota exceeded",
        "reject_msg_size_exceeded": "REJECT Message size is too large",
        "reject_max_rcpts_exceeded": "REJECT Too many recipients in single message",
        "reject_low_sender_score": (
            "REJECT Server IP address has bad reputation. "
            "FYI: https://www.senderscore.org/lookup.php?lookup="
        ),
        "greylisting": "451 4.7.1",
    }
)

# access(5) verbs that Postfix understands as the first word of an action.
_VERBS: Final = frozenset(
    {
        "OK",
        "DUNNO",
        "REJECT",
        "DEFER",
        "DEFER_IF_REJECT",
        "DEFER_IF_PERMIT",
        "BCC",
        "DISCARD",
        "FILTER",
        "HOLD",
        "PREPEND",
        "REDIRECT",
        "INFO",
        "WARN",
    }
)
# Verbs that need an argument (access(5)).
_NEEDS_ARGUMENT: Final = frozenset({"BCC", "FILTER", "PREPEND", "REDIRECT"})
_SMTP_CODE = re.compile(r"[45]\d\d")
# A restriction class name (smtpd_restriction_classes) or a restriction such as
# permit_auth_destination: a bare word.
_RESTRICTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Longest action text we send.  Postfix reads the reply with its attribute line
# limit; an SMTP reply line must stay under 512 octets (RFC 5321 4.5.3.1.5).
MAX_ACTION_LENGTH: Final = 450


class InvalidAction(ValueError):
    """An action string Postfix would not accept."""


@dataclass(frozen=True, slots=True)
class Action:
    """One policy verdict, e.g. ``Action("REJECT Policy rejection")``.

    ``text`` is the whole action as sent after ``action=``.  Construct with
    :meth:`parse` to validate text that comes from a plugin or a setting.
    """

    text: str

    @classmethod
    def parse(cls, text: str) -> Action:
        """Validate ``text`` as an access(5) action; raise InvalidAction if not."""
        if not isinstance(text, str):
            raise InvalidAction(f"action must be a string, not {type(text).__name__}")
        t = text.strip()
        if not t:
            raise InvalidAction("empty action")
        if any(ord(c) < 32 or ord(c) == 127 for c in t):
            raise InvalidAction("action contains a control character")
        if len(t) > MAX_ACTION_LENGTH:
            raise InvalidAction(f"action longer than {MAX_ACTION_LENGTH} characters")
        verb, _, arg = t.partition(" ")
        upper = verb.upper()
        if upper in _VERBS:
            if upper in _NEEDS_ARGUMENT and not arg.strip():
                raise InvalidAction(f"{upper} needs an argument")
        elif _SMTP_CODE.fullmatch(verb) or verb.isdigit():
            pass
        elif not (_RESTRICTION_NAME.fullmatch(verb) and not arg):
            raise InvalidAction(f"unknown action verb {verb!r}")
        return cls(t)

    @classmethod
    def named(cls, key: str) -> Action:
        """The action for a key of SMTP_ACTIONS, e.g. ``Action.named('reject')``."""
        return cls(SMTP_ACTIONS[key])

    @property
    def verb(self) -> str:
        """The first word, upper-cased (``REJECT``, ``451``, ``DUNNO``)."""
        return self.text.split(" ", 1)[0].upper()

    @property
    def reason(self) -> str:
        """Everything after the first word (may be empty)."""
        parts = self.text.split(" ", 1)
        return parts[1] if len(parts) == 2 else ""

    @property
    def is_neutral(self) -> bool:
        """True when the chain goes on: the text starts with ``DUNNO`` (iRedAPD's rule)."""
        return self.text.startswith("DUNNO")

    def render(self) -> bytes:
        """The reply as sent to Postfix: ``action=<text>`` and an empty line."""
        return b"action=" + self.text.encode("utf-8") + b"\n\n"

    def __str__(self) -> str:
        return self.text


DUNNO: Final = Action("DUNNO")
OK: Final = Action("OK")
