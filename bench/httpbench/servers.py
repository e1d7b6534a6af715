"""The servers under test: how each is launched, and the nginx configuration it gets."""

from __future__ import annotations

import importlib.util
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import BENCH_DIR
from .workloads import Workload

PEERS_DIR = BENCH_DIR / "peers"
NGINX_CONNECTIONS = 4096
# Rows with many idle connections: room for them, wrk's and the open files besides.
MANY_CONNECTIONS = 20_000
FD_MARGIN = 1024
IDLE_KEEPALIVE_S = 75  # nginx.conf's keepalive_timeout; aws's default 15 s would drop them


@dataclass
class Context:
    """Run-wide state: temp dirs, expected digests and the nginx aio mode in use."""

    tmp: Path
    root: Path
    digests: dict[str, str]
    nginx_aio: str
    notes: list[str] = field(default_factory=list)
    log_seq: int = 0
    tls: TlsFiles | None = None  # one certificate for every server's HTTPS listener
    tls_port: int | None = None  # set for the cell being measured when it is over HTTPS


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def make_cert(tmp: Path) -> TlsFiles | None:
    """A self-signed P-256 certificate for 127.0.0.1 (openssl CLI; None if it fails).
    wrk does not verify it; the readiness probe does, against the certificate itself."""
    files = TlsFiles(tmp / "tls-cert.pem", tmp / "tls-key.pem")
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    argv += ["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
    argv += ["-addext", "subjectAltName=IP:127.0.0.1"]
    argv += ["-keyout", str(files.key), "-out", str(files.cert)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    files.key.chmod(0o644)  # nginx reads it as root before dropping privileges; a temp dir
    return files


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


def ktls_note() -> str:
    """Which TLS path this machine offers, for the report: say so rather than guess."""
    if not Path("/sys/module/tls").is_dir():
        return "HTTPS rows: this kernel has no tls module, so no kTLS: both encrypt in user space"
    return "HTTPS rows: the kernel has the tls module (kTLS possible; see aws's TLS line)"


def nginx_conf(ctx: Context, port: int, connections: int = NGINX_CONNECTIONS) -> Path:
    """Tuned single-worker nginx: sendfile for static/, thread-pool aio+directio for dynamic/.

    `connections` above the default (the idle-connection rows) also raises the worker's
    descriptor limit, which nginx otherwise leaves at what it inherited.
    """
    tmp = ctx.tmp / "nginx"
    tmp.mkdir(exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    tls_server = ""
    if ctx.tls_port is not None and ctx.tls is not None:
        # TLS 1.3 only, the suites OpenSSL prefers by default (aws's too); kTLS when the
        # kernel and OpenSSL offer it, so /static/ keeps using sendfile.
        tls_server = f"""
    server {{
        listen 127.0.0.1:{ctx.tls_port} ssl;
        ssl_certificate {ctx.tls.cert};
        ssl_certificate_key {ctx.tls.key};
        ssl_protocols TLSv1.3;
        ssl_conf_command Options KTLS;
        root {ctx.root};
        location /static/ {{ sendfile on; tcp_nopush on; }}
    }}"""
    rlimit = (
        f"worker_rlimit_nofile {nofile_for(connections)};\n"
        if connections > NGINX_CONNECTIONS
        else ""
    )
    conf = f"""worker_processes 1;
{rlimit}daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {connections}; }}
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
        location /static/ {{ sendfile on; tcp_nopush on; gzip_static on; }}
        location /dynamic/ {{
            sendfile off; aio {ctx.nginx_aio}; directio 4k; output_buffers 2 1m;
        }}
    }}{tls_server}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def nofile_for(connections: int) -> int:
    """Descriptors for `connections` plus files, capped at the hard limit nginx inherits:
    without CAP_SYS_RESOURCE even root cannot go above it, and nginx would log an alert."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = connections + FD_MARGIN
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def nginx_argv(ctx: Context, port: int, connections: int = NGINX_CONNECTIONS) -> list[str]:
    """nginx with a prefix and error log inside the temp dir (never touches /etc or /var/log)."""
    tmp = ctx.tmp / "nginx"
    conf = nginx_conf(ctx, port, connections)
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
    if ctx.tls_port is not None and ctx.tls is not None:
        opts += ["--tls-port", str(ctx.tls_port), "--tls-cert", str(ctx.tls.cert)]
        opts += ["--tls-key", str(ctx.tls.key)]
    return [sys.executable, "-m", "aws", *opts, "--root", str(ctx.root)]


def aws_metrics_argv(ctx: Context, port: int) -> list[str]:
    """aws with its metrics on (counting every response in shared memory; nobody scrapes)
    and the access log off: the row to compare with ``aws`` for the cost of counting."""
    return [*aws_argv(ctx, port), "--metrics", "127.0.0.1:0"]


def aws_pure_argv(ctx: Context, port: int) -> list[str]:
    """aws on its Python path alone (``--no-fast-path``): what a request that does not
    repeat the connection's last one costs, since wrk repeats the same request."""
    return [*aws_argv(ctx, port), "--no-fast-path"]


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


def aiohttp_uvloop_argv(ctx: Context, port: int) -> list[str]:
    """The same aiohttp app on uvloop (bench/peers/aiohttp_uvloop_app.py)."""
    app = str(PEERS_DIR / "aiohttp_uvloop_app.py")
    return [sys.executable, app, "--root", str(ctx.root), "--port", str(port)]


def granian_argv(ctx: Context, port: int) -> list[str]:
    """granian's own static-file route (Rust core) in one worker with one thread of each kind.

    The ASGI app in bench/peers/granian_app.py only 404s: /static is answered by granian
    before Python is involved, which is how a granian user serves files fast.
    """
    listen = f"--interface asgi --host 127.0.0.1 --port {port} --http 1 --no-ws"
    one_of_each = (
        "--workers 1 --runtime-mode st --runtime-threads 1 --runtime-blocking-threads 1"
        " --blocking-threads 1"
    )
    quiet = "--log-level warning --no-access-log"
    static = ["--static-path-route", "/static", "--static-path-mount", str(ctx.root / "static")]
    opts = [*f"{listen} {one_of_each} {quiet}".split(), *static, "--working-dir", str(PEERS_DIR)]
    return [sys.executable, "-m", "granian", *opts, "granian_app:app"]


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
        name="aws-pure",
        python_peer=False,
        modules=(),
        argv=aws_pure_argv,
        env=aws_env,
        announces=True,
    ),
    ServerSpec(
        name="http.server", python_peer=True, modules=("http.server",), argv=http_server_argv
    ),
    ServerSpec(name="aiohttp", python_peer=True, modules=("aiohttp",), argv=aiohttp_argv),
    ServerSpec(
        name="aiohttp+uvloop",
        python_peer=True,
        modules=("aiohttp", "uvloop"),
        argv=aiohttp_uvloop_argv,
    ),
    ServerSpec(
        name="uvicorn+starlette",
        python_peer=True,
        modules=("uvicorn", "starlette"),
        argv=uvicorn_argv,
        env=uvicorn_env,
    ),
    ServerSpec(name="granian", python_peer=True, modules=("granian",), argv=granian_argv),
)


# The servers that can do the dynamic workloads.
NO_PEERS = ("aws", "aws+metrics", "aws-pure", "nginx")


def servers_for(wl: Workload, specs: Sequence[ServerSpec]) -> list[ServerSpec]:
    """Dynamic workloads are only meaningful for aws and nginx (the peers have no O_DIRECT);
    the growth rows compare aws with nginx alone."""
    if wl.idle or wl.key == "static-64m-c256":
        return [s for s in specs if s.name in ("aws", "nginx")]
    if wl.aws_nginx_only:
        return [s for s in specs if s.name in NO_PEERS]
    return list(specs)


def with_room_for_many(spec: ServerSpec) -> ServerSpec:
    """The spec for the idle-connection rows: limits raised so 10,000 idle clients fit.

    Only aws and nginx run those rows; aws also gets nginx's keep-alive timeout so no idle
    connection expires during the run (the row fails loudly if one does).
    """
    if spec.name == "nginx":
        return replace(spec, argv=lambda ctx, port: nginx_argv(ctx, port, MANY_CONNECTIONS))
    if spec.name == "aws":
        many = ["--max-connections", str(MANY_CONNECTIONS)]
        many += ["--keepalive-timeout", str(IDLE_KEEPALIVE_S)]
        return replace(spec, argv=lambda ctx, port: [*aws_argv(ctx, port), *many])
    raise ValueError(f"{spec.name} has no many-connections configuration")
