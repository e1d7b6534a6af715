"""Directory listings, opt-in per prefix, end to end, plain and under the shim: HTML and
JSON, escaped, sorted, no hidden names, nothing outside the root, bounded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ServerProcess
from tests.sites import MODES, site_server

ODD = "<b>&\"x'.txt"


def _make(base: Path) -> None:
    outside = base.parent / f"{base.name}-outside"  # beside the root, not in it
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    for prefix in ("static", "dynamic"):
        d = base / prefix
        (d / "docs" / "deeper").mkdir(parents=True)
        (d / "docs" / "b.txt").write_bytes(b"bb")
        (d / "docs" / "a b.txt").write_bytes(b"a")
        (d / "docs" / ODD).write_bytes(b"odd")
        (d / "docs" / "zé.txt").write_bytes(b"unicode")
        (d / "docs" / ".hidden").write_bytes(b"h")
        (d / "docs" / ".git").mkdir()
        (d / "docs" / "deeper" / "c.txt").write_bytes(b"ccc")
        os.symlink(outside / "secret.txt", d / "docs" / "out-abs")
        os.symlink(f"../../../{outside.name}", d / "docs" / "out-rel")
        os.symlink("b.txt", d / "docs" / "in-link")
        os.symlink(".hidden", d / "docs" / "to-hidden")
        (d / "site").mkdir()
        (d / "site" / "index.html").write_bytes(b"<p>index wins</p>")
        (d / "many").mkdir()
        for i in range(1500):
            (d / "many" / f"f{i:05d}").write_bytes(b"")


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make, ["--listing", "static"]) as srv:
        yield srv


def test_html_listing_is_sorted_escaped_and_has_no_hidden_or_outside_names(
    site: ServerProcess,
) -> None:
    resp = requests.get(site.url + "/static/docs/", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Vary"] == "Accept"
    text = resp.text
    assert '<a href="../">../</a>' in text
    hrefs = [part.split('"', 1)[0] for part in text.split('<a href="')[1:]]
    assert hrefs == [
        "../",
        "%3Cb%3E%26%22x%27.txt",
        "a%20b.txt",
        "b.txt",
        "deeper/",
        "in-link",
        "z%C3%A9.txt",
    ]
    assert "&lt;b&gt;&amp;&quot;x&#x27;.txt" in text and ODD not in text
    assert "zé.txt" in text
    for name in (".hidden", ".git", "out-abs", "out-rel", "to-hidden", "secret"):
        assert name not in text
    head = requests.head(site.url + "/static/docs/", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(resp.content))


def test_json_listing(site: ServerProcess) -> None:
    resp = requests.get(
        site.url + "/static/docs/", headers={"Accept": "application/json"}, timeout=10
    )
    assert resp.headers["Content-Type"] == "application/json"
    doc = resp.json()
    assert doc["path"] == "/static/docs/" and doc["truncated"] is False
    by_name = {e["name"]: e for e in doc["entries"]}
    assert list(by_name) == [ODD, "a b.txt", "b.txt", "deeper", "in-link", "zé.txt"]
    assert by_name["b.txt"]["size"] == 2 and by_name["b.txt"]["type"] == "file"
    assert by_name["in-link"]["size"] == 2  # the link's target, which may be served
    assert by_name["deeper"]["type"] == "dir"
    assert abs(by_name["b.txt"]["mtime"] - time.time()) < 3600


def test_the_prefix_root_has_no_parent_link_and_an_index_wins(site: ServerProcess) -> None:
    top = requests.get(site.url + "/static/", timeout=10).text
    assert "../" not in top and 'href="docs/"' in top
    assert requests.get(site.url + "/static/site/", timeout=10).content == b"<p>index wins</p>"


def test_listings_are_off_where_not_asked_for(site: ServerProcess) -> None:
    assert requests.get(site.url + "/dynamic/docs/", timeout=10).status_code == 404
    assert requests.get(site.url + "/static/.git/", timeout=10).status_code == 404
    assert requests.get(site.url + "/static/nowhere/", timeout=10).status_code == 404
    assert requests.get(site.url + "/static/docs/out-rel/", timeout=10).status_code == 404


def test_a_large_folder_is_capped(site: ServerProcess) -> None:
    started = time.monotonic()
    resp = requests.get(
        site.url + "/static/many/", headers={"Accept": "application/json"}, timeout=10
    )
    elapsed = time.monotonic() - started
    doc = resp.json()
    assert doc["truncated"] is True and len(doc["entries"]) == 1000
    names = [e["name"] for e in doc["entries"]]
    assert names == sorted(names)
    assert elapsed < 2.0
    assert "Only the first 1000" in requests.get(site.url + "/static/many/", timeout=10).text


def test_wget_mirrors_a_folder_through_its_listings(site: ServerProcess, tmp_path: Path) -> None:
    subprocess.run(
        ["wget", "-q", "-r", "-np", "-nH", "-P", str(tmp_path), site.url + "/static/docs/"],
        check=False,  # wget exits 8 when a link 404s; none should, but check the files
        timeout=60,
    )
    got = tmp_path / "static" / "docs"
    assert (got / "b.txt").read_bytes() == b"bb"
    assert (got / "a b.txt").read_bytes() == b"a"
    assert (got / ODD).read_bytes() == b"odd"
    assert (got / "deeper" / "c.txt").read_bytes() == b"ccc"
    assert not (got / ".hidden").exists()


HUGE = 100_000


def _make_huge(base: Path) -> None:
    folder = base / "static" / "huge"
    folder.mkdir(parents=True)
    (base / "dynamic").mkdir()
    for i in range(HUGE):
        name = f".h{i:06d}" if i < HUGE // 2 else f"f{i:06d}"  # half of them hidden
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


@pytest.fixture(scope="module", params=MODES)
def huge(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with site_server(request, tmp_path_factory, _make_huge, ["--listing", "static"]) as srv:
        yield srv
        root = srv.root.path
    shutil.rmtree(root / "static" / "huge")  # 100,000 inodes: not left for pytest to keep


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_folder_of_100000_entries_is_listed_quickly_in_bounded_memory(
    huge: ServerProcess,
) -> None:
    """The scan stops early (whatever the order: hidden entries count towards the scan
    limit), so each listing costs milliseconds and the worker's memory stays flat."""
    url = huge.url + "/static/huge/"
    with requests.Session() as http:
        http.get(url, timeout=10)
        before = rss_kib(huge.worker_pids()[0])
        slowest = 0.0
        for _ in range(10):
            started = time.monotonic()
            doc = http.get(url, headers={"Accept": "application/json"}, timeout=10).json()
            slowest = max(slowest, time.monotonic() - started)
            assert doc["truncated"] is True
            assert len(doc["entries"]) <= 1000
            assert all(not e["name"].startswith(".") for e in doc["entries"])
        after = rss_kib(huge.worker_pids()[0])
    print(f"\n[listing 100k] slowest of 10: {slowest * 1000:.1f} ms, RSS {before} -> {after} KiB")
    assert slowest < 1.0, slowest
    assert after - before < 8 * 1024, (before, after)
