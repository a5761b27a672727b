"""Logging for the daemon: stderr, syslog or a file, never blocking the loop.

The per-request line is the hot path: at a few thousand requests a second,
handing each record to a logging thread made the event loop wait for the GIL
after every socket write.  So lines are built where they happen and go out
cheaply:

* stderr and files: lines collect in a buffer that a writer thread turns into
  one ``write()`` every FLUSH_INTERVAL (or FLUSH_BYTES); a slow disk delays that
  thread only.  A file renamed by logrotate is reopened (WatchedFileHandler's
  rule).
* syslog: one datagram per line on a non-blocking socket (``/dev/log`` or UDP);
  when the receiver is full, lines wait in a bounded queue, and past that they
  are dropped and counted rather than stalling a request.  The format keeps
  iRedAPD's ``iredapd <message>`` prefix, which its rsyslog rule matches.

Ordinary log records (warnings, errors, ...) take the same way through a
:class:`logging.Handler`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import socket
import sys
import threading
import time
from collections import deque
from typing import Final, TextIO

from iredapd.config import ConfigError, Settings

__all__ = ["LogSetup", "configure_logging"]

ROOT_LOGGER: Final = "iredapd"
REQUEST_LOGGER: Final = "iredapd.policy"
# How long a line may wait in the buffer before it is written (s), and how
# many buffered bytes make the writer go at once.
FLUSH_INTERVAL: Final = 0.2
FLUSH_BYTES: Final = 64 * 1024
# Bytes buffered for a stuck disk, and syslog lines queued for a full socket,
# before new lines are dropped (and counted).
MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024
MAX_SYSLOG_QUEUE: Final = 50_000

_LEVEL_NAMES: Final = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_SYSLOG_PRIORITY: Final = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class Sink:
    """Where formatted lines go.  ``write`` is thread-safe and never blocks."""

    dropped = 0

    def write(self, level: int, text: str) -> None:
        """Queue one line."""
        raise NotImplementedError

    def close(self) -> None:
        """Write what is queued and release the target."""


class StreamSink(Sink):
    """stderr or a file, written by one thread in batches."""

    def __init__(self, path: str | None, stream: TextIO | None = None) -> None:
        self.path = path
        self._stream = stream
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        if path is not None:
            self._open()
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._size = 0
        self._wake = threading.Event()
        self._closing = False
        self._second = -1
        self._stamp = ""
        self._thread = threading.Thread(target=self._run, name="iredapd-log", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        assert self.path is not None
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise ConfigError(f"cannot open LOG_FILE {self.path}: {e.strerror}") from None
        st = os.fstat(self._fd)
        self._inode = (st.st_dev, st.st_ino)

    def _reopen_if_rotated(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if current != self._inode:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            with contextlib.suppress(ConfigError):
                self._open()

    def write(self, level: int, text: str) -> None:
        """Queue ``<time> <LEVEL> <text>``."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        line = f"{self._stamp} {_LEVEL_NAMES.get(level, 'INFO')} {text}\n"
        with self._lock:
            if self._size > MAX_BUFFER_BYTES:
                self.dropped += 1
                return
            self._lines.append(line)
            self._size += len(line)
            if self._size >= FLUSH_BYTES:
                self._wake.set()

    def _take(self) -> bytes:
        with self._lock:
            lines, self._lines, self._size = self._lines, [], 0
        return "".join(lines).encode("utf-8", "replace")

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self.path is None:
            stream = self._stream or sys.stderr
            with contextlib.suppress(OSError, ValueError):
                stream.buffer.write(data) if hasattr(stream, "buffer") else stream.write(
                    data.decode("utf-8", "replace")
                )
                stream.flush()
            return
        self._reopen_if_rotated()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except OSError:
                self.dropped += 1
                return

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self._emit(self._take())

    def close(self) -> None:
        """Flush everything and stop the writer thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5)
        self._emit(self._take())
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class SyslogSink(Sink):
    """Datagrams to syslog (``/dev/log`` or a UDP host), never blocking."""

    def __init__(self, server: str, port: int, facility: str) -> None:
        self.facility = logging.handlers.SysLogHandler.facility_names[facility]
        try:
            if server.startswith("/"):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sock.connect(server)
            else:
                info = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM)[0]
                self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
                self.sock.connect(info[4])
        except OSError as e:
            raise ConfigError(f"cannot reach syslog at {server}: {e.strerror or e}") from None
        self.sock.setblocking(False)
        self._pending: deque[bytes] = deque()
        self._lock = threading.Lock()

    def write(self, level: int, text: str) -> None:
        """Send ``<PRI>iredapd <text>`` (Python's SysLogHandler framing, as iRedAPD)."""
        pri = self.facility * 8 + _SYSLOG_PRIORITY.get(level, 6)
        data = f"<{pri}>iredapd {text}\0".encode("utf-8", "replace")
        with self._lock:
            if self._pending and not self._drain():
                self._queue(data)
                return
            self._send_or_queue(data)

    def _send_or_queue(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._queue(data)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                self.dropped += 1
            elif e.errno != errno.ECONNREFUSED:
                self._queue(data)

    def _queue(self, data: bytes) -> None:
        if len(self._pending) >= MAX_SYSLOG_QUEUE:
            self.dropped += 1
        else:
            self._pending.append(data)

    def _drain(self) -> bool:
        while self._pending:
            try:
                self.sock.send(self._pending[0])
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.dropped += 1
            self._pending.popleft()
        return True

    def close(self) -> None:
        """Try once more to send what waits, then close."""
        with self._lock:
            self._drain()
        self.sock.close()


class _SinkHandler(logging.Handler):
    """Ordinary log records into the sink (message, then the traceback if any)."""

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.sink.write(record.levelno, text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _make_sink(settings: Settings, foreground: bool) -> Sink:
    target = "stderr" if foreground else settings.LOG_TARGET
    if target == "stderr":
        return StreamSink(None, sys.stderr)
    if target == "file":
        return StreamSink(settings.LOG_FILE)
    return SyslogSink(settings.SYSLOG_SERVER, settings.SYSLOG_PORT, settings.SYSLOG_FACILITY)


class LogSetup:
    """The installed sink; :meth:`request_line` is the per-request fast path."""

    def __init__(self, settings: Settings, *, foreground: bool) -> None:
        self.sink = _make_sink(settings, foreground)
        self.handler = _SinkHandler(self.sink)
        self.logger = logging.getLogger(ROOT_LOGGER)
        self._request_logger = logging.getLogger(REQUEST_LOGGER)

    def install(self, level: str) -> None:
        """Route the 'iredapd' logger to the sink at ``level``."""
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
        self.logger.addHandler(self.handler)
        self.logger.setLevel(level.upper())
        self.logger.propagate = False

    def request_line(self, text: str) -> None:
        """The one line per request (INFO on 'iredapd.policy'), without a LogRecord."""
        if self._request_logger.isEnabledFor(logging.INFO):
            self.sink.write(logging.INFO, text)

    def close(self) -> None:
        """Flush what is buffered and release the target."""
        self.logger.removeHandler(self.handler)
        if self.sink.dropped:
            self.sink.write(
                logging.WARNING, f"{self.sink.dropped} log lines were dropped (log target too slow)"
            )
        self.sink.close()


def configure_logging(settings: Settings, *, foreground: bool) -> LogSetup:
    """Install logging per settings; raise ConfigError if the target is unusable."""
    setup = LogSetup(settings, foreground=foreground)
    setup.install(settings.log_level)
    return setup
