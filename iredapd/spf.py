"""Sender Policy Framework (RFC 7208): ``check_host()``, Received-SPF, network expansion.

* :func:`check_host` is the function of RFC 7208 section 4, complete: record
  selection, every mechanism and qualifier, dual CIDR lengths, ``redirect=`` and
  ``exp=``, macros (section 7), the processing limits of section 4.6.4 and an
  overall deadline.  :func:`check_mail_from` and :func:`check_helo` wrap it for
  the two SMTP identities (a null reverse-path uses ``postmaster@<helo>``,
  section 2.4).  The answer is an :class:`SPFResult`, never an exception.
* :func:`received_spf` renders the ``Received-SPF:`` header field value
  (section 9.1), safe to PREPEND: values are quoted, control characters dropped.
* :func:`spf_networks` answers a different question, for the cron tool that
  turns big senders' SPF into greylisting whitelists: which networks does a
  domain authorise with ``+`` through ``ip4``/``ip6``/``a``/``mx``/``include``/
  ``redirect``?  :func:`is_allowed_server_in_spf` is the greylisting shortcut
  "does SPF pass for this domain and IP".

DNS comes from any :class:`~iredapd.resolver.DNSSource`; its
:class:`~iredapd.resolver.DNSStatus` tells errors (``temperror``) from empty
answers ("void lookups").
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from iredapd import aio
from iredapd.resolver import MX, DNSAnswer, DNSSource, DNSStatus, Record

__all__ = [
    "DEFAULT_LIMITS",
    "RESULTS",
    "SPFLimits",
    "SPFNetworks",
    "SPFResult",
    "check_helo",
    "check_host",
    "check_mail_from",
    "is_allowed_server_in_spf",
    "received_spf",
    "spf_networks",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The seven results of RFC 7208 section 2.6.
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

# RFC 7208 4.6.4: at most 10 terms that query the DNS (include, a, mx, ptr,
# exists, redirect) per check; it bounds the load one message can cause.
MAX_DNS_TERMS = 10
# RFC 7208 4.6.4: "SHOULD limit void lookups to two" (empty answers, NXDOMAIN);
# records built on names that do not exist are abusive or broken.
MAX_VOID_LOOKUPS = 2
# RFC 7208 4.6.4: one "mx" may look up at most 10 names, or it is a permerror.
MAX_MX_NAMES = 10
# RFC 7208 4.6.4: only the first 10 PTR names are validated (ptr and %{p}).
MAX_PTR_NAMES = 10
# RFC 7208 4.6.4: an elapsed-time limit "SHOULD allow at least 20 seconds".
CHECK_TIMEOUT = 20.0
# RFC 1035 2.3.4 / RFC 7208 7.3: longest name (text, no final dot) and label.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# RFC 7208 9.1: keep header values short; a problem text is for humans.
_MAX_HEADER_VALUE = 200

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


@dataclass(frozen=True, slots=True)
class SPFLimits:
    """Processing limits (RFC 7208 section 4.6.4), defaults as recommended."""

    dns_terms: int = MAX_DNS_TERMS
    void_lookups: int = MAX_VOID_LOOKUPS
    mx_names: int = MAX_MX_NAMES
    ptr_names: int = MAX_PTR_NAMES
    timeout: float = CHECK_TIMEOUT


DEFAULT_LIMITS = SPFLimits()


@dataclass(frozen=True, slots=True)
class SPFResult:
    """The outcome of one SPF check, with what logs and Received-SPF need.

    Attributes:
        result: one of :data:`RESULTS`.
        explanation: the domain's ``exp=`` text, macro-expanded (``fail`` only;
            ``""`` when the domain gives none: use your own default).
        mechanism: the term that decided (``"-all"``, ``"ip4:192.0.2.0/24"``),
            ``"default"`` when none matched; empty for none/errors.
        problem: what went wrong, for permerror/temperror (and why ``none``).
        client_ip, domain, sender, helo, receiver, identity: the inputs;
            ``identity`` is ``"mailfrom"`` or ``"helo"``.
        lookups: DNS queries made.
    """

    result: str
    explanation: str = ""
    mechanism: str = ""
    problem: str = ""
    client_ip: str = ""
    domain: str = ""
    sender: str = ""
    helo: str = ""
    receiver: str = ""
    identity: str = "mailfrom"
    lookups: int = 0


# -- errors ---------------------------------------------------------------------


class _SPFError(Exception):
    result = "permerror"


class _PermError(_SPFError):
    result = "permerror"


class _TempError(_SPFError):
    result = "temperror"


# -- macros (RFC 7208 section 7) ------------------------------------------------

# 7.1: macro-expand = ( "%{" macro-letter transformers *delimiter "}" )
#                     / "%%" / "%_" / "%-";  transformers = *DIGIT [ "r" ]
_MACRO_RE = re.compile(
    r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<reverse>[rR]?)"
    r"(?P<delimiters>[.\-+,/_=]*)\}|(?P<escape>[%_-]))"
)
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}
# 7.2: letters usable in domain-specs; c, r and t only in explanations (7.3).
DOMAIN_LETTERS = frozenset("slodiphv")
EXPLAIN_LETTERS = DOMAIN_LETTERS | frozenset("crt")
_ALL_LETTERS = EXPLAIN_LETTERS
# 7.1: toplabel = ( *alphanum ALPHA *alphanum ) /
#                 ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
_TOPLABEL_RE = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
# A digit transformer beyond this keeps every part (a name has < 128 labels).
_MAX_PARTS = 1000


@dataclass(frozen=True, slots=True)
class _Macro:
    letter: str  # as written: upper case means URL-escape the value (7.3)
    parts: int | None
    reverse: bool
    delimiters: str


_Token: TypeAlias = str | _Macro


@dataclass(frozen=True, slots=True)
class _MacroString:
    """A parsed macro-string: literal text and macros, in order."""

    tokens: tuple[_Token, ...]
    tail: str  # the raw text after the last macro-expand (all of it if none)
    has_expand: bool

    @property
    def is_literal(self) -> bool:
        """True if no macro letter is used (escapes like %% are fine)."""
        return not any(isinstance(t, _Macro) for t in self.tokens)

    def literal(self) -> str:
        return "".join(t for t in self.tokens if isinstance(t, str))


def _parse_macro_string(
    text: str, letters: frozenset[str], *, spaces: bool = False
) -> _MacroString:
    """Parse a macro-string (or explain-string when ``spaces``), 7.1."""
    tokens: list[_Token] = []
    pos = tail_start = 0
    has_expand = False
    while (i := text.find("%", pos)) >= 0:
        if i > pos:
            tokens.append(_literal(text[pos:i], text, spaces))
        m = _MACRO_RE.match(text, i)
        if m is None:
            raise _PermError(f"invalid macro in {text!r}")
        pos = tail_start = m.end()
        has_expand = True
        if m["escape"]:
            tokens.append(_ESCAPES[m["escape"]])
            continue
        if m["letter"].lower() not in letters:
            raise _PermError(f"macro letter {m['letter']!r} not allowed in {text!r}")
        tokens.append(_macro(m, text))
    if pos < len(text):
        tokens.append(_literal(text[pos:], text, spaces))
    return _MacroString(tuple(tokens), text[tail_start:], has_expand)


def _literal(chunk: str, text: str, spaces: bool) -> str:
    if not _visible(chunk, spaces=spaces):
        raise _PermError(f"invalid character in {text!r}")
    return chunk


def _macro(m: re.Match[str], text: str) -> _Macro:
    digits = m["digits"].lstrip("0")
    if m["digits"] and not digits:
        raise _PermError(f"zero digit transformer in {text!r}")  # 7.3: MUST be nonzero
    parts = None if not digits else (int(digits) if len(digits) <= 3 else _MAX_PARTS)
    return _Macro(m["letter"], parts, bool(m["reverse"]), m["delimiters"])


def _visible(text: str, *, spaces: bool = False) -> bool:
    """RFC 7208 7.1: macro-literal is %x21-7E (explain-string adds SP)."""
    low = 0x20 if spaces else 0x21
    return all(low <= ord(c) <= 0x7E for c in text)


def _transform(value: str, macro: _Macro) -> str:
    """Apply transformers and delimiters, then URL-escape for upper case (7.3)."""
    if macro.parts is not None or macro.reverse or macro.delimiters:
        parts = re.split("[" + re.escape(macro.delimiters or ".") + "]", value)
        if macro.reverse:
            parts.reverse()
        if macro.parts is not None:
            parts = parts[-macro.parts :]
        value = ".".join(parts)
    if macro.letter.isupper():
        # unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~" stay as they are
        value = urllib.parse.quote(value, safe="")
    return value


def _parse_domain_spec(text: str) -> _MacroString:
    """domain-spec = macro-string domain-end (RFC 7208 7.1)."""
    if not text:
        raise _PermError("empty domain-spec")
    spec = _parse_macro_string(text, DOMAIN_LETTERS)
    if spec.has_expand and not spec.tail:
        return spec  # domain-end = macro-expand
    tail = spec.tail[:-1] if spec.tail.endswith(".") else spec.tail
    dot = tail.rfind(".")  # domain-end = "." toplabel [ "." ]
    if dot < 0 or not _TOPLABEL_RE.fullmatch(tail[dot + 1 :]):
        raise _PermError(f"invalid domain-spec {text!r}")
    return spec


# -- names and addresses --------------------------------------------------------


def _labels_ok(name: str) -> bool:
    labels = name.split(".")
    return all(0 < len(label) <= MAX_LABEL_LENGTH for label in labels)


def _target_name(name: str) -> str | None:
    """A name to query, or None if malformed (then treated as non-existent).

    RFC 7208 7.3: an expanded name longer than 253 characters loses labels on
    the left until it fits.  Names with empty or over-long labels cannot be
    queried; the suite and RFC 7208 4.8 allow treating them as a no-match.
    """
    if name.endswith("."):
        name = name[:-1]
    while len(name) > MAX_NAME_LENGTH and "." in name:
        name = name.split(".", 1)[1]
    if not name or len(name) > MAX_NAME_LENGTH or not _labels_ok(name):
        return None
    return name


def _identity_domain(domain: str) -> str | None:
    """The <domain> of check_host() if well formed (RFC 7208 4.3), else None.

    Malformed means: an address literal, an empty label, a label over 63 or a
    name over 253 characters, a single label, or a numeric top label.  Names
    in Unicode are converted to A-labels.
    """
    domain = domain.strip()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not domain or domain.startswith("[") or not _visible(domain):
        return None
    if len(domain) > MAX_NAME_LENGTH or not _labels_ok(domain):
        return None
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    return domain


def _client_address(ip: str) -> IPAddress:
    """The <ip>; an IPv4-mapped IPv6 address is IPv4 (RFC 7208 5, last para)."""
    address = ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_subdomain(name: str, parent: str) -> bool:
    name, parent = name.lower().rstrip("."), parent.lower().rstrip(".")
    return name == parent or name.endswith("." + parent)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- record syntax (RFC 7208 sections 4.5, 4.6.1, 5, 6) -------------------------

_MODIFIER_RE = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)
_DIRECTIVE_RE = re.compile(r"([+\-~?]?)([^:/]*)(.*)", re.DOTALL)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4_RE = re.compile(rf"{_QNUM}\.{_QNUM}\.{_QNUM}\.{_QNUM}")
_IP6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")
_NETWORK_RE = re.compile(r"([^/]*)(?:/([0-9]+))?", re.DOTALL)
_DUAL_CIDR_RE = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?")
_SPEC_CIDR_RE = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_MECHANISMS = frozenset(("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"))


@dataclass(frozen=True, slots=True)
class _Mechanism:
    qualifier: str
    name: str
    text: str
    domain: _MacroString | None = None
    network: IPNetwork | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class _Record:
    mechanisms: tuple[_Mechanism, ...]
    redirect: _MacroString | None = None
    explanation: _MacroString | None = None


def _is_spf1(text: str) -> bool:
    """RFC 7208 4.5: "v=spf1" (any case) followed by a space or the end."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _cidr(digits: str | None, maximum: int, term: str) -> int:
    """ip4-cidr-length / ip6-cidr-length: no leading zero, within range."""
    if digits is None:
        return maximum
    if len(digits) > 3 or (len(digits) > 1 and digits[0] == "0") or int(digits) > maximum:
        raise _PermError(f"invalid CIDR length in {term!r}")
    return int(digits)


def _ip_mechanism(qualifier: str, name: str, rest: str, term: str) -> _Mechanism:
    m = _NETWORK_RE.fullmatch(rest[1:]) if rest.startswith(":") else None
    if m is None:
        raise _PermError(f"invalid {name} in {term!r}")
    address = m[1]
    network: IPNetwork
    if name == "ip4":
        if not _IP4_RE.fullmatch(address):
            raise _PermError(f"invalid IPv4 network in {term!r}")
        network = ipaddress.IPv4Network((address, _cidr(m[2], 32, term)), strict=False)
    else:
        try:
            if not _IP6_CHARS_RE.fullmatch(address):
                raise ValueError(address)
            parsed = ipaddress.IPv6Address(address)
        except ValueError:
            raise _PermError(f"invalid IPv6 network in {term!r}") from None
        network = ipaddress.IPv6Network((parsed, _cidr(m[2], 128, term)), strict=False)
    return _Mechanism(qualifier, name, term, network=network)


def _host_mechanism(qualifier: str, name: str, rest: str, term: str) -> _Mechanism:
    """a / mx: [ ":" domain-spec ] [ dual-cidr-length ]."""
    if rest.startswith(":"):
        m = _SPEC_CIDR_RE.fullmatch(rest[1:])
        assert m is not None  # the pattern matches any text
        domain: _MacroString | None = _parse_domain_spec(m[1])
        cidr4, cidr6 = m[2], m[3]
    else:
        m = _DUAL_CIDR_RE.fullmatch(rest)
        if m is None:
            raise _PermError(f"invalid {name} in {term!r}")
        domain, cidr4, cidr6 = None, m[1], m[2]
    return _Mechanism(
        qualifier,
        name,
        term,
        domain=domain,
        cidr4=_cidr(cidr4, 32, term),
        cidr6=_cidr(cidr6, 128, term),
    )


def _parse_mechanism(term: str) -> _Mechanism:
    m = _DIRECTIVE_RE.fullmatch(term)
    assert m is not None
    qualifier, name, rest = m[1] or "+", m[2].lower(), m[3]
    if name not in _MECHANISMS:
        raise _PermError(f"unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise _PermError(f"invalid all in {term!r}")
        return _Mechanism(qualifier, name, term)
    if name in ("ip4", "ip6"):
        return _ip_mechanism(qualifier, name, rest, term)
    if name in ("a", "mx"):
        return _host_mechanism(qualifier, name, rest, term)
    if name == "ptr" and not rest:
        return _Mechanism(qualifier, name, term)
    if not rest.startswith(":"):  # include, exists need ":" domain-spec; ptr has no CIDR
        raise _PermError(f"invalid {name} in {term!r}")
    return _Mechanism(qualifier, name, term, domain=_parse_domain_spec(rest[1:]))


# Parsed records kept (the parse is pure and the result immutable); the
# records of the domains that send to a server are few, and parsing one
# costs more than the rest of an SPF check with cached DNS answers.
_PARSED_RECORDS = 4096


@functools.lru_cache(maxsize=_PARSED_RECORDS)
def _parse_record(text: str) -> _Record:
    """Parse a whole v=spf1 record; any syntax error anywhere is a permerror (4.6).

    Cached per text (a record that fails is parsed again each time).

    Raises:
        _PermError: the record is not well formed.
    """
    mechanisms: list[_Mechanism] = []
    modifiers: dict[str, _MacroString] = {}
    for term in text.split(" ")[1:]:  # 4.6.1: terms are separated by SP only
        if not term:
            continue
        if not _visible(term):
            raise _PermError(f"invalid character in term {term!r}")
        modifier = _MODIFIER_RE.fullmatch(term)
        if modifier is None:
            mechanisms.append(_parse_mechanism(term))
            continue
        name, value = modifier[1].lower(), modifier[2]
        if name in ("redirect", "exp"):
            if name in modifiers:  # 6: each at most once
                raise _PermError(f"{name}= appears twice")
            modifiers[name] = _parse_domain_spec(value)
        else:  # unknown modifiers are ignored, but must be well formed (A/3)
            _parse_macro_string(value, _ALL_LETTERS)
    return _Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


# -- evaluation -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: str
    mechanism: str
    explanation: _MacroString | None  # the exp= of the record that decided
    domain: str


@dataclass(slots=True)
class _Identity:
    sender: str
    local: str
    sender_domain: str
    helo: str
    receiver: str


def _split_sender(sender: str) -> tuple[str, str]:
    local, at, domain = sender.rpartition("@")
    if not at:
        local, domain = "", sender
    return local or "postmaster", domain  # 4.3: no local-part -> "postmaster"


class _Check:
    """State of one check_host() call and its recursive evaluations."""

    def __init__(
        self,
        ip: IPAddress,
        identity: _Identity,
        resolver: DNSSource,
        limits: SPFLimits,
        clock: Callable[[], float],
    ) -> None:
        self.ip = ip
        self.who = identity
        self.resolver = resolver
        self.limits = limits
        self.clock = clock
        self.lookups = 0
        self.dns_terms = 0
        self.void = 0
        self._p_cache: dict[str, str] = {}

    # DNS ---------------------------------------------------------------------

    async def _query(self, name: str, rdtype: str) -> DNSAnswer:
        self.lookups += 1
        return await self.resolver.query(name, rdtype)

    async def _lookup(self, name: str, rdtype: str, *, void: bool) -> tuple[Record, ...]:
        """Records, () when none; temperror on DNS errors (RFC 7208 5)."""
        answer = await self._query(name, rdtype)
        if answer.status.is_error:
            raise _TempError(f"{rdtype} lookup of {name}: {answer.status.value}")
        if answer.status is DNSStatus.OK and answer.records:
            return answer.records
        if void:
            self._count_void()
        return ()

    def _count_void(self) -> None:
        self.void += 1
        if self.void > self.limits.void_lookups:  # 4.6.4
            raise _PermError(f"more than {self.limits.void_lookups} void lookups")

    def _count_dns_term(self, term: str) -> None:
        self.dns_terms += 1
        if self.dns_terms > self.limits.dns_terms:  # 4.6.4
            raise _PermError(f"more than {self.limits.dns_terms} DNS lookups ({term})")

    @property
    def _address_type(self) -> str:
        return "A" if self.ip.version == 4 else "AAAA"

    async def _ptr_names(self, *, void: bool) -> list[str]:
        """PTR names of <ip>, first 10 only (4.6.4); DNS errors give none (5.5)."""
        answer = await self._query(self.ip.reverse_pointer, "PTR")
        if answer.status.is_error:
            return []
        names = [r for r in answer.texts if r]
        if not names and void:
            self._count_void()
        return names[: self.limits.ptr_names]

    async def _validates(self, name: str) -> bool:
        """Does ``name`` resolve back to <ip>?  DNS errors skip the name (5.5)."""
        target = _target_name(name)
        if target is None:
            return False
        answer = await self._query(target, self._address_type)
        return answer.status is DNSStatus.OK and any(_parse_ip(r) == self.ip for r in answer.texts)

    # macros ------------------------------------------------------------------

    async def expand(self, spec: _MacroString, domain: str) -> str:
        out: list[str] = []
        for token in spec.tokens:
            if isinstance(token, str):
                out.append(token)
            else:
                out.append(_transform(await self._macro_value(token.letter.lower(), domain), token))
        return "".join(out)

    async def _macro_value(self, letter: str, domain: str) -> str:
        ip = self.ip
        values = {
            "s": f"{self.who.local}@{self.who.sender_domain}",
            "l": self.who.local,
            "o": self.who.sender_domain,
            "d": domain,
            "h": self.who.helo,
            "v": "in-addr" if ip.version == 4 else "ip6",
            "c": str(ip),
            "r": self.who.receiver or "unknown",
        }
        if letter in values:
            return values[letter]
        if letter == "i":
            if isinstance(ip, ipaddress.IPv6Address):
                return ".".join(ip.exploded.replace(":", ""))  # 7.3: dot-format nibbles
            return str(ip)
        if letter == "t":
            return str(int(self.clock()))
        return await self._p_macro(domain)

    async def _p_macro(self, domain: str) -> str:
        """%{p}: a validated name of <ip>, preferring <domain> and its subdomains (7.3)."""
        if domain not in self._p_cache:
            names = [n for n in await self._ptr_names(void=False) if await self._validates(n)]
            ranked = sorted(
                names,
                key=lambda n: (
                    0 if n.lower() == domain.lower() else (1 if _is_subdomain(n, domain) else 2)
                ),
            )
            self._p_cache[domain] = ranked[0] if ranked else "unknown"
        return self._p_cache[domain]

    async def target(self, spec: _MacroString | None, domain: str) -> str | None:
        if spec is None:
            return domain
        return _target_name(await self.expand(spec, domain))

    # records and mechanisms --------------------------------------------------

    async def record(self, domain: str) -> _Record | None:
        """The domain's SPF record (4.4, 4.5), or None if it publishes none."""
        answer = await self._query(domain, "TXT")
        if answer.status.is_error:
            raise _TempError(f"TXT lookup of {domain}: {answer.status.value}")
        records = [t for t in answer.texts if _is_spf1(t)]
        if not records:
            return None
        if len(records) > 1:
            raise _PermError(f"{domain} has {len(records)} v=spf1 records")
        try:
            return _parse_record(records[0])
        except _PermError as exc:
            raise _PermError(f"{domain}: {exc}") from None

    async def evaluate(self, domain: str) -> _Outcome:
        """check_host() for one domain, after the initial checks (4.6 - 4.7)."""
        record = await self.record(domain)
        if record is None:
            return _Outcome("none", "", None, domain)
        for mechanism in record.mechanisms:
            if await self._matches(mechanism, domain):
                result = _QUALIFIERS[mechanism.qualifier]
                return _Outcome(result, mechanism.text, record.explanation, domain)
        # 6.1: redirect applies when nothing matched (an "all" always matches).
        if record.redirect is not None:
            self._count_dns_term("redirect")
            target = await self.target(record.redirect, domain)
            if target is None:
                raise _PermError(f"{domain}: redirect to a malformed name")
            outcome = await self.evaluate(target)
            if outcome.result == "none":
                raise _PermError(f"{domain}: redirect={target} has no SPF record")
            return outcome
        return _Outcome("neutral", "default", record.explanation, domain)  # 4.7

    async def _matches(self, mech: _Mechanism, domain: str) -> bool:
        if mech.name == "all":
            return True
        if mech.network is not None:  # ip4, ip6 (5.6)
            return self.ip.version == mech.network.version and self.ip in mech.network
        self._count_dns_term(mech.text)
        if mech.name == "include":
            return await self._include(mech, domain)
        target = await self.target(mech.domain, domain)
        if target is None:
            return False
        if mech.name == "a":
            records = await self._lookup(target, self._address_type, void=True)
            return self._in_any(records, mech)
        if mech.name == "mx":
            return await self._mx(target, mech)
        if mech.name == "ptr":
            names = await self._ptr_names(void=True)
            for name in names:
                if _is_subdomain(name, target) and await self._validates(name):
                    return True
            return False
        # exists (5.7): an A lookup whatever the connection's family
        return bool(await self._lookup(target, "A", void=True))

    async def _include(self, mech: _Mechanism, domain: str) -> bool:
        """5.2: pass matches; fail/softfail/neutral do not; none is a permerror."""
        target = await self.target(mech.domain, domain)
        if target is None:
            raise _PermError(f"{mech.text}: malformed name")
        outcome = await self.evaluate(target)
        if outcome.result == "none":
            raise _PermError(f"{mech.text}: no SPF record at {target}")
        return outcome.result == "pass"

    async def _mx(self, target: str, mech: _Mechanism) -> bool:
        """5.4: MX lookup, then an address lookup of each exchange."""
        records = await self._lookup(target, "MX", void=True)
        hosts = [r.host for r in records if isinstance(r, MX)]
        if len(hosts) > self.limits.mx_names:
            raise _PermError(f"{mech.text}: more than {self.limits.mx_names} MX names")
        for host in hosts:
            name = _target_name(host)
            if name is None:  # null MX (RFC 7505) or a malformed name
                continue
            addresses = await self._lookup(name, self._address_type, void=False)
            if self._in_any(addresses, mech):
                return True
        return False

    def _in_any(self, records: Sequence[Record], mech: _Mechanism) -> bool:
        prefix = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        for record in records:
            address = _parse_ip(record) if isinstance(record, str) else None
            if address is None or address.version != self.ip.version:
                continue
            if self.ip in ipaddress.ip_network((address, prefix), strict=False):
                return True
        return False

    async def explain(self, outcome: _Outcome) -> str:
        """6.2: the exp= text; any problem means "as if no exp was given"."""
        if outcome.explanation is None:
            return ""
        target = await self.target(outcome.explanation, outcome.domain)
        if target is None:
            return ""
        answer = await self._query(target, "TXT")
        texts = answer.texts if answer.status is DNSStatus.OK else ()
        if len(texts) != 1:
            return ""
        try:
            spec = _parse_macro_string(texts[0], EXPLAIN_LETTERS, spaces=True)
        except _PermError:
            return ""
        return await self.expand(spec, outcome.domain)


# -- public entry points --------------------------------------------------------


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    resolver: DNSSource,
    helo: str = "",
    receiver: str = "",
    identity: str = "mailfrom",
    limits: SPFLimits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.time,
) -> SPFResult:
    """RFC 7208 check_host(<ip>, <domain>, <sender>).

    Args:
        ip: the SMTP client's address; IPv4-mapped IPv6 counts as IPv4.
        domain: the domain whose SPF record is checked.
        sender: the MAIL FROM (or ``postmaster@<helo>``) for the macros.
        resolver: where DNS answers come from.
        helo: the HELO/EHLO name (macro ``%{h}``).
        receiver: this host's name (macro ``%{r}``, Received-SPF).
        identity: ``"mailfrom"`` or ``"helo"``, recorded in the result.
        limits: processing limits; the defaults are RFC 7208's.
        clock: seconds since the epoch, for ``%{t}``.

    Returns:
        The result; never raises for bad input or DNS trouble (an unparsable
        client IP or malformed domain gives ``none`` with a ``problem``).
    """
    base = SPFResult(
        "none",
        client_ip=ip,
        domain=domain,
        sender=sender,
        helo=helo,
        receiver=receiver,
        identity=identity,
    )
    try:
        address = _client_address(ip)
    except ValueError:
        return replace(base, problem="invalid client IP address")
    checked = _identity_domain(domain)
    if checked is None:  # 4.3
        return replace(base, problem="malformed domain")
    local, sender_domain = _split_sender(sender)
    who = _Identity(sender, local, sender_domain or checked, helo, receiver)
    check = _Check(address, who, resolver, limits, clock)
    deadline = asyncio.get_running_loop().time() + limits.timeout
    try:
        async with aio.timeout_at(deadline):
            outcome = await check.evaluate(checked)
    except _SPFError as exc:
        return replace(base, result=exc.result, problem=str(exc), lookups=check.lookups)
    except TimeoutError:
        problem = f"SPF evaluation took more than {limits.timeout:g} s"
        return replace(base, result="temperror", problem=problem, lookups=check.lookups)
    explanation = ""
    if outcome.result == "fail":
        try:
            async with aio.timeout_at(deadline):
                explanation = await check.explain(outcome)
        except TimeoutError:
            explanation = ""
    return replace(
        base,
        result=outcome.result,
        mechanism=outcome.mechanism,
        explanation=explanation,
        problem="no SPF record" if outcome.result == "none" else "",
        lookups=check.lookups,
    )


async def check_mail_from(
    ip: str,
    mail_from: str,
    helo: str,
    *,
    resolver: DNSSource,
    receiver: str = "",
    limits: SPFLimits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.time,
) -> SPFResult:
    """Check the MAIL FROM identity; a null reverse-path checks ``postmaster@<helo>``.

    RFC 7208 2.4: with an empty MAIL FROM the identity is the mailbox
    ``postmaster`` at the HELO name.  A sender without ``@`` has no domain and
    gives ``none``.
    """
    mail_from = mail_from.strip().strip("<>")
    if not mail_from:
        sender, domain = f"postmaster@{helo}", helo
    else:
        sender, domain = mail_from, mail_from.rpartition("@")[2] if "@" in mail_from else ""
    return await check_host(
        ip,
        domain,
        sender,
        resolver=resolver,
        helo=helo,
        receiver=receiver,
        identity="mailfrom",
        limits=limits,
        clock=clock,
    )


async def check_helo(
    ip: str,
    helo: str,
    *,
    resolver: DNSSource,
    receiver: str = "",
    limits: SPFLimits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.time,
) -> SPFResult:
    """Check the HELO identity (RFC 7208 2.3)."""
    return await check_host(
        ip,
        helo,
        f"postmaster@{helo}",
        resolver=resolver,
        helo=helo,
        receiver=receiver,
        identity="helo",
        limits=limits,
        clock=clock,
    )


async def is_allowed_server_in_spf(domain: str, ip: str, resolver: DNSSource) -> bool:
    """True if SPF passes for ``ip`` sending as ``postmaster@<domain>``.

    Used by greylisting (bypass) and the sender-login-mismatch checks, as
    iRedAPD's function of the same name, but with a full RFC 7208 evaluation.
    """
    if not domain or not ip:
        return False
    result = await check_host(ip, domain, f"postmaster@{domain}", resolver=resolver)
    return result.result == "pass"


# -- Received-SPF (RFC 7208 section 9.1) ----------------------------------------

_DOT_ATOM_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
)
_COMMENTS = {
    "pass": "domain of {sender} designates {ip} as permitted sender",
    "fail": "domain of {sender} does not designate {ip} as permitted sender",
    "softfail": "domain of transitioning {sender} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {sender}",
    "none": "domain of {sender} does not designate permitted sender hosts",
    "permerror": "permanent error in processing domain of {sender}",
    "temperror": "temporary error in processing during lookup of {sender}",
}


def _header_safe(text: str) -> str:
    """Printable ASCII only: no CR/LF (header injection), no other controls."""
    cleaned = "".join(c if 0x20 <= ord(c) <= 0x7E else "?" for c in text)
    return cleaned[:_MAX_HEADER_VALUE]


def _header_value(text: str) -> str:
    """dot-atom if possible, else quoted-string (RFC 5322 3.2.4)."""
    text = _header_safe(text)
    if _DOT_ATOM_RE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_text(text: str) -> str:
    return re.sub(r"([()\\])", r"\\\1", _header_safe(text))


def received_spf(result: SPFResult) -> str:
    """The ``Received-SPF:`` field value (without the name, no CR/LF), RFC 7208 9.1.

    Example: ``pass (mx.example.org: domain of a@example.com designates
    192.0.2.1 as permitted sender) client-ip=192.0.2.1;
    envelope-from="a@example.com"; helo=mail.example.com;
    receiver=mx.example.org; identity=mailfrom; mechanism="ip4:192.0.2.0/24";``
    """
    who = result.sender if result.identity == "mailfrom" else result.helo
    comment = _COMMENTS.get(result.result, _COMMENTS["none"]).format(
        sender=who or result.domain, ip=result.client_ip
    )
    if result.receiver:
        comment = f"{result.receiver}: {comment}"
    if result.problem and result.result in ("permerror", "temperror"):
        comment = f"{comment}: {result.problem}"
    pairs = [
        ("client-ip", result.client_ip),
        ("envelope-from", result.sender),
        ("helo", result.helo),
        ("receiver", result.receiver),
        ("identity", result.identity),
    ]
    if result.mechanism:
        pairs.append(("mechanism", result.mechanism))
    if result.problem and result.result in ("permerror", "temperror"):
        pairs.append(("problem", result.problem))
    values = " ".join(f"{key}={_header_value(value)};" for key, value in pairs if value)
    status = result.result if result.result in RESULTS else "none"
    return f"{status} ({_comment_text(comment)}) {values}".rstrip()


# -- SPF to networks (for greylisting whitelists) -------------------------------


@dataclass(frozen=True, slots=True)
class SPFNetworks:
    """The networks a domain's SPF authorises with ``+`` (or no qualifier).

    Attributes:
        domain: the domain expanded.
        networks: IPv4 then IPv6 networks, collapsed.
        has_record: the domain publishes an SPF record.
        truncated: the lookup cap or deadline was hit; ``networks`` is partial.
        lookups: DNS queries made.
        skipped: ``+`` terms that cannot become networks (``ptr``, ``exists``,
            macros, ``+all``), as ``"domain: term"``.
        problems: DNS errors and syntax errors met, as text.

    Networks listed by a ``+`` mechanism are returned even when an earlier
    ``-``/``~``/``?`` mechanism of the same record would catch part of them:
    this is the set a publisher declares, not an exact inverse of check_host().
    """

    domain: str
    networks: tuple[IPNetwork, ...] = ()
    has_record: bool = False
    truncated: bool = False
    lookups: int = 0
    skipped: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


class _LookupCap(Exception):
    pass


@dataclass
class _Expander:
    resolver: DNSSource
    max_lookups: int
    lookups: int = 0
    found: bool = False  # the first domain walked has an SPF record
    visited: set[str] = field(default_factory=set)
    networks: set[IPNetwork] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def query(self, name: str, rdtype: str) -> tuple[Record, ...]:
        if self.lookups >= self.max_lookups:
            raise _LookupCap
        self.lookups += 1
        answer = await self.resolver.query(name, rdtype)
        if answer.status.is_error:
            self.problems.append(f"{rdtype} {name}: {answer.status.value}")
        return answer.records if answer.status is DNSStatus.OK else ()

    async def walk(self, domain: str) -> bool:
        """Expand one domain's record; False if it has none (or a loop)."""
        key = domain.lower()
        if key in self.visited:
            return False  # include/redirect loop, or already expanded
        self.visited.add(key)
        texts = [t for t in await self.query(domain, "TXT") if isinstance(t, str) and _is_spf1(t)]
        if len(texts) != 1:
            if texts:
                self.problems.append(f"{domain}: {len(texts)} v=spf1 records")
            return False
        self.found = self.found or len(self.visited) == 1
        try:
            record = _parse_record(texts[0])
        except _PermError as exc:
            self.problems.append(f"{domain}: {exc}")
            return True
        for mech in record.mechanisms:
            if mech.name == "all":
                if mech.qualifier == "+":
                    self.skipped.append(f"{domain}: {mech.text}")
                return True  # nothing after "all" is reached; redirect ignored (6.1)
            if mech.qualifier == "+":
                await self._mechanism(mech, domain)
        if record.redirect is not None:
            await self._follow(record.redirect, domain, "redirect")
        return True

    async def _follow(self, spec: _MacroString, domain: str, what: str) -> None:
        target = _target_name(spec.literal()) if spec.is_literal else None
        if target is None:
            self.skipped.append(f"{domain}: {what} {spec.literal() or '(macro)'}")
        else:
            await self.walk(target)

    async def _mechanism(self, mech: _Mechanism, domain: str) -> None:
        if mech.network is not None:
            self.networks.add(mech.network)
        elif mech.name == "include" and mech.domain is not None:
            await self._follow(mech.domain, domain, "include")
        elif mech.name in ("a", "mx") and (mech.domain is None or mech.domain.is_literal):
            target = domain if mech.domain is None else _target_name(mech.domain.literal())
            if target is None:
                return
            hosts = [target] if mech.name == "a" else await self._mx_hosts(target)
            for host in hosts:
                await self._addresses(host, mech)
        else:  # ptr, exists, and a/mx with macros depend on the connection
            self.skipped.append(f"{domain}: {mech.text}")

    async def _mx_hosts(self, target: str) -> list[str]:
        records = [r for r in await self.query(target, "MX") if isinstance(r, MX)]
        if len(records) > MAX_MX_NAMES:  # check_host() gives permerror: nothing passes
            self.problems.append(f"{target}: more than {MAX_MX_NAMES} MX names")
            return []
        return [r.host for r in records if r.host]

    async def _addresses(self, host: str, mech: _Mechanism) -> None:
        for rdtype, prefix in (("A", mech.cidr4), ("AAAA", mech.cidr6)):
            for record in await self.query(host, rdtype):
                address = _parse_ip(record) if isinstance(record, str) else None
                if address is not None:
                    self.networks.add(ipaddress.ip_network((address, prefix), strict=False))


def _collapse(networks: set[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


async def spf_networks(
    domain: str,
    resolver: DNSSource,
    *,
    max_lookups: int = 20,
    time_limit: float = 60.0,
) -> SPFNetworks:
    """Expand ``domain``'s SPF into the networks it authorises.

    Follows ``include`` and ``redirect`` (each domain once, so loops end),
    resolves ``a`` and ``mx`` (A and AAAA, with their CIDR lengths).  At most
    ``max_lookups`` DNS queries (iRedAPD's ``SPF_MAX_DNS_QUERIES`` default) and
    ``time_limit`` seconds; past either, what was found so far comes back with
    ``truncated=True``.
    """
    expander = _Expander(resolver, max_lookups)
    truncated = False
    name = _identity_domain(domain)
    if name is None:
        return SPFNetworks(domain, problems=("malformed domain",))
    try:
        async with aio.timeout(time_limit):
            await expander.walk(name)
    except _LookupCap:
        truncated = True
        expander.problems.append(f"stopped after {max_lookups} DNS lookups")
    except TimeoutError:
        truncated = True
        expander.problems.append(f"stopped after {time_limit:g} s")
    return SPFNetworks(
        domain=name,
        networks=_collapse(expander.networks),
        has_record=expander.found,
        truncated=truncated,
        lookups=expander.lookups,
        skipped=tuple(expander.skipped),
        problems=tuple(expander.problems),
    )
