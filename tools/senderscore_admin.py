#!/usr/bin/env python3
"""iRedAPD's ``tools/senderscore_admin.py``: whitelist IPs for the senderscore plugin.

Runs from a checkout (``python3 tools/senderscore_admin.py -w 192.0.2.1``) as
iRedAPD's tool did; the program is :mod:`iredapd.cli.senderscore_admin`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.senderscore_admin import main

if __name__ == "__main__":
    sys.exit(main())
