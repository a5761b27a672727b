"""Address and name predicates shared by the protocol, plugins and tools.

These follow iRedAPD's helpers (``is_email``, ``is_domain``, extension stripping)
with one deliberate difference: iRedAPD only anchors its patterns at the start, so
trailing junk (``user@example.com>``) passes.  We anchor both ends, and accept
top-level domains of up to 63 characters (RFC 1035 label length) where iRedAPD
stops at 15, so IDN TLDs such as ``xn--vermgensberatung-pwb`` stay valid.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = [
    "domain_of",
    "is_domain",
    "is_email",
    "is_tld_domain",
    "strip_extension",
]

# local part: first char word/-/#, then word/-/./+/=/&/#//
# domain: first char word/-, then word/-/., a dot, then a 2-63 char TLD.
_EMAIL_RE = re.compile(
    r"[\w\-#][\w\-.+=/&#]*@[\w\-][\w\-.]*\.[A-Za-z0-9\-]{2,63}",
    re.IGNORECASE | re.UNICODE,
)
_DOMAIN_RE = re.compile(r"[\w\-][\w\-.]*\.[A-Za-z0-9\-]{2,63}", re.IGNORECASE | re.UNICODE)
_TLD_RE = re.compile(r"[a-z0-9\-]{2,25}", re.IGNORECASE)


# Answers of is_email / is_domain kept: the same addresses are checked by
# the request parser and by several plugins.
_CHECKED = 16384


@functools.lru_cache(maxsize=_CHECKED)
def is_email(value: str) -> bool:
    """True if ``value`` (stripped) is an e-mail address in iRedAPD's sense."""
    # Anchored at both ends, the pattern itself leaves out iRedAPD's forbidden
    # characters (~ ! $ % ^ * ( ) and space): none of them is a word character.
    return _EMAIL_RE.fullmatch(value.strip()) is not None


@functools.lru_cache(maxsize=_CHECKED)
def is_domain(value: str) -> bool:
    """True if ``value`` looks like a domain name (needs a dot, no IP literals)."""
    s = value.strip()
    # the anchored pattern already leaves out iRedAPD's forbidden characters
    if _DOMAIN_RE.fullmatch(s) is None:
        return False
    # The TLD must contain a letter: 192.0.2.1 is not a domain.
    tld = s.rsplit(".", 1)[1]
    return any(c.isalpha() for c in tld)


def is_tld_domain(value: str) -> bool:
    """True for a bare top-level domain label such as ``com`` or ``xn--p1ai``."""
    return _TLD_RE.fullmatch(value.strip()) is not None


def domain_of(value: str) -> str:
    """The part after the first ``@``; the whole value when there is no ``@``.

    This is iRedAPD's ``<name>_domain`` rule: ``john`` gives ``john``.
    """
    return value.split("@", 1)[1] if "@" in value else value


def strip_extension(address: str, delimiters: Sequence[str], *, checked: bool = False) -> str:
    """Remove the sub-address extension from ``address``.

    Delimiters are tried in order; the first one present in the local part wins
    and the local part is cut at its first occurrence (``user+a+b@x`` gives
    ``user@x``).  A value that is not an e-mail address is returned unchanged
    (``checked=True``: the caller already knows it is one).
    """
    if not address or not (checked or is_email(address)):
        return address
    local, _, domain = address.partition("@")
    for delim in delimiters:
        if delim and delim in local:
            return local.split(delim, 1)[0] + "@" + domain
    return address
