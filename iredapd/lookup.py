"""Lookup keys: the candidate keys for an address, a domain or a client IP.

One pure module that throttling, greylisting, white/blacklists and the admin
tools all call, so they agree on which rows can match a request.

Key forms (iRedAPD's):

* ``user@example.com``  an address
* ``@example.com``      every address of a domain
* ``@.example.com``     a domain and its sub-domains
* ``@.com``             a top-level domain
* ``@.``                every address (catch-all)
* ``192.0.2.1``         a client IP; ``192.0.2.*`` a wildcard IPv4; ``192.0.2.0/24`` a network
* ``@ip``               every client IP
* ``user@*``            a local part at any domain (amavisd wblist only)

``classify_address`` names these forms (iRedAPD's ``is_valid_amavisd_address``,
core-and-stateful.md §7.3, access-policies.md §1.4) and the priority tables
rank them.  Unlike iRedAPD, every pattern here is anchored at both ends (as in
``iredapd.addr``), so trailing junk never classifies.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final, TypeVar

from iredapd.addr import is_domain, is_email, is_tld_domain

__all__ = [
    "ACCOUNT_PRIORITIES",
    "CATCHALL",
    "CATCHALL_IP",
    "MAILADDR_PRIORITIES",
    "AddressType",
    "TrustedNetworks",
    "account_priority",
    "cidr_prefix",
    "classify_address",
    "ip_candidates",
    "ip_in_network",
    "is_cidr_network",
    "is_ipv4",
    "is_wildcard_addr",
    "is_wildcard_ipv4",
    "mailaddr_priority",
    "networks_containing",
    "parse_ip",
    "policy_addresses",
    "rdns_candidates",
    "throttle_tracking_key",
    "wildcard_address",
    "wildcard_ipv4",
]

K = TypeVar("K")

CATCHALL = "@."
CATCHALL_IP = "@ip"

# Octets replaced by '*', as index tuples.  The default mode yields iRedAPD's two
# forms; the "all" mode yields every contiguous run of wildcard octets (iRedAPD's
# ten forms for ENABLE_ALL_WILDCARD_IP).
_WILDCARD_DEFAULT: tuple[tuple[int, ...], ...] = ((3,), (2,))
_WILDCARD_ALL: tuple[tuple[int, ...], ...] = tuple(
    tuple(range(start, end)) for start in range(4) for end in range(start + 1, 5)
)


# Answers of parse_ip kept: every plugin asks about the same client address,
# and parsing costs more than most plugins' own logic.
_PARSED_IPS = 16384


@functools.lru_cache(maxsize=_PARSED_IPS)
def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None if ``value`` is not an IPv4/IPv6 address (cached)."""
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def is_ipv4(value: str) -> bool:
    """True for a dotted-quad IPv4 address (no leading zeros)."""
    return isinstance(parse_ip(value), ipaddress.IPv4Address)


def wildcard_ipv4(ip: str, *, all_forms: bool = False) -> list[str]:
    """Wildcard forms of an IPv4 address; ``[]`` for anything else.

    Default: ``a.b.c.*`` and ``a.b.*.d``.  ``all_forms`` (ENABLE_ALL_WILDCARD_IP):
    every form in which one contiguous run of octets is ``*`` (ten forms).
    """
    if not is_ipv4(ip):
        return []
    octets = ip.strip().split(".")
    forms = _WILDCARD_ALL if all_forms else _WILDCARD_DEFAULT
    out: list[str] = []
    for stars in forms:
        out.append(".".join("*" if i in stars else o for i, o in enumerate(octets)))
    return out


def policy_addresses(mail: str, *, alias_target: str | None = None) -> list[str]:
    """Candidate keys for an address: itself, its domain, ``@.`` and parent domains.

    ``u@a.b.com`` gives ``u@a.b.com, @a.b.com, @., @.a.b.com, @.b.com, @.com``;
    a value that is not an address gives ``['@.']`` (core-and-stateful.md §7.4).

    ``alias_target``: when the address's domain is an alias domain, its target
    domain; the keys of ``local@<target>`` follow, without repeats (throttle
    §9.3, greylisting §10.3, amavisd_wblist access-policies.md §6.3).
    """
    if not is_email(mail):
        return [CATCHALL]
    local, domain = mail.split("@", 1)
    labels = domain.split(".")
    keys = [mail, "@" + domain, CATCHALL]
    keys.extend("@." + ".".join(labels[i:]) for i in range(len(labels)))
    if alias_target:
        for key in policy_addresses(f"{local}@{alias_target}"):
            if key not in keys:
                keys.append(key)
    return keys


def _wildcard_match(pattern: str, ip: str) -> bool:
    p_octets = pattern.split(".")
    ip_octets = ip.split(".")
    if len(p_octets) != 4 or len(ip_octets) != 4:
        return False
    return all(p in ("*", o) for p, o in zip(p_octets, ip_octets, strict=True))


_SEEN_MAX: Final = 16384


@dataclass(frozen=True, slots=True)
class TrustedNetworks:
    """The trusted clients of ``MYNETWORKS``: exact IPs, IPv4 wildcards, networks.

    ``127.0.0.1`` and ``::1`` are always trusted.  iRedAPD only matches a wildcard
    entry such as ``192.168.*.*`` when ENABLE_ALL_WILDCARD_IP is on; we match every
    wildcard entry octet by octet, which is what the setting's documentation says.
    """

    addresses: frozenset[str]
    wildcards: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    #: answers per client address seen (the same clients come back all day;
    #: parsing an address costs more than the rest of a pure plugin)
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TrustedNetworks:
        """Build from MYNETWORKS; raises ValueError naming a bad entry."""
        addresses: set[str] = {"127.0.0.1", "::1"}
        wildcards: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in entries:
            entry = raw.strip()
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"not a network: {raw!r}") from None
            elif "*" in entry:
                parts = entry.split(".")
                if len(parts) != 4 or not all(p == "*" or p.isdigit() for p in parts):
                    raise ValueError(f"not an IPv4 wildcard: {raw!r}")
                wildcards.append(entry)
            else:
                ip = parse_ip(entry)
                if ip is None:
                    raise ValueError(f"not an IP address, network or wildcard: {raw!r}")
                addresses.add(str(ip))
        return cls(frozenset(addresses), tuple(wildcards), tuple(networks))

    def __contains__(self, client_address: object) -> bool:
        if not isinstance(client_address, str):
            return False
        seen = self._seen
        known = seen.get(client_address)
        if known is None:
            if len(seen) >= _SEEN_MAX:
                seen.clear()
            known = seen[client_address] = self._match(client_address)
        return known

    def _match(self, client_address: str) -> bool:
        ip = parse_ip(client_address)
        if ip is None:
            return False
        if client_address in self.addresses or str(ip) in self.addresses:
            return True
        if isinstance(ip, ipaddress.IPv4Address) and any(
            _wildcard_match(w, str(ip)) for w in self.wildcards
        ):
            return True
        return any(ip.version == n.version and ip in n for n in self.networks)


# ---------------------------------------------------------------------------
# Address classification (core-and-stateful.md §7.2, §7.3; access-policies.md §1.4)
# ---------------------------------------------------------------------------


class AddressType(StrEnum):
    """The kinds of account/sender keys iRedAPD stores (its type names)."""

    CATCHALL = "catchall"  # @.
    SUBDOMAIN = "subdomain"  # @.example.com
    TOP_LEVEL_DOMAIN = "top_level_domain"  # @.com
    CATCHALL_IP = "catchall_ip"  # @ip
    DOMAIN = "domain"  # @example.com
    EMAIL = "email"  # user@example.com
    WILDCARD_ADDR = "wildcard_addr"  # user@*
    IP = "ip"  # 192.0.2.1, 2001:db8::1
    CIDR_NETWORK = "cidr_network"  # 192.0.2.0/24
    WILDCARD_IP = "wildcard_ip"  # 192.0.2.*


# iRedAPD: prefix match of [\w-][\w-.+=]*@\*; anchored here.
_WILDCARD_ADDR_RE = re.compile(r"[\w\-][\w\-.+=]*@\*", re.UNICODE)
# Four groups of 1-3 digits or '*'; no range check (999.*.*.* passes), as iRedAPD.
_WILDCARD_IPV4_RE = re.compile(r"[0-9*]{1,3}\.[0-9*]{1,3}\.[0-9*]{1,3}\.[0-9*]{1,3}")


def is_wildcard_addr(value: str) -> bool:
    """True for ``local@*`` (a local part at any domain)."""
    return _WILDCARD_ADDR_RE.fullmatch(value) is not None


def is_wildcard_ipv4(value: str) -> bool:
    """True for four dot-separated groups of digits and ``*`` (``192.168.*.*``)."""
    return _WILDCARD_IPV4_RE.fullmatch(value) is not None


def is_cidr_network(value: str) -> bool:
    """True for an IPv4/IPv6 network with no host bits set (a plain IP counts).

    ``192.0.2.0/24`` is a network, ``192.0.2.1/24`` is not (strict, as iRedAPD).
    """
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        return False
    return True


def _is_strict_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def classify_address(addr: str) -> AddressType | None:
    """The type of an account/sender key, or None if it is none of them.

    The first matching rule wins (core-and-stateful.md §7.3): ``@.``-forms,
    ``@ip``, ``@domain``, email, ``user@*``, IP, CIDR network, wildcard IPv4.
    A value starting with ``@`` that is none of the ``@`` forms is invalid at
    once.  The value is classified as given: callers strip and lower-case it
    first where iRedAPD does (wblist_admin lower-cases, §14.5).
    """
    if addr.startswith("@."):
        rest = addr[2:]
        if not rest:
            return AddressType.CATCHALL
        if is_domain(rest):
            return AddressType.SUBDOMAIN
        if is_tld_domain(rest):
            return AddressType.TOP_LEVEL_DOMAIN
        return None
    if addr.startswith("@"):
        if addr == CATCHALL_IP:
            return AddressType.CATCHALL_IP
        return AddressType.DOMAIN if is_domain(addr[1:]) else None
    if is_email(addr):
        return AddressType.EMAIL
    if is_wildcard_addr(addr):
        return AddressType.WILDCARD_ADDR
    if _is_strict_ip(addr):
        return AddressType.IP
    if is_cidr_network(addr):
        return AddressType.CIDR_NETWORK
    if is_wildcard_ipv4(addr):
        return AddressType.WILDCARD_IP
    return None


# Throttle and greylisting priorities (larger = considered first), §7.3.
# iRedAPD keys CIDR networks as "cidr" (a name the classifier never returns) and
# has no "catchall_ip", so both get priority 0 there; greylisting CIDR settings
# made by its CLI then never match (§17.3 item 14).  Fixed: cidr_network is 70,
# catchall_ip is 0 on purpose (the least specific IP key).
ACCOUNT_PRIORITIES: Mapping[AddressType, int] = MappingProxyType(
    {
        AddressType.EMAIL: 100,
        AddressType.WILDCARD_ADDR: 90,
        AddressType.IP: 80,
        AddressType.WILDCARD_IP: 70,
        AddressType.CIDR_NETWORK: 70,
        AddressType.DOMAIN: 60,
        AddressType.SUBDOMAIN: 50,
        AddressType.TOP_LEVEL_DOMAIN: 40,
        AddressType.CATCHALL_IP: 0,
        AddressType.CATCHALL: 0,
    }
)

# amavisd users/mailaddr priorities iRedAPD writes (access-policies.md §1.4, §6.6).
MAILADDR_PRIORITIES: Mapping[AddressType, int] = MappingProxyType(
    {
        AddressType.EMAIL: 10,
        AddressType.IP: 9,
        AddressType.WILDCARD_IP: 8,
        AddressType.CIDR_NETWORK: 7,
        AddressType.WILDCARD_ADDR: 7,
        AddressType.DOMAIN: 5,
        AddressType.SUBDOMAIN: 3,
        AddressType.TOP_LEVEL_DOMAIN: 2,
        AddressType.CATCHALL_IP: 1,
        AddressType.CATCHALL: 0,
    }
)


def account_priority(addr: str) -> int:
    """The throttle/greylisting priority of a key; 0 for an invalid one (as iRedAPD)."""
    kind = classify_address(addr)
    return 0 if kind is None else ACCOUNT_PRIORITIES[kind]


def mailaddr_priority(addr: str) -> int | None:
    """The amavisd ``priority`` for a key; None when it is not a valid key."""
    kind = classify_address(addr)
    return None if kind is None else MAILADDR_PRIORITIES[kind]


# ---------------------------------------------------------------------------
# Candidate keys for queries
# ---------------------------------------------------------------------------


def ip_candidates(ip: str, all_wildcards: bool = False, *, catchall: bool = True) -> list[str]:
    """Keys a client IP can match: the IP, its IPv4 wildcard forms, ``@ip``.

    The IP is used verbatim (as iRedAPD, which compares Postfix's string).
    ``all_wildcards`` is ENABLE_ALL_WILDCARD_IP (§7.6).  Throttle asks for all
    of these (§9.3); amavisd_wblist has no ``@ip`` key (``catchall=False``,
    access-policies.md §6.3).  CIDR networks cannot be listed as keys: see
    ``cidr_prefix`` and ``networks_containing``.
    """
    keys = [ip, *wildcard_ipv4(ip, all_forms=all_wildcards)]
    if catchall:
        keys.append(CATCHALL_IP)
    return keys


def wildcard_address(mail: str) -> str | None:
    """``local@*`` for an address, the local part cut at the first ``+``.

    amavisd_wblist adds it for unauthenticated senders (access-policies.md
    §6.3 step 5; the ``+`` is hard-coded there).  None for a non-address.
    """
    if not is_email(mail):
        return None
    local = mail.split("@", 1)[0].split("+", 1)[0]
    return f"{local}@*" if local else None


def cidr_prefix(ip: str) -> str | None:
    """The prefix a stored network must start with to possibly hold ``ip``.

    IPv4: the first octet and a dot (``192.``); IPv6: the first group and a
    colon (``2001:``).  iRedAPD narrows its CIDR candidates this way before
    parsing them (access-policies.md §6.4, core-and-stateful.md §10.4).
    None for a value that is not an IP.
    """
    addr = parse_ip(ip)
    if addr is None:
        return None
    sep = "." if addr.version == 4 else ":"
    return ip.strip().split(sep, 1)[0] + sep


def ip_in_network(ip: str, network: str) -> bool:
    """True when ``network`` parses strictly as a network that contains ``ip``."""
    addr = parse_ip(ip)
    if addr is None:
        return False
    try:
        net = ipaddress.ip_network(network.strip(), strict=True)
    except ValueError:
        return False
    return addr.version == net.version and addr in net


def networks_containing(ip: str, entries: Iterable[tuple[K, str]]) -> list[K]:
    """The keys of the ``(key, network)`` entries whose network contains ``ip``.

    Entries that are not strict networks (``1.2.3.*``, ``1.2.3.4/24``) are
    skipped; a plain IP counts as a /32 or /128.  The input order is kept
    (iRedAPD returns these ids in arbitrary order, §6.4; callers pass rows
    ordered by priority).
    """
    return [key for key, network in entries if ip_in_network(ip, network)]


def rdns_candidates(name: str) -> list[str]:
    """Keys a reverse DNS name can match in ``wblist_rdns``.

    The name, then ``.`` + every suffix: ``mail.example.com`` gives
    ``mail.example.com, .mail.example.com, .example.com, .com``; ``''`` gives
    ``['', '.']`` (access-policies.md §5).
    """
    labels = name.split(".")
    return [name, *("." + ".".join(labels[i:]) for i in range(len(labels)))]


def throttle_tracking_key(rule_account: str, user: str, client_address: str) -> str:
    """The ``throttle_tracking.account`` for a winning throttle rule (§9.6).

    IP and ``@ip`` rules count per client IP; wildcard IP and ``user@*`` rules
    share one counter under the wildcard itself; every other rule (even
    ``@domain`` and ``@.``) counts per ``user``.
    """
    kind = classify_address(rule_account)
    if kind in (AddressType.IP, AddressType.CATCHALL_IP):
        return client_address
    if kind in (AddressType.WILDCARD_IP, AddressType.WILDCARD_ADDR):
        return rule_account
    return user
