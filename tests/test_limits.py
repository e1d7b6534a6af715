"""RLIMIT_NOFILE is raised at start to what --max-connections needs, and a hard limit
too low to allow that is named in one warning, with the server serving anyway."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

from aws.config import Config
from aws.limits import needed
from tests.conftest import DocRoot, start_server, stop_server


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no Max open files line")


def _limit(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_for_every_worker(docroot: DocRoot) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = needed(Config(max_connections=3000))
    assert want <= hard, "this machine's hard limit is too low for the test"
    srv = start_server(
        docroot.path,
        docroot=docroot,
        workers=2,
        extra=["--max-connections", "3000"],
        preexec=_limit(256, hard),
    )
    try:
        assert "raised from 256 to" in srv.log()
        for pid in [srv.proc.pid, *srv.worker_pids()]:
            assert _nofile(pid) == (want, hard)
        assert srv.alive()
    finally:
        assert stop_server(srv.proc) == 0


def test_a_hard_limit_too_low_is_named_and_the_server_still_serves(docroot: DocRoot) -> None:
    # More than fs.nr_open allows: not even root may raise the hard limit that far.
    many = str(4 * 1024 * 1024)
    srv = start_server(
        docroot.path,
        docroot=docroot,
        workers=1,
        extra=["--max-connections", many],
        preexec=_limit(200, 300),
    )
    try:
        warning = srv.wait_for_log(r"WARNING aws\.limits: .*", 5)
        assert warning is not None, srv.log()
        assert f"--max-connections {many} needs" in warning.group(0)
        assert "hard limit (RLIMIT_NOFILE) is 300: serving with 300" in warning.group(0)
        assert "LimitNOFILE=" in warning.group(0)
        assert _nofile(srv.proc.pid) == (300, 300)
        assert srv.alive()
    finally:
        assert stop_server(srv.proc) == 0
