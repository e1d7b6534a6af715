"""aiohttp static-file peer for bench/http_bench.py.

Serves ROOT/static under /static and ROOT/dynamic under /dynamic with aiohttp's own
``add_static`` (which uses sendfile), so the benchmark compares against what an aiohttp
user would get out of the box. Access logging is off because the other servers under
test do not log requests either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def build_app(root: Path) -> web.Application:
    """Mount both trees exactly as the other servers expose them."""
    app = web.Application()
    app.router.add_static("/static", root / "static")
    app.router.add_static("/dynamic", root / "dynamic")
    return app


def main() -> None:
    """Parse --root/--host/--port and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(args.root), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
