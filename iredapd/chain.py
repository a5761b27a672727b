"""The plugin chain: loading, order, state filter, deadlines, failure policy.

Order: by priority, larger first (PLUGIN_PRIORITIES, else iRedAPD's table,
else 0); plugins of equal priority keep the order of the ``plugins`` setting.
For one request, plugins whose ``states`` do not include the request's
protocol state are skipped; the first action that does not start with
``DUNNO`` wins and ends the chain; if every plugin passes, the answer is
``DUNNO``.

A plugin that raises or runs past its deadline gets its failure action
(PLUGIN_FAILURE_ACTIONS, the plugin's own, else PLUGIN_FAILURE_ACTION: DUNNO,
so mail keeps flowing as with iRedAPD); the failure is logged with the
plugin's name and counted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import iredapd
from iredapd.actions import DUNNO, Action, InvalidAction
from iredapd.aio import resume_until, to_task
from iredapd.config import Settings
from iredapd.plugin import REQUIREMENTS, Context, Plugin
from iredapd.ratelimit import RateLimitedLog
from iredapd.request import PolicyRequest
from iredapd.services import Services

__all__ = [
    "Chain",
    "Decision",
    "PluginLoadError",
    "PluginSpec",
    "Step",
    "builtin_plugin_dir",
    "discover_plugins",
    "plugin_search_path",
]

log = logging.getLogger(__name__)

_NO_PLUGINS = Action("DUNNO No enabled plugins")

# Module names plugins are imported under (not importable by their bare name,
# so a plugin file cannot shadow a real package such as 'throttle').
_MODULE_PREFIX = "iredapd.plugins."


class PluginLoadError(Exception):
    """A configured plugin is missing, does not import, or is not a plugin."""


def builtin_plugin_dir() -> Path:
    """Where the built-in plugins are: the wheel's package data, or the checkout."""
    package = Path(iredapd.__file__).resolve().parent
    installed = package / "_builtin_plugins"
    if installed.is_dir():
        return installed
    return package.parent / "plugins"


def plugin_search_path(settings: Settings) -> list[Path]:
    """Directories searched for a plugin file: PLUGIN_DIRS first, then built-ins.

    PLUGIN_DIRS come first so an admin can replace a built-in with a copy of
    their own; that is logged when it happens.
    """
    return [Path(d) for d in settings.PLUGIN_DIRS] + [builtin_plugin_dir()]


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A plugin class found on disk, not yet instantiated."""

    name: str
    cls: type[Plugin]
    path: Path


def _import_file(name: str, path: Path) -> ModuleType:
    module_name = _MODULE_PREFIX + name
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"plugin {name}: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # any error in a plugin file is a startup error
        sys.modules.pop(module_name, None)
        raise PluginLoadError(f"plugin {name} ({path}) failed to import: {e!r}") from e
    return module


def _plugin_class(name: str, module: ModuleType, path: Path) -> type[Plugin]:
    explicit = getattr(module, "PLUGIN", None)
    if explicit is not None:
        if inspect.isclass(explicit) and issubclass(explicit, Plugin):
            return explicit
        raise PluginLoadError(f"plugin {name} ({path}): PLUGIN is not a Plugin subclass")
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Plugin)
        and obj is not Plugin
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        if hasattr(module, "restriction"):
            raise PluginLoadError(
                f"plugin {name} ({path}) is an iRedAPD-style plugin (restriction()); "
                "port it to iredapd.plugin.Plugin (see docs/plugins.md)"
            )
        what = "no" if not found else "more than one"
        raise PluginLoadError(f"plugin {name} ({path}) defines {what} Plugin subclass")
    return found[0]


def discover_plugins(names: Sequence[str], dirs: Sequence[Path]) -> dict[str, PluginSpec]:
    """Find and import each named plugin file; raise PluginLoadError on any problem."""
    specs: dict[str, PluginSpec] = {}
    builtin = builtin_plugin_dir()
    for name in names:
        if name in specs:
            continue
        path = next((d / f"{name}.py" for d in dirs if (d / f"{name}.py").is_file()), None)
        if path is None:
            where = ", ".join(str(d) for d in dirs)
            raise PluginLoadError(f"plugin {name} not found (looked in {where})")
        if path.parent.resolve() != builtin.resolve() and (builtin / f"{name}.py").is_file():
            log.warning("plugin %s: using %s instead of the built-in one", name, path)
        module = _import_file(name, path)
        cls = _plugin_class(name, module, path)
        unknown = set(cls.requires) - REQUIREMENTS
        if unknown:
            raise PluginLoadError(f"plugin {name}: unknown requirement(s) {sorted(unknown)}")
        specs[name] = PluginSpec(name, cls, path)
    return specs


def declared_settings(specs: Iterable[PluginSpec]) -> dict[str, Any]:
    """The extra setting names (and defaults) the plugins declare."""
    out: dict[str, Any] = {}
    for spec in specs:
        out.update(spec.cls.own_settings)
    return out


@dataclass(slots=True)
class Step:
    """What one plugin did for one request (for iredapd-query and debug logs)."""

    plugin: str
    outcome: str  # "action", "pass", "skipped", "failed", "timeout"
    action: str = ""
    elapsed: float = 0.0
    error: str = ""


@dataclass(slots=True)
class Decision:
    """The chain's answer to one request."""

    action: Action
    plugin: str = ""  # the deciding plugin, '' when none decided
    steps: list[Step] = field(default_factory=list)


@dataclass(slots=True)
class PluginStats:
    """Exact per-plugin counters (updated on the event loop thread only)."""

    calls: int = 0
    decisions: int = 0
    failures: int = 0
    timeouts: int = 0


@dataclass(slots=True)
class _Entry:
    plugin: Plugin
    priority: int
    states: frozenset[str]
    timeout: float
    failure: Action
    stats: PluginStats
    task_free: bool


class Chain:
    """An ordered list of plugin instances bound to one Settings/Services pair."""

    def __init__(self, plugins: Sequence[Plugin], settings: Settings, services: Services) -> None:
        self.settings = settings
        self.services = services
        entries = []
        for position, plugin in enumerate(plugins):
            name = plugin.name
            failure_text = settings.PLUGIN_FAILURE_ACTIONS.get(name) or (
                plugin.failure_action or settings.PLUGIN_FAILURE_ACTION
            )
            try:
                failure = Action.parse(failure_text)
            except InvalidAction as e:
                raise PluginLoadError(f"plugin {name}: bad failure action: {e}") from None
            entry = _Entry(
                plugin=plugin,
                priority=settings.plugin_priority(name),
                states=frozenset(s.upper() for s in plugin.states),
                timeout=settings.plugin_timeout(name),
                failure=failure,
                stats=PluginStats(),
                task_free=bool(getattr(plugin, "task_free", False)),
            )
            entries.append((-entry.priority, position, entry))
        entries.sort(key=lambda t: (t[0], t[1]))
        self._entries = [e for _, _, e in entries]
        self._errors = RateLimitedLog(log, interval=60.0)
        self._inflight = 0
        self._drained: asyncio.Event | None = None

    @classmethod
    def build(
        cls, settings: Settings, services: Services, specs: Mapping[str, PluginSpec]
    ) -> Chain:
        """Instantiate the configured plugins; check their requirements."""
        plugins: list[Plugin] = []
        for name in settings.plugins:
            spec = specs[name]
            missing = [r for r in sorted(spec.cls.requires) if not services.provides(r)]
            if missing:
                raise PluginLoadError(
                    f"plugin {name} needs {', '.join(missing)}, which is not configured"
                )
            plugins.append(spec.cls(name, settings, services))
        return cls(plugins, settings, services)

    @property
    def names(self) -> list[str]:
        """Plugin names in evaluation order."""
        return [e.plugin.name for e in self._entries]

    def describe(self) -> list[tuple[str, int, list[str]]]:
        """(name, priority, states) in evaluation order."""
        return [(e.plugin.name, e.priority, sorted(e.states)) for e in self._entries]

    def stats(self) -> dict[str, PluginStats]:
        """Counters per plugin name."""
        return {e.plugin.name: e.stats for e in self._entries}

    async def start(self) -> None:
        """Start every plugin (in order); a failure is a startup error."""
        for e in self._entries:
            try:
                await e.plugin.start()
            except Exception as exc:  # report which plugin, then stop the start
                raise PluginLoadError(f"plugin {e.plugin.name} failed to start: {exc}") from exc

    async def close(self) -> None:
        """Close every plugin; errors are logged, not raised."""
        for e in reversed(self._entries):
            try:
                await e.plugin.close()
            except Exception:  # closing must go on for the others
                log.exception("plugin %s failed to close", e.plugin.name)

    async def drained(self) -> None:
        """Wait until no request is being evaluated on this chain."""
        if self._inflight == 0:
            return
        self._drained = asyncio.Event()
        await self._drained.wait()

    async def evaluate(
        self,
        request: PolicyRequest,
        *,
        trace: bool = False,
        dry_run: bool = False,
        now: float | None = None,
    ) -> Decision:
        """Run the chain on one request and return the decision."""
        if not self._entries:
            # iRedAPD's answer when no plugin is enabled
            return Decision(_NO_PLUGINS)
        self._inflight += 1
        try:
            ctx = Context(
                request=request,
                settings=self.settings,
                services=self.services,
                now=self.services.clock() if now is None else now,
                dry_run=dry_run,
            )
            decision = await self._walk(ctx, trace)
            for callback in ctx.decided_callbacks:
                try:
                    callback(decision.action)
                except Exception:  # a plugin's callback must not lose the reply
                    log.exception("on_decision callback failed")
            return decision
        finally:
            self._inflight -= 1
            if self._inflight == 0 and self._drained is not None:
                self._drained.set()

    async def _walk(self, ctx: Context, trace: bool) -> Decision:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.REQUEST_TIMEOUT
        steps: list[Step] = []
        state = ctx.request.state
        # A PREPEND adds a header and is otherwise DUNNO (access(5)): the first
        # one is kept and sent only if no later plugin decides.
        header: tuple[Action, str] | None = None
        for e in self._entries:
            name = e.plugin.name
            if state not in e.states:
                if trace:
                    steps.append(Step(name, "skipped"))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._errors.error(
                    ("request-timeout", name),
                    "request deadline (%.1fs) passed before plugin %s ran",
                    self.settings.REQUEST_TIMEOUT,
                    name,
                )
                if trace:
                    steps.append(Step(name, "timeout", e.failure.text, 0.0, "request deadline"))
                if not e.failure.is_neutral:
                    return Decision(e.failure, name, steps)
                continue
            if not e.task_free:
                await to_task()  # it may use asyncio.timeout() before it first waits
            e.stats.calls += 1
            started = time.perf_counter()
            try:
                # The first step runs here, inline: a plugin that answers
                # without waiting (pure logic, a cached lookup) costs no timer
                # and no extra coroutine; only one that waits gets a deadline.
                coro = e.plugin.check(ctx)
                try:
                    result = coro.send(None)
                except StopIteration as stop:
                    result = stop.value
                else:
                    # the budget counts from the plugin's start
                    budget = min(e.timeout, remaining) - _since(started)
                    result = await resume_until(coro, result, loop.time() + budget)
                action = _as_action(result)
            except TimeoutError:
                action = self._late(e, min(e.timeout, remaining))
                if trace:
                    steps.append(Step(name, "timeout", action.text, _since(started), "deadline"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the chain's edge: a plugin bug is contained
                action = self._failed(e, exc)
                if trace:
                    steps.append(Step(name, "failed", action.text, _since(started), f"{exc!r}"))
            else:
                if trace:
                    outcome = "pass" if action is None or action.is_neutral else "action"
                    text = action.text if action else ""
                    steps.append(Step(name, outcome, text, _since(started)))
            if action is None or action.is_neutral:
                continue
            e.stats.decisions += 1
            if action.verb == "PREPEND":
                if header is None:
                    header = (action, name)
                continue
            return Decision(action, name, steps)
        if header is not None:
            return Decision(header[0], header[1], steps)
        return Decision(DUNNO, "", steps)

    def _late(self, e: _Entry, budget: float) -> Action:
        """Count and log a plugin that ran past its deadline; its failure action."""
        e.stats.timeouts += 1
        self._errors.error(
            ("timeout", e.plugin.name),
            "plugin %s ran past its deadline (%.1fs); action: %s",
            e.plugin.name,
            budget,
            e.failure.text,
        )
        return e.failure

    def _failed(self, e: _Entry, exc: Exception) -> Action:
        """Count and log a plugin that raised; its failure action."""
        e.stats.failures += 1
        self._errors.error(
            ("failed", e.plugin.name, type(exc).__name__),
            "plugin %s failed: %s: %s; action: %s",
            e.plugin.name,
            type(exc).__name__,
            exc,
            e.failure.text,
            exc_info=exc,
        )
        return e.failure


def _since(started: float) -> float:
    return time.perf_counter() - started


def _as_action(result: object) -> Action | None:
    if result is None or isinstance(result, Action):
        return result
    if isinstance(result, str):
        return Action.parse(result)
    raise InvalidAction(f"plugin returned {type(result).__name__}, not an Action")
