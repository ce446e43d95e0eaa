"""``python -m edgetune.device``: the same as ``edgetune-agent``."""

import sys

from edgetune.device.cli import main

sys.exit(main())
