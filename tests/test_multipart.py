"""Several ranges in one request: 206 multipart/byteranges, end to end on both prefixes
(sendfile per part on /static/, AIO per part on /dynamic/), plain and under the shim."""

from __future__ import annotations

import re
import subprocess

import pytest
import requests

from tests.conftest import RawClient, ServerProcess

PREFIXES = pytest.mark.parametrize("prefix", ["static", "dynamic"])
BIG = 64 * 1024 * 1024


def expected_body(boundary: str, data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    """The exact multipart body for half-open ``ranges`` of ``data`` (RFC 9110 14.6)."""
    out = b""
    for i, (start, end) in enumerate(ranges):
        out += b"\r\n" if i else b""
        out += (
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {start}-{end - 1}/{len(data)}\r\n\r\n"
        ).encode()
        out += data[start:end]
    return out + f"\r\n--{boundary}--\r\n".encode()


def boundary_of(content_type: str) -> str:
    m = re.fullmatch(r"multipart/byteranges; boundary=([0-9a-f]+)", content_type)
    assert m, content_type
    return m.group(1)


@PREFIXES
@pytest.mark.parametrize(
    ("name", "spec", "ranges"),
    [
        ("f4097.bin", "bytes=0-9,20-29", [(0, 10), (20, 30)]),
        ("f4097.bin", "bytes=4090-,0-0", [(0, 1), (4090, 4097)]),
        ("f4097.bin", "bytes=0-9,5-14,100-199,-1", [(0, 15), (100, 200), (4096, 4097)]),
        (
            "f1048579.bin",
            "bytes=0-99, 500000-600000, -10",
            [(0, 100), (500000, 600001), (1048569, 1048579)],
        ),
        # Parts larger than a turn's budget and than an AIO chunk: blocked, resumed, corked.
        ("f67108864.bin", "bytes=0-3000000,60000000-", [(0, 3000001), (60000000, BIG)]),
    ],
)
def test_several_ranges_get_multipart_byteranges(
    server: ServerProcess, prefix: str, name: str, spec: str, ranges: list[tuple[int, int]]
) -> None:
    path = f"/{prefix}/{name}"
    data = server.root.content(path)
    with RawClient(server.addr, timeout=30) as c:
        for _ in range(2):  # keep-alive: the connection goes on after the last part
            c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nRange: {spec}\r\n\r\n".encode())
            status, headers, body = c.response()
            assert status == 206
            assert "content-range" not in headers
            assert headers["accept-ranges"] == "bytes" and "etag" in headers
            boundary = boundary_of(headers["content-type"])
            assert body == expected_body(boundary, data, ranges)
        c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=1-2\r\n\r\n".encode())
        assert c.response()[2] == data[1:3]


@PREFIXES
def test_requests_and_curl_read_the_parts(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    data = server.root.content(path)
    resp = requests.get(server.url + path, headers={"Range": "bytes=0-9,20-29"}, timeout=10)
    assert resp.status_code == 206
    boundary = boundary_of(resp.headers["Content-Type"])
    assert resp.content == expected_body(boundary, data, [(0, 10), (20, 30)])
    run = subprocess.run(
        ["curl", "-sS", "-D", "-", "-r", "0-9,20-29", server.url + path],
        capture_output=True,
        check=True,
        timeout=30,
    )
    head, _, body = run.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ")
    m = re.search(rb"boundary=([0-9a-f]+)", head)
    assert m is not None
    assert body == expected_body(m.group(1).decode(), data, [(0, 10), (20, 30)])


@PREFIXES
def test_overlapping_ranges_merged_into_one_get_a_plain_206(
    server: ServerProcess, prefix: str
) -> None:
    path = f"/{prefix}/f4097.bin"
    resp = requests.get(server.url + path, headers={"Range": "bytes=0-9,5-19"}, timeout=10)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == "bytes 0-19/4097"
    assert resp.content == server.root.content(path)[:20]


@PREFIXES
def test_more_than_max_ranges_get_the_whole_file(server: ServerProcess, prefix: str) -> None:
    path = f"/{prefix}/f4097.bin"
    many = ",".join(f"{i * 10}-{i * 10}" for i in range(101))  # the default allows 100
    resp = requests.get(server.url + path, headers={"Range": f"bytes={many}"}, timeout=10)
    assert resp.status_code == 200 and resp.content == server.root.content(path)
    hundred = ",".join(f"{i * 10}-{i * 10}" for i in range(100))
    resp = requests.get(server.url + path, headers={"Range": f"bytes={hundred}"}, timeout=10)
    assert resp.status_code == 206
    assert resp.content.count(b"Content-Range: bytes ") == 100


def test_each_prefix_sends_parts_its_own_way(server: ServerProcess) -> None:
    """The shim counts sendfile calls: /static/ parts use it, /dynamic/ parts do not
    (the plain run only checks the bytes)."""
    spec = {"Range": "bytes=0-99,200000-300000"}

    def fetch(prefix: str) -> None:
        path = f"/{prefix}/f1048579.bin"
        resp = requests.get(server.url + path, headers=spec, timeout=10)
        boundary = boundary_of(resp.headers["Content-Type"])
        data = server.root.content(path)
        assert resp.content == expected_body(boundary, data, [(0, 100), (200000, 300001)])

    if server.mode != "shim":
        fetch("dynamic")
        fetch("static")
        return
    before = server.stats().sendfile_calls
    fetch("dynamic")
    after_dynamic = server.stats().sendfile_calls
    fetch("static")
    after_static = server.stats().sendfile_calls
    assert after_dynamic == before
    assert after_static >= before + 2
