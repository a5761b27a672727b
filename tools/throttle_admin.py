#!/usr/bin/env python3
"""List, add, change and remove throttle rules; show current usage per account.

A thin wrapper: ``python3 tools/throttle_admin.py --help`` works from a
checkout as well as with the package installed.  See
``iredapd/cli/throttle_admin.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.throttle_admin import main

if __name__ == "__main__":
    sys.exit(main())
