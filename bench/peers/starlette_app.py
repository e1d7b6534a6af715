"""Starlette static-file peer for bench/http_bench.py, run under uvicorn.

The root comes from the BENCH_ROOT environment variable because uvicorn imports the app
by name and passes no arguments. ``StaticFiles`` is mounted on /static and /dynamic so
the URLs match every other server in the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles


def build_app(root: Path) -> Starlette:
    """Mount both trees exactly as the other servers expose them."""
    return Starlette(
        routes=[
            Mount("/static", app=StaticFiles(directory=root / "static"), name="static"),
            Mount("/dynamic", app=StaticFiles(directory=root / "dynamic"), name="dynamic"),
        ]
    )


app = build_app(Path(os.environ.get("BENCH_ROOT", ".")))
