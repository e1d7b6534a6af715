"""The servers under test: how each is launched, and the nginx configuration it gets."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import BENCH_DIR
from .workloads import Workload

PEERS_DIR = BENCH_DIR / "peers"


@dataclass
class Context:
    """Run-wide state: temp dirs, expected digests and the nginx aio mode in use."""

    tmp: Path
    root: Path
    digests: dict[str, str]
    nginx_aio: str
    notes: list[str] = field(default_factory=list)
    log_seq: int = 0


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server; `modules` are imports it needs (Python peers only).

    `announces`: it prints the "listening on http://HOST:PORT" line tests/harness.py waits
    for, so it is started through the harness on port 0 (aws).
    """

    name: str
    python_peer: bool
    modules: tuple[str, ...]
    argv: Callable[[Context, int], list[str]]
    env: Callable[[Context], dict[str, str]] = field(default=lambda ctx: {})
    announces: bool = False


class ServerError(Exception):
    """The server could not be started or answered wrongly; message goes into the report."""


def missing_modules(spec: ServerSpec) -> list[str]:
    """Which of a peer's imports are absent, so it can be skipped with a visible row."""
    return [mod for mod in spec.modules if importlib.util.find_spec(mod) is None]


def nginx_conf(ctx: Context, port: int) -> Path:
    """Tuned single-worker nginx: sendfile for static/, thread-pool aio+directio for dynamic/."""
    tmp = ctx.tmp / "nginx"
    tmp.mkdir(exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 1s;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {ctx.root};
        location /static/ {{ sendfile on; tcp_nopush on; }}
        location /dynamic/ {{
            sendfile off; aio {ctx.nginx_aio}; directio 4k; output_buffers 2 1m;
        }}
    }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_argv(ctx: Context, port: int) -> list[str]:
    """nginx with a prefix and error log inside the temp dir (never touches /etc or /var/log)."""
    tmp = ctx.tmp / "nginx"
    conf = nginx_conf(ctx, port)
    return ["nginx", "-p", f"{tmp}/", "-e", f"{tmp}/error.log", "-c", str(conf)]


def aws_env(ctx: Context) -> dict[str, str]:
    """The package is installed in the interpreter that runs the benchmark."""
    return {}


def aws_argv(ctx: Context, port: int) -> list[str]:
    """The server under test, exactly as deployed but with a single worker.

    Log level info, because the listening line the harness waits for is an info line; aws
    logs nothing per request at that level, only failures and start/stop.
    """
    opts = f"--host 127.0.0.1 --port {port} --workers 1 --log-level info".split()
    return [sys.executable, "-m", "aws", *opts, "--root", str(ctx.root)]


def aws_metrics_argv(ctx: Context, port: int) -> list[str]:
    """aws with its metrics on (counting every response in shared memory; nobody scrapes)
    and the access log off: the row to compare with ``aws`` for the cost of counting."""
    return [*aws_argv(ctx, port), "--metrics", "127.0.0.1:0"]


def http_server_argv(ctx: Context, port: int) -> list[str]:
    """Stdlib baseline: what `python -m http.server` gives with zero effort."""
    opts = f"{port} --bind 127.0.0.1".split()
    return [sys.executable, "-m", "http.server", *opts, "--directory", str(ctx.root)]


def aiohttp_argv(ctx: Context, port: int) -> list[str]:
    """aiohttp's add_static (sendfile-based) via bench/peers/aiohttp_app.py."""
    app = str(PEERS_DIR / "aiohttp_app.py")
    return [sys.executable, app, "--root", str(ctx.root), "--port", str(port)]


def uvicorn_argv(ctx: Context, port: int) -> list[str]:
    """Starlette StaticFiles under a single uvicorn process, access log off like the others."""
    opts = f"--host 127.0.0.1 --port {port} --log-level warning --no-access-log".split()
    app = ["starlette_app:app", "--app-dir", str(PEERS_DIR)]
    return [sys.executable, "-m", "uvicorn", *app, *opts]


def uvicorn_env(ctx: Context) -> dict[str, str]:
    """uvicorn imports the app by name, so the root travels in the environment."""
    return {"BENCH_ROOT": str(ctx.root)}


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(name="nginx", python_peer=False, modules=(), argv=nginx_argv),
    ServerSpec(
        name="aws", python_peer=False, modules=(), argv=aws_argv, env=aws_env, announces=True
    ),
    ServerSpec(
        name="aws+metrics",
        python_peer=False,
        modules=(),
        argv=aws_metrics_argv,
        env=aws_env,
        announces=True,
    ),
    ServerSpec(
        name="http.server", python_peer=True, modules=("http.server",), argv=http_server_argv
    ),
    ServerSpec(name="aiohttp", python_peer=True, modules=("aiohttp",), argv=aiohttp_argv),
    ServerSpec(
        name="uvicorn+starlette",
        python_peer=True,
        modules=("uvicorn", "starlette"),
        argv=uvicorn_argv,
        env=uvicorn_env,
    ),
)


NO_PEERS = ("aws", "aws+metrics", "nginx")  # the servers that can do the dynamic workloads


def servers_for(wl: Workload, specs: Sequence[ServerSpec]) -> list[ServerSpec]:
    """Dynamic workloads are only meaningful for aws and nginx (the peers have no O_DIRECT)."""
    if wl.aws_nginx_only:
        return [s for s in specs if s.name in NO_PEERS]
    return list(specs)
