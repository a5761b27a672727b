"""Log a recurring problem once per interval, with how often it recurred.

A database outage makes every request fail the same way; one line per
interval (and the count of what was suppressed) tells the admin as much as a
thousand, without filling the disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Per-key rate limit for log lines (event-loop thread only)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log unless ``key`` was logged less than ``interval`` ago; True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            msg += " (%d more like this in the last %.0fs)"
            args = (*args, suppressed, now - last if last is not None else 0.0)
        if len(self._last) > 10_000:  # bound memory if keys are unbounded
            self._last.clear()
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def error(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        """``log`` at ERROR level."""
        return self.log(logging.ERROR, key, msg, *args, **kwargs)

    def warning(self, key: Hashable, msg: str, *args: Any, **kwargs: Any) -> bool:
        """``log`` at WARNING level."""
        return self.log(logging.WARNING, key, msg, *args, **kwargs)
