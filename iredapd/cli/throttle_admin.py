"""``throttle_admin``: list, add, change and remove throttle rules; show usage.

New (iRedAPD has no such tool; iRedAdmin edits the table)::

    throttle_admin list [--account A] [--kind K] [--json]
    throttle_admin set ACCOUNT [--kind K] [--period S] [--msg-size B]
                       [--max-msgs N] [--max-quota B] [--max-rcpts N] [--json]
    throttle_admin remove ACCOUNT [--kind K] [--json]
    throttle_admin usage [ACCOUNT] [--kind K] [--json]

``set`` creates the rule (account, kind) or changes only the values given;
limits are ``-1`` (not set here: inherit), ``0`` (unlimited) or a number.
The priority always follows the account type (``lookup.account_priority``).
``remove`` deletes the rule(s) and their counters (every kind unless --kind).
``usage`` shows the counters: per rule and counter key, what is used in the
current window and the time left.  The daemon caches rules for CACHE_TTL
seconds, so a change applies within that time; counters are never cached.

Exit status: 0 done, 1 nothing matched (remove), 2 bad arguments,
69 the database is unreachable, 70 a query failed, 78 bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_USAGE,
    add_config_arguments,
    database_engine,
    database_error,
    fail,
    load_config,
)
from iredapd.lookup import AddressType, account_priority, classify_address
from iredapd.storage.throttle import (
    KINDS,
    LIMITS,
    Rule,
    Usage,
    delete_rules,
    effective,
    list_rules,
    upsert_rule,
    usage,
)

__all__ = ["main"]

PROG = "throttle_admin"
EX_NOT_FOUND = 1

# Account forms the throttle plugin looks up (core-and-stateful.md §9.1).
_THROTTLE_TYPES = frozenset(
    {
        AddressType.EMAIL,
        AddressType.DOMAIN,
        AddressType.SUBDOMAIN,
        AddressType.TOP_LEVEL_DOMAIN,
        AddressType.CATCHALL,
        AddressType.IP,
        AddressType.WILDCARD_IP,
        AddressType.CATCHALL_IP,
    }
)
_MAX_PERIOD = 2**32 - 1  # INT UNSIGNED on MySQL
_MAX_LIMIT = 2**63 - 1  # BIGINT
_OPTIONS = {
    "period": "--period",
    "msg_size": "--msg-size",
    "max_msgs": "--max-msgs",
    "max_quota": "--max-quota",
    "max_rcpts": "--max-rcpts",
}


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage throttle rules (iredapd database table 'throttle') and show "
        "their counters.",
        epilog="Accounts: user@example.com, @example.com, @.example.com, @.com, @. (everyone), "
        "192.0.2.1, 192.0.2.*, @ip (every client IP).  Kinds: outbound (SMTP AUTH or "
        "local senders), external (other senders), inbound (recipients).  The daemon "
        "applies rule changes within CACHE_TTL seconds.",
    )
    add_config_arguments(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(cmd: argparse.ArgumentParser, *, kind_default: str | None) -> None:
        cmd.add_argument(
            "--kind",
            choices=KINDS,
            default=kind_default,
            help=f"rule kind (default: {kind_default or 'every kind'})",
        )
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    cmd = sub.add_parser("list", help="list rules")
    cmd.add_argument("--account", help="only this account")
    common(cmd, kind_default=None)

    cmd = sub.add_parser("set", aliases=["add"], help="create a rule or change its values")
    cmd.add_argument("account")
    common(cmd, kind_default="outbound")
    cmd.add_argument("--period", type=int, metavar="SECONDS", help="window of max_msgs/max_quota")
    cmd.add_argument("--msg-size", type=int, metavar="BYTES", help="largest message")
    cmd.add_argument("--max-msgs", type=int, metavar="N", help="recipients per window")
    cmd.add_argument("--max-quota", type=int, metavar="BYTES", help="bytes per window")
    cmd.add_argument("--max-rcpts", type=int, metavar="N", help="recipients per message")

    cmd = sub.add_parser("remove", aliases=["delete"], help="remove rules and their counters")
    cmd.add_argument("account")
    common(cmd, kind_default=None)

    cmd = sub.add_parser("usage", help="show counters and the time left in their windows")
    cmd.add_argument("account", nargs="?", help="a rule account or a counter key (user, IP)")
    common(cmd, kind_default=None)
    return p


def _account(raw: str) -> str:
    account = raw.strip().lower()
    kind = classify_address(account)
    if kind is None:
        raise UsageError(f"not a valid throttle account: {raw!r}")
    if kind not in _THROTTLE_TYPES:
        raise UsageError(f"{raw!r} ({kind.value}) is never looked up by the throttle plugin")
    return account


def _values(args: argparse.Namespace) -> dict[str, int]:
    values: dict[str, int] = {}
    for column, option in _OPTIONS.items():
        value = getattr(args, column)
        if value is None:
            continue
        if column == "period":
            if not 0 <= value <= _MAX_PERIOD:
                raise UsageError(f"{option} must be between 0 and {_MAX_PERIOD}")
        elif not -1 <= value <= _MAX_LIMIT:
            raise UsageError(f"{option} must be -1 (inherit), 0 (unlimited) or a positive number")
        values[column] = value
    if not values:
        raise UsageError("give at least one of " + ", ".join(_OPTIONS.values()))
    return values


def _rule_dict(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "account": rule.account,
        "kind": rule.kind,
        "priority": rule.priority,
        "period": rule.period,
        **{name: rule.limit(name) for name in LIMITS},
    }


def _usage_dict(u: Usage, now: int) -> dict[str, Any]:
    t = u.tracking
    cur_msgs, cur_quota, init = effective(t, u.rule.period, now)
    running = t.init_time > 0 and now <= t.init_time + u.rule.period
    return {
        "rule_id": u.rule.id,
        "rule_account": u.rule.account,
        "kind": u.rule.kind,
        "account": t.account,
        "period": u.rule.period,
        "cur_msgs": cur_msgs,
        "max_msgs": u.rule.max_msgs,
        "cur_quota": cur_quota,
        "max_quota": u.rule.max_quota,
        "window_start": init if running else None,
        "seconds_left": (t.init_time + u.rule.period - now) if running else 0,
        "last_notify_time": t.last_notify_time,
        "stored": {"cur_msgs": t.cur_msgs, "cur_quota": t.cur_quota, "init_time": t.init_time},
    }


def _limit_text(value: int) -> str:
    return "unlimited" if value == 0 else ("-" if value < 0 else str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers)), *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _print_rules(rules: Sequence[Rule]) -> None:
    if not rules:
        print("No throttle settings.")
        return
    headers = ("id", "account", "kind", "priority", "period", *LIMITS)
    rows = [
        (r.id, r.account, r.kind, r.priority, r.period, *(_limit_text(r.limit(n)) for n in LIMITS))
        for r in rules
    ]
    print(_table(headers, rows))


def _print_usage(items: Sequence[dict[str, Any]]) -> None:
    if not items:
        print("No counters.")
        return
    headers = ("rule", "kind", "counter", "msgs", "quota (bytes)", "period", "time left")
    rows = []
    for u in items:
        left = u["seconds_left"]
        rows.append(
            (
                f"{u['rule_account']} (id {u['rule_id']})",
                u["kind"],
                u["account"] or "''",
                f"{u['cur_msgs']}/{_limit_text(u['max_msgs'])}",
                f"{u['cur_quota']}/{_limit_text(u['max_quota'])}",
                u["period"],
                f"{left}s" if left else "window ended",
            )
        )
    print(_table(headers, rows))


def _command(args: argparse.Namespace) -> str:
    name = str(args.command)
    return {"add": "set", "delete": "remove"}.get(name, name)


def _check(args: argparse.Namespace) -> None:
    """Validate the arguments before any connection is made (UsageError)."""
    if _command(args) in ("set", "remove"):
        args.account = _account(args.account)
    if _command(args) == "set":
        args.values = _values(args)


def _run(conn: Connection, args: argparse.Namespace) -> int:
    command = _command(args)
    if command == "list":
        account = args.account.strip().lower() if args.account else None
        rules = list_rules(conn, account=account, kind=args.kind)
        if args.json:
            print(json.dumps([_rule_dict(r) for r in rules], indent=2))
        else:
            _print_rules(rules)
        return EX_OK
    if command == "usage":
        now = int(time.time())
        account = args.account.strip().lower() if args.account else None
        items = [_usage_dict(u, now) for u in usage(conn, account=account, kind=args.kind)]
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            _print_usage(items)
        return EX_OK
    account = args.account
    if command == "remove":
        kinds = [args.kind] if args.kind else list(KINDS)
        removed = delete_rules(conn, account, kinds)
        if args.json:
            print(json.dumps({"account": account, "kinds": kinds, "removed": removed}))
        elif removed:
            print(f"Removed {removed} throttle setting(s) of {account}.")
        else:
            print(f"No throttle setting of {account} ({', '.join(kinds)}).", file=sys.stderr)
        return EX_OK if removed else EX_NOT_FOUND
    values: dict[str, int] = args.values
    existing = list_rules(conn, account=account, kind=args.kind)
    merged = _rule_dict(existing[0]) if existing else {"period": 0, **dict.fromkeys(LIMITS, -1)}
    merged.update(values)
    if merged["period"] <= 0 and (merged["max_msgs"] >= 0 or merged["max_quota"] >= 0):
        raise UsageError("max_msgs and max_quota need a window: give --period greater than 0")
    created = upsert_rule(conn, account, args.kind, values)
    rule = list_rules(conn, account=account, kind=args.kind)[0]
    if args.json:
        print(json.dumps({"created": created, "rule": _rule_dict(rule)}, indent=2))
    else:
        verb = "Created" if created else "Updated"
        print(f"{verb} throttle setting (priority {account_priority(account)}):")
        _print_rules([rule])
    return EX_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``tools/throttle_admin.py``, console script ``iredapd-throttle``)."""
    args = _parser().parse_args(argv)
    try:
        _check(args)
    except UsageError as e:
        return fail(PROG, str(e), EX_USAGE)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    settings = loaded.settings
    try:
        with database_engine(settings, "iredapd") as engine, engine.connect() as conn:
            return _run(conn, args)
    except UsageError as e:
        return fail(PROG, str(e), EX_USAGE)
    except sa.exc.DBAPIError as e:
        return database_error(PROG, "iredapd", e)


if __name__ == "__main__":
    sys.exit(main())
