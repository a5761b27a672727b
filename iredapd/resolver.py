"""Asynchronous DNS with deadlines, a TTL cache and one answer type for every outcome.

Everything that asks the DNS (SPF, reverse DNS, sender score) goes through
:class:`Resolver`, built on dnspython's asyncio resolver.  Three things matter on
the hot path of a policy server:

* **Every query has a deadline** (``timeout``): a name server that never answers
  costs the one request that asked, never the event loop or other requests.
  Within it a query is sent ``attempts`` times (a lost UDP datagram costs a
  resend, not the whole deadline).
* **Outcomes are values, not exceptions.**  :meth:`Resolver.query` returns a
  :class:`DNSAnswer` whose :class:`DNSStatus` tells records found (``OK``),
  the name does not exist (``NXDOMAIN``), the name exists without records of
  that type (``NODATA``), the server failed or refused (``SERVFAIL``), or no
  answer in time (``TIMEOUT``).  SPF needs that distinction: an error is a
  ``temperror``, an empty answer is a "void lookup" (RFC 7208 section 4.6.4).
* **A cache** honours record TTLs (capped by ``max_ttl``), keeps negative answers
  for ``min(SOA minimum, negative_ttl)`` (RFC 2308 section 5), never keeps
  failures, and is bounded (oldest entry evicted first).  Identical queries in
  flight at the same time share one network query.

Records come back in a plain form: TXT as text (the strings of one record joined
without separator, RFC 7208 section 3.3; bytes decoded as UTF-8, invalid bytes
replaced by U+FFFD so that they stay visibly non-ASCII), A/AAAA as address
strings, MX as :class:`MX` ``(preference, host)``, PTR/CNAME/NS as names; names
never carry the trailing dot.

:class:`DNSSource` is the one-method protocol the SPF evaluator needs, so tests
can feed it from an in-memory zone.  The convenience helpers of
:class:`Resolver` (:meth:`~Resolver.txt`, :meth:`~Resolver.a`, ...) follow the
project's three outcomes: records, ``()`` when there are none, or
:class:`DNSError` when the DNS could not tell.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, TypeAlias

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from iredapd import aio

__all__ = [
    "MX",
    "DNSAnswer",
    "DNSError",
    "DNSSource",
    "DNSStatus",
    "Record",
    "Resolver",
    "ResolverStats",
    "reverse_name",
]

log = logging.getLogger(__name__)

# EDNS0 UDP payload size: the 2020 "DNS flag day" value, small enough to avoid
# IP fragmentation, big enough that most TXT answers need no TCP retry.
EDNS_PAYLOAD = 1232

# The longest domain name in text form without the final dot (RFC 1035 2.3.4).
MAX_NAME_LENGTH = 253


class DNSStatus(enum.Enum):
    """The outcome of one DNS query."""

    OK = "ok"
    """Records of the asked type were found."""
    NXDOMAIN = "nxdomain"
    """The name does not exist (RCODE 3), or cannot exist (malformed name)."""
    NODATA = "nodata"
    """The name exists but has no records of the asked type."""
    SERVFAIL = "servfail"
    """The server failed, refused or answered with any other error."""
    TIMEOUT = "timeout"
    """No answer before the deadline."""

    @property
    def is_error(self) -> bool:
        """True for the outcomes that say nothing about the name (retry later)."""
        return self in (DNSStatus.SERVFAIL, DNSStatus.TIMEOUT)


class MX(NamedTuple):
    """One MX record; ``host`` is ``""`` for a null MX (RFC 7505)."""

    preference: int
    host: str


Record: TypeAlias = str | MX


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    """The answer to one query.

    Attributes:
        status: what happened.
        records: the records (``OK`` only): ``str`` for every type but MX.
        ttl: seconds the answer may be kept (0 for errors); a cached answer
            carries the time it has left.
    """

    status: DNSStatus
    records: tuple[Record, ...] = ()
    ttl: float = 0.0

    @property
    def texts(self) -> tuple[str, ...]:
        """The records that are strings (all of them for non-MX types)."""
        return tuple(r for r in self.records if isinstance(r, str))

    @property
    def mx(self) -> tuple[MX, ...]:
        """The MX records."""
        return tuple(r for r in self.records if isinstance(r, MX))


class DNSError(Exception):
    """The DNS could not answer (SERVFAIL or TIMEOUT): "unknown", never "absent"."""

    def __init__(self, name: str, rdtype: str, status: DNSStatus) -> None:
        super().__init__(f"{rdtype} lookup of {name!r}: {status.value}")
        self.name = name
        self.rdtype = rdtype
        self.status = status


class DNSSource(Protocol):
    """Anything that answers DNS queries: :class:`Resolver` or a test fake."""

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        """Look up records of type ``rdtype`` ("A", "TXT", ...) for ``name``."""
        ...


@dataclass(slots=True)
class ResolverStats:
    """Counters for logs and tests (never reset by the resolver)."""

    queries: int = 0
    """Calls of :meth:`Resolver.query`."""
    cache_hits: int = 0
    coalesced: int = 0
    """Queries that joined an identical query already in flight."""
    network: int = 0
    """Queries that went to a name server."""
    timeouts: int = 0
    failures: int = 0


def reverse_name(ip: str) -> str:
    """The PTR owner name of an IP address (``4.3.2.1.in-addr.arpa``).

    Raises:
        ValueError: ``ip`` is not an IP address.
    """
    return ipaddress.ip_address(ip.strip()).reverse_pointer


def _to_name(name: str) -> dns.name.Name | None:
    """An absolute dnspython name, or None if ``name`` cannot be a domain name.

    Labels are taken literally (no backslash escapes), so any ASCII text that
    fits the length rules is a name; non-ASCII names are IDNA-encoded.
    """
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > MAX_NAME_LENGTH:
        return None
    try:
        labels = [label.encode("ascii") for label in text.split(".")]
    except UnicodeEncodeError:
        try:
            return dns.name.from_unicode(text + ".")
        except (dns.exception.DNSException, UnicodeError):
            return None
    try:
        return dns.name.Name([*labels, b""])
    except dns.exception.DNSException:  # empty label, label or name too long
        return None


def _name_text(name: dns.name.Name) -> str:
    """A name as plain text without the final dot ("" for the root)."""
    return ".".join(label.decode("utf-8", "replace") for label in name.labels if label)


def _record(rdata: Any, rdtype: int) -> Record:
    """One rdata in the plain form described in the module docstring."""
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        # RFC 7208 section 3.3: the strings of one record are concatenated.
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)
    if rdtype == dns.rdatatype.MX:
        return MX(int(rdata.preference), _name_text(rdata.exchange))
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return _name_text(rdata.target)
    return str(rdata.to_text())


def _soa_negative_ttl(response: dns.message.Message | None) -> float | None:
    """RFC 2308 section 5: a negative answer lives min(SOA TTL, SOA MINIMUM)."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return None


_Key: TypeAlias = tuple[dns.name.Name, dns.rdatatype.RdataType]


class _TTLCache:
    """A bounded mapping with per-entry expiry; evicts the oldest entry first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[_Key, tuple[float, DNSAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: _Key, now: float) -> DNSAnswer | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if now >= expires:
            del self._data[key]
            return None
        return replace(answer, ttl=expires - now)

    def put(self, key: _Key, answer: DNSAnswer, now: float) -> None:
        if self._size <= 0 or answer.ttl <= 0:
            return
        self._data[key] = (now + answer.ttl, answer)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


class Resolver:
    """DNS client with deadlines, cache and query coalescing.

    Args:
        nameservers: server addresses; None reads the system's /etc/resolv.conf
            (once, here).  When given, the system configuration is never read.
        port: the servers' port.
        timeout: deadline of one query in seconds, retries included.
        attempts: how many times a query unanswered is sent within ``timeout``
            (each attempt waits ``timeout / attempts``; 1 sends it once).
        cache_size: most answers kept; 0 disables the cache.
        max_ttl: cap on how long a positive answer is kept.
        negative_ttl: cap on how long NXDOMAIN/NODATA is kept (also the value
            used when the server sends no SOA).
        clock: monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        port: int = 53,
        timeout: float = 3.0,
        attempts: int = 2,
        cache_size: int = 10000,
        max_ttl: float = 3600,
        negative_ttl: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameservers is None:
            self._dns = dns.asyncresolver.Resolver(configure=True)
        else:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            self._dns.nameservers = list(nameservers)
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        self._dns.port = port
        # dnspython waits ``timeout`` for each attempt and sends again (after a
        # short back-off) until ``lifetime`` is over.
        self._dns.timeout = timeout / attempts
        self._dns.lifetime = timeout
        self._dns.use_edns(0, 0, EDNS_PAYLOAD)
        self._dns.cache = None  # ours is below; dnspython's would hide TTL handling
        self.timeout = timeout
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._cache = _TTLCache(cache_size)
        self._inflight: dict[_Key, asyncio.Task[DNSAnswer]] = {}
        self.stats = ResolverStats()

    @property
    def nameservers(self) -> list[str]:
        """The servers queried."""
        return [str(ns) for ns in self._dns.nameservers]

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        """Look up ``rdtype`` records of ``name``; never raises for DNS outcomes.

        A name that cannot exist (empty label, label over 63 or name over 253
        characters) is answered ``NXDOMAIN`` without asking the network.

        Raises:
            ValueError: ``rdtype`` is not a DNS record type.
        """
        self.stats.queries += 1
        try:
            rtype = dns.rdatatype.from_text(rdtype)
        except dns.exception.DNSException as exc:
            raise ValueError(f"unknown record type {rdtype!r}") from exc
        qname = _to_name(name)
        if qname is None:
            return DNSAnswer(DNSStatus.NXDOMAIN)
        key = (qname, rtype)
        cached = self._cache.get(key, self._clock())
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._fetch_and_store(key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.stats.coalesced += 1
        # shield: one waiter giving up must not cancel the query for the others.
        return await asyncio.shield(task)

    def _forget(self, key: _Key, task: asyncio.Task[DNSAnswer]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch_and_store(self, key: _Key) -> DNSAnswer:
        answer = self._capped(await self._fetch(*key))
        if not answer.status.is_error:
            self._cache.put(key, answer, self._clock())
        return answer

    def _capped(self, answer: DNSAnswer) -> DNSAnswer:
        """Apply ``max_ttl`` to positive and ``negative_ttl`` to negative answers."""
        cap = self.max_ttl if answer.status is DNSStatus.OK else self.negative_ttl
        return answer if answer.ttl <= cap else replace(answer, ttl=cap)

    async def _fetch(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> DNSAnswer:
        """Ask the name servers once, within the deadline (TTLs not yet capped)."""
        self.stats.network += 1
        try:
            # dnspython's lifetime may overrun by its retry back-off; the
            # asyncio deadline is the one that holds.
            async with aio.timeout(self.timeout):
                answer = await self._dns.resolve(
                    qname,
                    rdtype,
                    raise_on_no_answer=False,
                    lifetime=self.timeout,
                    search=False,
                )
        except (TimeoutError, dns.exception.Timeout):
            self.stats.timeouts += 1
            return DNSAnswer(DNSStatus.TIMEOUT)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[Any, dns.message.Message] = exc.kwargs.get("responses") or {}
            response = next(reversed(responses.values()), None)
            return DNSAnswer(DNSStatus.NXDOMAIN, (), self._negative(response))
        except (dns.exception.DNSException, OSError) as exc:
            # NoNameservers (SERVFAIL, REFUSED, ...), YXDOMAIN, malformed replies.
            log.debug("DNS %s %s failed: %s", qname, rdtype, exc)
            self.stats.failures += 1
            return DNSAnswer(DNSStatus.SERVFAIL)
        if answer.rrset is None:
            return DNSAnswer(DNSStatus.NODATA, (), self._negative(answer.response))
        records = tuple(_record(rdata, rdtype) for rdata in answer.rrset)
        return DNSAnswer(DNSStatus.OK, records, float(answer.chaining_result.minimum_ttl))

    def _negative(self, response: dns.message.Message | None) -> float:
        """The TTL of a negative answer: from its SOA, else ``negative_ttl``."""
        soa = _soa_negative_ttl(response)
        return self.negative_ttl if soa is None else soa

    # -- convenience helpers: records, () when there are none, DNSError -------

    async def _strings(self, name: str, rdtype: str) -> tuple[str, ...]:
        answer = await self.query(name, rdtype)
        if answer.status.is_error:
            raise DNSError(name, rdtype, answer.status)
        return answer.texts

    async def txt(self, name: str) -> tuple[str, ...]:
        """TXT records of ``name``, each as one string."""
        return await self._strings(name, "TXT")

    async def a(self, name: str) -> tuple[str, ...]:
        """IPv4 addresses of ``name``."""
        return await self._strings(name, "A")

    async def aaaa(self, name: str) -> tuple[str, ...]:
        """IPv6 addresses of ``name``."""
        return await self._strings(name, "AAAA")

    async def mx(self, name: str) -> tuple[MX, ...]:
        """MX records of ``name``, lowest preference first."""
        answer = await self.query(name, "MX")
        if answer.status.is_error:
            raise DNSError(name, "MX", answer.status)
        return tuple(sorted(answer.mx))

    async def ptr(self, ip: str) -> tuple[str, ...]:
        """Host names of an IP address (reverse DNS, not validated).

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        return await self._strings(reverse_name(ip), "PTR")
