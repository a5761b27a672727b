"""One policy request, start to finish: normalise, check addresses, run the chain, log.

The server (sockets) and ``iredapd-query`` (command line) both go through
:class:`PolicyHandler`, so a request is answered the same way from both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from iredapd.actions import DUNNO, MAX_ACTION_LENGTH, Action
from iredapd.chain import Chain, Decision
from iredapd.protocol import RawRequest
from iredapd.request import PolicyRequest
from iredapd.storage.sessions import session_row, should_log

__all__ = ["PolicyHandler", "clean", "summary_line"]

log = logging.getLogger("iredapd.policy")

# Longest value quoted back in the invalid-address reply (the whole action
# must stay under MAX_ACTION_LENGTH).
_MAX_QUOTED: Final = 256
_CONTROL: Final = dict.fromkeys((*range(32), 127), "?")


def clean(value: str) -> str:
    """A network value made safe for a log line or a reply (no control characters)."""
    return value if value.isprintable() else value.translate(_CONTROL)


def _flow(r: PolicyRequest) -> str:
    user, sender, rcpt = r.sasl_username, r.sender, r.recipient
    if user:
        return f"{user} => {rcpt}" if user == sender else f"{user} => {sender} -> {rcpt}"
    return f"{sender} -> {rcpt}"


def summary_line(r: PolicyRequest, action: Action, plugin: str, seconds: float) -> str:
    """iRedAPD's one-line request summary, plus the deciding plugin."""
    decided = f"plugin={plugin}, " if plugin else ""
    if r.protocol_state == "RCPT":
        rcn = r.reverse_client_name.strip("[]")
        details = (
            f"sasl_username={r.sasl_username}, sender={r.sender}, client_name={r.client_name}, "
            f"reverse_client_name={rcn}, helo={r.helo_name}, "
            f"encryption_protocol={r.encryption_protocol}, "
            f"encryption_cipher={r.encryption_cipher}, server_port={r.server_port}, "
        )
    else:
        details = f"recipient_count={r.recipient_count}, size={r.size}, "
    return clean(
        f"[{r.client_address}] {r.protocol_state}, {_flow(r)}, {action.text} "
        f"[{details}{decided}process_time={seconds:.4f}s]"
    )


def _invalid_address(bad: tuple[str, str]) -> Decision:
    """The one reply to a request whose sender/recipient/sasl_username is not an address.

    iRedAPD sends this reply in the middle of the request and a second one at
    its end; we send this one only and skip the chain.
    """
    name, value = bad
    quoted = clean(value[:_MAX_QUOTED])
    text = f"DUNNO Error: Invalid {name} address: {quoted}"
    return Decision(Action(text[:MAX_ACTION_LENGTH]))


class PolicyHandler:
    """Answers requests with the current chain (swapped on reload)."""

    def __init__(
        self,
        chain: Chain,
        *,
        clock: Callable[[], float] = time.perf_counter,
        request_line: Callable[[str], None] | None = None,
    ) -> None:
        self.chain = chain
        self._clock = clock
        #: where the one line per request goes (the daemon's log sink); None:
        #: through the logging module (tests, iredapd-query)
        self.request_line = request_line
        #: requests answered since start (exact: event-loop thread only)
        self.requests = 0

    def build_request(self, raw: RawRequest) -> PolicyRequest:
        """The normalised request, with the current RECIPIENT_DELIMITERS."""
        return PolicyRequest.from_raw(raw, delimiters=self.chain.settings.RECIPIENT_DELIMITERS)

    async def decide(self, request: PolicyRequest, *, trace: bool = False) -> Decision:
        """The decision for a normalised request (no logging)."""
        if request.invalid is not None:
            return _invalid_address(request.invalid)
        return await self.chain.evaluate(request, trace=trace)

    async def answer(self, raw: RawRequest) -> Action:
        """The reply to one request read from Postfix; logs the summary line."""
        self.requests += 1
        if raw.empty:
            return DUNNO  # iRedAPD's answer to an empty request
        started = self._clock()
        request = self.build_request(raw)
        if request.invalid is not None:
            decision = _invalid_address(request.invalid)
        else:
            decision = await self.chain.evaluate(request)
        services = self.chain.services
        if services.session_log is not None and should_log(
            self.chain.settings, request, decision.action
        ):
            services.session_log.add(session_row(request, decision.action, services.clock()))
        elapsed = self._clock() - started
        if self.request_line is not None:
            self.request_line(summary_line(request, decision.action, decision.plugin, elapsed))
        elif log.isEnabledFor(logging.INFO):
            log.info("%s", summary_line(request, decision.action, decision.plugin, elapsed))
        return decision.action
