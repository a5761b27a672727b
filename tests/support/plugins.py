"""Helpers to write throw-away plugin files and build a chain from them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from iredapd.app import load_namespace
from iredapd.chain import Chain
from iredapd.services import Services

HEADER = "from iredapd.plugin import Action, Context, Plugin\nimport asyncio, time\n"


def write_plugin(directory: Path, name: str, body: str) -> Path:
    """Write ``<directory>/<name>.py`` with the plugin class body given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def simple_plugin(
    directory: Path, name: str, result: str | None, states: tuple[str, ...] = ("RCPT",)
) -> Path:
    """A plugin that always returns ``result`` (None = pass)."""
    return write_plugin(
        directory,
        name,
        f"""
        class P(Plugin):
            states = frozenset({set(states)!r})
            async def check(self, ctx):
                return {result!r}
        """,
    )


def make_chain(
    plugin_dir: Path | None, services: Services | None = None, **overrides: Any
) -> Chain:
    """Settings from keyword overrides, plugins from ``plugin_dir`` and the built-ins."""
    if plugin_dir is not None:
        overrides.setdefault("PLUGIN_DIRS", [str(plugin_dir)])
    loaded = load_namespace({}, overrides=overrides)
    return Chain.build(loaded.settings, services or Services(loaded.settings), loaded.specs)
