#!/usr/bin/env python3
"""Remove expired rows from the iredapd database (iRedAPD's tool name; run from cron).

A thin wrapper: ``python3 tools/cleanup_db.py`` works from a checkout
(/opt/iredapd) as well as with the package installed.  See
``iredapd/cli/cleanup_db.py`` for what it does.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.cleanup_db import main

if __name__ == "__main__":
    sys.exit(main())
