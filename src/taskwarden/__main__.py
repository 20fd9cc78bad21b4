"""``python -m taskwarden``: the ``taskwarden`` command."""

from __future__ import annotations

import sys

from taskwarden.cli import main

sys.exit(main())
