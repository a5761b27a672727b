#!/usr/bin/env python3
"""The ceiling: the least work a Python asyncio policy server can do.

It answers ``action=DUNNO`` to every request and does nothing else: no
parsing beyond finding the empty line that ends a request.  Framing is still
correct: a request may arrive in any number of pieces, and several requests
on one connection get one reply each, in order.  The real daemon's throughput
is reported as a percentage of this one's, measured side by side.

    python benchmarks/ceiling.py --port 0
    listening on 127.0.0.1:PORT          <- first stdout line

It serves until SIGTERM or SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

__all__ = ["CeilingProtocol", "main"]

# A request longer than this without its empty line: close without a reply,
# as the daemon does past its limit (Postfix then retries).
MAX_REQUEST_BYTES = 64 * 1024


class CeilingProtocol(asyncio.Protocol):
    """One connection: one reply per request, in order."""

    __slots__ = ("buf", "reply", "transport")

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        # A request ends with an empty line: "\n" right after the "\n" that
        # ended its last attribute line.  The unfinished tail is kept, so a
        # "\n\n" split across two reads is still found.
        count = buf.count(b"\n\n")
        if count:
            self.buf = buf[buf.rfind(b"\n\n") + 2 :]
            assert self.transport is not None
            self.transport.write(self.reply * count)
        else:
            self.buf = buf
        if len(self.buf) > MAX_REQUEST_BYTES and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buf = b""


async def serve(host: str, port: int, action: str) -> None:
    loop = asyncio.get_running_loop()
    reply = f"action={action}\n\n".encode()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(
        lambda: CeilingProtocol(reply), host, port, reuse_address=True, backlog=1024
    )
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await stop.wait()
    server.close()
    # Connections are not tracked: closing the listener and leaving
    # asyncio.run() drops them; a client mid-request sees a disconnect.


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Minimal policy server: action=DUNNO to everything.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    p.add_argument("--action", default="DUNNO", help="action text of every reply")
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.action))
    return 0


if __name__ == "__main__":
    sys.exit(main())
