"""``python -m streamembed.cli``."""

import sys

from . import main

sys.exit(main())
