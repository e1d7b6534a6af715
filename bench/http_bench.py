#!/usr/bin/env python3
"""``python bench/http_bench.py ...`` is ``python -m bench.httpbench ...``, kept for habit."""

import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
if str(REPO_DIR) not in sys.path:  # as a script, sys.path[0] is bench/ and the package is not
    sys.path.insert(0, str(REPO_DIR))

from bench.httpbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
