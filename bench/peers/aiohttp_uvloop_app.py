"""aiohttp static-file peer on uvloop: the same app as aiohttp_app.py, another event loop.

This is what an aiohttp user who cares about speed runs: uvloop's policy is installed
before aiohttp creates its loop, everything else (routes, sendfile, no access log) is
identical, so the difference between the two rows is the event loop alone.
"""

from __future__ import annotations

import asyncio

import uvloop
from aiohttp_app import main  # this script's own directory is first on sys.path

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    main()
