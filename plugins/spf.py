"""spf: check the sender's SPF record (RFC 7208) and add a Received-SPF header.

What it does
    For a client that is neither logged in (SMTP AUTH) nor trusted
    (``MYNETWORKS``, localhost), the plugin asks the DNS whether the sender's
    domain lets the client's IP address send its mail: the MAIL FROM identity
    of RFC 7208, or ``postmaster@<HELO name>`` when the sender is null (a
    bounce).  The answer is one of ``pass``, ``fail``, ``softfail``,
    ``neutral``, ``none``, ``permerror`` (the record is broken) or
    ``temperror`` (the DNS did not answer in time).  What happens next is set
    per result in ``SPF_ACTIONS``; by default:

    * ``fail``: the recipient is refused with ``550 5.7.23 SPF fail: ...``
      (RFC 7372), quoting the explanation the domain publishes (``exp=``) or
      saying which domain refused which address;
    * ``temperror``: the recipient is deferred with ``451 4.7.24 ...`` and the
      sending server tries again later;
    * every other result: the mail goes on, and a ``Received-SPF:`` header
      (RFC 7208 section 9.1) is added to the message, so that filters after
      Postfix (SpamAssassin, Sieve) can use the result.

    The check is made once per message: Postfix asks at every RCPT, and the
    later recipients of the same SMTP transaction (Postfix's ``instance``)
    reuse the first answer without asking the DNS again, and do not add a
    second header.  Only RCPT requests are answered: Postfix ignores headers
    added at END-OF-MESSAGE.

Settings
    ``SPF_ACTIONS`` (dict, result -> action): what to do per result.  Listed
    results replace the defaults, the others keep them.  An action is one of

    * ``"reject"``: ``550 5.7.23 <SPF_REJECT_TEXT>`` (``5.7.24`` for
      ``permerror`` and ``temperror``, RFC 7372 section 3.2);
    * ``"defer"``: ``451 4.7.23 <SPF_DEFER_TEXT>`` (``4.7.24`` for the errors);
    * ``"dunno"``: let the mail go on, with the header if ``SPF_ADD_HEADER``;
    * an access(5) action of its own: ``"WARN SPF {result} from {ip}"``,
      ``"HOLD"``, ``"DEFER_IF_PERMIT ..."``, ``"REJECT ..."``, ``"DISCARD"``,
      ``"INFO"`` or a ``4NN``/``5NN`` reply (no header with these).  ``OK``
      is refused (it would skip the rest of Postfix's restrictions: an open
      relay risk), and so is ``PREPEND``.

    Default: ``{"pass": "dunno", "fail": "reject", "softfail": "dunno",
    "neutral": "dunno", "none": "dunno", "permerror": "dunno",
    "temperror": "defer"}``.

    ``SPF_REJECT_TEXT`` (default ``"SPF {result}: {reason}"``) and
    ``SPF_DEFER_TEXT`` (same default): the text after the codes.  In these and
    in actions of your own, ``{result}``, ``{domain}`` (the domain checked),
    ``{ip}``, ``{sender}``, ``{helo}`` and ``{reason}`` are replaced;
    ``{reason}`` is the domain's own explanation when it publishes one
    (``explanation from <domain>: <text>``), otherwise a sentence saying what
    the result means.  Values from the network are cut short and stripped of
    anything but printable ASCII.

    ``SPF_ADD_HEADER`` (default ``True``): add ``Received-SPF:`` when the
    result's action is ``dunno``.

    ``SPF_RECEIVER`` (default ``""``: ``SERVER_HOSTNAME``, else the system's
    host name): the ``receiver=`` of the header and the ``%{r}`` macro.

    ``SPF_TIMEOUT`` (default ``4.0`` seconds): how long one check may take,
    all its DNS queries together, before it counts as ``temperror``.  It must
    stay below the plugin's deadline (``PLUGIN_TIMEOUTS['spf']``, else
    ``PLUGIN_TIMEOUT``, 5 s), so that a slow DNS gives ``temperror`` and not
    the plugin failure action; a larger value is cut to 80% of the deadline,
    with a warning at start.

    Core settings used: ``DNS_NAMESERVERS``, ``DNS_PORT``,
    ``DNS_QUERY_TIMEOUT`` (one query's deadline), ``MYNETWORKS``.
    The RFC 7208 limits hold: at most 10 DNS-querying terms and 2 void
    lookups per check (a record that includes itself ends in ``permerror``).

Tables
    None: only the DNS.

Postfix
    ``check_policy_service inet:127.0.0.1:7777`` in
    ``smtpd_recipient_restrictions``: the plugin answers at RCPT only.  It
    never answers ``OK``, so it cannot open a relay wherever it stands.

Order, and the header
    The plugin runs at priority 20: after the access plugins (white/blacklists,
    greylisting, throttling: a whitelisted sender is accepted before SPF is
    asked) and before ``senderscore`` (10) and custom plugins (0).  Postfix
    takes one action per reply; a ``PREPEND`` is DUNNO plus a header
    (access(5)), so the chain goes on after it: plugins after ``spf`` still
    decide, and the header is sent only when none of them does.  When a later
    plugin rejects the first recipient, the header goes with the next
    recipient of the message instead.  Postfix keeps a header added at a recipient that it
    refuses afterwards (e.g. ``Relay access denied``): the header is still in
    the message accepted for the other recipients.

Memory
    Up to 16384 transactions are remembered, each for at most 15 minutes
    (oldest dropped first).  A transaction forgotten between two of its
    recipients is checked again and gets a second header.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

from iredapd.actions import MAX_ACTION_LENGTH, InvalidAction
from iredapd.config import ConfigError, Settings
from iredapd.lookup import parse_ip
from iredapd.plugin import Action, Context, Plugin
from iredapd.services import Services
from iredapd.spf import RESULTS, SPFLimits, SPFResult, check_mail_from, received_spf

log = logging.getLogger(__name__)

HEADER: Final = "Received-SPF"

DEFAULT_ACTIONS: Final[Mapping[str, str]] = {
    "pass": "dunno",
    "fail": "reject",
    "softfail": "dunno",
    "neutral": "dunno",
    "none": "dunno",
    "permerror": "dunno",
    "temperror": "defer",
}
DEFAULT_TEXT: Final = "SPF {result}: {reason}"

# One entry per SMTP transaction in progress.  A few hundred smtpd processes
# each run one transaction at a time, so this is far more than live ones;
# an entry is a few hundred bytes.
INSTANCE_CACHE_SIZE: Final = 16384
# Seconds a transaction is remembered.  Postfix's smtpd_timeout is 300 s per
# command; the recipients of one message normally arrive within seconds.
INSTANCE_TTL: Final = 900.0
# When SPF_TIMEOUT does not fit the plugin deadline, the check gets this share
# of it: the rest is for answering before the chain gives up on the plugin.
DEADLINE_SHARE: Final = 0.8
# Longest network value quoted in a reply text (the whole action is capped at
# MAX_ACTION_LENGTH, an SMTP reply line at 512 octets).
MAX_QUOTED: Final = 100
# Successively shorter caps for the header's free-text fields, so that the
# PREPEND action stays within MAX_ACTION_LENGTH.
_HEADER_FIELD_CAPS: Final = (None, 120, 60, 24)

# RFC 7372 section 3.2: X.7.23 "SPF validation failed", X.7.24 "SPF
# validation error" (permerror and temperror).
_ERRORS: Final = frozenset({"permerror", "temperror"})
# access(5) verbs an admin may map a result to (OK and PREPEND are refused).
_OWN_VERBS: Final = frozenset(
    {"REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "WARN", "INFO", "HOLD", "DISCARD"}
)
_SMTP_CODE: Final = re.compile(r"[45]\d\d")
_PLACEHOLDER: Final = re.compile(r"\{(result|domain|ip|sender|helo|reason)\}")
# Templates are validated with every placeholder empty: what remains must be
# a valid action; network values are cleaned, and the result cut to the limit.
_EMPTY: Final[Mapping[str, str]] = dict.fromkeys(
    ("result", "domain", "ip", "sender", "helo", "reason"), ""
)
_REASONS: Final[Mapping[str, str]] = {
    "pass": "{domain} designates {ip} as permitted sender",
    "fail": "{domain} does not designate {ip} as permitted sender",
    "softfail": "{domain} does not designate {ip} as permitted sender",
    "neutral": "{domain} neither permits nor denies {ip}",
    "none": "{domain} publishes no SPF record",
    "permerror": "the SPF record of {domain} is invalid",
    "temperror": "temporary DNS error checking the SPF record of {domain}, try again later",
}

ActionKind = Literal["reject", "defer", "dunno", "own"]
_KEYWORDS: Final[Mapping[str, ActionKind]] = {
    "reject": "reject",
    "defer": "defer",
    "dunno": "dunno",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """What to do for one SPF result: a keyword, or an action text of the admin's."""

    kind: ActionKind
    template: str = ""


@dataclass(frozen=True, slots=True)
class SPFConfig:
    """The plugin's settings, validated."""

    actions: Mapping[str, Rule]
    add_header: bool
    receiver: str
    reject_text: str
    defer_text: str
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings, *, hostname: str, deadline: float) -> SPFConfig:
        """Validate the SPF_* settings.

        Args:
            settings: the daemon's settings.
            hostname: the default receiver name.
            deadline: the plugin's deadline (seconds); the check must end before it.

        Raises:
            ConfigError: a setting cannot be used; the message names it.
        """
        raw = settings.get("SPF_ACTIONS", DEFAULT_ACTIONS)
        if not isinstance(raw, Mapping):
            raise ConfigError("setting SPF_ACTIONS must be a dict of SPF result -> action")
        merged = dict(DEFAULT_ACTIONS)
        for result, action in raw.items():
            key = str(result).strip().lower()
            if key not in RESULTS:
                raise ConfigError(
                    f"setting SPF_ACTIONS: {result!r} is not an SPF result "
                    f"(one of {', '.join(RESULTS)})"
                )
            if not isinstance(action, str):
                raise ConfigError(f"setting SPF_ACTIONS[{result!r}] must be a string")
            merged[key] = action
        texts = {}
        for name in ("SPF_REJECT_TEXT", "SPF_DEFER_TEXT"):
            text = settings.get(name, DEFAULT_TEXT)
            if not isinstance(text, str):
                raise ConfigError(f"setting {name} must be a string")
            texts[name] = text
        actions = {result: _rule(result, action) for result, action in merged.items()}
        for name, code in (("SPF_REJECT_TEXT", "550 5.7.23"), ("SPF_DEFER_TEXT", "451 4.7.23")):
            _validate(name, f"{code} {_render(texts[name], _EMPTY)}")
        timeout = settings.get("SPF_TIMEOUT", 4.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(
                f"setting SPF_TIMEOUT must be a number greater than 0, not {timeout!r}"
            )
        if timeout >= deadline:
            cut = deadline * DEADLINE_SHARE
            log.warning(
                "SPF_TIMEOUT (%gs) is not below the spf plugin's deadline (%gs): using %gs",
                timeout,
                deadline,
                cut,
            )
            timeout = cut
        receiver = settings.get("SPF_RECEIVER", "") or hostname
        if not isinstance(receiver, str):
            raise ConfigError("setting SPF_RECEIVER must be a string")
        return cls(
            actions=actions,
            add_header=bool(settings.get("SPF_ADD_HEADER", True)),
            receiver=receiver,
            reject_text=texts["SPF_REJECT_TEXT"],
            defer_text=texts["SPF_DEFER_TEXT"],
            timeout=float(timeout),
        )


def _rule(result: str, action: str) -> Rule:
    """Parse one SPF_ACTIONS value."""
    text = action.strip()
    if text.lower() in _KEYWORDS:
        return Rule(_KEYWORDS[text.lower()])
    label = f"SPF_ACTIONS[{result!r}]"
    rendered = _validate(label, _render(text, _EMPTY))
    verb = rendered.verb
    if verb == "DUNNO":
        return Rule("dunno")
    if verb not in _OWN_VERBS and not _SMTP_CODE.fullmatch(verb):
        raise ConfigError(
            f"setting {label}: {verb} is not allowed; use reject, defer, dunno, a 4NN/5NN "
            f"reply or one of {', '.join(sorted(_OWN_VERBS))}"
        )
    return Rule("own", text)


def _validate(label: str, text: str) -> Action:
    try:
        return Action.parse(text)
    except InvalidAction as e:
        raise ConfigError(f"setting {label}: {e}") from None


def _clean(value: str, limit: int = MAX_QUOTED) -> str:
    """A network value made safe for a reply: printable ASCII, at most ``limit`` chars."""
    text = "".join(c if " " <= c <= "~" else "?" for c in value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _render(template: str, values: Mapping[str, str]) -> str:
    """Replace the known ``{placeholders}``; anything else in braces stays as written."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _values(result: SPFResult) -> dict[str, str]:
    """The placeholder values for one result, cleaned."""
    values = {
        "result": result.result,
        "domain": _clean(result.domain),
        "ip": _clean(result.client_ip),
        "sender": _clean(result.sender),
        "helo": _clean(result.helo),
    }
    if result.explanation:
        reason = f"explanation from {values['domain']}: {_clean(result.explanation, 200)}"
    else:
        reason = _render(_REASONS.get(result.result, _REASONS["none"]), values)
        if result.result in _ERRORS and result.problem:
            reason = f"{reason} ({_clean(result.problem)})"
    values["reason"] = reason
    return values


def header_action(result: SPFResult) -> Action | None:
    """``PREPEND Received-SPF: ...`` within MAX_ACTION_LENGTH, or None if it cannot fit.

    Long values (a HELO name of 500 characters) are cut, before quoting, until
    the whole action fits; received_spf() already drops CR, LF and every other
    control or non-ASCII character, so nothing can start a new header line.
    """
    prefix = f"PREPEND {HEADER}: "
    for cap in _HEADER_FIELD_CAPS:
        shown = result
        if cap is not None:
            shown = replace(
                result,
                sender=result.sender[:cap],
                helo=result.helo[:cap],
                domain=result.domain[:cap],
                receiver=result.receiver[:cap],
                mechanism=result.mechanism[:cap],
                problem=result.problem[:cap],
                client_ip=result.client_ip[:64],
            )
        text = prefix + received_spf(shown)
        if len(text) <= MAX_ACTION_LENGTH:
            return Action.parse(text)
    return None


@dataclass(slots=True)
class _Seen:
    """What one SMTP transaction got: its SPF result, and whether the header went out."""

    result: SPFResult
    expires: float
    header_added: bool = False


def _unclaim_unless_sent(seen: _Seen, header: Action, final: Action) -> None:
    if final is not header:
        seen.header_added = False


class _Transactions:
    """A bounded map of recent transactions with expiry; the oldest goes first."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._data: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: tuple[str, ...], now: float) -> _Seen | None:
        seen = self._data.get(key)
        if seen is not None and now >= seen.expires:
            del self._data[key]
            return None
        return seen

    def add(self, key: tuple[str, ...], result: SPFResult, now: float) -> _Seen:
        seen = _Seen(result, now + self.ttl)
        self._data[key] = seen
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return seen


class SPF(Plugin):
    """RFC 7208 check of MAIL FROM (HELO for the null sender) at RCPT."""

    task_free = True
    states = frozenset({"RCPT"})
    requires = frozenset({"dns"})
    own_settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            "SPF_ACTIONS": dict(DEFAULT_ACTIONS),
            "SPF_ADD_HEADER": True,
            "SPF_RECEIVER": "",
            "SPF_REJECT_TEXT": DEFAULT_TEXT,
            "SPF_DEFER_TEXT": DEFAULT_TEXT,
            "SPF_TIMEOUT": 4.0,
        }
    )

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        super().__init__(name, settings, services)
        self.config = SPFConfig.from_settings(
            settings, hostname=services.hostname, deadline=settings.plugin_timeout(name)
        )
        self.limits = SPFLimits(timeout=self.config.timeout)
        self.transactions = _Transactions(INSTANCE_CACHE_SIZE, INSTANCE_TTL)

    async def check(self, ctx: Context) -> Action | None:
        """Check once per transaction; reject, defer, or add the header once."""
        if ctx.authenticated_or_trusted:
            return None
        request = ctx.request
        if parse_ip(request.client_address) is None:
            return None  # nothing to check (no client address given)
        key = (
            (request.instance, request.client_address, request.sender, request.helo_name)
            if request.instance
            else None
        )
        seen = self.transactions.get(key, ctx.now) if key is not None else None
        if seen is None:
            result = await self._evaluate(ctx)
            # Another request of this transaction may have finished meanwhile.
            seen = self.transactions.get(key, ctx.now) if key is not None else None
            if seen is None:
                if key is not None and not ctx.dry_run:
                    seen = self.transactions.add(key, result, ctx.now)
                else:
                    seen = _Seen(result, ctx.now)
        action = self._decide(seen)
        if action is not None and action.verb == "PREPEND":
            # The header is claimed now (so a concurrent request of the same
            # transaction adds none) and given back if the chain answers
            # something else: then the next recipient carries it.
            ctx.on_decision(functools.partial(_unclaim_unless_sent, seen, action))
        return action

    async def _evaluate(self, ctx: Context) -> SPFResult:
        resolver = ctx.services.resolver
        assert resolver is not None  # requires = {"dns"}
        request = ctx.request
        started = time.perf_counter()
        result = await check_mail_from(
            request.client_address,
            request.sender,
            request.helo_name,
            resolver=resolver,
            receiver=self.config.receiver,
            limits=self.limits,
            clock=ctx.services.clock,
        )
        log.debug(
            "spf: %s for %s from %s (helo %s), %s%s, %d lookups, %.1f ms",
            result.result,
            _clean(result.sender),
            _clean(result.client_ip),
            _clean(result.helo),
            _clean(result.mechanism) or "-",
            f", {_clean(result.problem)}" if result.problem else "",
            result.lookups,
            (time.perf_counter() - started) * 1000,
        )
        return result

    def _decide(self, seen: _Seen) -> Action | None:
        result = seen.result
        rule = self.config.actions[result.result]
        if rule.kind == "dunno":
            if not self.config.add_header or seen.header_added:
                return None
            action = header_action(result)
            if action is None:
                log.warning("spf: Received-SPF header too long, not added")
                return None
            seen.header_added = True
            return action
        values = _values(result)
        if rule.kind == "own":
            text = _render(rule.template, values)
        else:
            error = result.result in _ERRORS
            if rule.kind == "reject":
                code = "550 5.7.24" if error else "550 5.7.23"
                text = f"{code} {_render(self.config.reject_text, values)}"
            else:
                code = "451 4.7.24" if error else "451 4.7.23"
                text = f"{code} {_render(self.config.defer_text, values)}"
        return Action.parse(text[:MAX_ACTION_LENGTH])
