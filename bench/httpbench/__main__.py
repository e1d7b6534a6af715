"""``python -m bench.httpbench`` (from the repository root)."""

import sys

from .cli import main

sys.exit(main())
