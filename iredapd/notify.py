"""Notification mail to the admin (throttle quota exceeded), sent off the hot path.

Spec: core-and-stateful.md §7.10 (the message and the transports), §9.11.

The message: ``multipart/alternative`` with one ``text/plain; charset=utf-8``
part; ``From: NOTIFICATION_SENDER_NAME <NOTIFICATION_SMTP_USER>``, ``To:`` the
NOTIFICATION_RECIPIENTS joined by ``,``, ``Date:`` in GMT and a ``Message-Id``
of a random UUID.  The transport: SMTP to NOTIFICATION_SMTP_SERVER:PORT (with
STARTTLS when NOTIFICATION_SMTP_STARTTLS, then AUTH) when server, port, user
*and* password are all set; otherwise ``CMD_SENDMAIL -f <user> <recipients>``
with the message on standard input (the default: the password is empty).

Unlike iRedAPD, sending never blocks a request: :meth:`Notifier.submit` starts
a background task and returns at once.  Each task has the deadline
NOTIFICATION_TIMEOUT; a failure is logged and never changes a reply.
:meth:`Notifier.close` waits (with a deadline) for the tasks still running, so
a notification claimed just before shutdown is still sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import smtplib
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from typing import Any, Final

from iredapd.config import Settings
from iredapd.ratelimit import RateLimitedLog

__all__ = ["Notifier", "build_message", "send_message", "uses_smtp"]

log = logging.getLogger(__name__)

#: Notifications in flight at most; more are dropped (and logged) so a flood
#: of refused mail cannot pile up tasks and connections.
MAX_PENDING: Final = 64

# Seconds to wait for a killed CMD_SENDMAIL to be reaped.
_REAP_GRACE: Final = 2.0

RunBlocking = Callable[..., Awaitable[Any]]


def uses_smtp(settings: Settings) -> bool:
    """True when SMTP is used: server, port, user and password all set (§7.10)."""
    return all(
        (
            settings.NOTIFICATION_SMTP_SERVER,
            settings.NOTIFICATION_SMTP_PORT,
            settings.NOTIFICATION_SMTP_USER,
            settings.NOTIFICATION_SMTP_PASSWORD,
        )
    )


def build_message(settings: Settings, subject: str, body: str, now: float) -> MIMEMultipart:
    """The notification message (§7.10)."""
    msg = MIMEMultipart("alternative")
    sender = settings.NOTIFICATION_SMTP_USER
    name = settings.NOTIFICATION_SENDER_NAME
    # formataddr encodes a non-ASCII display name (RFC 2047)
    msg["From"] = formataddr((name, sender), charset="utf-8") if name else sender
    msg["To"] = ",".join(settings.NOTIFICATION_RECIPIENTS)
    msg["Subject"] = subject
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-Id"] = f"<{uuid.uuid4()}>"
    msg.attach(MIMEText(body, "plain", "utf-8"))
    return msg


def _smtp_send(settings: Settings, data: bytes, seconds: float) -> None:
    """Blocking SMTP submission (runs in the thread pool)."""
    with smtplib.SMTP(
        settings.NOTIFICATION_SMTP_SERVER, settings.NOTIFICATION_SMTP_PORT, timeout=seconds
    ) as smtp:
        smtp.set_debuglevel(settings.NOTIFICATION_SMTP_DEBUG_LEVEL)
        if settings.NOTIFICATION_SMTP_STARTTLS:
            # As iRedAPD: STARTTLS without certificate verification (iRedMail's
            # submission port usually has a self-signed certificate).
            smtp.ehlo()
            smtp.starttls()
            smtp.ehlo()
        smtp.login(settings.NOTIFICATION_SMTP_USER, settings.NOTIFICATION_SMTP_PASSWORD)
        smtp.sendmail(settings.NOTIFICATION_SMTP_USER, list(settings.NOTIFICATION_RECIPIENTS), data)


def _sendmail(settings: Settings, data: bytes, seconds: float) -> None:
    """``CMD_SENDMAIL -f <sender> <recipients joined by ','>``, message on stdin.

    Blocking, for the thread pool: past ``seconds`` the command and what it
    started (Postfix's sendmail runs postdrop; it gets its own process group)
    are killed.  A thread rather than an asyncio subprocess: Python 3.11 can
    hang for good when the creation of an asyncio subprocess is cancelled.
    """
    argv = [
        settings.CMD_SENDMAIL,
        "-f",
        settings.NOTIFICATION_SMTP_USER,
        ",".join(settings.NOTIFICATION_RECIPIENTS),
    ]
    proc = subprocess.Popen(  # noqa: S603 - the admin's own CMD_SENDMAIL, no shell
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(data, timeout=seconds)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_REAP_GRACE)
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"{settings.CMD_SENDMAIL} exited with status {proc.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )


async def send_message(settings: Settings, msg: MIMEMultipart, run_blocking: RunBlocking) -> None:
    """Send through SMTP or CMD_SENDMAIL; raises on failure or past NOTIFICATION_TIMEOUT."""
    data = msg.as_bytes()
    seconds = settings.NOTIFICATION_TIMEOUT
    # The thread's own timeout bounds it (a cancel cannot stop a thread).
    sender = _smtp_send if uses_smtp(settings) else _sendmail
    async with asyncio.timeout(seconds):
        await run_blocking(sender, settings, data, seconds)


class Notifier:
    """Sends notifications in background tasks with a deadline each.

    Args:
        settings: the NOTIFICATION_* settings, CMD_SENDMAIL, NOTIFICATION_TIMEOUT.
        run_blocking: the daemon's thread pool (for smtplib).
        clock: wall-clock seconds for the Date header when none is given.
    """

    def __init__(
        self,
        settings: Settings,
        run_blocking: RunBlocking,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._run_blocking = run_blocking
        self._clock = clock
        self._tasks: set[asyncio.Task[bool]] = set()
        self._errors = RateLimitedLog(log, interval=60.0)
        #: notifications sent / failed since start (event-loop thread only)
        self.sent = 0
        self.failed = 0

    @property
    def pending(self) -> int:
        """Notifications not finished yet."""
        return len(self._tasks)

    def submit(
        self,
        subject: str,
        body: str,
        *,
        claim: Callable[[], Awaitable[bool]] | None = None,
        now: float | None = None,
    ) -> asyncio.Task[bool] | None:
        """Send in the background; returns the task (None if dropped).

        ``claim`` runs first, inside the same deadline: the message is only
        sent when it returns True (the caller's way to send once per window
        even with several daemons).  The task's result is True if a message
        was sent.
        """
        if len(self._tasks) >= MAX_PENDING:
            self._errors.warning(
                "notify-full", "notification dropped: %d already in flight", MAX_PENDING
            )
            return None
        task = asyncio.get_running_loop().create_task(self._run(subject, body, claim, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(
        self,
        subject: str,
        body: str,
        claim: Callable[[], Awaitable[bool]] | None,
        now: float | None,
    ) -> bool:
        timeout = self.settings.NOTIFICATION_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                if claim is not None and not await claim():
                    log.debug("notification already sent in this window: %s", subject)
                    return False
                msg = build_message(
                    self.settings, subject, body, self._clock() if now is None else now
                )
                await send_message(self.settings, msg, self._run_blocking)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self.failed += 1
            self._errors.error(
                "notify-timeout", "notification not sent within %.1fs: %s", timeout, subject
            )
            return False
        except Exception as e:  # noqa: BLE001 - a notification never affects a reply
            self.failed += 1
            self._errors.error(
                ("notify-failed", type(e).__name__),
                "notification not sent: %s: %s (%s)",
                type(e).__name__,
                e,
                subject,
            )
            return False
        self.sent += 1
        log.info("notification sent: %s", subject)
        return True

    async def close(self, grace: float | None = None) -> None:
        """Wait for the notifications in flight (at most ``grace`` seconds, default
        NOTIFICATION_TIMEOUT), then cancel the rest."""
        if not self._tasks:
            return
        if grace is None:
            grace = self.settings.NOTIFICATION_TIMEOUT
        tasks = list(self._tasks)
        _done, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
            log.warning("%d notification(s) cancelled at shutdown", len(late))
