#!/usr/bin/env python3
"""iRedAPD's tool of this name, run from a checkout (as cron jobs do).

Calls `iredapd.cli.greylisting_admin.main`; see `--help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.greylisting_admin import main

if __name__ == "__main__":
    sys.exit(main())
