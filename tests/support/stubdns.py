#!/usr/bin/env python3
"""A small authoritative DNS stub for tests: UDP and TCP on 127.0.0.1, one port.

Zone data is a mapping ``name -> list of entries``, written like the zonedata of
the openspf SPF test suites::

    example.com:
      - TXT: "v=spf1 ip4:192.0.2.0/24 -all"     # one record, one string
      - TXT: ["v=spf1 ip4:", "192.0.2.1 -all"]  # one record, several strings
      - MX: [10, mx1.example.com]
      - {A: 192.0.2.10, TTL: 300}               # per-record TTL (default 60)
    alias.example.com:
      - CNAME: mx1.example.com                  # chased inside the zone
    slow.example.com:
      - TIMEOUT            # no reply for types the name has no records of
    broken.example.com:
      - SERVFAIL           # (or REFUSED) the same, answered with that RCODE
    lazy.example.com:
      - DELAY: 0.2         # answer, but only after this many seconds
      - A: 192.0.2.30

``TXT: NONE`` declares "no TXT record" for a name; otherwise ``SPF`` (type 99)
entries are also served as TXT, as the openspf test-suite drivers do.  Unknown
names get NXDOMAIN, known names without the asked type NOERROR/NODATA; both carry
an SOA whose MINIMUM is the zone's ``negative_ttl`` (RFC 2308).  Answers that do
not fit the UDP size the client offers come back truncated (TC), so the client
retries over TCP.

In-process (an asyncio server in the running loop)::

    async with StubDNS(zone) as stub:
        resolver = Resolver(["127.0.0.1"], port=stub.port)

As a subprocess (for end-to-end tests with Postfix)::

    python tests/support/stubdns.py PORTFILE ZONEFILE [SCENARIO_INDEX]

ZONEFILE is YAML (or JSON): a mapping with a ``zonedata`` key or the zone
mapping itself; with SCENARIO_INDEX, the zonedata of that document of a
multi-document file such as ``rfc7208-tests.yml``.  The chosen port is written
to PORTFILE (atomically) once both sockets listen; SIGTERM stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

__all__ = ["Resolution", "StubDNS", "Zone", "load_zone"]

DEFAULT_TTL = 60
NEGATIVE_TTL = 30
MARKERS = ("TIMEOUT", "SERVFAIL", "REFUSED")
# CNAME hops followed inside the zone before giving up (a loop is a SERVFAIL).
MAX_CNAME_CHAIN = 8
_NAME_TYPES = ("PTR", "CNAME", "NS")
_IN = dns.rdataclass.IN


def _key(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


@dataclass
class _Node:
    records: list[tuple[str, Any, int]] = field(default_factory=list)  # (type, value, ttl)
    markers: set[str] = field(default_factory=set)
    delay: float = 0.0


@dataclass
class Resolution:
    """What the zone says about one question.

    ``status`` is ``OK``, ``NXDOMAIN``, ``NODATA``, ``TIMEOUT``, ``SERVFAIL`` or
    ``REFUSED``; ``answers`` the records as ``(owner, type, value, ttl)``,
    CNAMEs followed first; ``delay`` how long the server waits before replying.
    """

    status: str
    answers: list[tuple[str, str, Any, int]] = field(default_factory=list)
    delay: float = 0.0


class Zone:
    """Zone data in the test-suite format, answering questions by name and type."""

    def __init__(
        self,
        data: Mapping[str, Iterable[Any]],
        *,
        default_ttl: int = DEFAULT_TTL,
        negative_ttl: int = NEGATIVE_TTL,
    ) -> None:
        self.negative_ttl = negative_ttl
        self.nodes: dict[str, _Node] = {}
        for name, entries in data.items():
            self.nodes[_key(name)] = self._node(entries, default_ttl)

    @staticmethod
    def _node(entries: Iterable[Any], default_ttl: int) -> _Node:
        node = _Node()
        spf: list[tuple[str, Any, int]] = []
        has_txt = False
        for entry in entries:
            if isinstance(entry, str):
                if entry.upper() not in MARKERS:
                    raise ValueError(f"unknown zone marker {entry!r}")
                node.markers.add(entry.upper())
                continue
            entry = dict(entry)
            ttl = int(entry.pop("TTL", default_ttl))
            if "DELAY" in entry:
                node.delay = float(entry.pop("DELAY"))
            for rtype, value in entry.items():
                rtype = rtype.upper()
                if rtype == "TXT":
                    has_txt = True
                if rtype in ("TXT", "SPF") and value == "NONE":
                    continue
                record = (rtype, _normalise(rtype, value), ttl)
                node.records.append(record)
                if rtype == "SPF":
                    spf.append(("TXT", record[1], ttl))
        if not has_txt:
            node.records.extend(spf)
        return node

    def resolve(self, name: str, rdtype: str) -> Resolution:
        """Answer a question like a recursive resolver would (CNAMEs chased)."""
        rdtype = rdtype.upper()
        owner = _key(name)
        answers: list[tuple[str, str, Any, int]] = []
        delay = 0.0
        for _hop in range(MAX_CNAME_CHAIN):
            node = self.nodes.get(owner)
            if node is None:
                return Resolution("NXDOMAIN", answers, delay)
            delay = max(delay, node.delay)
            matches = [r for r in node.records if r[0] == rdtype]
            if matches:
                answers.extend((owner, t, v, ttl) for t, v, ttl in matches)
                return Resolution("OK", answers, delay)
            for marker in MARKERS:
                if marker in node.markers:
                    return Resolution(marker, answers, delay)
            cnames = [r for r in node.records if r[0] == "CNAME"]
            if not cnames or rdtype == "CNAME":
                return Resolution("NODATA", answers, delay)
            _t, target, ttl = cnames[0]
            answers.append((owner, "CNAME", target, ttl))
            owner = _key(target)
        return Resolution("SERVFAIL", [], delay)  # CNAME loop or chain too long


def _normalise(rtype: str, value: Any) -> Any:
    """Zone values in one form: TXT a tuple of strings, MX (pref, host), names bare."""
    if rtype in ("TXT", "SPF"):
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    if rtype == "MX":
        preference, host = value
        return int(preference), _key(str(host or ""))
    if rtype in _NAME_TYPES:
        return _key(str(value))
    return str(value)


# -- wire format --------------------------------------------------------------


def _wire_name(text: str) -> dns.name.Name:
    """An absolute name from plain text, labels taken literally (no escapes)."""
    if not text:
        return dns.name.root
    return dns.name.Name([label.encode("latin-1", "replace") for label in text.split(".")] + [b""])


def _plain(name: dns.name.Name) -> str:
    """A wire name as plain text, labels taken literally, without the final dot."""
    return ".".join(label.decode("latin-1") for label in name.labels if label)


def _text_bytes(text: str) -> list[bytes]:
    # latin-1 keeps the suite's "\xEF\xBB\xBF" as those three bytes.
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError:
        data = text.encode("utf-8")
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def _rdata(rtype: str, value: Any) -> dns.rdata.Rdata:
    rdtype = dns.rdatatype.from_text(rtype)
    if rtype in ("TXT", "SPF"):
        strings = [chunk for s in value for chunk in _text_bytes(s)] or [b""]
        cls = dns.rdtypes.ANY.TXT.TXT if rtype == "TXT" else dns.rdtypes.ANY.SPF.SPF
        return cls(_IN, rdtype, strings)
    if rtype == "A":
        return dns.rdtypes.IN.A.A(_IN, rdtype, value)
    if rtype == "AAAA":
        return dns.rdtypes.IN.AAAA.AAAA(_IN, rdtype, value)
    if rtype == "MX":
        return dns.rdtypes.ANY.MX.MX(_IN, rdtype, value[0], _wire_name(value[1]))
    if rtype in _NAME_TYPES:
        return dns.rdtypes.ANY.PTR.PTR(_IN, rdtype, _wire_name(value))
    return dns.rdata.from_text(_IN, rdtype, value)


def _soa(owner: dns.name.Name, negative_ttl: int) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(owner, _IN, dns.rdatatype.SOA)
    soa = dns.rdtypes.ANY.SOA.SOA(
        _IN,
        dns.rdatatype.SOA,
        dns.name.from_text("ns.invalid."),
        dns.name.from_text("hostmaster.invalid."),
        1,
        3600,
        600,
        86400,
        negative_ttl,
    )
    rrset.add(soa, negative_ttl)
    return rrset


def build_response(
    zone: Zone, query: dns.message.Message
) -> tuple[dns.message.Message | None, float]:
    """The reply to ``query`` (None: stay silent) and the delay before sending it."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response, 0.0
    question = query.question[0]
    asked = _plain(question.name)
    result = zone.resolve(asked, dns.rdatatype.to_text(question.rdtype))
    if result.status == "TIMEOUT":
        return None, result.delay
    try:
        for owner, rtype, value, ttl in result.answers:
            # Keep the asked spelling of the first owner (0x20 randomisation).
            name = question.name if owner == asked.lower() else _wire_name(owner)
            rrset = response.find_rrset(
                response.answer, name, _IN, dns.rdatatype.from_text(rtype), create=True
            )
            rrset.add(_rdata(rtype, value), ttl)
    except (dns.exception.DNSException, ValueError):
        # Test data that cannot be put on the wire (e.g. a label over 63 bytes).
        response.answer.clear()
        response.set_rcode(dns.rcode.SERVFAIL)
        return response, result.delay
    if result.status in ("NXDOMAIN", "NODATA"):
        if result.status == "NXDOMAIN":
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(_soa(dns.name.root, zone.negative_ttl))
    elif result.status in ("SERVFAIL", "REFUSED"):
        response.set_rcode(dns.rcode.from_text(result.status))
    return response, result.delay


def _udp_wire(response: dns.message.Message, query: dns.message.Message) -> bytes:
    limit = 512 if query.edns < 0 else max(query.payload, 512)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire(max_size=limit)


# -- server -------------------------------------------------------------------


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, stub: StubDNS) -> None:
        self.stub = stub
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        self.stub.record(query, "udp")
        response, delay = build_response(self.stub.zone, query)
        if response is None or self.transport is None:
            return
        wire = _udp_wire(response, query)
        transport = self.transport
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, transport.sendto, wire, addr)
        else:
            transport.sendto(wire, addr)


class StubDNS:
    """The stub server; use as ``async with StubDNS(zone) as stub``.

    Attributes:
        zone: the :class:`Zone` served (may be replaced between queries).
        port: the UDP and TCP port, once started.
        queries: how many queries arrived, by ``(name, type)`` (lower-case name).
        log: every query as ``(name, type, transport)``.
    """

    def __init__(self, zone: Zone | Mapping[str, Iterable[Any]], host: str = "127.0.0.1") -> None:
        self.zone = zone if isinstance(zone, Zone) else Zone(zone)
        self.host = host
        self.port = 0
        self.queries: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    def record(self, query: dns.message.Message, transport: str) -> None:
        """Count one received query."""
        for question in query.question:
            name = _plain(question.name).lower()
            rtype = dns.rdatatype.to_text(question.rdtype)
            self.queries[name, rtype] += 1
            self.log.append((name, rtype, transport))

    async def start(self) -> StubDNS:
        """Listen on UDP and TCP (same port, picked by the system)."""
        loop = asyncio.get_running_loop()
        for _attempt in range(20):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UDP(self), local_addr=(self.host, 0)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:  # TCP port taken by someone else: try another
                udp.close()
                continue
            self._udp, self.port = udp, port
            return self
        raise OSError("no free port for UDP and TCP")

    async def close(self) -> None:
        """Stop listening and drop open TCP connections."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = list(self._tcp_clients.values())
        for writer in list(self._tcp_clients):
            writer.close()  # the client loop sees EOF and ends
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    async def __aenter__(self) -> StubDNS:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_clients[writer] = task
        try:
            await self._tcp_loop(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, dns.exception.DNSException):
            pass
        finally:
            del self._tcp_clients[writer]
            writer.close()

    async def _tcp_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(length))
            self.record(query, "tcp")
            response, delay = build_response(self.zone, query)
            if response is None:  # TIMEOUT: say nothing until the client hangs up
                await reader.read()
                return
            if delay > 0:
                await asyncio.sleep(delay)
            wire = response.to_wire(max_size=65535)  # the EDNS payload limit is UDP's only
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()


# -- command line -------------------------------------------------------------


def load_zone(path: str, scenario: int | None = None) -> dict[str, Any]:
    """Zone data from a YAML/JSON file (see the module docstring)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    doc = docs[scenario if scenario is not None else 0]
    zone = doc.get("zonedata", doc) if isinstance(doc, dict) else None
    if not isinstance(zone, dict):
        raise ValueError(f"{path}: no zone mapping")
    return zone


def _write_port(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


async def _main(portfile: str, zonefile: str, scenario: int | None) -> None:
    zone = Zone(load_zone(zonefile, scenario))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with StubDNS(zone) as stub:
        _write_port(portfile, stub.port)
        print(f"stubdns: 127.0.0.1:{stub.port} udp+tcp, {len(zone.nodes)} names", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """``stubdns.py PORTFILE ZONEFILE [SCENARIO_INDEX]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: stubdns.py PORTFILE ZONEFILE [SCENARIO_INDEX]", file=sys.stderr)
        return 2
    scenario = int(args[2]) if len(args) == 3 else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args[0], args[1], scenario))
    return 0


if __name__ == "__main__":
    sys.exit(main())
