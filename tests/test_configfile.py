"""``--config aws.toml``: the file alone (keys, values, lines in errors, the README's
example), and a real server started from one, plain and under the shim, with flags
overriding it."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from aws import config, configfile
from tests.conftest import REPO, ServerProcess
from tests.sites import MODES, site_server


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "aws.toml"
    path.write_text(text)
    return str(path)


def test_a_file_sets_every_kind_of_option(tmp_path: Path) -> None:
    values = configfile.load(
        write(
            tmp_path,
            'root = "site"\nport = 8080\nheader_timeout = 2.5\nprecompressed = false\n'
            'symlinks = "none"\nspa = ["static"]\nlisting = ["static", "dynamic"]\n'
            '[cache_control]\n"*.html" = "no-cache"\n'
            '[header."/static/*"]\n"Access-Control-Allow-Origin" = "*"\n',
        )
    )
    assert values == {
        "root": str(tmp_path / "site"),  # relative to the file's folder
        "port": 8080,
        "header_timeout": 2.5,
        "precompressed": False,
        "symlinks": "none",
        "spa": ("static",),
        "listing": ("static", "dynamic"),
        "cache_control": (("*.html", "no-cache"),),
        "header": (("/static/*", "Access-Control-Allow-Origin", "*"),),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 1\n\nprot = 2\n", ":3: unknown key 'prot'"),
        ('port = "x"\n', ":1: port: invalid literal"),
        ("port = 1.5\n", ":1: port:"),
        ("workers = 0\n", ":1: workers: must be a positive integer"),
        ('precompressed = "yes"\n', ":1: precompressed: expected true or false"),
        ('\nsymlinks = "some"\n', ":2: symlinks: 'some' is not one of root, prefix, none"),
        ('spa = ["nope"]\n', ":1: spa: 'nope' is not one of static, dynamic"),
        ('spa = "static"\n', ":1: spa: expected a list of strings"),
        ('config = "other.toml"\n', ":1: unknown key 'config'"),
        ('[cache_control]\n"*.js" = 3\n', ":1: cache_control: expected a string"),
        (
            '[header."*"]\n"X-Ok" = "1"\n"Bad Name" = "x"\n',
            "line 3: 'Bad Name': 'Bad Name' is not a header name",
        ),
        ('[header."*"]\n"Content-Length" = "3"\n', "is the server's to set"),
        ("port = \n", "Invalid value (at line 1"),
    ],
)
def test_a_bad_file_names_the_key_and_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(configfile.ConfigFileError) as caught:
        configfile.load(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(tmp_path / "aws.toml") in str(caught.value)


def test_the_readme_example_is_complete_and_valid(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    m = re.search(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert m, "the README has no TOML example"
    values = configfile.load(write(tmp_path, m.group(1)))
    every = {f.name for f in config.flags()} - {"config"}
    assert set(values) == every, every - set(values)


def test_a_bad_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 0\nmax_ranges = -1\n")
    run = subprocess.run(
        [sys.executable, "-m", "aws", "--root", str(tmp_path), "--config", path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == f"aws: {path}:2: max_ranges: must be a positive integer"


CONFIG = """
precompressed = false
listing = ["static"]
spa = ["dynamic"]
error_pages = "errors"
[cache_control]
"*.txt" = "no-cache"
[header."*"]
"X-Frame-Options" = "DENY"
"""


def _make(base: Path) -> None:
    for prefix in ("static", "dynamic"):
        (base / prefix / "docs").mkdir(parents=True)
        (base / prefix / "index.html").write_bytes(b"<p>app</p>")
        (base / prefix / "docs" / "a.txt").write_bytes(b"a\n")
        (base / prefix / "docs" / "a.txt.gz").write_bytes(gzip.compress(b"a\n"))
    (base / "errors").mkdir()
    (base / "errors" / "404.html").write_bytes(b"<p>custom 404</p>")
    (base / "aws.toml").write_text(CONFIG)


@pytest.fixture(scope="module", params=MODES)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # The root comes from the command line; the flags override the file's
    # precompressed = false and its Cache-Control rules.
    flags = ["--config", "CONFIG", "--precompressed", "--cache-control", "/static/*=max-age=60"]

    def make(base: Path) -> None:
        _make(base)
        flags[1] = str(base / "aws.toml")

    with site_server(request, tmp_path_factory, make, flags) as srv:
        yield srv


def test_a_server_started_from_a_file(site: ServerProcess) -> None:
    url = site.url
    listing = requests.get(url + "/static/docs/", timeout=10)
    assert 'href="a.txt"' in listing.text  # listing = ["static"]
    # No listing under /dynamic/: the folder is an unknown path there, so the SPA index.
    assert requests.get(url + "/dynamic/docs/", timeout=10).content == b"<p>app</p>"
    assert requests.get(url + "/dynamic/some/route", timeout=10).content == b"<p>app</p>"
    missing = requests.get(url + "/static/nothing.js", timeout=10)
    assert (missing.status_code, missing.content) == (404, b"<p>custom 404</p>")
    static = requests.get(
        url + "/static/docs/a.txt", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert static.headers["Content-Encoding"] == "gzip"  # --precompressed beat the file
    assert static.content == b"a\n"
    assert static.headers["Cache-Control"] == "max-age=60"  # the flag replaced the file's rules
    assert static.headers["X-Frame-Options"] == "DENY"
    dynamic = requests.get(url + "/dynamic/docs/a.txt", timeout=10)
    assert "Cache-Control" not in dynamic.headers
