"""Cache-Control and extra headers by URL pattern, end to end on both prefixes, plain and
under the shim: on 200, 206, HEAD, 304 and a folder's 301 alike; a bad rule stops the start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, ServerProcess
from tests.sites import MODES, site_server

RULES = [
    "--cache-control",
    "/static/assets/*=public, max-age=31536000, immutable",
    "--cache-control",
    "*.html=no-cache",
    "--cache-control",
    "/static/assets/*.html=never (the first match wins)",
    "--header",
    "*=X-Content-Type-Options: nosniff",
    "--header",
    "/static/*=Access-Control-Allow-Origin: *",
]


def _make(base: Path) -> None:
    for prefix in ("static", "dynamic"):
        (base / prefix / "assets").mkdir(parents=True)
        (base / prefix / "assets" / "app.3f2a.js").write_bytes(b"console.log(1)\n" * 10)
        (base / prefix / "assets" / "x.html").write_bytes(b"<p>x</p>\n")
        (base / prefix / "index.html").write_bytes(b"<p>index</p>\n")
        (base / prefix / "data.bin").write_bytes(b"0123456789")


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, RULES) as srv:
        yield srv


@pytest.mark.parametrize(
    ("path", "cache_control", "cors"),
    [
        ("/static/assets/app.3f2a.js", "public, max-age=31536000, immutable", "*"),
        ("/static/assets/x.html", "public, max-age=31536000, immutable", "*"),
        ("/static/", "no-cache", "*"),  # an index matches as .../index.html
        ("/static/data.bin", None, "*"),
        ("/dynamic/assets/app.3f2a.js", None, None),
        ("/dynamic/index.html", "no-cache", None),
        ("/dynamic/data.bin", None, None),
    ],
)
def test_rules_by_pattern(
    site: ServerProcess, path: str, cache_control: str | None, cors: str | None
) -> None:
    with requests.Session() as http:
        full = http.get(site.url + path, timeout=10)
        etag = full.headers["ETag"]
        part = http.get(site.url + path, headers={"Range": "bytes=0-1"}, timeout=10)
        head = http.head(site.url + path, timeout=10)
        cached = http.get(site.url + path, headers={"If-None-Match": etag}, timeout=10)
    assert [r.status_code for r in (full, part, head, cached)] == [200, 206, 200, 304]
    for resp in (full, part, head, cached):
        assert resp.headers.get("Cache-Control") == cache_control
        assert resp.headers.get("Access-Control-Allow-Origin") == cors
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_a_folders_redirect_carries_the_rules(site: ServerProcess, prefix: str) -> None:
    # As nginx's add_header and expires do on a 301: matched on the path as asked.
    resp = requests.get(f"{site.url}/{prefix}/assets", allow_redirects=False, timeout=10)
    assert resp.status_code == 301
    assert resp.headers["Location"] == f"/{prefix}/assets/"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers.get("Access-Control-Allow-Origin") == ("*" if prefix == "static" else None)
    assert resp.headers.get("Cache-Control") is None  # /static/assets is not under assets/*


def test_wget_sees_the_headers(site: ServerProcess, tmp_path: Path) -> None:
    run = subprocess.run(
        ["wget", "-S", "-O", str(tmp_path / "a.js"), site.url + "/static/assets/app.3f2a.js"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Cache-Control: public, max-age=31536000, immutable" in run.stderr
    assert (tmp_path / "a.js").read_bytes() == b"console.log(1)\n" * 10


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--cache-control", "no-pattern", "expected PATTERN=VALUE"),
        ("--header", "*=Bad Name: x", "is not a header name"),
        ("--header", "*=Content-Length: 3", "is the server's to set"),
        ("--header", "*=X-A: a\x01b", "control characters"),
    ],
)
def test_a_bad_rule_stops_the_start(tmp_path: Path, flag: str, value: str, why: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "aws", "--root", str(tmp_path), "--port", "0", flag, value],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert why in run.stderr and flag in run.stderr
