"""Build and drive the socket-fragmenting LD_PRELOAD shim (``sockop_preload.c``).

Why: on loopback, ``send``/``recv``/``sendfile`` practically never move fewer bytes than
asked, so a server that mishandles partial I/O passes every test and then breaks on a real
network. Running the server under this shim makes every socket transfer move at most half
of what was requested (and, optionally, injects ``EAGAIN``/``EINTR``), so partial I/O
becomes the normal case that the test suite exercises constantly.

Typical use from a test::

    so = build_shim(tmp_path)
    stats = tmp_path / "shim.stats"
    proc = subprocess.Popen([...], env=shim_env(so, stats, eintr_every=7))
    ...
    assert read_stats(stats).send_split > 0

The counter file is a shared ``mmap`` that the server process and all its forked workers
increment atomically, so :func:`read_stats` can be called at any time, even while the
server is still running.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SOURCE",
    "STATS_FORMAT",
    "ShimStats",
    "build_shim",
    "read_stats",
    "shim_env",
]

SOURCE: Path = Path(__file__).resolve().with_name("sockop_preload.c")
"""The C source of the shim."""

SO_NAME = "sockop_preload.so"

STATS_FORMAT = "<8Q"
"""Counter file layout: 8 little-endian uint64 (see :class:`ShimStats` for the order)."""

_STATS_SIZE = struct.calcsize(STATS_FORMAT)


@dataclass(frozen=True)
class ShimStats:
    """A snapshot of the shim's counters (field order == on-disk order).

    ``*_calls`` counts wrapped socket calls that were passed on to libc; ``*_split``
    counts those where fewer bytes than requested were passed on. Injected failures are
    counted only in ``eagain_injected`` / ``eintr_injected``.
    """

    send_calls: int = 0
    send_split: int = 0
    recv_calls: int = 0
    recv_split: int = 0
    sendfile_calls: int = 0
    sendfile_split: int = 0
    eagain_injected: int = 0
    eintr_injected: int = 0


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("cannot build the socket shim: no C compiler ($CC, cc, gcc) found")
    return cc


def build_shim(out_dir: Path) -> Path:
    """Compile the shim into ``out_dir/sockop_preload.so`` and return that path.

    An existing ``.so`` newer than the source is reused, so a session-scoped fixture (or
    repeated calls) pay the compile cost once. The build goes to a temporary name and is
    renamed into place, so concurrent builders (e.g. pytest-xdist workers) never see a
    half-written library. Raises :class:`RuntimeError` with the compiler output on failure.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / SO_NAME
    try:
        if target.stat().st_mtime > SOURCE.stat().st_mtime:
            return target
    except FileNotFoundError:
        pass
    fd, tmp_name = tempfile.mkstemp(prefix=".sockop_preload.", suffix=".so", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [
        _compiler(),
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-o",
        str(tmp),
        str(SOURCE),
        "-ldl",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"building the socket shim failed (exit {proc.returncode}):\n"
                f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            )
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_stats(path: Path) -> ShimStats:
    """Read the shim's counter file; all zeros if it is missing or shorter than 64 bytes."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_STATS_SIZE)
    except FileNotFoundError:
        return ShimStats()
    if len(data) < _STATS_SIZE:
        return ShimStats()
    return ShimStats(*struct.unpack(STATS_FORMAT, data))


def shim_env(
    so_path: Path,
    stats_path: Path,
    *,
    eagain_every: int | None = None,
    eintr_every: int | None = None,
    disable: bool = False,
) -> dict[str, str]:
    """Return a copy of ``os.environ`` that runs a child process under the shim.

    Sets ``LD_PRELOAD`` (prepended to any existing value) and ``AWS_SHIM_STATS``; with
    ``eagain_every=N`` every Nth send-family call on a non-blocking socket fails with
    ``EAGAIN``; with ``eintr_every=N`` every Nth wrapped socket call fails with ``EINTR``;
    ``disable=True`` turns splitting off (calls are still counted). Stale ``AWS_SHIM_*``
    switches inherited from the current environment are removed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_SHIM_")}
    preload = str(Path(so_path).resolve())
    old = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{preload} {old}" if old else preload
    env["AWS_SHIM_STATS"] = str(stats_path)
    if eagain_every is not None:
        env["AWS_SHIM_EAGAIN_EVERY"] = str(int(eagain_every))
    if eintr_every is not None:
        env["AWS_SHIM_EINTR_EVERY"] = str(int(eintr_every))
    if disable:
        env["AWS_SHIM_DISABLE"] = "1"
    return env
