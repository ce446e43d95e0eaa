"""``python -m device``: the same as ``edgetune-agent``."""

import sys

from device.cli import main

sys.exit(main())
