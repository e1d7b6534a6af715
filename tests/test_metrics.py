"""/metrics and /healthz on their own listener, read with prometheus_client's parser:
counts summed over workers, kept across restarts, 503 while draining; the single process
serves its own; and the shared-memory slots on their own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aws.metrics import REQUESTS, Shared, WorkerCounters, render
from tests.conftest import REPO, DocRoot, ServerProcess, stop_server
from tests.ops import get_raw, mode_of, start_in, worker_pids


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    raw = f"GET {path} HTTP/1.1\r\nHost: m\r\n\r\n".encode()
    data = get_raw(("127.0.0.1", port), raw)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = _scrape(port)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, frozenset(labels.items()))]


def _get(srv: ServerProcess, path: str) -> bytes:
    raw = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    return get_raw(srv.addr, raw)


def _wait_value(port: int, name: str, want: float, timeout: float = 5, **labels: str) -> dict:  # type: ignore[type-arg]
    """Gauges and the last counts reach shared memory within a sweep (0.25 s)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = _samples(port)
        if _value(samples, name, **labels) == want or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_counts_are_summed_over_the_workers(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    mport = _free_port()
    extra = ["--metrics", f"127.0.0.1:{mport}"]
    srv = start_in(mode, request, tmp_path, docroot, workers=2, extra=extra)
    try:
        docroot.warm("/static/f4096.bin", "/dynamic/hello.txt")  # a cold one goes by AIO
        for _ in range(10):
            assert _get(srv, "/static/f4096.bin").startswith(b"HTTP/1.1 200 ")
            assert _get(srv, "/dynamic/f1048579.bin").startswith(b"HTTP/1.1 200 ")
            assert _get(srv, "/dynamic/hello.txt").startswith(b"HTTP/1.1 200 ")
            assert _get(srv, "/static/nope").startswith(b"HTTP/1.1 404 ")
        s = _wait_value(mport, "aws_request_duration_seconds_count", 40)
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 10
        assert _value(s, "aws_requests_total", code="2xx", prefix="dynamic") == 20
        assert _value(s, "aws_requests_total", code="4xx", prefix="static") == 10
        assert _value(s, "aws_sent_bytes_total", way="sendfile") == 10 * 4096
        assert _value(s, "aws_sent_bytes_total", way="aio_direct") == 10 * (1024 * 1024 + 3)
        assert _value(s, "aws_sent_bytes_total", way="aio_buffered") == 10 * 6
        assert _value(s, "aws_request_duration_seconds_count") == 40
        assert _value(s, "aws_request_duration_seconds_bucket", le="+Inf") == 40
        assert 0 < _value(s, "aws_request_duration_seconds_sum") < 40
        per_worker = [_value(s, "aws_worker_requests_total", worker=w) for w in "01"]
        assert sum(per_worker) == 40
        assert _value(s, "aws_workers_up") == 2 and _value(s, "aws_draining") == 0
        assert _scrape(mport, "/healthz") == (200, b"ok\n")
        # An open connection shows in its worker's gauge within a sweep.
        with socket.create_connection(srv.addr) as idle:
            idle.sendall(b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            idle.recv(4096)
            deadline = time.monotonic() + 5
            while True:
                s = _samples(mport)
                opened = sum(_value(s, "aws_connections_open", worker=w) for w in "01")
                if opened == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert opened == 1
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_a_restart_is_counted_and_no_count_is_lost(docroot: DocRoot, tmp_path: Path) -> None:
    from tests.conftest import start_server

    mport = _free_port()
    srv = start_server(
        docroot.path, docroot=docroot, workers=2, extra=["--metrics", f"127.0.0.1:{mport}"]
    )
    try:
        for _ in range(20):
            _get(srv, "/static/hello.txt")
        # Published by the workers' next sweeps; a SIGKILL after that loses none of them.
        s = _wait_value(mport, "aws_requests_total", 20, code="2xx", prefix="static")
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 20
        victim = worker_pids(srv)[0]
        os.kill(victim, signal.SIGKILL)
        assert srv.wait_for_log(r"worker \d restarted as pid", 10), srv.log()
        s = _samples(mport)
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 20
        restarts = [_value(s, "aws_worker_restarts_total", worker=w) for w in "01"]
        assert sorted(restarts) == [0, 1]
        _get(srv, "/static/hello.txt")
        s = _wait_value(mport, "aws_requests_total", 21, code="2xx", prefix="static")
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 21
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def _slow_download(addr: tuple[str, int], path: str) -> socket.socket:
    s = socket.create_connection(addr)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    return s


def _drain_all(s: socket.socket) -> int:
    total = 0
    s.settimeout(30)
    while chunk := s.recv(1 << 20):
        total += len(chunk)
    s.close()
    return total


@pytest.mark.parametrize("workers", [2, 1])
def test_healthz_is_503_while_draining(workers: int, docroot: DocRoot) -> None:
    from tests.conftest import start_server

    mport = _free_port()
    srv = start_server(
        docroot.path,
        docroot=docroot,
        workers=workers,
        extra=["--metrics", f"127.0.0.1:{mport}"],
    )
    try:
        assert _scrape(mport, "/healthz") == (200, b"ok\n")
        big = _slow_download(srv.addr, "/static/f67108864.bin")
        time.sleep(0.3)  # the download is under way (and blocked on the unread socket)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait_for_log("SIGTERM: stopping", 5)
        assert _scrape(mport, "/healthz") == (503, b"draining\n")
        assert _value(_samples(mport), "aws_draining") == 1
        assert _drain_all(big) > 64 * 1024 * 1024  # head and the whole body
        srv.proc.wait(20)
    finally:
        stop_server(srv.proc)
    assert srv.proc.returncode == 0, srv.log()


def test_the_single_process_serves_its_own_metrics(docroot: DocRoot) -> None:
    from tests.conftest import start_server

    mport = _free_port()
    srv = start_server(
        docroot.path, docroot=docroot, workers=1, extra=["--metrics", f"127.0.0.1:{mport}"]
    )
    try:
        assert srv.worker_pids() == [srv.proc.pid]  # no child serves it
        for _ in range(3):
            _get(srv, "/dynamic/f4097.bin")
        s = _samples(mport)
        assert _value(s, "aws_requests_total", code="2xx", prefix="dynamic") == 3
        assert _value(s, "aws_workers_up") == 1
        turns = _value(s, "aws_loop_turn_seconds_count")
        assert turns >= 1  # the turns that answered (one may answer several)
        assert _value(s, "aws_loop_turn_seconds_bucket", le="+Inf") == turns
        assert _scrape(mport, "/nope")[0] == 404
        data = get_raw(("127.0.0.1", mport), b"POST /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 405 ")
        assert srv.wait_for_log(r"metrics listener: 405 Method Not Allowed for b'POST", 5)
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_a_metrics_port_in_use_stops_at_once(docroot: DocRoot) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "aws", "--root", str(docroot.path), "--port", "0"]
        cmd += ["--host", "127.0.0.1", "--metrics", f"127.0.0.1:{port}"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert f"--metrics 127.0.0.1:{port}" in line


def test_slots_fold_into_retired_totals_and_render_parses() -> None:
    shared = Shared(2)
    a = shared.claim(0)
    assert a is not None
    shared.bind(a, 1234)
    counters = WorkerCounters(shared.live(a))
    took = 0.0
    count = counters.counter(lambda: took)

    class Req:
        prefix = b"static"

    class Conn:
        req, status, sent, path, began = Req(), 200, 100, "sendfile", 0.0

    for took in (0.0001, 0.003, 20.0):
        assert count(Conn()) == took  # type: ignore[arg-type]
    counters.turns[0] += 5  # what a watched loop adds: five turns of <= 100 us
    counters.turns[-1] += 1  # and one over the last bound
    counters.turn_seconds[0] += 0.2
    assert shared.snapshot().total(REQUESTS + 2 * 3) == 0  # tallied, not yet published
    counters.sample()  # the worker's sweep
    shared.release(a)
    b = shared.claim(0)
    assert b == a  # given back, and zeroed
    shared.bind(b, 1235)
    counters = WorkerCounters(shared.live(b))
    count = counters.counter(lambda: 0.0001)
    count(Conn())  # type: ignore[arg-type]
    counters.sample()
    count(Conn())  # type: ignore[arg-type]  # never sampled: not shown
    shared.restarted(0)
    snap = shared.snapshot()
    families = {f.name: f for f in text_string_to_metric_families(render(snap))}
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("aws_requests_total", (("code", "2xx"), ("prefix", "static")))] == 4
    assert values[("aws_sent_bytes_total", (("way", "sendfile"),))] == 400
    assert values[("aws_request_duration_seconds_bucket", (("le", "0.0005"),))] == 2
    assert values[("aws_request_duration_seconds_bucket", (("le", "10.0"),))] == 3
    assert values[("aws_request_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert values[("aws_worker_restarts_total", (("worker", "0"),))] == 1
    assert families["aws_request_duration_seconds"].type == "histogram"
    assert values[("aws_loop_turn_seconds_bucket", (("le", "0.0001"),))] == 5
    assert values[("aws_loop_turn_seconds_bucket", (("le", "0.1"),))] == 5
    assert values[("aws_loop_turn_seconds_bucket", (("le", "+Inf"),))] == 6
    assert values[("aws_loop_turn_seconds_sum", ())] == pytest.approx(0.2)
    assert families["aws_loop_turn_seconds"].type == "histogram"
    assert values[("aws_workers_up", ())] == 1


def _metrics_pid(srv: ServerProcess) -> int:
    [pid] = [
        p
        for p in srv.worker_pids()
        if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"aws: metrics")
    ]
    return pid


def test_signals_to_the_whole_unit_kill_nothing(docroot: DocRoot) -> None:
    """`systemctl kill -s USR1` (logrotate) or `-s HUP` reach every process of the unit:
    the metrics process and the workers must survive them."""
    from tests.conftest import start_server

    mport = _free_port()
    srv = start_server(
        docroot.path, docroot=docroot, workers=2, extra=["--metrics", f"127.0.0.1:{mport}"]
    )
    try:
        before = _metrics_pid(srv)
        os.killpg(srv.pgid, signal.SIGUSR1)
        os.killpg(srv.pgid, signal.SIGHUP)
        assert srv.wait_for_log("SIGHUP: reloaded", 10), srv.log()
        time.sleep(0.5)
        assert _scrape(mport, "/healthz") == (200, b"ok\n")
        assert "died" not in srv.log(), srv.log()
        assert _metrics_pid(srv) == before
        assert srv.alive()
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_counts_go_on_across_a_reload_in_the_single_process(docroot: DocRoot) -> None:
    """Two servers share the one slot while the old drains: counters never go back,
    and the open-connection gauge counts the old server's connections too."""
    from tests.conftest import start_server

    mport = _free_port()
    extra = ["--metrics", f"127.0.0.1:{mport}", "--max-connections", "2"]
    srv = start_server(docroot.path, docroot=docroot, workers=1, extra=extra)
    try:
        for _ in range(5):
            _get(srv, "/static/hello.txt")
        held = [socket.create_connection(srv.addr) for _ in range(3)]  # the third is refused
        big = _slow_download(srv.addr, "/static/f67108864.bin")  # also refused: 2 are open
        _wait_value(mport, "aws_refused_connections_total", 2)
        for s in held:
            s.close()
        big.close()
        time.sleep(0.3)
        big = _slow_download(srv.addr, "/static/f67108864.bin")
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGHUP)
        assert srv.wait_for_log("SIGHUP: reloaded the configuration; 1 connections", 10), srv.log()
        for _ in range(5):
            _get(srv, "/static/hello.txt")
        _wait_value(mport, "aws_requests_total", 10, code="2xx", prefix="static")
        s = _wait_value(mport, "aws_connections_open", 1, worker="0")
        assert _value(s, "aws_connections_open", worker="0") == 1  # the old server's download
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 10
        assert _value(s, "aws_refused_connections_total") == 2
        assert _value(s, "aws_reloads_total") == 1
        assert _drain_all(big) > 64 * 1024 * 1024
        s = _wait_value(mport, "aws_connections_open", 0, worker="0")
        assert _value(s, "aws_requests_total", code="2xx", prefix="static") == 11
        assert _value(s, "aws_refused_connections_total") == 2
    finally:
        assert stop_server(srv.proc) == 0, srv.log()


def test_open_file_cache_hits_and_misses_are_counted(docroot: DocRoot) -> None:
    from tests.conftest import start_server

    mport = _free_port()
    srv = start_server(
        docroot.path, docroot=docroot, workers=1, extra=["--metrics", f"127.0.0.1:{mport}"]
    )
    try:
        for _ in range(3):  # well within the 0.5 s a cached open file is trusted
            _get(srv, "/static/hello.txt")
        s = _wait_value(mport, "aws_open_file_cache_hits_total", 2)
        assert _value(s, "aws_open_file_cache_hits_total") == 2
        assert _value(s, "aws_open_file_cache_misses_total") == 1
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
