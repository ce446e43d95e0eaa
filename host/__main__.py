import sys

from edgetune.host.cli import main

sys.exit(main())
