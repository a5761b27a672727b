"""``fix_throttle_priority``: set every throttle rule's priority from its account.

iRedAPD's ``tools/fix_throttle_priority.py`` (core-and-stateful.md §14.7): the
``priority`` column must follow the account's type (email 100, IP 80, wildcard
IP 70, CIDR 70, ``@domain`` 60, ``@.domain`` 50, ``@.tld`` 40, ``@.`` and
``@ip`` 0; ``iredapd.lookup.ACCOUNT_PRIORITIES``).  Rules are read by id, 100
at a time; each rule whose priority differs is updated and printed as
``Fixed throttle priority: account=<a>, priority: <old> -> <new>.``

Unlike iRedAPD, CIDR networks get 70 (iRedAPD looked up a key its classifier
never returns and wrote 0).

Exit status: 0 done (also ``No throttle settings, no need to fix. Skip.``),
1 ``ERROR: Failed to connect to iredapd database.``, 255 any other error
(``ERROR: An error occurred: ...``), 78 bad settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import sqlalchemy as sa

from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    add_config_arguments,
    command_logger,
    database_engine,
    is_unavailable,
    load_config,
)
from iredapd.storage.schema import throttle
from iredapd.storage.throttle import fix_priorities

__all__ = ["main"]

PROG = "fix_throttle_priority"
EX_NO_DATABASE = 1  # iRedAPD's statuses
EX_ERROR = 255
PAGE = 100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Set the priority of every throttle setting from its account "
        "(email 100, IP 80, wildcard IP/CIDR 70, @domain 60, @.domain 50, @.tld 40, "
        "@. and @ip 0).",
    )
    add_config_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``tools/fix_throttle_priority.py``)."""
    args = _parser().parse_args(argv)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    settings = loaded.settings
    logger = command_logger(settings)
    try:
        with database_engine(settings, "iredapd") as engine, engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count(throttle.c.id))).scalar_one()
            if not total:
                logger.info("No throttle settings, no need to fix. Skip.")
                return EX_OK
            for account, old, new in fix_priorities(conn, page_size=PAGE):
                logger.info(
                    "Fixed throttle priority: account=%s, priority: %d -> %d.", account, old, new
                )
    except Exception as e:  # noqa: BLE001 - iRedAPD's catch-all: report and exit 255
        if is_unavailable(e):
            print("ERROR: Failed to connect to iredapd database.", file=sys.stderr)
            return EX_NO_DATABASE
        print(f"ERROR: An error occurred: {e}", file=sys.stderr)
        return EX_ERROR
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
