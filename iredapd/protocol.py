"""Postfix policy delegation protocol, sans-IO.

Bytes in, requests out; actions are rendered by :mod:`iredapd.actions`.  No
sockets, no asyncio: the server feeds whatever it reads, however it was split.

Wire format (Postfix SMTPD_POLICY_README): ``name=value`` lines ending in LF, a
request ends at an empty line.  Names never contain ``=``, NUL or LF; values
never contain NUL or LF.  Unknown names are kept aside and ignored; a duplicate
name keeps its last value.  Postfix sends LF only; a trailing CR is tolerated
so that a person can talk to the daemon with telnet.

Past a limit below the parser raises :class:`ProtocolError`; the server then
logs a warning and closes the connection without a reply (Postfix's rule for a
server in trouble: it retries, then applies its default action).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ATTRIBUTES",
    "MAX_ATTRIBUTES",
    "MAX_LINE_BYTES",
    "MAX_REQUEST_BYTES",
    "PolicyParser",
    "ProtocolError",
    "RawRequest",
]

# Longest attribute line accepted.  Postfix's longest values are addresses
# (RFC 5321: 256 octets in a path), HELO names and xtext-encoded certificate
# subjects; 16 KiB leaves room for all of them with a wide margin.
MAX_LINE_BYTES: Final = 16 * 1024
# Attribute lines per request.  Postfix 3.12 sends about 36 names; twice that
# is still far below this, while a flood of lines is cut short.
MAX_ATTRIBUTES: Final = 256
# Bytes per request, all lines included.  Bounds the memory one connection can
# make the daemon hold while it waits for the empty line.
MAX_REQUEST_BYTES: Final = 64 * 1024

# Every attribute name Postfix 2.1 to 3.12 sends (SMTPD_POLICY_README).
ATTRIBUTES: Final = frozenset(
    {
        # 2.1
        "request",
        "protocol_state",
        "protocol_name",
        "helo_name",
        "queue_id",
        "sender",
        "recipient",
        "recipient_count",
        "client_address",
        "client_name",
        "reverse_client_name",
        "instance",
        # 2.2
        "sasl_method",
        "sasl_username",
        "sasl_sender",
        "size",
        "ccert_subject",
        "ccert_issuer",
        "ccert_fingerprint",
        # 2.3
        "encryption_protocol",
        "encryption_cipher",
        "encryption_keysize",
        "etrn_domain",
        # 2.5, 2.9, 3.0, 3.1
        "stress",
        "ccert_pubkey_fingerprint",
        "client_port",
        "policy_context",
        # 3.2, 3.8, 3.12
        "server_address",
        "server_port",
        "compatibility_level",
        "mail_version",
        "tls_sni",
    }
)


class ProtocolError(Exception):
    """The peer broke a protocol rule or a limit; close without a reply."""


@dataclass(slots=True)
class RawRequest:
    """One request as read: known attributes, unknown ones, and what was odd."""

    attributes: dict[str, str] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    #: lines without '=' (ignored, as iRedAPD does)
    malformed_lines: int = 0
    #: lines that were not valid UTF-8 (decoded with U+FFFD replacements)
    decode_errors: int = 0
    #: bytes of the request on the wire, including the final empty line
    size: int = 0

    @property
    def empty(self) -> bool:
        """True when the request carried no attribute at all."""
        return not self.attributes and not self.unknown


class PolicyParser:
    """Incremental parser: :meth:`feed` bytes, get the completed requests."""

    __slots__ = ("_buf", "_current", "_lines", "max_attributes", "max_line", "max_request")

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE_BYTES,
        max_attributes: int = MAX_ATTRIBUTES,
        max_request: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.max_line = max_line
        self.max_attributes = max_attributes
        self.max_request = max_request
        self._buf = bytearray()
        self._current = RawRequest()
        self._lines = 0

    @property
    def pending(self) -> bool:
        """True while a request has started but not ended (bytes are buffered)."""
        return bool(self._buf) or self._lines > 0

    def feed(self, data: bytes) -> list[RawRequest]:
        """Consume ``data``; return the requests it completed, in order.

        Raises ProtocolError past a limit or on a NUL byte; the parser must not
        be used after that.
        """
        done: list[RawRequest] = []
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            if self._buf:
                self._buf += data[pos:nl]
                raw = bytes(self._buf)
                self._buf.clear()
            else:
                raw = data[pos:nl]
            self._line(raw, done)
            pos = nl + 1
        if pos < len(data):
            self._buf += data[pos:]
            if len(self._buf) > self.max_line:
                raise ProtocolError(f"line longer than {self.max_line} bytes")
            if self._current.size + len(self._buf) > self.max_request:
                raise ProtocolError(f"request larger than {self.max_request} bytes")
        return done

    def _line(self, raw: bytes, done: list[RawRequest]) -> None:
        cur = self._current
        if len(raw) > self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        cur.size += len(raw) + 1
        if cur.size > self.max_request:
            raise ProtocolError(f"request larger than {self.max_request} bytes")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            done.append(cur)
            self._current = RawRequest()
            self._lines = 0
            return
        self._lines += 1
        if self._lines > self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes in one request")
        if b"\0" in raw:
            raise ProtocolError("NUL byte in an attribute line")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            cur.decode_errors += 1
        name, sep, value = line.partition("=")
        if not sep:
            cur.malformed_lines += 1
        elif name in ATTRIBUTES:
            cur.attributes[name] = value
        else:
            cur.unknown[name] = value
