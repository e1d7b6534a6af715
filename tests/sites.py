"""A server over a document root of the test's own making, plain and under the shim.

The site features (variants, header rules, error pages, fallbacks, listings) each need a
root and flags of their own; :func:`site_server` starts one the way ``tests/test_layouts``
does, honouring ``--plain-only`` and ``--shim-only``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import DocRoot, ServerProcess, start_server, stop_server

MODES = ["plain", "shim"]


@contextmanager
def site_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    make: Callable[[Path], None],
    extra: list[str],
    preexec: Callable[[], None] | None = None,
) -> Iterator[ServerProcess]:
    mode: str = request.param
    if mode == "shim" and request.config.getoption("--plain-only"):
        pytest.skip("--plain-only: the shim runs were not asked for")
    if mode == "plain" and request.config.getoption("--shim-only"):
        pytest.skip("--shim-only: the plain runs were not asked for")
    base = tmp_path_factory.mktemp("site")
    make(base)
    shim = stats = None
    if mode == "shim":
        shim = request.getfixturevalue("shim_so")
        stats = tmp_path_factory.mktemp("shimstats") / "stats"
    srv = start_server(
        base,
        docroot=DocRoot(base),
        mode=mode,
        shim=shim,
        stats_path=stats,
        workers=1,
        extra=extra,
        preexec=preexec,
    )
    try:
        yield srv
    finally:
        assert stop_server(srv.proc) == 0, srv.log()
