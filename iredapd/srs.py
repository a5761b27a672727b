"""Sender Rewriting Scheme: forward and reverse, pure functions of their inputs.

The scheme is the "guarded" one of Shevek's SRS paper as implemented by libsrs2
and by the srslib copy that iRedAPD embeds, so addresses made by either verify
here and the other way round (access-policies.md §14.5-§14.7):

* SRS0 wraps an ordinary sender:
  ``SRS0=HHHH=TT=orig-domain=orig-local@srs_domain``.
* SRS1 wraps an address that already is SRS0 (we are the second hop or later):
  ``SRS1=HHHH=first-hop-domain==opaque@srs_domain``, where the opaque part is
  the first hop's local part minus its ``SRS0`` prefix, leading separator
  included (hence the ``==``).  Reversing SRS1 gives the SRS0 address back to
  the first hop, which checks its own timestamp.
* ``HHHH`` is base64(HMAC-SHA1(secret, lower-cased text)) cut to 4 characters
  and compared case-insensitively, because mail systems on the way may fold the
  case of a local part.  ``TT`` is the day number modulo 1024 in base32.

Nothing here reads a clock or a setting by itself: the secrets are given to
:class:`SRS`, and ``now`` (Unix seconds) may be passed to every call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from typing import Final

__all__ = [
    "HASH_LENGTH",
    "MAX_AGE_DAYS",
    "SRS",
    "SRSError",
    "SRSFormatError",
    "SRSHashError",
    "SRSTimestampError",
    "is_srs_address",
    "timestamp",
]

# Characters of the hash we generate.  4 base64 characters (24 bits, about 20
# once case is folded) is what libsrs2, Mail::SRS and srslib all use, so every
# SRS address in the wild has this length.
HASH_LENGTH: Final = 4
# Days an SRS0 address stays reversible: made on day D, it reverses up to and
# including day D+20 (srslib's window, §14.6; bounces come back within days).
MAX_AGE_DAYS: Final = 21
# The timestamp counts whole UTC days.
SECONDS_PER_DAY: Final = 86400
# Base32 alphabet of the timestamp (RFC 4648 letters, no padding): two
# characters carry 10 bits, so day numbers wrap every 1024 days.
TIMESTAMP_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIMESTAMP_BITS: Final = 5
TIMESTAMP_SLOTS: Final = 1 << (2 * TIMESTAMP_BITS)

# What we write after SRS0/SRS1 and between fields.  Input may use any of
# SEPARATORS right after the tag (libsrs2 lets the admin choose one of them).
SEPARATOR: Final = "="
SEPARATORS: Final = "=+-"

_SEP = "[-+=]"
# Forward, local part: SRS1<sep>hash=host=<sep>rest (the opaque keeps its <sep>).
_SRS1_LOCAL = re.compile(rf"SRS1{_SEP}([^=]+)=([^=]+)=({_SEP}.+)", re.IGNORECASE | re.DOTALL)
# Forward, local part: anything tagged SRS0 is wrapped as an opaque SRS1.
_SRS0_OPAQUE = re.compile(rf"SRS0({_SEP}.*)", re.IGNORECASE | re.DOTALL)
# Reverse, local part: SRS0<sep>hash=TT=host=local, local greedy (may hold '=').
_SRS0_STRICT = re.compile(rf"SRS0{_SEP}([^=]+)=([^=]+)=([^=]+)=(.+)", re.IGNORECASE | re.DOTALL)
# The reverse channel's gate (§14.6 "strict SRS test"): the whole address,
# anchored at the start only, exactly as iRedAPD tests it.
_STRICT_TEST = re.compile(
    rf"SRS0{_SEP}[^=]+=[^=]+=[^=]+=.+|SRS1{_SEP}[^=]+=[^=]+={_SEP}.+",
    re.IGNORECASE | re.DOTALL,
)


class SRSError(ValueError):
    """An address cannot be rewritten or restored."""


class SRSFormatError(SRSError):
    """Not an address (one ``@`` exactly), or not an SRS address where one is needed."""


class SRSHashError(SRSError):
    """The hash of an SRS address does not verify with any of our secrets."""


class SRSTimestampError(SRSError):
    """The timestamp of an SRS0 address is malformed or outside the validity window."""


def _day(now: float) -> int:
    """The UTC day number of ``now``, modulo the timestamp's range."""
    return (int(now) // SECONDS_PER_DAY) % TIMESTAMP_SLOTS


def timestamp(now: float) -> str:
    """The two-character SRS timestamp of ``now`` (Unix seconds): high 5 bits first."""
    day = _day(now)
    mask = (1 << TIMESTAMP_BITS) - 1
    return TIMESTAMP_ALPHABET[day >> TIMESTAMP_BITS] + TIMESTAMP_ALPHABET[day & mask]


def _timestamp_value(stamp: str) -> int | None:
    """The day number a timestamp encodes, or None if it is not two base32 characters."""
    if len(stamp) != 2:
        return None
    high = TIMESTAMP_ALPHABET.find(stamp[0].upper())
    low = TIMESTAMP_ALPHABET.find(stamp[1].upper())
    if high < 0 or low < 0:
        return None
    return (high << TIMESTAMP_BITS) | low


def is_srs_address(address: str) -> bool:
    """The reverse channel's gate: does ``address`` look like SRS0 or SRS1?

    Case-insensitive and anchored at the start only, like iRedAPD; the hash and
    the timestamp are not checked here.
    """
    return _STRICT_TEST.match(address) is not None


def _split(address: str) -> tuple[str, str]:
    """Local part and domain; exactly one ``@`` and both parts non-empty."""
    if address.count("@") != 1:
        raise SRSFormatError("address must contain exactly one '@'")
    local, _, host = address.partition("@")
    if not local or not host:
        raise SRSFormatError("address has an empty local part or domain")
    return local, host


class SRS:
    """SRS with a list of secrets: the first signs, every one verifies.

    Keeping old secrets in the list after a rotation lets bounces to addresses
    signed with them come back until those addresses expire.

    Args:
        secrets: signing secret first, then the ones retired (verify only).
        min_hash_length: shortest hash accepted when reversing.  srslib cuts the
            expected hash to the length of the one supplied, so it accepts a
            1-character hash (a 1 in ~36 guess); libsrs2 and Mail::SRS refuse
            hashes shorter than what they generate, and so do we by default.
            Pass 1 to reproduce iRedAPD exactly.
        max_age_days: validity window of SRS0 timestamps, in days.
    """

    __slots__ = ("_keys", "max_age_days", "min_hash_length")

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        min_hash_length: int = HASH_LENGTH,
        max_age_days: int = MAX_AGE_DAYS,
    ) -> None:
        if isinstance(secrets, str):
            raise TypeError("secrets must be a sequence of strings, not one string")
        if not secrets or not all(secrets):
            raise ValueError("SRS needs at least one secret, and no empty secret")
        if not 1 <= min_hash_length <= HASH_LENGTH:
            raise ValueError(f"min_hash_length must be 1 to {HASH_LENGTH}")
        if not 1 <= max_age_days < TIMESTAMP_SLOTS:
            raise ValueError(f"max_age_days must be 1 to {TIMESTAMP_SLOTS - 1}")
        self._keys = tuple(s.encode("utf-8") for s in secrets)
        self.min_hash_length = min_hash_length
        self.max_age_days = max_age_days

    # -- hashing ---------------------------------------------------------------

    @staticmethod
    def _digest(key: bytes, text: str) -> str:
        """Full base64 HMAC-SHA1 of the lower-cased text (case-folding MTAs, §14.5)."""
        mac = hmac.new(key, text.lower().encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(mac).decode("ascii")

    def _sign(self, text: str) -> str:
        return self._digest(self._keys[0], text)[:HASH_LENGTH]

    def _verify_hash(self, supplied: str, text: str) -> None:
        """Accept ``supplied`` if some secret's hash starts with it, case folded."""
        if len(supplied) < self.min_hash_length:
            raise SRSHashError("hash too short")
        wanted = supplied.lower().encode("utf-8")
        for key in self._keys:
            expected = self._digest(key, text)[: len(supplied)].lower().encode("ascii")
            if hmac.compare_digest(expected, wanted):
                return
        raise SRSHashError("hash does not verify")

    def _verify_timestamp(self, stamp: str, now: float) -> None:
        """Valid if made today or on one of the ``max_age_days - 1`` days before."""
        value = _timestamp_value(stamp)
        if value is None:
            raise SRSTimestampError("malformed timestamp")
        age = (_day(now) - value) % TIMESTAMP_SLOTS
        if age >= self.max_age_days:
            raise SRSTimestampError("timestamp out of date")

    # -- the two directions ----------------------------------------------------

    def forward(self, address: str, srs_domain: str, *, now: float | None = None) -> str:
        """Rewrite ``address`` so that it is a sender at ``srs_domain``.

        An SRS1 address is re-signed with its first hop and opaque part kept; an
        SRS0 address (anything whose local part starts with ``SRS0`` and a
        separator) becomes SRS1 with its domain as first hop; anything else
        becomes SRS0 with today's timestamp.  Case is kept; only the hash input
        is folded.

        Raises:
            SRSFormatError: not exactly one ``@``, or an empty part.
        """
        local, host = _split(address)
        m = _SRS1_LOCAL.fullmatch(local)
        if m is not None:
            return self._srs1(m.group(2), m.group(3), srs_domain)
        m = _SRS0_OPAQUE.fullmatch(local)
        if m is not None:
            return self._srs1(host, m.group(1), srs_domain)
        stamp = timestamp(time.time() if now is None else now)
        digest = self._sign(stamp + host + local)
        return f"SRS0={digest}={stamp}={host}={local}@{srs_domain}"

    def _srs1(self, first_hop: str, opaque: str, srs_domain: str) -> str:
        # The opaque part starts with its separator, so the output holds '=='.
        digest = self._sign(first_hop + opaque)
        return f"SRS1={digest}={first_hop}={opaque}@{srs_domain}"

    def reverse(self, address: str, *, now: float | None = None) -> str:
        """The address that ``address`` (SRS0 or SRS1) was made from.

        The domain of ``address`` is not checked (§14.4).  SRS1 gives back the
        SRS0 address at the first hop, with no timestamp check (the first hop
        makes it); SRS0 is checked for hash, then timestamp.

        Raises:
            SRSFormatError: not one ``@``, or the local part is not SRS0/SRS1.
            SRSHashError: no secret verifies the hash.
            SRSTimestampError: SRS0 timestamp malformed or expired.
        """
        local, _host = _split(address)
        m = _SRS1_LOCAL.fullmatch(local)
        if m is not None:
            digest, first_hop, opaque = m.groups()
            self._verify_hash(digest, first_hop + opaque)
            return f"SRS0{opaque}@{first_hop}"
        m = _SRS0_STRICT.fullmatch(local)
        if m is None:
            raise SRSFormatError("not an SRS address")
        digest, stamp, orig_host, orig_local = m.groups()
        self._verify_hash(digest, stamp + orig_host + orig_local)
        self._verify_timestamp(stamp, time.time() if now is None else now)
        return f"{orig_local}@{orig_host}"
