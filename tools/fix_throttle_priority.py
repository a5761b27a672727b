#!/usr/bin/env python3
"""Set every throttle rule's priority from its account type (iRedAPD's tool name).

A thin wrapper: ``python3 tools/fix_throttle_priority.py`` works from a
checkout as well as with the package installed.  See
``iredapd/cli/fix_throttle_priority.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.fix_throttle_priority import main

if __name__ == "__main__":
    sys.exit(main())
