"""``iredapd-query``: run the configured chain on one request and explain the verdict.

The policy counterpart of ``postmap -q``: give the request's attributes as
``name=value`` arguments, or as policy protocol lines on standard input, and
see the final action, the deciding plugin, and what every plugin did and how
long it took.  Unless ``--dry-run`` is given, stateful plugins record the
request as they would for Postfix (a greylisting triplet, a throttle count).

Exit status: 0 when a verdict was printed, 2 for bad arguments or input,
78 for bad settings or plugins, 69 when a database is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from iredapd.app import Loaded
from iredapd.chain import Chain, Decision, PluginLoadError
from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    EX_USAGE,
    add_config_arguments,
    fail,
    load_config,
)
from iredapd.handler import PolicyHandler
from iredapd.protocol import PolicyParser, ProtocolError, RawRequest
from iredapd.request import PolicyRequest
from iredapd.services import Services
from iredapd.storage.db import BackendUnavailable

__all__ = ["main"]

PROG = "iredapd-query"
DEFAULTS = {"request": "smtpd_access_policy", "protocol_state": "RCPT"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the configured plugin chain on one policy request and explain it.",
        epilog="example: iredapd-query sender= sasl_username=user@example.com "
        "recipient=x@example.org client_address=192.0.2.1",
    )
    add_config_arguments(p)
    p.add_argument(
        "attributes",
        nargs="*",
        metavar="NAME=VALUE",
        help="request attributes; without any, policy lines are read from standard input "
        "(protocol_state defaults to RCPT)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--dry-run", action="store_true", help="ask stateful plugins not to change stored state"
    )
    return p


def _raw_from_args(items: Sequence[str]) -> RawRequest:
    text = "".join(f"{item}\n" for item in items) + "\n"
    for item in items:
        if "=" not in item:
            raise ValueError(f"not NAME=VALUE: {item!r}")
    return _raw_from_text(text.encode())


def _raw_from_text(data: bytes) -> RawRequest:
    if not data.endswith(b"\n\n"):
        data = data.rstrip(b"\n") + b"\n\n"
    try:
        requests = PolicyParser().feed(data)
    except ProtocolError as e:
        raise ValueError(str(e)) from None
    if not requests:
        raise ValueError("no request given")
    raw = requests[0]
    for name, value in DEFAULTS.items():
        raw.attributes.setdefault(name, value)
    return raw


def _report(
    loaded: Loaded, request: PolicyRequest, decision: Decision, chain: Chain
) -> dict[str, Any]:
    ran = {s.plugin: s for s in decision.steps}
    plugins = []
    for name, priority, states in chain.describe():
        step = ran.get(name)
        entry: dict[str, Any] = {"plugin": name, "priority": priority, "states": states}
        if step is None:
            entry["outcome"] = "not run (decided earlier)" if decision.plugin else "not run"
        else:
            entry.update(
                outcome=step.outcome,
                action=step.action,
                ms=round(step.elapsed * 1000, 3),
                error=step.error,
            )
        plugins.append(entry)
    return {
        "action": decision.action.text,
        "plugin": decision.plugin,
        "protocol_state": request.state,
        "settings": str(loaded.path) if loaded.path else "built-in defaults",
        "plugins": plugins,
    }


def _print_text(report: dict[str, Any]) -> None:
    print(f"action: {report['action']}")
    print(f"decided by: {report['plugin'] or '(no plugin: every plugin passed)'}")
    print(f"protocol state: {report['protocol_state']}    settings: {report['settings']}")
    if not report["plugins"]:
        print("plugins: none enabled")
        return
    print("plugins, in evaluation order:")
    width = max(len(p["plugin"]) for p in report["plugins"])
    for p in report["plugins"]:
        head = f"  {p['plugin']:<{width}}  prio {p['priority']:>3}  "
        if "ms" not in p:
            print(head + p["outcome"])
            continue
        if p["outcome"] == "skipped":
            print(head + f"skipped (runs at {', '.join(p['states'])})")
            continue
        detail = p["action"] or ""
        if p["error"]:
            detail = f"{detail} ({p['error']})".strip()
        print(head + f"{p['outcome']:<8} {p['ms']:>9.3f} ms  {detail}".rstrip())


async def _run(
    loaded: Loaded, raw: RawRequest, *, dry_run: bool
) -> tuple[Decision, PolicyRequest, Chain]:
    services = Services(loaded.settings)
    try:
        await asyncio.get_running_loop().run_in_executor(None, services.open_databases)
        chain = Chain.build(loaded.settings, services, loaded.specs)
        await chain.start()
        try:
            handler = PolicyHandler(chain)
            request = handler.build_request(raw)
            bad = request.invalid_address()
            if bad is not None:
                decision = await handler.decide(request)
            else:
                decision = await chain.evaluate(request, trace=True, dry_run=dry_run)
            return decision, request, chain
        finally:
            await chain.close()
    finally:
        await services.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iredapd-query`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.attributes:
            raw = _raw_from_args(args.attributes)
        elif sys.stdin.isatty():
            return fail(
                PROG, "give NAME=VALUE arguments or policy lines on standard input", EX_USAGE
            )
        else:
            raw = _raw_from_text(sys.stdin.buffer.read())
    except ValueError as e:
        return fail(PROG, str(e), EX_USAGE)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    try:
        decision, request, chain = asyncio.run(_run(loaded, raw, dry_run=args.dry_run))
    except BackendUnavailable as e:
        return fail(PROG, str(e), EX_UNAVAILABLE)
    except PluginLoadError as e:
        return fail(PROG, str(e), EX_CONFIG)
    report = _report(loaded, request, decision, chain)
    try:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_text(report)
        sys.stdout.flush()
    except BrokenPipeError:  # `iredapd-query ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
