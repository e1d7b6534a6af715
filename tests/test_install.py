"""The README's plain pip path, as a new user runs it: a fresh venv, ``pip install .``,
then ``python -m aws`` from the repository root, where no source folder may shadow the
installed package (the src layout exists for this)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.harness import start, stop


def _copy_checkout(dest: Path) -> Path:
    """The tracked files only: what a clone has, without this checkout's build products."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the package installed the plain way; returns its python."""
    base = tmp_path_factory.mktemp("install")
    clone = _copy_checkout(base / "clone")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(clone)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def test_help_runs_from_the_repo_root(installed: Path) -> None:
    proc = subprocess.run(
        [str(installed), "-m", "aws", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--root" in proc.stdout
    # The package came from the venv, not from a folder in the checkout.
    where = subprocess.run(
        [str(installed), "-c", "import aws, aiobind._native; print(aws.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert str(installed.parent.parent) in where


def test_installed_server_serves_the_bundled_root(installed: Path) -> None:
    srv = start([str(installed), "-m", "aws", "--root", ".", "--workers", "1"], cwd=REPO)
    try:
        for prefix in ("static", "dynamic"):
            name = sorted(p.name for p in (REPO / prefix).iterdir() if p.is_file())[0]
            with urllib.request.urlopen(f"{srv.url}/{prefix}/{name}", timeout=10) as resp:
                assert resp.status == 200
                assert resp.read() == (REPO / prefix / name).read_bytes()
    finally:
        assert stop(srv) == 0, srv.log()
