"""The server as its own unprivileged user, serving files another user owns: the way it
is deployed (a service user reading root's files). This kernel answers ``cachestat``
only for files the caller could write or owns, so here every page-cache question goes
to the ``preadv(RWF_NOWAIT)`` probes instead.

The suite runs as root; these tests drop the server to ``nobody``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from aws import transfer
from tests.conftest import REPO, DocRoot, make_content, start_server, stop_server
from tests.ops import mode_of
from tests.test_cold import evict

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20
SIZES = {"small.bin": 20_000, "big.bin": 12 * MiB + 5}


# How a service manager starts it (systemd's User=, runuser): util-linux's setpriv.
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to start the server as nobody"
    if shutil.which("setpriv") is None:
        return "no setpriv (util-linux) here"
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", "import aws, aiobind"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"nobody cannot run this checkout's interpreter: {probe.stderr.strip()[-200:]}"
    return None


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


@pytest.fixture(scope="module")
def root_owned() -> Iterator[DocRoot]:
    """Files owned by root, mode 644, in folders of 755 under /var/tmp (a real disk)."""
    why = _why_not()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="aws-nobody-", dir="/var/tmp"))
    base.chmod(0o755)
    root = DocRoot(base)
    try:
        for prefix in ("static", "dynamic"):
            (base / prefix).mkdir(mode=0o755)
            for name, size in SIZES.items():
                data = make_content(size)
                (base / prefix / name).write_bytes(data)
                (base / prefix / name).chmod(0o644)
                root.contents[f"/{prefix}/{name}"] = data
        yield root
    finally:
        shutil.rmtree(base)


def test_cachestat_is_refused_to_nobody_on_roots_files(root_owned: DocRoot) -> None:
    """The kernel fact the fallback is for (if a kernel allows it again, say so here)."""
    script = (
        "import os, sys\n"
        "from aiobind import cachestat\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "try:\n"
        "    cachestat(fd, 0, 0)\n"
        "    print('allowed')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    out = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", script, str(root_owned.path / "static" / "small.bin")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out in (str(errno.EPERM), str(errno.ENOSYS)), out


@pytest.mark.parametrize("cold", [False, True], ids=["cached", "evicted"])
def test_nobody_serves_roots_files_whole_and_in_ranges(
    root_owned: DocRoot, cold: bool, mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path / "stats"
        stats.touch()
        stats.chmod(0o666)  # the shim, inside the server, writes its counts here
        tmp_path.chmod(0o755)
    srv = start_server(
        root_owned.path,
        docroot=root_owned,
        mode=mode,
        shim=shim,
        stats_path=stats,
        workers=1,
        wrapper=AS_NOBODY,
    )
    try:
        with requests.Session() as http:
            for prefix in ("static", "dynamic"):
                for name in SIZES:
                    path = f"/{prefix}/{name}"
                    if cold:
                        evict(root_owned.path / prefix / name)
                    resp = http.get(srv.url + path, timeout=30)
                    assert resp.status_code == 200, (path, resp.status_code)
                    assert resp.content == root_owned.content(path), path
                    ranged = http.get(srv.url + path, headers={"Range": "bytes=4097-"}, timeout=30)
                    assert ranged.status_code == 206, path
                    assert ranged.content == root_owned.content(path)[4097:], path
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
    assert "Traceback" not in srv.log() and "cachestat" not in srv.log(), srv.log()


# -- the fallback alone, in this process (root), with cachestat refused -------------------


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def no(fd: int, offset: int, length: int) -> object:
        raise OSError(errno.EPERM, "cachestat: Operation not permitted")

    monkeypatch.setattr(transfer, "cachestat", no)


def test_probes_answer_where_cachestat_is_refused(refused: None) -> None:
    base = Path(tempfile.mkdtemp(prefix="aws-probe-", dir="/var/tmp"))
    try:
        path = base / "f.bin"
        path.write_bytes(make_content(6 * MiB))
        fd = os.open(path, os.O_RDONLY)
        try:
            evict(path)
            assert transfer.warm_until(fd, 0, 6 * MiB) == 0
            assert transfer.cold_until(fd, 0, 3 * MiB) == 3 * MiB  # both ends cold: all
            os.pread(fd, 6 * MiB, 0)
            assert transfer.warm_until(fd, 0, 6 * MiB) == transfer.PROBE_SPAN
            assert transfer.warm_until(fd, 5 * MiB, 6 * MiB) == 6 * MiB
            # a hole the probes land on: the span is cold, and the cold range ends at
            # the first span that is warm again. The file is read again without
            # readahead, 64 KiB at a time: DONTNEED cannot take part of a large folio,
            # and one read of 6 MiB may make folios wider than the hole.
            evict(path)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for pos in range(0, 6 * MiB, 64 << 10):
                if pos != 2 * MiB:
                    os.pread(fd, 64 << 10, pos)
            assert transfer.warm_until(fd, 2 * MiB, 6 * MiB) == 2 * MiB
            assert transfer.cold_until(fd, 2 * MiB, 4 * MiB) == 2 * MiB + (64 << 10)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(base)


def test_no_cachestat_on_the_kernel_turns_it_off_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def missing(fd: int, offset: int, length: int) -> object:
        calls.append(fd)
        raise OSError(errno.ENOSYS, "cachestat: Function not implemented")

    monkeypatch.setattr(transfer, "cachestat", missing)
    monkeypatch.setattr(transfer, "_COUNTING", [True])
    with tempfile.TemporaryFile(dir="/var/tmp") as f:
        f.write(b"x" * 8192)
        f.flush()
        assert transfer.warm_until(f.fileno(), 0, 8192) == 8192  # the probes said so
        assert transfer.warm_until(f.fileno(), 0, 8192) == 8192
    assert len(calls) == 1  # asked once; after ENOSYS, only the probes


def test_a_file_system_without_nowait_reads_counts_as_warm(
    refused: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int) -> bool:
        raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

    monkeypatch.setattr(transfer, "uptodate_at", unsupported)
    with tempfile.TemporaryFile(dir="/var/tmp") as f:
        f.write(b"x" * 8192)
        f.flush()
        assert transfer.warm_until(f.fileno(), 0, 8192) == 8192
