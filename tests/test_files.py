"""The resource layer alone: confinement under each symlink policy and the open-file
cache, on a real directory tree, without a server or a socket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aws.files import FileCache, Redirect
from aws.http import HttpError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for prefix in ("static", "dynamic"):
        (root / prefix / ".git").mkdir(parents=True)
        (root / prefix / "sub").mkdir()
        (root / prefix / "hello.txt").write_bytes(prefix.encode())
        (root / prefix / ".hidden").write_bytes(b"secret")
    (root / ".env").write_bytes(b"secret")
    (root / "beside.txt").write_bytes(b"beside")
    (tmp_path / "outside.txt").write_bytes(b"outside")
    links = {
        "dynamic/to-static": "../static/hello.txt",
        "dynamic/in-prefix": "hello.txt",
        "dynamic/to-beside": "../beside.txt",
        "dynamic/to-outside": "../../outside.txt",
        "dynamic/to-hidden": ".hidden",
        "dynamic/to-env": "../.env",
        "dynamic/dir-static": "../static",
        "dynamic/absolute": str(root / "static" / "hello.txt"),
    }
    for link, target in links.items():
        os.symlink(target, root / link)
    return root


def read(cache: FileCache, url: str) -> bytes:
    segments = url.split("/")
    res = cache.acquire([s.encode() for s in segments], now=0.0)
    try:
        return os.pread(res.fd, 100, 0)
    finally:
        res.release()


def status(cache: FileCache, url: str) -> int:
    try:
        read(cache, url)
    except HttpError as exc:
        return exc.status
    return 200


EXPECTED = {
    # url under dynamic/: (root, prefix, none)
    "hello.txt": (200, 200, 200),
    "in-prefix": (200, 200, 404),
    "to-static": (200, 404, 404),
    "dir-static/hello.txt": (200, 404, 404),
    "to-beside": (200, 404, 404),
    "to-outside": (404, 404, 404),
    "to-hidden": (404, 404, 404),
    "to-env": (404, 404, 404),
    "absolute": (404, 404, 404),
    ".hidden": (404, 404, 404),
    "dir-static/.git/x": (404, 404, 404),
}


@pytest.mark.parametrize("policy", ["root", "prefix", "none"])
def test_policy_table(tree: Path, policy: str) -> None:
    cache = FileCache(str(tree), "dynamic", direct=False, symlinks=policy)
    column = ["root", "prefix", "none"].index(policy)
    try:
        got = {url: status(cache, url) for url in EXPECTED}
    finally:
        cache.close()
    assert got == {url: row[column] for url, row in EXPECTED.items()}


def test_a_followed_link_serves_the_target_bytes(tree: Path) -> None:
    cache = FileCache(str(tree), "dynamic", direct=False)
    try:
        assert read(cache, "to-static") == b"static"
        assert read(cache, "dir-static/hello.txt") == b"static"
        assert read(cache, "to-beside") == b"beside"
    finally:
        cache.close()


def test_a_symlinked_prefix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "static").mkdir(parents=True)
    (root / "static" / "a").write_bytes(b"a")
    os.symlink("static", root / "dynamic")
    for policy, expected in (("root", 200), ("prefix", 200), ("none", 404)):
        cache = FileCache(str(root), "dynamic", direct=False, symlinks=policy)
        try:
            assert status(cache, "a") == expected, policy
        finally:
            cache.close()


def test_a_directory_asks_for_a_slash(tree: Path) -> None:
    cache = FileCache(str(tree), "dynamic", direct=False)
    try:
        with pytest.raises(Redirect):
            read(cache, "dir-static")
    finally:
        cache.close()


def test_a_link_swapped_out_is_seen_at_revalidation(tree: Path, tmp_path: Path) -> None:
    cache = FileCache(str(tree), "dynamic", direct=False, valid=1.0)
    try:
        key = [b"to-static"]
        res = cache.acquire(key, now=0.0)
        res.release()
        tmp = tree / "dynamic" / ".swap"
        os.symlink(str(tmp_path / "outside.txt"), tmp)
        os.replace(tmp, tree / "dynamic" / "to-static")
        assert cache.acquire(key, now=0.5) is res  # still within the validity window
        res.release()
        with pytest.raises(HttpError) as info:
            cache.acquire(key, now=2.0)
        assert info.value.status == 404
    finally:
        cache.close()


def test_unknown_policy_is_refused(tree: Path) -> None:
    with pytest.raises(ValueError):
        FileCache(str(tree), "static", direct=False, symlinks="sometimes")


def test_the_etag_is_size_and_mtime_so_replicas_agree(tmp_path: Path) -> None:
    """Two copies of a file (another inode, as on another machine) with the same size
    and mtime get the same ETag; a same-size rewrite with a new mtime gets another."""
    etags = []
    for name in ("one", "two"):
        (tmp_path / name / "static").mkdir(parents=True)
        path = tmp_path / name / "static" / "a.txt"
        path.write_bytes(b"same bytes")
        os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
        cache = FileCache(str(tmp_path / name), "static", direct=False)
        res = cache.acquire([b"a.txt"], now=0.0)
        etags.append(res.etag)
        res.release()
        cache.close()
    assert (
        os.stat(tmp_path / "one/static/a.txt").st_ino
        != os.stat(tmp_path / "two/static/a.txt").st_ino
    )
    assert etags[0] == etags[1] == b'"%x-%x"' % (1_700_000_000_123_456_789, 10)
    path = tmp_path / "one" / "static" / "a.txt"
    os.utime(path, ns=(1_700_000_000_123_456_790, 1_700_000_000_123_456_790))
    cache = FileCache(str(tmp_path / "one"), "static", direct=False)
    res = cache.acquire([b"a.txt"], now=0.0)
    assert res.etag != etags[0]
    res.release()
    cache.close()
