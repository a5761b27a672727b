"""The SRS ``tcp_table`` listeners: Postfix's sender/recipient canonical maps.

Enabled when both ``srs_secrets`` and ``srs_domain`` are set (iRedAPD's rule).
The decisions are in :mod:`iredapd.srs_policy`, the wire format in
:mod:`iredapd.tcptable`; this module binds them to the daemon's services.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from iredapd.backends.base import BackendUnavailable
from iredapd.config import Settings
from iredapd.services import Services
from iredapd.srs import SRS
from iredapd.srs_policy import SRSForward, SRSReverse
from iredapd.storage.srs import is_excluded
from iredapd.tcptable import ProtocolError, Request, TcpTableParser

__all__ = ["SRSChannels", "SRSService", "srs_enabled"]

log = logging.getLogger(__name__)


def srs_enabled(settings: Settings) -> bool:
    """True when SRS is configured (secrets and a domain)."""
    return bool(settings.srs_secrets) and bool(settings.srs_domain)


class SRSChannels:
    """The forward and reverse channels for one generation of settings/services."""

    def __init__(self, settings: Settings, services: Services, fqdn: str) -> None:
        srs = SRS(settings.srs_secrets)

        async def local(domain: str) -> bool:
            if services.vmail is None:
                raise BackendUnavailable("no account backend to tell local domains")
            return await services.vmail.is_local_domain(domain)

        async def excluded(candidates: list[str]) -> bool:
            if services.iredapd_db is None:
                raise BackendUnavailable("no iredapd database")
            return await is_excluded(services.iredapd_db, candidates)

        self.forward = SRSForward(
            srs,
            srs_domain=settings.srs_domain,
            server_hostname=fqdn,
            is_local_domain=local,
            is_excluded=excluded,
            clock=services.clock,
        )
        self.reverse = SRSReverse(srs, clock=services.clock)


class SRSService:
    """One SRS port as a LineService (see iredapd.server)."""

    errors: tuple[type[Exception], ...] = (ProtocolError,)

    def __init__(self, name: str, channel: Callable[[], SRSForward | SRSReverse]) -> None:
        self.name = name
        self._channel = channel

    def new_parser(self) -> TcpTableParser:
        """A parser for one connection."""
        return TcpTableParser()

    async def answer(self, item: Request) -> bytes:
        """The reply bytes for one lookup."""
        return (await self._channel().answer(item)).render()
