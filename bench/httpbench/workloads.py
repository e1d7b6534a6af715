"""The wrk scenarios and the random files they fetch (with the digests bodies must match)."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

SMALL_SIZE = 1024
LARGE_SIZE = 64 * 1024 * 1024
MIB = 1024 * 1024
IDLE_CONNECTIONS = 10_000


@dataclass(frozen=True)
class Workload:
    """One wrk scenario; `bar` is the aws/nginx ratio aws is expected to reach.

    `idle`: keep-alive connections the bench process opens (one request each) and holds
    idle for the whole run, so the row shows what many quiet clients cost the busy ones.
    """

    key: str
    title: str
    path: str
    conns: int
    close: bool
    bytes_metric: bool
    bar: float
    aws_nginx_only: bool
    tls: bool = False  # over HTTPS, to the server's TLS listener (same certificate for all)
    idle: int = 0
    headers: tuple[str, ...] = ()  # sent with every request ("Name: value")

    @property
    def unit(self) -> str:
        """Unit of the headline figure: throughput for big files, rate for small ones."""
        return "MiB/s" if self.bytes_metric else "req/s"

    @property
    def cost_unit(self) -> str:
        """Unit of the server CPU figure beside the headline one."""
        return "µs/MiB" if self.bytes_metric else "µs/req"


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="ka-1k",
        title="1 KiB static, keep-alive, c50",
        path="/static/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=1.0,
        aws_nginx_only=False,
    ),
    Workload(
        key="close-1k",
        title="1 KiB static, Connection: close, c50",
        path="/static/1k.bin",
        conns=50,
        close=True,
        bytes_metric=False,
        bar=0.6,
        aws_nginx_only=False,
    ),
    Workload(
        key="static-64m",
        title="64 MiB static, c4",
        path="/static/64m.bin",
        conns=4,
        close=False,
        bytes_metric=True,
        bar=0.95,
        aws_nginx_only=False,
    ),
    Workload(
        key="dyn-1k",
        title="1 KiB /dynamic/, keep-alive, c50",
        path="/dynamic/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=1.0,  # issue 15: against nginx with aio threads
        aws_nginx_only=True,
    ),
    Workload(
        key="dyn-64m",
        title="64 MiB /dynamic/, c4",
        path="/dynamic/64m.bin",
        conns=4,
        close=False,
        bytes_metric=True,
        bar=1.0,
        aws_nginx_only=True,
    ),
    # aws reads and SSL_writes /static/ where the kernel has no kTLS; nginx's sendfile
    # goes over kTLS where it has (ssl_conf_command Options KTLS). The report says which.
    Workload(
        key="tls-ka-1k",
        title="HTTPS 1 KiB static, keep-alive, c50",
        path="/static/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=0.8,
        aws_nginx_only=True,
        tls=True,
    ),
    Workload(
        key="tls-static-64m",
        title="HTTPS 64 MiB static, c4",
        path="/static/64m.bin",
        conns=4,
        close=False,
        bytes_metric=True,
        bar=0.8,
        aws_nginx_only=True,
        tls=True,
    ),
    # How the cost grows: the ka-1k and static-64m rows again, with many more connections.
    Workload(
        key="ka-1k-idle",
        title=f"1 KiB static, keep-alive, c50 + {IDLE_CONNECTIONS:,} idle",
        path="/static/1k.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=1.0,
        aws_nginx_only=True,
        idle=IDLE_CONNECTIONS,
    ),
    Workload(
        key="static-64m-c256",
        title="64 MiB static, c256",
        path="/static/64m.bin",
        conns=256,
        close=False,
        bytes_metric=True,
        bar=0.95,
        aws_nginx_only=True,
    ),
    # The site features on the hot path: a precompressed variant picked by Accept-Encoding
    # (nginx: gzip_static on), and two ranges answered as multipart/byteranges.
    Workload(
        key="gz-1k",
        title="1 KiB static .gz variant (Accept-Encoding: gzip), keep-alive, c50",
        path="/static/page.html",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=0.9,
        aws_nginx_only=True,
        headers=("Accept-Encoding: gzip",),
    ),
    Workload(
        key="ranges-2",
        title="two 1 KiB ranges of 64 MiB static (multipart), keep-alive, c50",
        path="/static/64m.bin",
        conns=50,
        close=False,
        bytes_metric=False,
        bar=0.8,
        aws_nginx_only=True,
        headers=("Range: bytes=0-1023,1048576-1049599",),
    ),
)

PAGE = b"<!DOCTYPE html><html><body>" + b"<p>a line of a page</p>\n" * 40 + b"</body></html>\n"


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync so O_DIRECT reads see the data on disk, not dirty pages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    path.chmod(0o644)


def make_root(tmp: Path) -> tuple[Path, dict[str, str]]:
    """Random 1 KiB and 64 MiB files under static/ and dynamic/, plus their sha256."""
    root = tmp / "root"
    digests: dict[str, str] = {}
    blobs = {"1k.bin": os.urandom(SMALL_SIZE), "64m.bin": os.urandom(LARGE_SIZE)}
    for tree in ("static", "dynamic"):
        for name, data in blobs.items():
            write_file(root / tree / name, data)
            digests[f"/{tree}/{name}"] = hashlib.sha256(data).hexdigest()
    # gz-1k: the page and its variant (mtime: the variant is written last, so not older).
    gz = gzip.compress(PAGE, mtime=0)
    write_file(root / "static" / "page.html", PAGE)
    write_file(root / "static" / "page.html.gz", gz)
    digests["/static/page.html"] = hashlib.sha256(PAGE).hexdigest()
    digests["/static/page.html.gz"] = hashlib.sha256(gz).hexdigest()
    for path in (tmp, root, root / "static", root / "dynamic"):
        path.chmod(0o755)  # nginx workers drop to `nobody` and must read the tree
    return root, digests
