"""The command line and the supervisor: start-up errors, the start line, access log,
and a worker that dies being replaced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests import harness
from tests.conftest import REPO, DocRoot, start_server, stop_server


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "aws", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_option() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in (
        "--port",
        "--root",
        "--workers",
        "--host",
        "--log-level",
        "--access-log",
        "--header-timeout",
        "--keepalive-timeout",
        "--send-timeout",
        "--drain-timeout",
        "--max-connections",
        "--directio",
    ):
        assert flag in out.stdout


def test_missing_root_stops_at_once_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    out = run_cli("--root", str(missing), "--port", "0")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "not a directory" in lines[0]


def test_help_shows_the_socket_mode_in_octal() -> None:
    assert "octal (default: 660)" in run_cli("--help").stdout


def test_two_of_our_own_listeners_on_one_port_are_named(docroot: DocRoot) -> None:
    root = str(docroot.path)
    tls = ("--tls-cert", "c.pem", "--tls-key", "k.pem")
    for args, said in (
        (("--port", "19333", *tls, "--tls-port", "19333"), "--tls-port 19333 is --port too"),
        (("--port", "19333", "--metrics", "127.0.0.1:19333"), "--metrics port 19333 is --port"),
        (("--plain", "off", *tls, "--tls-port", "19334", "--metrics", ":19334"), "--tls-port"),
    ):
        out = run_cli("--root", root, *args)
        assert out.returncode == 2 and said in out.stderr, out.stderr
    # another address: no conflict (the start goes on and fails on the missing cert)
    out = run_cli(
        "--root",
        root,
        "--host",
        "127.0.0.1",
        "--port",
        "19333",
        "--metrics",
        "127.0.0.2:19333",
        *tls,
    )
    assert "too: each needs its own" not in out.stderr
    out = run_cli("--root", root, "--port", "19333", "--metrics", "[::1]:19333", *tls)
    assert "too: each needs its own" not in out.stderr  # IPv4's wildcard, IPv6's loopback


def test_port_in_use_stops_at_once_with_one_line(docroot: DocRoot) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        out = run_cli("--root", str(docroot.path), "--host", "127.0.0.1", "--port", str(port))
        assert time.monotonic() - t0 < 10
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0]


def test_start_line_names_address_workers_and_root(docroot: DocRoot) -> None:
    srv = start_server(docroot.path, docroot=docroot, workers=2)
    try:
        line = next(ln for ln in srv.log_lines if "listening on" in ln)
        assert f"http://127.0.0.1:{srv.port}" in line
        assert "2 workers" in line
        assert str(docroot.path) in line
    finally:
        assert stop_server(srv.proc) == 0


def test_access_log_has_a_line_per_response(docroot: DocRoot, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    srv = start_server(
        docroot.path, docroot=docroot, workers=1, extra=["--access-log", str(log_path)]
    )
    try:
        assert requests.get(srv.url + "/static/hello.txt", timeout=10).status_code == 200
        assert requests.get(srv.url + "/dynamic/hello.txt", timeout=10).status_code == 200
        assert requests.get(srv.url + "/static/nope", timeout=10).status_code == 404
    finally:
        assert stop_server(srv.proc) == 0
    lines = log_path.read_text().splitlines()
    assert len(lines) == 3
    assert '"GET /static/hello.txt HTTP/1.1" 200 6' in lines[0]
    assert '"GET /dynamic/hello.txt HTTP/1.1" 200 6' in lines[1]
    assert '"GET /static/nope HTTP/1.1" 404' in lines[2]
    assert all(line.startswith("127.0.0.1 ") for line in lines)


def pinned(pid: int) -> set[int]:
    """A worker's CPU, once it has pinned itself (it does so just after it starts)."""
    deadline = time.monotonic() + 10
    while len(cpus := os.sched_getaffinity(pid)) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    return cpus


def test_a_killed_worker_is_replaced_on_its_cpu(docroot: DocRoot) -> None:
    srv = start_server(docroot.path, docroot=docroot, workers=2)
    try:
        before = srv.worker_pids()
        assert len(before) == 2
        victim = before[0]
        cpu = pinned(victim)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            after = srv.worker_pids()
            if len(after) == 2 and victim not in after:
                break
            assert time.monotonic() < deadline, f"no replacement: {after}\n{srv.log()}"
            time.sleep(0.05)
        replacement = next(p for p in after if p not in before)
        assert pinned(replacement) == cpu
        assert "died with signal 9; restarting in 0.1s" in srv.log()
        # A first crash is restarted at once: its socket stayed in the port's group.
        assert "meanwhile" not in srv.log()
        # Its listening socket survived in the supervisor: every request is answered.
        for _ in range(20):
            r = requests.get(
                srv.url + "/static/hello.txt", timeout=10, headers={"Connection": "close"}
            )
            assert r.content == b"hello\n"
    finally:
        assert stop_server(srv.proc) == 0


def test_the_checkout_launcher_serves_the_current_directory(docroot: DocRoot) -> None:
    """``./aws`` from a checkout is the server itself (exec): it serves where it is started
    and a SIGTERM to that pid drains it."""
    srv = harness.start([str(REPO / "aws"), "--workers", "1"], cwd=docroot.path)
    try:
        assert Path(f"/proc/{srv.proc.pid}/comm").read_text().strip() == "aws"
        r = requests.get(srv.url + "/dynamic/hello.txt", timeout=10)
        assert r.status_code == 200 and r.content == b"hello\n"
    finally:
        assert harness.stop(srv) == 0, srv.log()


def test_every_option_is_declared_once_in_config() -> None:
    """The parser is generated from Config: each flag maps to its field, with the field's
    default and parser, and a field with help is always a flag."""
    from aws import cli, config

    parser = cli.build_parser()
    dests = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(dests) == {f.name for f in config.flags()}
    for f in config.flags():
        assert "--" + f.name.replace("_", "-") in dests[f.name].option_strings
        assert dests[f.name].default == config.default_of(f)
    args = parser.parse_args(["--header-timeout", "2.5", "--symlinks", "none", "--port", "0"])
    assert (args.header_timeout, args.symlinks, args.port) == (2.5, "none", 0)
