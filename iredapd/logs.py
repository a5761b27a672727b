"""Logging set-up for the daemon: stderr, syslog or a file, never blocking the loop.

Records go through a queue to a listener thread, so a slow syslog socket or a
full disk delays only that thread, not the requests.  The syslog format keeps
iRedAPD's ``iredapd <message>`` prefix, which its rsyslog rule matches.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from typing import Final

from iredapd.config import ConfigError, Settings

__all__ = ["LogSetup", "configure_logging"]

ROOT_LOGGER: Final = "iredapd"
# Records waiting for the listener thread.  Past this the oldest wait and new
# ones are dropped (counted) rather than letting memory grow without bound.
QUEUE_SIZE: Final = 100_000


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Merge the message now (arguments may change later); no copy needed."""
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def _target_handler(settings: Settings, foreground: bool) -> logging.Handler:
    target = "stderr" if foreground else settings.LOG_TARGET
    handler: logging.Handler
    if target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    elif target == "file":
        try:
            handler = logging.handlers.WatchedFileHandler(settings.LOG_FILE, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot open LOG_FILE {settings.LOG_FILE}: {e.strerror}") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        server = settings.SYSLOG_SERVER
        address: str | tuple[str, int] = (
            server if server.startswith("/") else (server, settings.SYSLOG_PORT)
        )
        try:
            handler = logging.handlers.SysLogHandler(
                address=address,
                facility=logging.handlers.SysLogHandler.facility_names[settings.SYSLOG_FACILITY],
            )
        except OSError as e:
            raise ConfigError(f"cannot reach syslog at {server}: {e.strerror or e}") from None
        handler.setFormatter(logging.Formatter("iredapd %(message)s"))
    return handler


class LogSetup:
    """The installed handlers; ``close()`` flushes and stops the listener thread."""

    def __init__(self, settings: Settings, *, foreground: bool) -> None:
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
        self.target = _target_handler(settings, foreground)
        self.queue_handler = _DroppingQueueHandler(self.queue)
        self.listener = logging.handlers.QueueListener(
            self.queue, self.target, respect_handler_level=False
        )
        self.logger = logging.getLogger(ROOT_LOGGER)

    def install(self, level: str) -> None:
        """Route the 'iredapd' logger through the queue at ``level``."""
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)
        self.logger.addHandler(self.queue_handler)
        self.logger.setLevel(level.upper())
        self.logger.propagate = False
        self.listener.start()

    def close(self) -> None:
        """Flush what is queued and stop the listener thread."""
        self.logger.removeHandler(self.queue_handler)
        self.listener.stop()
        self.target.close()


def configure_logging(settings: Settings, *, foreground: bool) -> LogSetup:
    """Install logging per settings; raise ConfigError if the target is unusable."""
    setup = LogSetup(settings, foreground=foreground)
    setup.install(settings.log_level)
    # Fields our formats never show; not collecting them saves time per record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return setup
