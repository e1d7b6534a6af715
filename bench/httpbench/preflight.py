"""Before anything is timed: the tools exist, and every server serves the right bytes."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Sequence

from .procs import run_cmd, running
from .servers import Context, ServerError, ServerSpec, missing_modules

INSTALL_HINT = "pip install -e '.[bench]'"
APT_HINT = "apt-get update && apt-get install -y wrk nginx-light"


def apt_install(packages: Sequence[str]) -> bool:
    """Install Debian packages, refreshing the index once if the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", *packages]
    print(f"preflight: {' '.join(cmd)}")
    if subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode == 0:
        return True
    print("preflight: install failed, running apt-get update first")
    subprocess.run(["apt-get", "update"], env=env, check=False, stdout=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL).returncode == 0


def ensure_tools() -> None:
    """wrk, nginx and taskset are required; install them as root, else tell how and exit."""
    missing = [tool for tool in ("wrk", "nginx", "taskset") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        print(f"missing {', '.join(missing)}; install with (as root):\n  {APT_HINT}")
        sys.exit(1)
    packages = {"wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}
    if not apt_install([packages[tool] for tool in missing]):
        print(f"could not install {', '.join(missing)}; try:\n  {APT_HINT}")
        sys.exit(1)


def nginx_has_threads() -> bool:
    """`aio threads` needs nginx built --with-threads; `nginx -V` lists configure flags."""
    return "--with-threads" in run_cmd(["nginx", "-V"]).stderr


def choose_nginx_aio() -> tuple[str, str | None]:
    """Prefer `aio threads` (what aws is measured against); fall back to `aio on` loudly."""
    if nginx_has_threads():
        return "threads", None
    if os.geteuid() == 0:
        for pkg in ("nginx", "nginx-core"):
            if apt_install([pkg]) and nginx_has_threads():
                return "threads", f"installed Debian package `{pkg}` to get `aio threads`"
    return "on", (
        "nginx in use is not built --with-threads: /dynamic/ uses `aio on` "
        "instead of `aio threads`, so dynamic rows are not the intended baseline"
    )


def verify_bodies(ctx: Context, spec: ServerSpec, port: int) -> None:
    """Byte-compare each file the server will be timed on, so speed never hides wrong data."""
    trees = ("static", "dynamic") if not spec.python_peer else ("static",)
    for tree in trees:
        for name in ("1k.bin", "64m.bin"):
            url_path = f"/{tree}/{name}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{url_path}", timeout=60) as r:
                digest = hashlib.sha256(r.read()).hexdigest()
            if digest != ctx.digests[url_path]:
                raise ServerError(f"body of {url_path} differs from the generated file")


def preflight_server(ctx: Context, spec: ServerSpec) -> str | None:
    """Start, probe and verify one server; None if usable, else the reason for its row."""
    absent = missing_modules(spec)
    if absent:
        print(f"  {spec.name}: not installed ({', '.join(absent)}); run: {INSTALL_HINT}")
        return f"not installed ({', '.join(absent)}): {INSTALL_HINT}"
    try:
        with running(ctx, spec) as (port, _):
            verify_bodies(ctx, spec, port)
    except ServerError as exc:
        prefix = "aws failed to start" if spec.name == "aws" else f"{spec.name} failed"
        print(f"  {spec.name}: {prefix}: {exc}")
        return f"{prefix}: {exc}"
    except (OSError, http.client.HTTPException) as exc:
        print(f"  {spec.name}: body check failed: {exc}")
        return f"body check failed: {exc}"
    print(f"  {spec.name}: ok (bodies verified)")
    return None
