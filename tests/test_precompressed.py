"""Precompressed variants end to end: x.br, x.zst and x.gz beside x, chosen by
Accept-Encoding, on /static/ (sendfile) and /dynamic/ (AIO), plain and under the shim."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import RawClient, ServerProcess, make_content
from tests.sites import MODES, site_server

PAGE = b"<html><body>" + b"hello precompressed world " * 400 + b"</body></html>\n"
BIG = make_content(300_000)  # over --directio: the /dynamic/ variant is read with O_DIRECT
FAKE = {"br": b"BROTLI" * 50, "zst": b"ZSTD" * 70, "gz": b"GZIP" * 90}


def _make(base: Path) -> None:
    for prefix in ("static", "dynamic"):
        d = base / prefix
        d.mkdir()
        (d / "page.html").write_bytes(PAGE)
        for suffix, data in FAKE.items():  # distinct bytes show which variant went out
            (d / f"page.html.{suffix}").write_bytes(data)
        (d / "real.txt").write_bytes(PAGE)
        (d / "real.txt.gz").write_bytes(gzip.compress(PAGE))
        subprocess.run(
            ["zstd", "-q", "-o", str(d / "real.txt.zst"), str(d / "real.txt")], check=True
        )
        (d / "big.bin").write_bytes(BIG)
        (d / "big.bin.gz").write_bytes(BIG[::-1])
        (d / "plain.txt").write_bytes(b"no variant\n")
        (d / "only.txt.gz").write_bytes(gzip.compress(b"sibling alone\n"))
        (d / "old.txt").write_bytes(b"newer than its gz\n")
        (d / "old.txt.gz").write_bytes(gzip.compress(b"stale\n"))
        os.utime(d / "old.txt.gz", (time.time() - 3600, time.time() - 3600))
        (d / "later.txt").write_bytes(b"a variant comes later\n")


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, []) as srv:
        yield srv


def get(srv: ServerProcess, path: str, **headers: str | None) -> requests.Response:
    # requests would decode a gzip body itself; the raw bytes are what is checked here.
    resp = requests.get(srv.url + path, headers=headers, timeout=20, stream=True)
    resp.raw_bytes = resp.raw.read(decode_content=False)  # type: ignore[attr-defined]
    return resp


PREFIXES = pytest.mark.parametrize("prefix", ["static", "dynamic"])


@PREFIXES
@pytest.mark.parametrize(
    ("accept", "suffix"),
    [
        ("gzip, deflate, br, zstd", "br"),  # what a browser sends: br first
        ("gzip", "gz"),
        ("x-gzip", "gz"),
        ("zstd, gzip", "zst"),
        ("br;q=0.5, zstd;q=0.9, gzip;q=0.1", "zst"),
        ("*", "br"),
        ("br;q=0, *;q=0.5", "zst"),
        ("identity;q=0, gzip", "gz"),
        ("gzip;q=0.5, identity", None),  # identity asked for with a higher q
        ("deflate", None),
        ("", None),
        (None, None),
    ],
)
def test_the_variant_accept_encoding_prefers(
    site: ServerProcess, prefix: str, accept: str | None, suffix: str | None
) -> None:
    # None: requests leaves the header out (it would send its own "gzip, deflate").
    resp = get(site, f"/{prefix}/page.html", **{"Accept-Encoding": accept})  # type: ignore[arg-type]
    assert resp.status_code == 200
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    if suffix is None:
        assert "Content-Encoding" not in resp.headers
        assert resp.raw_bytes == PAGE  # type: ignore[attr-defined]
    else:
        coding = {"br": "br", "zst": "zstd", "gz": "gzip"}[suffix]
        assert resp.headers["Content-Encoding"] == coding
        assert resp.raw_bytes == FAKE[suffix]  # type: ignore[attr-defined]
        assert resp.headers["Content-Length"] == str(len(FAKE[suffix]))


@PREFIXES
def test_each_variant_has_its_own_strong_etag(site: ServerProcess, prefix: str) -> None:
    tags = {
        get(site, f"/{prefix}/page.html", **{"Accept-Encoding": a}).headers["ETag"]
        for a in ("br", "zstd", "gzip", "identity")
    }
    assert len(tags) == 4
    assert all(t.startswith('"') for t in tags)


@PREFIXES
def test_curl_compressed_decodes_a_real_variant(
    site: ServerProcess, prefix: str, tmp_path: Path
) -> None:
    """curl --compressed asks for br, zstd and gzip; real.txt has .zst and .gz."""
    out = tmp_path / "real.txt"
    run = subprocess.run(
        ["curl", "-sS", "--compressed", "-D", "-", "-o", str(out), f"{site.url}/{prefix}/real.txt"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    head = run.stdout.decode().lower()
    assert "content-encoding: zstd" in head
    assert out.read_bytes() == PAGE
    resp = requests.get(
        f"{site.url}/{prefix}/real.txt", headers={"Accept-Encoding": "gzip"}, timeout=20
    )
    assert resp.headers["Content-Encoding"] == "gzip" and resp.content == PAGE  # requests decodes


@PREFIXES
def test_ranges_and_conditionals_apply_to_the_variant_bytes(
    site: ServerProcess, prefix: str
) -> None:
    path = f"/{prefix}/big.bin"
    whole = get(site, path, **{"Accept-Encoding": "gzip"})
    assert whole.raw_bytes == BIG[::-1]  # type: ignore[attr-defined]
    etag = whole.headers["ETag"]
    part = get(site, path, **{"Accept-Encoding": "gzip", "Range": "bytes=100000-100099"})
    assert part.status_code == 206
    assert part.raw_bytes == BIG[::-1][100000:100100]  # type: ignore[attr-defined]
    assert part.headers["Content-Range"] == f"bytes 100000-100099/{len(BIG)}"
    assert part.headers["Content-Encoding"] == "gzip"
    # If-Range with the variant's tag holds for the variant...
    ranged = get(site, path, **{"Accept-Encoding": "gzip", "Range": "bytes=0-9", "If-Range": etag})
    assert ranged.status_code == 206
    # ...and not for the file itself, whose bytes differ.
    other = get(site, path, **{"Accept-Encoding": None, "Range": "bytes=0-9", "If-Range": etag})
    assert other.status_code == 200 and other.raw_bytes == BIG  # type: ignore[attr-defined]
    # Refusals of a file with variants say Vary too (the answer depended on the header).
    bad = get(site, path, **{"Accept-Encoding": "gzip", "Range": f"bytes={len(BIG)}-"})
    assert bad.status_code == 416 and bad.headers["Vary"] == "Accept-Encoding"
    assert bad.headers["Content-Range"] == f"bytes */{len(BIG)}"
    failed = get(site, path, **{"Accept-Encoding": None, "If-Match": '"nope"'})
    assert failed.status_code == 412 and failed.headers["Vary"] == "Accept-Encoding"
    # Several ranges of a coded variant: the whole variant, not parts of a coded stream.
    parts = get(site, path, **{"Accept-Encoding": "gzip", "Range": "bytes=0-9,100-109"})
    assert parts.status_code == 200 and parts.raw_bytes == BIG[::-1]  # type: ignore[attr-defined]
    with RawClient(site.addr) as c:
        c.send(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n"
            f"If-None-Match: {etag}\r\n\r\n".encode()
        )
        status, fields, body = c.response()
        assert (status, body) == (304, b"")
        assert fields["etag"] == etag
        assert fields["vary"] == "Accept-Encoding"
        assert fields["content-encoding"] == "gzip"
        c.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n".encode())
        status, head, body = c.response(head_only=True)
        assert status == 200 and body == b""
        assert {k: head[k] for k in ("etag", "vary", "content-encoding", "content-length")} == {
            "etag": etag,
            "vary": "Accept-Encoding",
            "content-encoding": "gzip",
            "content-length": str(len(BIG)),
        }


@PREFIXES
def test_a_file_without_variants_has_no_vary(site: ServerProcess, prefix: str) -> None:
    resp = get(site, f"/{prefix}/plain.txt", **{"Accept-Encoding": "gzip, br"})
    assert resp.status_code == 200 and resp.raw_bytes == b"no variant\n"  # type: ignore[attr-defined]
    assert "Vary" not in resp.headers and "Content-Encoding" not in resp.headers


@PREFIXES
def test_a_sibling_alone_is_not_served_as_the_file(site: ServerProcess, prefix: str) -> None:
    assert get(site, f"/{prefix}/only.txt", **{"Accept-Encoding": "gzip"}).status_code == 404


@PREFIXES
def test_an_older_sibling_is_ignored_and_logged_once(site: ServerProcess, prefix: str) -> None:
    for _ in range(3):
        resp = get(site, f"/{prefix}/old.txt", **{"Accept-Encoding": "gzip"})
        assert resp.raw_bytes == b"newer than its gz\n"  # type: ignore[attr-defined]
        assert "Content-Encoding" not in resp.headers
    assert site.wait_for_log(f"{prefix}/old.txt.gz is older than the file")
    assert sum(f"{prefix}/old.txt.gz is older" in line for line in site.log_lines) == 1


@PREFIXES
def test_a_new_or_removed_sibling_is_seen_within_the_revalidation_interval(
    site: ServerProcess, prefix: str
) -> None:
    path = site.root.path / prefix / "later.txt"
    first = get(site, f"/{prefix}/later.txt", **{"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in first.headers
    (site.root.path / prefix / "later.txt.gz").write_bytes(b"now compressed")
    os.utime(path.with_name("later.txt.gz"), None)

    def coding() -> str | None:
        return get(site, f"/{prefix}/later.txt", **{"Accept-Encoding": "gzip"}).headers.get(
            "Content-Encoding"
        )

    deadline = time.monotonic() + 3
    while coding() != "gzip":
        assert time.monotonic() < deadline, "the new sibling was not seen"
        time.sleep(0.1)
    path.with_name("later.txt.gz").unlink()
    deadline = time.monotonic() + 3
    while coding() is not None:
        assert time.monotonic() < deadline, "the removed sibling is still served"
        time.sleep(0.1)


@pytest.fixture(scope="module", params=["plain"])
def plain_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, ["--no-precompressed"]) as srv:
        yield srv


@PREFIXES
def test_no_precompressed_serves_the_file_itself(plain_site: ServerProcess, prefix: str) -> None:
    resp = get(plain_site, f"/{prefix}/page.html", **{"Accept-Encoding": "gzip, br, zstd"})
    assert resp.raw_bytes == PAGE  # type: ignore[attr-defined]
    assert "Vary" not in resp.headers and "Content-Encoding" not in resp.headers
