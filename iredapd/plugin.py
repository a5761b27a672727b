"""The plugin API: what every plugin, built-in or custom, is written against.

A plugin is one file ``plugins/<name>.py`` (or in a directory of
``PLUGIN_DIRS``) that defines one subclass of :class:`Plugin`::

    from iredapd.plugin import Action, Context, Plugin

    class RejectToTestDomain(Plugin):
        \"\"\"Reject mail to example.invalid (prose for admins goes here).\"\"\"

        states = frozenset({"RCPT"})
        own_settings = {"TEST_DOMAIN": "example.invalid"}

        async def check(self, ctx: Context) -> Action | None:
            if ctx.request.recipient_domain == ctx.settings.get("TEST_DOMAIN"):
                return Action("REJECT Not here")
            return None

``check`` returns an :class:`Action` (or its text) to decide, or ``None`` /
a ``DUNNO`` action to let the next plugin speak.  Blocking work (a sync
database driver, a file) goes through ``ctx.run_blocking`` so the event loop
never waits on it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from iredapd.actions import DUNNO, OK, SMTP_ACTIONS, Action
from iredapd.config import Settings
from iredapd.request import PolicyRequest
from iredapd.services import Services

__all__ = [
    "DUNNO",
    "OK",
    "SMTP_ACTIONS",
    "Action",
    "Context",
    "Plugin",
]

T = TypeVar("T")

#: What a plugin may declare in ``requires``.
REQUIREMENTS = frozenset({"vmail", "iredapd", "amavisd", "dns"})


@dataclass(slots=True)
class Context:
    """What one plugin call sees: the request and the daemon's shared services."""

    request: PolicyRequest
    settings: Settings
    services: Services
    #: wall-clock time (epoch seconds) when the request arrived; use it, not time.time()
    now: float = field(default_factory=time.time)
    #: True under ``iredapd-query --dry-run``: decide, but change no stored state
    dry_run: bool = False
    #: answers shared between plugins of one request (ask each question once)
    memo: dict[Hashable, Any] = field(default_factory=dict)
    #: called with the final action once the chain has decided (see on_decision)
    decided_callbacks: list[Callable[[Action], None]] = field(default_factory=list)

    @property
    def authenticated_or_trusted(self) -> bool:
        """True when the client logged in (SMTP AUTH) or is trusted (MYNETWORKS, localhost).

        iRedAPD's checks of inbound mail let such clients pass.
        """
        request = self.request
        return bool(request.sasl_username) or (
            request.client_address in self.settings.trusted_networks
        )

    def on_decision(self, callback: Callable[[Action], None]) -> None:
        """Call ``callback(final_action)`` when the chain has decided this request.

        A plugin that answers with PREPEND learns here whether its header was
        sent (a later plugin may decide instead).
        """
        self.decided_callbacks.append(callback)

    async def once(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """Await ``compute()`` once per request for ``key``; later calls reuse it.

        Plugins of one request run one after another, so a plain dict is enough.
        A failure is not remembered: the next plugin asks again.
        """
        memo = self.memo
        if key in memo:
            cached: T = memo[key]
            return cached
        value = await compute()
        memo[key] = value
        return value

    async def run_blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking function in the daemon's bounded thread pool."""
        return await self.services.run_blocking(func, *args)


class Plugin:
    """Base class of every plugin.

    Class attributes declare the plugin:

    * ``states``: protocol states it runs in (``RCPT``, ``END-OF-MESSAGE``, ...);
    * ``requires``: services it needs (``vmail``, ``iredapd``, ``amavisd``,
      ``dns``); a missing one is a startup error, not a per-request surprise;
    * ``own_settings``: extra setting names it reads, with their defaults (so a
      settings file may set them and typos are caught);
    * ``failure_action``: the action when it fails or runs late, unless the
      admin sets PLUGIN_FAILURE_ACTIONS; None means PLUGIN_FAILURE_ACTION;
    * ``task_free``: True when ``check`` may start outside an asyncio task,
      which spares a task per request whenever the chain needs no waiting.
      Such a plugin takes its deadlines from :mod:`iredapd.aio` (``timeout``,
      ``timeout_at``, ``within``) instead of ``asyncio.timeout``, and does not
      use ``asyncio.current_task()`` or ``TaskGroup`` before its first
      ``await`` that waits.  False (the default, safe for any plugin): the
      chain moves into a task before calling it.

    The priority comes from PLUGIN_PRIORITIES or iRedAPD's table; a plugin
    that is in neither runs at 0, after the built-ins.
    """

    states: ClassVar[frozenset[str]] = frozenset({"RCPT"})
    requires: ClassVar[frozenset[str]] = frozenset()
    own_settings: ClassVar[Mapping[str, Any]] = {}
    failure_action: ClassVar[str | None] = None
    task_free: ClassVar[bool] = False

    def __init__(self, name: str, settings: Settings, services: Services) -> None:
        self.name = name
        self.settings = settings
        self.services = services

    async def start(self) -> None:
        """Called once before the first request (open what the plugin needs)."""

    async def close(self) -> None:
        """Called once when the daemon stops or reloads."""

    async def check(self, ctx: Context) -> Action | str | None:
        """Decide on one request: an action, or None to pass."""
        raise NotImplementedError
