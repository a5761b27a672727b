"""asyncio listeners: many line-protocol connections, one request at a time each.

Used for the policy port and the SRS ``tcp_table`` ports alike: a
:class:`LineService` says how to parse bytes and how to answer one item.
Per connection, requests are answered in the order they arrived (pipelined
requests included), exactly one reply each.  A connection idle for
IDLE_TIMEOUT is closed; a protocol error closes it at once without a reply.
On stop, listeners close first, idle connections next, and requests in flight
get a grace period to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from iredapd.aio import Resume, step
from iredapd.ratelimit import RateLimitedLog

__all__ = ["LineServer", "LineService", "Parser", "ProtocolErrorLike"]

log = logging.getLogger(__name__)

Item = TypeVar("Item")

# Complete requests queued on one connection before we stop reading from it.
# Postfix never pipelines; a peer that floods requests waits for its answers.
MAX_QUEUED: Final = 64
# Backlog of the listening socket: Postfix opens many connections at once
# after a restart (one per smtpd process).
LISTEN_BACKLOG: Final = 1024


class ProtocolErrorLike(Exception):
    """Base for parser errors that end a connection without a reply."""


class Parser(Protocol[Item]):
    """Incremental parser of one connection's bytes."""

    @property
    def pending(self) -> bool: ...

    def feed(self, data: bytes) -> list[Item]: ...


class LineService(Protocol[Item]):
    """What a listener serves: a parser per connection and an answer per item."""

    name: str
    errors: tuple[type[Exception], ...]

    def new_parser(self) -> Parser[Item]: ...

    async def answer(self, item: Item) -> bytes: ...


class _Connection(asyncio.Protocol, Generic[Item]):
    __slots__ = (
        "_can_write",
        "_eof",
        "_paused",
        "closed",
        "last_activity",
        "loop",
        "parser",
        "peer",
        "queue",
        "server",
        "task",
        "timer",
        "transport",
    )

    def __init__(self, server: LineServer[Item]) -> None:
        self.server = server
        self.loop = server.loop
        self.queue: deque[Item] = deque()
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self._paused = False
        self._eof = False
        self._can_write: asyncio.Event | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.last_activity = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.parser: Parser[Item] = server.service.new_parser()

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but the same API
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)
        self.timer = self.loop.call_later(self.server.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        try:
            items = self.parser.feed(data)
        except self.server.service.errors as e:
            self.server.warn(("protocol", str(type(e))), "%s: %s from %s; closing", e, self.peer)
            self._close(abort=True, reason=str(e))
            return
        if not items:
            return
        if self.task is None:
            # Answer at once what needs no waiting: no task, no loop turn.
            items = self._answer_now(items)
            if not items:
                return
        self.queue.extend(items)
        if len(self.queue) >= MAX_QUEUED and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        if self.task is None:
            self._start_task(None)

    def _answer_now(self, items: list[Item]) -> list[Item]:
        """Answer items in order as long as answers come without waiting.

        Returns the items left.  The first answer that has to wait goes on in a
        task (which then owns the connection until the queue is empty); the
        items after it are returned for the queue.
        """
        transport = self.transport
        service = self.server.service
        for i, item in enumerate(items):
            if self.closed or transport is None or self._can_write is not None:
                # closed, or the peer does not read: the task's careful path
                return items[i:]
            coro = service.answer(item)
            try:
                done, result = step(coro)
            except Exception:  # the connection's edge: log, close, keep serving others
                log.exception("%s: error while answering %s", service.name, self.peer)
                self._close(abort=True)
                return []
            if not done:
                self._start_task(Resume(coro, result))
                return items[i + 1 :]
            transport.write(result)
        if self.server.stopping or self._eof:
            self._close()
        return []

    def _start_task(self, first: Resume | None) -> None:
        task = self.loop.create_task(self._serve(first))
        self.task = task
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    def eof_received(self) -> bool | None:
        self._eof = True
        if self.parser.pending:
            log.debug("%s: %s left in the middle of a request", self.server.service.name, self.peer)
        # Let answers to complete requests still go out before we close.
        if self.task is None:
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)
        if self._can_write is not None:
            self._can_write.set()
        if self.parser.pending:
            log.debug("%s: %s left in the middle of a request", self.server.service.name, self.peer)

    def pause_writing(self) -> None:
        self._can_write = asyncio.Event()

    def resume_writing(self) -> None:
        if self._can_write is not None:
            self._can_write.set()
            self._can_write = None

    # -- work -------------------------------------------------------------
    async def _serve(self, first: Resume | None) -> None:
        """Answer the queued items one after another (``first``: an answer under way)."""
        service = self.server.service
        try:
            while True:
                if first is not None:  # under way: finish it even if the peer left
                    reply = await first
                    first = None
                elif self.queue and not self.closed:
                    reply = await service.answer(self.queue.popleft())
                else:
                    break
                if self.closed or self.transport is None:
                    break
                self.transport.write(reply)
                if self._can_write is not None:
                    # the peer does not read its replies: wait, but not forever
                    async with asyncio.timeout(self.server.idle_timeout):
                        await self._can_write.wait()
                if self._paused and len(self.queue) < MAX_QUEUED // 2:
                    self._paused = False
                    self.transport.resume_reading()
        except TimeoutError:
            self.server.warn(("stalled", ""), "%s: %s does not read replies; closing", self.peer)
            self._close(abort=True)
        except asyncio.CancelledError:
            self._close(abort=True)
            raise
        except Exception:  # the connection's edge: log, close, keep serving others
            log.exception("%s: error while answering %s", service.name, self.peer)
            self._close(abort=True)
        finally:
            self.task = None
            self.last_activity = self.loop.time()
        if self.server.stopping or (self.transport is not None and self.transport.is_closing()):
            self._close()
        elif self._eof:
            self._close()  # EOF came while we were busy

    def _idle_check(self) -> None:
        if self.closed:
            return
        idle = self.server.idle_timeout
        elapsed = self.loop.time() - self.last_activity
        if self.task is None and elapsed >= idle:
            log.info(
                "%s: closing connection from %s, idle for %.0fs",
                self.server.service.name,
                self.peer,
                elapsed,
            )
            self._close()
            return
        self.timer = self.loop.call_later(max(idle - elapsed, 1.0), self._idle_check)

    def _close(self, *, abort: bool = False, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    @property
    def busy(self) -> bool:
        return self.task is not None


class LineServer(Generic[Item]):
    """Listening sockets for one service, and its live connections."""

    def __init__(
        self,
        service: LineService[Item],
        *,
        idle_timeout: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.service = service
        self.idle_timeout = idle_timeout
        self.loop = loop or asyncio.get_running_loop()
        self.connections: set[_Connection[Item]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._servers: list[asyncio.base_events.Server] = []
        self._warnings = RateLimitedLog(log, interval=10.0)

    def warn(self, key: tuple[str, str], msg: str, *args: Any) -> None:
        """Rate-limited warning (one misbehaving peer must not flood the log)."""
        self._warnings.warning(key, msg, self.service.name, *args)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Bind and start accepting; return the bound (host, port)."""
        srv = await self.loop.create_server(
            lambda: _Connection(self),
            host=host,
            port=port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=LISTEN_BACKLOG,
        )
        self._servers.append(srv)
        name = srv.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Bound addresses of every listening socket."""
        out = []
        for srv in self._servers:
            for s in srv.sockets:
                name = s.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    def stop_accepting(self) -> None:
        """Close the listening sockets (connections stay)."""
        self.stopping = True
        for srv in self._servers:
            srv.close()

    async def stop(self, grace: float) -> int:
        """Stop: close listeners and idle connections, let in-flight work finish.

        Returns the number of connections that had to be cut after ``grace``.
        """
        self.stop_accepting()
        for conn in list(self.connections):
            if not conn.busy:
                conn._close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        cut = 0
        for conn in list(self.connections):
            cut += 1
            conn._close(abort=True)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        return cut


def format_addresses(addresses: Iterable[tuple[str, int]]) -> str:
    """``127.0.0.1:7777, [::1]:7777``."""
    return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)
