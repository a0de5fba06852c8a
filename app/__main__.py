"""``python -m app`` is ``keyless``."""

import sys

from app.cli import main

sys.exit(main())
