"""``python -m iredapd`` runs the daemon."""

import sys

from iredapd.cli.daemon import main

sys.exit(main())
