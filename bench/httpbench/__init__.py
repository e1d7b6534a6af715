"""HTTP file-serving benchmark: aws against nginx and common Python servers.

Run it from the repository root as ``python -m bench.httpbench`` (see ``cli``). Modules
by job: ``workloads`` (the scenarios and the files they fetch), ``servers`` (what each
server is and how it is launched), ``procs`` (starting, probing and stopping them),
``preflight`` (tools present, bodies verified), ``wrk`` (one timed run and its CPU
accounting), ``report`` and ``chart`` (results.md and results.png), ``cli`` (options
and the round loop).
"""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
