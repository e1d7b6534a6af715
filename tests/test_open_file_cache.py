"""The open-file cache keeps descriptors and heads, and still notices a changed file
within a second (it re-checks each cached path at most every 0.5 s)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DocRoot, ServerProcess, start_server, stop_server


@pytest.fixture(scope="module")
def one_worker(docroot: DocRoot) -> ServerProcess:
    srv = start_server(docroot.path, docroot=docroot, workers=1)
    yield srv  # type: ignore[misc]
    assert stop_server(srv.proc) == 0


def _served_within(srv: ServerProcess, url: str, expected: bytes, limit: float) -> float:
    t0 = time.monotonic()
    while True:
        body = requests.get(srv.url + url, timeout=5).content
        elapsed = time.monotonic() - t0
        if body == expected:
            return elapsed
        assert elapsed < limit, f"still served {body[:40]!r} after {elapsed:.2f}s"
        time.sleep(0.02)


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
def test_changed_file_is_served_within_a_second(
    one_worker: ServerProcess, docroot: DocRoot, prefix: str, how: str
) -> None:
    name = f"cache-{how.replace(' ', '-')}.txt"
    path: Path = docroot.path / prefix / name
    path.write_bytes(b"old contents\n")
    url = f"/{prefix}/{name}"
    for _ in range(5):  # warm: the file is now held open in the cache
        assert requests.get(one_worker.url + url, timeout=5).content == b"old contents\n"
    new = b"the new contents, longer\n"
    if how == "replaced":
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(new)
        os.replace(tmp, path)
    else:
        with open(path, "r+b") as f:
            f.write(new)
    assert _served_within(one_worker, url, new, limit=1.0) < 1.0
    r = requests.get(one_worker.url + url, timeout=5)
    assert r.headers["Content-Length"] == str(len(new))
    path.unlink()
