"""The decisions of the two SRS channels: rewrite a sender, restore a recipient.

For admins: with ``srs_secrets`` and ``srs_domain`` set, Postfix asks

* port ``srs_forward_port`` (7778), as ``sender_canonical_maps =
  tcp:127.0.0.1:7778`` with ``sender_canonical_classes = envelope_sender``,
  for the envelope sender to use.  A sender in a domain of ours is kept; any
  other sender (mail we forward) is rewritten to an SRS address at
  ``srs_domain``, so that SPF checks at the next hop see our domain.  Domains
  listed in the iredapd table ``srs_exclude_domains`` (a stored
  ``example.com`` or ``.example.com`` also covers its subdomains) are kept.
* port ``srs_reverse_port`` (7779), as ``recipient_canonical_maps =
  tcp:127.0.0.1:7779`` with ``recipient_canonical_classes =
  envelope_recipient,header_recipient``, for bounces coming back to an SRS
  address: the original sender is restored if the hash and the date check.

Reply texts are iRedAPD's (access-policies.md §14.2-§14.4, core-and-stateful.md
§4).  Deliberate differences, each marked "Difference from iRedAPD" below:
a database that does not answer gives ``400`` (Postfix retries) where iRedAPD
gave ``500`` (mail left un-rewritten); domains are compared and looked up
lower-cased; keys that are not valid UTF-8 are never rewritten.

No sockets and no databases here: the lookups are injected async callables,
and :mod:`iredapd.tcptable` turns the replies into bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from iredapd.addr import is_email
from iredapd.srs import SRS, SRSError, is_srs_address
from iredapd.storage.db import BackendUnavailable
from iredapd.tcptable import Request, TcpReply, Unexpected

__all__ = [
    "TEXT_BACKEND_UNAVAILABLE",
    "TEXT_EXCLUDED",
    "TEXT_LOCAL_DOMAIN",
    "TEXT_NOT_EMAIL",
    "TEXT_NOT_SRS",
    "TEXT_SERVER_HOSTNAME",
    "TEXT_SRS_DOMAIN",
    "IsExcluded",
    "IsLocalDomain",
    "SRSForward",
    "SRSReverse",
    "exclusion_candidates",
]

log = logging.getLogger(__name__)

# iRedAPD's reply texts, byte for byte (§14.2-§14.4).
TEXT_NOT_EMAIL: Final = "Not a valid email address, bypassed."
TEXT_SRS_DOMAIN: Final = "Domain is srs_domain, bypassed."
TEXT_SERVER_HOSTNAME: Final = "Domain is server hostname, bypassed."
TEXT_LOCAL_DOMAIN: Final = "Domain is a local mail domain, bypassed."
TEXT_EXCLUDED: Final = "Domain is explicitly excluded, bypassed."
TEXT_NOT_SRS: Final = "Not a valid SRS address, bypassed."
# Ours: iRedAPD never sends a 400.  Postfix only shows it in verbose logs.
TEXT_BACKEND_UNAVAILABLE: Final = "Database unavailable, try again later."

#: ``async is_local_domain(domain)``: a mail domain, alias domain or backup-MX
#: domain of ours, or the host name (iRedAPD's is_local_domain, §8.1 of
#: core-and-stateful.md).  Raises BackendUnavailable when it cannot tell.
IsLocalDomain = Callable[[str], Awaitable[bool]]
#: ``async is_excluded(candidates)``: does ``srs_exclude_domains`` hold any of
#: the candidates?  Raises BackendUnavailable when it cannot tell.
IsExcluded = Callable[[list[str]], Awaitable[bool]]

_CONTROL: Final = dict.fromkeys((*range(32), 127), "?")


def _clean(value: str) -> str:
    """A network value made safe for a log line (no control characters)."""
    return value if value.isprintable() else value.translate(_CONTROL)


def exclusion_candidates(domain: str) -> list[str]:
    """The ``srs_exclude_domains`` values that would exclude ``domain``.

    The whole name, then each right-hand suffix from the shortest up, each bare
    and with a leading dot, in iRedAPD's order (§14.3): ``a.b.c`` gives
    ``a.b.c``, ``.a.b.c``, ``c``, ``.c``, ``b.c``, ``.b.c``.
    """
    labels = domain.split(".")
    suffixes = [domain] + [".".join(labels[-i:]) for i in range(1, len(labels))]
    return [name for suffix in suffixes for name in (suffix, "." + suffix)]


@dataclass(frozen=True, slots=True)
class _Channel:
    """What both channels share: the SRS keys, the clock, the request gate."""

    srs: SRS
    clock: Callable[[], float] = field(default=time.time, kw_only=True)

    async def answer(self, request: Request) -> TcpReply:
        """The reply to one parsed tcp_table request."""
        if isinstance(request, Unexpected):
            return request.reply
        if request.decode_error:
            # Difference from iRedAPD (it fails on such bytes): a key that is
            # not UTF-8 would be rewritten with U+FFFD in it, so never rewrite.
            return TcpReply.not_found(TEXT_NOT_EMAIL)
        return await self.lookup(request.key)

    async def lookup(self, key: str) -> TcpReply:
        """The reply for a decoded key."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class SRSForward(_Channel):
    """Sender rewriting (``srs_forward_port``): the rules of §14.3, in order.

    Args:
        srs: the SRS keys.
        srs_domain: the domain of the addresses we make.
        server_hostname: this host's FQDN; its senders are kept.
        is_local_domain: see :data:`IsLocalDomain`.
        is_excluded: see :data:`IsExcluded`.
        clock: Unix seconds now; SRS0 timestamps come from it.
    """

    srs_domain: str = field(kw_only=True)
    server_hostname: str = field(kw_only=True)
    is_local_domain: IsLocalDomain = field(kw_only=True)
    is_excluded: IsExcluded = field(kw_only=True)

    async def lookup(self, key: str) -> TcpReply:
        if not is_email(key):
            return TcpReply.not_found(TEXT_NOT_EMAIL)
        # Difference from iRedAPD: it compares the domain as received, so
        # "user@SRS.example.com" was not "srs_domain" and the table lookups
        # missed on case-sensitive databases.  Domain names are
        # case-insensitive (RFC 1035 §2.3.3); Postfix does not fold tcp keys.
        domain = key.split("@", 1)[1].lower()
        bypass = await self._bypass(domain)
        if bypass is not None:
            log.debug("[srs] %s: %s", _clean(key), bypass.text)
            return bypass
        try:
            new = self.srs.forward(key, self.srs_domain, now=self.clock())
        except SRSError as e:
            log.info("[srs] not rewritten: %s (%s)", _clean(key), e)
            return TcpReply.not_found()
        log.info("rewrote: %s -> %s", _clean(key), _clean(new))
        return TcpReply.found(new)

    async def _bypass(self, domain: str) -> TcpReply | None:
        """The 500 (or 400) reply that keeps the sender as it is, if any."""
        if domain == self.srs_domain.lower():
            return TcpReply.not_found(TEXT_SRS_DOMAIN)
        if domain == self.server_hostname.lower():
            return TcpReply.not_found(TEXT_SERVER_HOSTNAME)
        try:
            if await self.is_local_domain(domain):
                return TcpReply.not_found(TEXT_LOCAL_DOMAIN)
            if await self.is_excluded(exclusion_candidates(domain)):
                return TcpReply.not_found(TEXT_EXCLUDED)
        except BackendUnavailable as e:
            # Difference from iRedAPD: it answers "500 " here (and treats a
            # failed local-domain lookup as "not local"), so mail of a local
            # or excluded domain goes out rewritten, or not, by chance.  A 400
            # makes Postfix defer the message and retry.
            log.warning("[srs] cannot decide for domain %s: %s", _clean(domain), e)
            return TcpReply.temporary(TEXT_BACKEND_UNAVAILABLE)
        return None


@dataclass(frozen=True, slots=True)
class SRSReverse(_Channel):
    """Recipient restoring (``srs_reverse_port``): the rules of §14.4, in order.

    The domain of the SRS address is not checked against ``srs_domain``, as in
    iRedAPD: Postfix only asks for recipients it accepted, and the hash decides.
    """

    async def lookup(self, key: str) -> TcpReply:
        if not is_email(key):
            return TcpReply.not_found(TEXT_NOT_EMAIL)
        if not is_srs_address(key):
            return TcpReply.not_found(TEXT_NOT_SRS)
        try:
            original = self.srs.reverse(key, now=self.clock())
        except SRSError as e:
            log.info("[srs] not restored: %s (%s)", _clean(key), e)
            return TcpReply.not_found()
        log.info("restored: %s -> %s", _clean(key), _clean(original))
        return TcpReply.found(original)
