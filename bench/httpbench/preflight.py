"""Before anything is timed: the tools exist, and every server serves the right bytes."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import sys
import urllib.request

from .procs import run_cmd, running
from .servers import Context, ServerError, ServerSpec, missing_modules

INSTALL_HINT = "pip install -e '.[bench]'"
# Installing them is the Makefile's job (sysdeps-bench); keep the names in step with it.
DEBIAN_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "taskset": "util-linux"}


def ensure_tools() -> None:
    """wrk, nginx and taskset are required; if one is missing, say how to get it and exit 1."""
    missing = [tool for tool in DEBIAN_PACKAGES if shutil.which(tool) is None]
    if not missing:
        return
    packages = " ".join(DEBIAN_PACKAGES[tool] for tool in missing)
    print(
        f"missing {', '.join(missing)}; install with `make sysdeps-bench` (as root), or:\n"
        f"  sudo apt-get update && sudo apt-get install -y {packages}",
        file=sys.stderr,
    )
    sys.exit(1)


def nginx_has_threads() -> bool:
    """`aio threads` needs nginx built --with-threads; `nginx -V` lists configure flags."""
    return "--with-threads" in run_cmd(["nginx", "-V"]).stderr


def choose_nginx_aio() -> tuple[str, str | None]:
    """Prefer `aio threads` (what aws is measured against); fall back to `aio on` loudly."""
    if nginx_has_threads():
        return "threads", None
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
    if spec.python_peer:
        return  # the gz-1k and ranges-2 rows are aws and nginx only
    gz = urllib.request.Request(
        f"http://127.0.0.1:{port}/static/page.html", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(gz, timeout=60) as r:  # urllib does not decode: raw bytes
        if hashlib.sha256(r.read()).hexdigest() != ctx.digests["/static/page.html.gz"]:
            raise ServerError("/static/page.html with Accept-Encoding: gzip is not the .gz")


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
