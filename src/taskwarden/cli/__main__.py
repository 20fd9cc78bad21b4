"""``python -m taskwarden.cli``."""

from __future__ import annotations

import sys

from taskwarden.cli import main

sys.exit(main())
