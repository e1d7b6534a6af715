"""Custom error pages and the single-page-app fallback, end to end on both prefixes,
plain and under the shim."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, RawClient, ServerProcess, http_get
from tests.sites import MODES, site_server

NOT_FOUND = b"<html><body>custom: nothing here</body></html>\n"
SERVER_ERROR = b"<html><body>custom: we are on it</body></html>\n"
INDEX = b"<html><body>the app shell</body></html>\n"


def _make(base: Path) -> None:
    for prefix in ("static", "dynamic"):
        (base / prefix / "assets").mkdir(parents=True)
        (base / prefix / "index.html").write_bytes(INDEX)
        (base / prefix / "assets" / "app.js").write_bytes(b"run()\n")
    (base / "errors").mkdir()
    (base / "errors" / "404.html").write_bytes(NOT_FOUND)
    (base / "errors" / "5xx.html").write_bytes(SERVER_ERROR)
    (base / "errors" / "notes.txt").write_bytes(b"not a page")


FLAGS = ["--error-pages", "errors", "--spa", "static"]


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, FLAGS) as srv:
        yield srv


@pytest.mark.parametrize(
    "path",
    [
        "/static/assets/missing.js",
        "/dynamic/missing",
        "/dynamic/a/b/c",
        "/elsewhere",
        "/static/.env",
    ],
)
def test_a_404_gets_the_custom_page_with_its_status(site: ServerProcess, path: str) -> None:
    resp = requests.get(site.url + path, timeout=10)
    assert resp.status_code == 404
    assert resp.content == NOT_FOUND
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    head = requests.head(site.url + path, timeout=10)
    assert head.status_code == 404 and head.content == b""
    assert head.headers["Content-Length"] == str(len(NOT_FOUND))


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"BREW /static/x HTTP/1.1\r\nHost: t\r\n\r\n", 501),
        (b"GET /static/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET /static/x HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ],
)
def test_a_5xx_found_while_parsing_gets_the_5xx_page(
    site: ServerProcess, raw: bytes, status: int
) -> None:
    data = http_get(site.addr, raw)
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert data.endswith(SERVER_ERROR)
    # A 4xx other than 404 keeps the built-in page.
    bad = http_get(site.addr, b"GET /static/x HTTP/1.1\r\n\r\n")  # no Host
    assert bad.startswith(b"HTTP/1.1 400 ") and b"400 Bad Request" in bad


@pytest.mark.parametrize("path", ["/static/route", "/static/users/42/settings", "/static/x/"])
def test_an_unknown_path_under_an_spa_prefix_serves_its_index(
    site: ServerProcess, path: str
) -> None:
    with RawClient(site.addr) as c:  # keep-alive: the fallback leaves the connection usable
        for _ in range(2):
            c.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, fields, body = c.response()
            assert (status, body) == (200, INDEX)
            assert fields["content-type"] == "text/html; charset=utf-8"
        c.send(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {fields['etag']}\r\n\r\n".encode()
        )
        assert c.response()[0] == 304


def test_the_fallback_is_not_for_paths_with_an_extension_or_other_prefixes(
    site: ServerProcess,
) -> None:
    assert requests.get(site.url + "/static/assets/app.js", timeout=10).content == b"run()\n"
    assert requests.get(site.url + "/static/assets/gone.js", timeout=10).status_code == 404
    assert requests.get(site.url + "/dynamic/route", timeout=10).status_code == 404


def test_wget_gets_the_index_for_a_route(site: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "page"
    subprocess.run(
        ["wget", "-q", "-O", str(out), site.url + "/static/deep/route"], check=True, timeout=30
    )
    assert out.read_bytes() == INDEX


@pytest.fixture(scope="module", params=MODES)
def any_path_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    flags = ["--spa", "dynamic", "--spa-any-path"]
    with site_server(request, tmp_path_factory, _make, flags) as srv:
        yield srv


def test_spa_any_path_falls_back_for_files_too(any_path_site: ServerProcess) -> None:
    resp = requests.get(any_path_site.url + "/dynamic/assets/gone.js", timeout=10)
    assert (resp.status_code, resp.content) == (200, INDEX)
    other = requests.get(any_path_site.url + "/static/route", timeout=10)
    assert other.status_code == 404 and b"404 Not Found" in other.content  # no custom pages


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@pytest.fixture(params=MODES)
def fd_starved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, FLAGS, preexec=_limit_fds) as srv:
        yield srv


def test_a_503_gets_the_5xx_page(fd_starved: ServerProcess) -> None:
    """Every descriptor taken by idle clients: the one accepted first asks for a file
    not open yet, and the 503 it gets is the custom 5xx page."""
    srv = fd_starved
    first = RawClient(srv.addr)  # reads whole responses: the shim splits every send
    first.send(b"GET /static/index.html HTTP/1.1\r\nHost: t\r\n\r\n")
    assert first.response()[:3:2] == (200, INDEX)
    others = [socket.create_connection(srv.addr, timeout=10) for _ in range(80)]
    try:
        assert srv.wait_for_log("pausing accepts", timeout=10)
        time.sleep(0.2)
        first.send(b"GET /dynamic/assets/app.js HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = first.response()
        assert (status, body) == (503, SERVER_ERROR)
    finally:
        first.close()
        for s in others:
            s.close()


@pytest.mark.parametrize(
    ("folder", "why"), [("missing", "No such file"), ("../outside", "outside"), ("big", "over")]
)
def test_bad_error_pages_stop_the_start(tmp_path: Path, folder: str, why: str) -> None:
    (tmp_path / "root" / "big").mkdir(parents=True)
    (tmp_path / "root" / "big" / "404.html").write_bytes(b"x" * (256 * 1024 + 1))
    (tmp_path / "outside").mkdir()
    argv = ["--root", str(tmp_path / "root"), "--port", "0", "--error-pages", folder]
    run = subprocess.run(
        [sys.executable, "-m", "aws", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "--error-pages" in run.stderr
    if why != "outside":
        assert why in run.stderr, run.stderr
