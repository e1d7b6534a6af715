"""Access log formats and SIGUSR1 reopening, end to end (plain and under the shim)."""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import socket
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from aws.heads import error_body
from aws.logs import AccessLog, make_formatter
from aws.states import DONE, READ_HEAD, SEND_FILE
from tests.conftest import DocRoot, stop_server
from tests.ops import Load, get_raw, mode_of, start_in


@pytest.fixture(params=["plain", "shim"])
def mode(request: pytest.FixtureRequest) -> str:
    return mode_of(request)


def _get(srv: object, path: str, extra: str = "") -> bytes:
    raw = f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()
    return get_raw(srv.addr, raw)  # type: ignore[attr-defined]


def test_combined_adds_referer_and_user_agent(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    log_path = tmp_path / "access.log"
    extra = ["--access-log", str(log_path), "--log-format", "combined"]
    srv = start_in(mode, request, tmp_path, docroot, workers=1, extra=extra)
    try:
        _get(srv, "/static/hello.txt", 'Referer: http://x/"a"\r\nUser-Agent: probe/1.0\r\n')
        _get(srv, "/static/nope")
    finally:
        assert stop_server(srv.proc) == 0
    first, second = log_path.read_text().splitlines()
    assert first.startswith("127.0.0.1 - - [")
    assert first.endswith('"GET /static/hello.txt HTTP/1.1" 200 6 "http://x/\\"a\\"" "probe/1.0"')
    page = len(error_body(404))  # the error page's bytes, as nginx counts them
    assert second.endswith(f'"GET /static/nope HTTP/1.1" 404 {page} "-" "-"')


def test_json_names_the_way_each_body_went_out(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    log_path = tmp_path / "access.log"
    extra = ["--access-log", str(log_path), "--log-format", "json"]
    srv = start_in(mode, request, tmp_path, docroot, workers=2, extra=extra)
    paths = {
        "/static/f4096.bin": "sendfile",
        "/dynamic/f1048579.bin": "aio_direct",
        "/dynamic/hello.txt": "aio_buffered",
        "/static/nope": "none",
    }
    docroot.warm("/static/f4096.bin", "/dynamic/hello.txt")  # a cold one would go by AIO
    t0 = time.time()
    try:
        for path in paths:
            _get(srv, path, "User-Agent: probe/2\r\n")
    finally:
        assert stop_server(srv.proc) == 0
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["path"] for r in records] == list(paths)
    for r in records:
        assert r["via"] == paths[r["path"]]
        assert r["remote"] == "127.0.0.1" and r["method"] == "GET"
        assert r["user_agent"] == "probe/2" and r["worker"] in (0, 1)
        assert 0 <= r["duration"] < 10 and r["complete"] is True
        stamp = calendar.timegm(time.strptime(r["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert t0 - 2 <= stamp <= time.time() + 1
    assert [r["status"] for r in records] == [200, 200, 200, 404]
    assert [r["bytes"] for r in records] == [4096, 1024 * 1024 + 3, 6, len(error_body(404))]


def test_a_refused_request_is_logged_with_its_line(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    """nginx's way: a request refused before it was served (405, 501, 505) still logs
    the line the client sent; one whose line could not be read logs "-"."""
    common, as_json = tmp_path / "common.log", tmp_path / "json.log"
    refused = [
        b"DELETE /static/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"BREW /static/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /static/hello.txt HTTP/2.0\r\nHost: t\r\n\r\n",
        b"NOT A REQUEST LINE\r\n\r\n",
    ]
    for log_path, kind in ((common, "common"), (as_json, "json")):
        extra = ["--access-log", str(log_path), "--log-format", kind]
        srv = start_in(mode, request, tmp_path, docroot, workers=1, extra=extra)
        try:
            answers = [get_raw(srv.addr, raw).split(b"\r\n", 1)[0] for raw in refused]
        finally:
            assert stop_server(srv.proc) == 0
        assert answers == [
            b"HTTP/1.1 405 Method Not Allowed",
            b"HTTP/1.1 501 Not Implemented",
            b"HTTP/1.1 505 HTTP Version Not Supported",
            b"HTTP/1.1 400 Bad Request",
        ]
    lines = common.read_text().splitlines()
    n = {status: len(error_body(status)) for status in (405, 501, 505, 400)}
    assert [line.split('] "', 1)[1] for line in lines] == [
        f'DELETE /static/hello.txt HTTP/1.1" 405 {n[405]}',
        f'BREW /static/a HTTP/1.1" 501 {n[501]}',
        f'GET /static/hello.txt HTTP/2.0" 505 {n[505]}',
        f'-" 400 {n[400]}',
    ]
    records = [json.loads(line) for line in as_json.read_text().splitlines()]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("DELETE", "/static/hello.txt", 405),
        ("BREW", "/static/a", 501),
        ("GET", "/static/hello.txt", 505),
        (None, None, 400),
    ]


def test_a_response_that_ended_early_is_logged_with_what_was_sent(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """nginx logs every request: a download the client reset midway has its line (the
    status it was given, the bytes that went, "complete": false), and so does a request
    that never came whole (408)."""
    root = DocRoot(tmp_path / "root")
    for prefix in ("static", "dynamic"):
        (root.path / prefix).mkdir(parents=True)
        with open(root.path / prefix / "big.bin", "wb") as f:
            f.truncate(64 << 20)
    log_path = tmp_path / "access.log"
    extra = ["--access-log", str(log_path), "--log-format", "json", "--header-timeout", "1"]
    srv = start_in(mode, request, tmp_path, root, workers=1, extra=extra)
    try:
        for prefix in ("static", "dynamic"):
            with socket.create_connection(srv.addr, timeout=10) as s:
                s.sendall(f"GET /{prefix}/big.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                got = 0
                while got < 1 << 20:
                    got += len(s.recv(1 << 16))
                # RST, not FIN: the server's next send fails at once
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with socket.create_connection(srv.addr, timeout=10) as s:
            s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHo")
            assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
        deadline = time.monotonic() + 10
        while len(log_path.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        assert stop_server(srv.proc) == 0
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["path"], r["status"], r["complete"]) for r in records] == [
        ("/static/big.bin", 200, False),
        ("/dynamic/big.bin", 200, False),
        (None, 408, True),
    ]
    for r in records[:2]:  # the client read 1 MiB, the head (< 1 KiB) included
        assert (1 << 20) - 1024 <= r["bytes"] < 64 << 20
    # as much of its page as one try at the socket took: all of it, but under the shim
    page = len(error_body(408))
    assert records[2]["bytes"] == page if mode == "plain" else records[2]["bytes"] <= page
    assert records[2]["duration"] >= 1


def test_formatter_is_one_line_whatever_the_headers() -> None:
    req = SimpleNamespace(
        method="GET", target=b"/a", version=11, headers={b"user-agent": b'x"\\y', b"referer": b""}
    )
    conn = SimpleNamespace(peer="", status=200, sent=1, req=req, state=DONE)

    line = make_formatter("combined", 0)(conn, 0.0, 0.0, 0)  # type: ignore[arg-type]
    stamp = "[01/Jan/1970:00:00:00 +0000]"
    assert line == f'unix: - - {stamp} "GET /a HTTP/1.1" 200 1 "-" "x\\"\\\\y"\n'
    record = json.loads(make_formatter("json", 3)(conn, 0.5, 0.25, 1))  # type: ignore[arg-type]
    assert record["worker"] == 3 and record["via"] == "sendfile" and record["duration"] == 0.25


def test_what_the_client_sent_cannot_forge_fields_or_write_control_bytes() -> None:
    """Apache's escaping, in the request line as in the headers: a quote cannot end the
    field, and bytes outside printable ASCII are written as \\xhh."""
    req = SimpleNamespace(
        method="GET",
        target=b'/static/a"%20200%201%20"-',
        version=11,
        headers={b"user-agent": b"caf\xc3\xa9\x1b[31m", b"referer": b"back\\slash"},
    )
    conn = SimpleNamespace(peer=("127.0.0.1", 1), status=404, sent=0, req=req)
    line = make_formatter("combined", 0)(conn, 0.0, 0.0, 0)  # type: ignore[arg-type]
    assert line.endswith(
        '"GET /static/a\\"%20200%201%20\\"- HTTP/1.1" 404 0 "back\\\\slash" '
        '"caf\\xc3\\xa9\\x1b[31m"\n'
    )
    assert line.count('"') - line.count('\\"') == 6  # three fields, two quotes each


def test_json_says_complete_but_for_a_response_cut_short() -> None:
    """Complete: finished (DONE), or answered by the fast path (still READ_HEAD); not:
    logged by close() while sending."""
    req = SimpleNamespace(method="GET", target=b"/a", version=11, headers={})
    for state, complete in ((DONE, True), (READ_HEAD, True), (SEND_FILE, False)):
        conn = SimpleNamespace(peer="", status=200, sent=1, req=req, state=state)
        record = json.loads(make_formatter("json", 0)(conn, 0.0, 0.0, 1))  # type: ignore[arg-type]
        assert record["complete"] is complete, state


def test_json_keeps_utf8_and_escapes_what_is_not() -> None:
    req = SimpleNamespace(
        method="GET", target=b"/a", version=11, headers={b"user-agent": b"caf\xc3\xa9 \xff"}
    )
    conn = SimpleNamespace(peer="", status=200, sent=1, req=req, state=DONE)
    record = json.loads(make_formatter("json", 0)(conn, 0.0, 0.0, 1))  # type: ignore[arg-type]
    assert record["user_agent"] == "café \\xff"


def test_a_reopen_that_fails_says_so_and_keeps_the_old_file(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    access = AccessLog(str(folder / "a.log"), "common", 0)
    try:
        folder.rename(tmp_path / "moved")
        assert access.reopen() is False
        access.file.write("still here\n")
    finally:
        access.close()
    assert (tmp_path / "moved" / "a.log").read_text() == "still here\n"


def test_sigusr1_reopens_in_every_worker_and_loses_no_line(
    mode: str, request: pytest.FixtureRequest, tmp_path: Path, docroot: DocRoot
) -> None:
    """logrotate's way: rename the file under load, then SIGUSR1 the server. Every
    request has its line, in the rotated file or the new one, and once every worker has
    said it reopened, nothing more goes to the rotated file."""
    log_path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    srv = start_in(
        mode, request, tmp_path, docroot, workers=2, extra=["--access-log", str(log_path)]
    )
    paths = ["/static/hello.txt", "/dynamic/hello.txt", "/static/f4097.bin"]
    load = Load(srv.addr, docroot, paths, threads=4, requests=150).start()
    try:
        load.wait_for(100)
        os.rename(log_path, rotated)
        srv.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while srv.log().count("reopened the access log") < 2:
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.02)
        # stderr lines name the worker that wrote them
        assert re.search(
            r"\[worker [01]\] aws\[\d+\] INFO aws\.server: worker [01]: reo", srv.log()
        )
        frozen = rotated.stat().st_size
        load.join()
        assert rotated.stat().st_size == frozen, "a line went to the rotated file"
        assert srv.proc.poll() is None
    finally:
        assert stop_server(srv.proc) == 0
    assert not load.errors, load.errors[:5]
    old = rotated.read_text().splitlines()
    new = log_path.read_text().splitlines()
    assert len(old) + len(new) == load.threads * load.requests
    assert old and new
    assert all(" 200 " in line for line in old + new)
