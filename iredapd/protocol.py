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
    """Incremental parser: :meth:`feed` bytes, get the completed requests.

    A request's bytes stay buffered until its empty line arrives; then the
    whole block is split and decoded at once (the common case: one read holds
    one whole request).  The limits are checked on the buffered part as it
    grows, so a flood is cut short before it is all in memory.
    """

    __slots__ = ("_buf", "max_attributes", "max_line", "max_request")

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
        self._buf = b""

    @property
    def pending(self) -> bool:
        """True while a request has started but not ended (bytes are buffered)."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[RawRequest]:
        """Consume ``data``; return the requests it completed, in order.

        Raises ProtocolError past a limit or on a NUL byte; the parser must not
        be used after that.
        """
        buf = self._buf + data if self._buf else bytes(data)
        if b"\r" in buf:
            # A person typing (telnet) sends CRLF; Postfix never sends CR.  A CR
            # cut off at the end stays until its LF arrives.
            buf = buf.replace(b"\r\n", b"\n")
        done: list[RawRequest] = []
        start = 0
        size = len(buf)
        while start < size:
            if buf[start] == 0x0A:  # an empty line right away: an empty request
                done.append(RawRequest(size=1))
                start += 1
                continue
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            done.append(self._request(buf[start:end], end + 2 - start))
            start = end + 2
        rest = buf[start:]
        if rest:
            self._check_partial(rest)
        self._buf = rest
        return done

    def _check_partial(self, rest: bytes) -> None:
        """Limits on the part of a request that has arrived so far."""
        if not rest:
            return
        last_nl = rest.rfind(b"\n")
        if len(rest) - last_nl - 1 > self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        if len(rest) > self.max_request:
            raise ProtocolError(f"request larger than {self.max_request} bytes")
        if rest.count(b"\n") > self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes in one request")

    def _request(self, block: bytes, wire_size: int) -> RawRequest:
        """One complete request: ``block`` is its lines without the final LF."""
        lines = block.count(b"\n") + 1
        # Only a block longer than a line can hold a line that is too long:
        # the common case skips splitting.
        if len(block) > self.max_line and max(map(len, block.split(b"\n"))) > self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        if lines > self.max_attributes:
            raise ProtocolError(f"more than {self.max_attributes} attributes in one request")
        if wire_size > self.max_request:
            raise ProtocolError(f"request larger than {self.max_request} bytes")
        if b"\0" in block:
            raise ProtocolError("NUL byte in an attribute line")
        decode_errors = 0
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            parts = []
            for raw in block.split(b"\n"):
                try:
                    parts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    parts.append(raw.decode("utf-8", errors="replace"))
                    decode_errors += 1
            text = "\n".join(parts)
        # Split at the first '='; a duplicate name keeps its last value.
        # (A loop of str.partition is several times faster than a regex here.)
        attributes: dict[str, str] = {}
        malformed = 0
        for line in text.split("\n"):
            name, sep, value = line.partition("=")
            if sep:
                attributes[name] = value
            else:
                malformed += 1
        unknown: dict[str, str] = {}
        if not attributes.keys() <= ATTRIBUTES:
            unknown = {k: v for k, v in attributes.items() if k not in ATTRIBUTES}
            attributes = {k: v for k, v in attributes.items() if k in ATTRIBUTES}
        return RawRequest(attributes, unknown, malformed, decode_errors, wire_size)
