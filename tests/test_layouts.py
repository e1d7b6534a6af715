"""Real layouts, end to end: ``dynamic/`` made of relative symlinks into ``../static/``
(the layout the original course and its graders use), a symlinked prefix
(``dynamic -> static``) and a symlinked folder inside a prefix (``static/img ->
../assets``). Under the default ``--symlinks root`` all of them are served, each by the
path of the prefix that was asked for: sendfile for ``/static/``, AIO for ``/dynamic/``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import DocRoot, ServerProcess, make_content, start_server, stop_server

SIZES = {"a.dat": 4097, "b.dat": 1024 * 1024 + 3, "big.dat": 8 * 1024 * 1024, "c.txt": 6}


def _course_layout(base: Path) -> dict[str, bytes]:
    """static/ holds the files, dynamic/ holds links to them; returns URL -> bytes."""
    (base / "static").mkdir()
    (base / "dynamic").mkdir()
    contents = {}
    for name, size in SIZES.items():
        data = make_content(size)[::-1] if name != "c.txt" else b"plain\n"
        (base / "static" / name).write_bytes(data)
        os.symlink(f"../static/{name}", base / "dynamic" / name)
        contents[f"/static/{name}"] = contents[f"/dynamic/{name}"] = data
    return contents


def _linked_dirs_layout(base: Path) -> dict[str, bytes]:
    """A symlinked prefix and a symlinked folder inside a prefix."""
    (base / "static").mkdir()
    (base / "assets").mkdir()
    os.symlink("static", base / "dynamic")
    os.symlink("../assets", base / "static" / "img")
    (base / "static" / "page.html").write_bytes(b"<p>page</p>\n")
    logo = make_content(70_000)
    (base / "assets" / "logo.bin").write_bytes(logo)
    return {
        "/static/page.html": b"<p>page</p>\n",
        "/dynamic/page.html": b"<p>page</p>\n",
        "/static/img/logo.bin": logo,
        "/dynamic/img/logo.bin": logo,
    }


@pytest.fixture(scope="module", params=["plain", "shim"])
def layouts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[ServerProcess, dict[str, bytes]]]]:
    mode: str = request.param
    if mode == "shim" and request.config.getoption("--plain-only"):
        pytest.skip("--plain-only: the shim runs were not asked for")
    if mode == "plain" and request.config.getoption("--shim-only"):
        pytest.skip("--shim-only: the plain runs were not asked for")
    running: dict[str, tuple[ServerProcess, dict[str, bytes]]] = {}
    try:
        for name, make in (("course", _course_layout), ("linked", _linked_dirs_layout)):
            base = tmp_path_factory.mktemp(name)
            contents = make(base)
            shim = stats = None
            if mode == "shim":
                shim = request.getfixturevalue("shim_so")
                stats = tmp_path_factory.mktemp("shimstats") / "stats"
            srv = start_server(
                base,
                docroot=DocRoot(base, contents),
                mode=mode,
                shim=shim,
                stats_path=stats,
                workers=1,
            )
            running[name] = (srv, contents)
        yield running
    finally:
        for srv, _ in running.values():
            assert stop_server(srv.proc) == 0, srv.log()


@pytest.mark.parametrize("layout", ["course", "linked"])
def test_every_file_is_served_byte_identical(
    layouts: dict[str, tuple[ServerProcess, dict[str, bytes]]], layout: str
) -> None:
    srv, contents = layouts[layout]
    with requests.Session() as http:
        for path, data in contents.items():
            resp = http.get(srv.url + path, timeout=20)
            assert resp.status_code == 200, path
            assert resp.content == data, path


def test_wget_fetches_a_linked_dynamic_file(
    layouts: dict[str, tuple[ServerProcess, dict[str, bytes]]], tmp_path: Path
) -> None:
    srv, contents = layouts["course"]
    out = tmp_path / "b.dat"
    subprocess.run(
        ["wget", "-q", "-O", str(out), f"{srv.url}/dynamic/b.dat"], check=True, timeout=30
    )
    assert out.read_bytes() == contents["/dynamic/b.dat"]


def test_each_prefix_keeps_its_own_way_out(
    layouts: dict[str, tuple[ServerProcess, dict[str, bytes]]],
) -> None:
    """A link in dynamic/ to a file in static/ is still read by AIO, and the same file
    asked for under /static/ still goes out by sendfile. The shim counts sendfile calls,
    so the runs under it show which path each request took."""
    srv, contents = layouts["course"]
    with requests.Session() as http:

        def fetch(path: str) -> None:
            resp = http.get(srv.url + path, timeout=20)
            assert resp.status_code == 200 and resp.content == contents[path]

        if srv.mode != "shim":
            fetch("/dynamic/big.dat")
            fetch("/static/big.dat")
            return
        before = srv.stats().sendfile_calls
        fetch("/dynamic/big.dat")
        after_dynamic = srv.stats().sendfile_calls
        fetch("/static/big.dat")
        after_static = srv.stats().sendfile_calls
    assert after_dynamic == before, "a /dynamic/ body went out by sendfile"
    assert after_static > after_dynamic, "a /static/ body did not go out by sendfile"


def test_prefix_and_none_policies_refuse_links_that_leave_the_prefix(
    layouts: dict[str, tuple[ServerProcess, dict[str, bytes]]],
) -> None:
    srv, _ = layouts["course"]
    root = srv.root.path
    for policy, linked_dir in (("prefix", 200), ("none", 404)):
        other = start_server(root, docroot=srv.root, workers=1, extra=["--symlinks", policy])
        try:
            assert requests.get(other.url + "/static/a.dat", timeout=10).status_code == 200
            assert requests.get(other.url + "/dynamic/a.dat", timeout=10).status_code == 404
            # dynamic/ -> ../static/ breaks out of the prefix; a link inside one does not.
            os.symlink("a.dat", root / "static" / f"in-{policy}")
            try:
                got = requests.get(f"{other.url}/static/in-{policy}", timeout=10)
                assert got.status_code == linked_dir
            finally:
                (root / "static" / f"in-{policy}").unlink()
        finally:
            assert stop_server(other.proc) == 0, other.log()
