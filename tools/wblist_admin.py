#!/usr/bin/env python3
"""iRedAPD's ``tools/wblist_admin.py``: manage amavisd white/blacklists.

Runs from a checkout (``python3 tools/wblist_admin.py --help``) as iRedAPD's
tool did; the program is :mod:`iredapd.cli.wblist_admin`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iredapd.cli.wblist_admin import main

if __name__ == "__main__":
    sys.exit(main())
