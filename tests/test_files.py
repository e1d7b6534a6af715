"""The resource layer alone: confinement under each symlink policy and the open-file
cache, on a real directory tree, without a server or a socket."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

import aiobind
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


# Every refused link says why in the log (the README's promise), naming the file once.
REFUSED_LOG = {
    # url under dynamic/ -> (policy, what the log says)
    "to-outside": ("root", "dynamic/to-outside: symlink refused: it leads outside the boundary"),
    "absolute": ("root", "dynamic/absolute: symlink refused: it leads outside the boundary"),
    "to-hidden": ("root", "dynamic/to-hidden: symlink refused: it leads to a hidden name"),
    "to-beside": ("prefix", "dynamic/to-beside: symlink refused: it leads outside the boundary"),
    "to-env": ("prefix", "dynamic/to-env: symlink refused: it leads outside the boundary"),
    "in-prefix": ("none", "dynamic/in-prefix: symlink refused: --symlinks none"),
}


@pytest.mark.parametrize("url", list(REFUSED_LOG))
def test_a_refused_link_is_logged_once_by_its_path(
    tree: Path, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy, line = REFUSED_LOG[url]
    cache = FileCache(str(tree), "dynamic", direct=False, symlinks=policy)
    try:
        with caplog.at_level("INFO", logger="aws.files"):
            assert status(cache, url) == 404
    finally:
        cache.close()
    assert [r.getMessage() for r in caplog.records] == [f"{tree}/{line}"]


def test_a_unix_socket_or_a_fifo_in_the_root_is_404(tree: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tree / "dynamic" / "sock"))
        os.mkfifo(tree / "dynamic" / "fifo")
        cache = FileCache(str(tree), "dynamic", direct=False)
        try:
            assert status(cache, "sock") == 404
            assert status(cache, "fifo") == 404
        finally:
            cache.close()


def test_an_open_that_fails_otherwise_is_500_with_a_log_line(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    cache = FileCache(str(tree), "dynamic", direct=False)
    monkeypatch.setattr(aiobind, "openat2", broken)
    try:
        with caplog.at_level("ERROR", logger="aws.files"), pytest.raises(HttpError) as info:
            read(cache, "hello.txt")
    finally:
        cache.close()
    assert info.value.status == 500
    assert f"{tree}/dynamic/hello.txt: cannot open: {os.strerror(errno.EIO)}" in caplog.text


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


def test_variants_are_cached_and_re_checked_with_their_file(tmp_path: Path) -> None:
    """x.gz beside x is opened with x; rewritten in place, made or removed, it is seen
    at the next re-check (the folder's mtime shows a new or removed sibling, the
    sibling's own stat a rewrite)."""
    folder = tmp_path / "static"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"plain")
    os.utime(folder / "x.txt", ns=(1_000_000_000_000, 1_000_000_000_000))
    (folder / "x.txt.gz").write_bytes(b"gz")
    cache = FileCache(str(tmp_path), "static", direct=False, valid=1.0)

    def variants(now: float) -> dict[bytes, int]:
        res = cache.acquire([b"x.txt"], now=now)
        try:
            return {coding: v.size for coding, v in res.variants or ()}
        finally:
            res.release()

    assert variants(0.0) == {b"gzip": 2}
    (folder / "x.txt.gz").write_bytes(b"gzip!")  # in place: same inode, same folder
    assert variants(0.5) == {b"gzip": 2}  # within the interval: the cached one
    assert variants(2.0) == {b"gzip": 5}
    (folder / "x.txt.br").write_bytes(b"br")
    assert variants(4.0) == {b"br": 2, b"gzip": 5}
    (folder / "x.txt.gz").unlink()
    assert variants(6.0) == {b"br": 2}
    cache.close()
