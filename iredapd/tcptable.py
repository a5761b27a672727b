"""Postfix tcp_table(5) protocol, sans-IO: bytes in, lookups out; replies to bytes.

Wire format (tcp_table(5), Postfix ``src/util/dict_tcp.c``): one request line
``get SP key NL``, one reply line ``200 SP data NL`` (found), ``500 SP text NL``
(not found) or ``400 SP text NL`` (temporary error).  In both directions ``%``,
whitespace and non-printing characters are sent as ``%XX``; Postfix quotes every
byte that way (``hex_quote``), so a UTF-8 key arrives as ``%C3%BC``.  Postfix
keeps the connection open for many lookups and never sends anything but
``get``.

What we add to that:

* Keys are ``%XX``-decoded (iRedAPD does not decode, §17 item 47 of
  core-and-stateful.md), then decoded as UTF-8; invalid UTF-8 is kept visible
  as U+FFFD and flagged, so the caller can refuse to rewrite it.
* A ``%`` not followed by two hex digits is kept literally (Postfix never sends
  one; a literal ``%`` can never make a valid address, so the key is refused
  downstream).
* A trailing CR is dropped, so a person can test with telnet.
* Empty lines are skipped without a reply, as iRedAPD does.
* Other lines get iRedAPD's ``500 Unexpected input: <line>`` reply.
* A line longer than :data:`MAX_LINE_BYTES`, or a raw NUL byte, raises
  :class:`ProtocolError`: the server logs it and closes the connection without
  a reply (DESIGN.md §5).

Replies are never longer than :data:`MAX_REPLY_BYTES`; Postfix reads at most
that much, and a longer line would leave its tail in the stream to be read as
the next reply.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_REPLY_BYTES",
    "REPLY_TOO_LONG_TEXT",
    "Lookup",
    "ProtocolError",
    "Request",
    "Status",
    "TcpReply",
    "TcpTableParser",
    "Unexpected",
    "decode",
    "encode",
]

log = logging.getLogger(__name__)

# Longest request line accepted, newline excluded.  Postfix reads an SMTP
# command line of up to line_length_limit (2048) bytes, so an envelope address
# is at most about 2 KiB; hex_quote can triple its length (each byte -> %XX).
# 16 KiB fits that with room to spare, and bounds what a peer can make us hold.
MAX_LINE_BYTES: Final = 16 * 1024
# Longest reply line, newline included: dict_tcp.c reads replies with
# vstring_get_nonl_bound(..., DICT_TCP_MAXLEN = 4096); tcp_table(5) states it.
MAX_REPLY_BYTES: Final = 4096
# Text of a 500 reply sent instead of a 200 whose data would not fit: the
# lookup then behaves as "not found" (the address is kept as it is).
REPLY_TOO_LONG_TEXT: Final = "Result too long for tcp_table, bypassed."

# "get", a blank, the key.  "Request and reply parameters are separated by
# whitespace" (tcp_table(5)); Postfix sends one space.  iRedAPD wants "get "
# at the start of the line, so a bare "get" is unexpected input there too.
_GET_LINE = re.compile(rb"get[ \t](.*)", re.DOTALL)
# Blanks around the key are dropped, as iRedAPD strips the key.
_BLANKS: Final = b" \t"
_HEX_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Bytes sent as %XX in reply data: '%', every byte that C isspace() or not
# isprint() in the C locale (controls, DEL, and all 8-bit bytes), as hex_quote does.
_DATA_QUOTED: Final = frozenset(b for b in range(256) if b == 0x25 or b <= 0x20 or b >= 0x7F)
# In 400/500 text a plain space may stay as it is: hex_unquote() passes it
# through, and iRedAPD's texts then reach the wire byte for byte.
_TEXT_QUOTED: Final = _DATA_QUOTED - {0x20}


class ProtocolError(Exception):
    """The peer broke a protocol rule or a limit; close without a reply."""


class Status(IntEnum):
    """tcp_table(5) reply codes."""

    FOUND = 200
    TEMPORARY = 400
    NOT_FOUND = 500


def decode(quoted: bytes) -> bytes:
    """Undo ``%XX`` quoting; hex in either case, a bad escape stays literal."""
    return _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), quoted)


def _quote(raw: bytes, quoted: frozenset[int]) -> bytes:
    return b"".join(b"%%%02X" % b if b in quoted else bytes((b,)) for b in raw)


def encode(value: str) -> bytes:
    """``%XX``-quote ``value`` (UTF-8) the way Postfix's hex_quote() does."""
    return _quote(value.encode("utf-8", errors="surrogateescape"), _DATA_QUOTED)


@dataclass(frozen=True, slots=True)
class Lookup:
    """A ``get`` request."""

    #: the key, %XX-decoded and UTF-8-decoded (U+FFFD where bytes were invalid)
    key: str
    #: the key bytes were not valid UTF-8
    decode_error: bool = False


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A line that is not a ``get`` request; it still gets one reply."""

    #: the line as received (CR dropped), decoded with U+FFFD replacements
    line: str

    @property
    def reply(self) -> TcpReply:
        """iRedAPD's reply to such a line (§14.2)."""
        return TcpReply(Status.NOT_FOUND, f"Unexpected input: {self.line}")


Request = Lookup | Unexpected


@dataclass(frozen=True, slots=True)
class TcpReply:
    """One reply: a status and its data (200) or text (400, 500)."""

    status: Status
    text: str = ""

    @classmethod
    def found(cls, data: str) -> TcpReply:
        return cls(Status.FOUND, data)

    @classmethod
    def not_found(cls, text: str = "") -> TcpReply:
        return cls(Status.NOT_FOUND, text)

    @classmethod
    def temporary(cls, text: str = "") -> TcpReply:
        return cls(Status.TEMPORARY, text)

    def render(self) -> bytes:
        """The reply line, newline included, at most :data:`MAX_REPLY_BYTES` long.

        Data that would not fit turns into a 500 (the lookup finds nothing) and
        is logged; text that would not fit is cut, never inside a ``%XX``.
        """
        room = MAX_REPLY_BYTES - len(b"200 \n")
        raw = self.text.encode("utf-8", errors="surrogateescape")
        if self.status is Status.FOUND:
            body = _quote(raw, _DATA_QUOTED)
            if len(body) > room:
                log.warning("tcp_table reply data of %d bytes does not fit, not found", len(body))
                return TcpReply.not_found(REPLY_TOO_LONG_TEXT).render()
        else:
            body = _cut(_quote(raw, _TEXT_QUOTED), room)
        return b"%d %s\n" % (int(self.status), body)


def _cut(quoted: bytes, limit: int) -> bytes:
    """``quoted`` cut to ``limit`` bytes, backing off so no ``%XX`` is split."""
    if len(quoted) <= limit:
        return quoted
    cut = quoted[:limit]
    pct = cut.rfind(b"%", max(0, limit - 2))
    return cut[:pct] if pct >= 0 else cut


def _parse_line(raw: bytes) -> Request:
    """One line (no LF, no trailing CR) to a request."""
    m = _GET_LINE.fullmatch(raw)
    if m is None:
        return Unexpected(raw.decode("utf-8", errors="replace"))
    key = decode(m.group(1).strip(_BLANKS))
    try:
        return Lookup(key.decode("utf-8"))
    except UnicodeDecodeError:
        return Lookup(key.decode("utf-8", errors="replace"), decode_error=True)


class TcpTableParser:
    """Incremental parser: :meth:`feed` bytes, get the completed requests."""

    __slots__ = ("_buf", "max_line")

    def __init__(self, *, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        """True while part of a line is buffered."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[Request]:
        """Consume ``data``; return the requests it completed, in order.

        Raises ProtocolError on a line past the limit or holding a raw NUL byte
        (Postfix sends C strings, quoted; something else is talking); the parser
        must not be used after that.
        """
        done: list[Request] = []
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            if self._buf:
                self._buf += data[pos:nl]
                raw = bytes(self._buf)
                self._buf.clear()
            else:
                raw = data[pos:nl]
            pos = nl + 1
            request = self._line(raw)
            if request is not None:
                done.append(request)
        if pos < len(data):
            self._buf += data[pos:]
            # One byte more than the limit: room for a CR that _line() drops.
            if len(self._buf) > self.max_line + 1:
                raise ProtocolError(f"tcp_table line longer than {self.max_line} bytes")
        return done

    def _line(self, raw: bytes) -> Request | None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > self.max_line:
            raise ProtocolError(f"tcp_table line longer than {self.max_line} bytes")
        if b"\0" in raw:
            raise ProtocolError("NUL byte in a tcp_table request")
        if not raw:
            return None
        return _parse_line(raw)
