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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from iredapd.addr import is_email

__all__ = [
    "CATCHALL",
    "CATCHALL_IP",
    "TrustedNetworks",
    "is_ipv4",
    "parse_ip",
    "policy_addresses",
    "wildcard_ipv4",
]

CATCHALL = "@."
CATCHALL_IP = "@ip"

# Octets replaced by '*', as index tuples.  The default mode yields iRedAPD's two
# forms; the "all" mode yields every contiguous run of wildcard octets (iRedAPD's
# ten forms for ENABLE_ALL_WILDCARD_IP).
_WILDCARD_DEFAULT: tuple[tuple[int, ...], ...] = ((3,), (2,))
_WILDCARD_ALL: tuple[tuple[int, ...], ...] = tuple(
    tuple(range(start, end)) for start in range(4) for end in range(start + 1, 5)
)


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, or None if ``value`` is not an IPv4/IPv6 address."""
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


def policy_addresses(mail: str) -> list[str]:
    """Candidate keys for an address: itself, its domain, ``@.`` and parent domains.

    ``u@a.b.com`` gives ``u@a.b.com, @a.b.com, @., @.a.b.com, @.b.com, @.com``;
    a value that is not an address gives ``['@.']``.
    """
    if not is_email(mail):
        return [CATCHALL]
    domain = mail.split("@", 1)[1]
    labels = domain.split(".")
    keys = [mail, "@" + domain, CATCHALL]
    keys.extend("@." + ".".join(labels[i:]) for i in range(len(labels)))
    return keys


def _wildcard_match(pattern: str, ip: str) -> bool:
    p_octets = pattern.split(".")
    ip_octets = ip.split(".")
    if len(p_octets) != 4 or len(ip_octets) != 4:
        return False
    return all(p in ("*", o) for p, o in zip(p_octets, ip_octets, strict=True))


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
