"""Security, end to end: root confinement, hidden files, symlink races, and fuzzing.

Everything runs against the shared ``server`` fixture (plain, then under the splitting
shim). Its document root (``docroot`` in conftest) holds the traps: ``secret.txt`` beside
the prefixes, an ``outside`` directory with a ``passwd``, ``link-out``/``dir-out``
symlinks leading there, ``.hidden`` and ``.git/config``. None of their bytes may ever
come back through a URL trick or a symlink that leaves the root.

The confinement tests run under each ``--symlinks`` policy: ``root`` (the session
server), ``prefix`` and ``none`` (servers of their own, plain and under the shim). Links
that leave a prefix but stay inside the root are served under ``root`` only; links to a
hidden name are refused under every policy.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DocRoot, ServerProcess, http_get, start_server, stop_server

SECRETS = (b"root:x:0:0", b"outside the prefixes", b"secret\n", b"OUTSIDE-SWAP")


def ask(srv: ServerProcess, target: str | bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    if isinstance(target, str):
        target = target.encode("latin-1")
    raw = http_get(
        srv.addr, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", timeout
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), raw[:200]
    return int(head.split()[1]), body


def assert_no_secret(data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, f"leaked {secret!r}"


@pytest.fixture(scope="module")
def extra_links(docroot: DocRoot) -> Iterator[None]:
    """Symlinks for this module: climbing out of the root (relative and absolute), out
    of the prefix but inside the root, and to hidden names."""
    made: list[Path] = []
    root = docroot.path
    (root / ".env").write_bytes(b"secret\n")  # a hidden file at the root itself
    outside = root.parent / "outside-of-root"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    for prefix in ("static", "dynamic"):
        d = root / prefix
        other = "dynamic" if prefix == "static" else "static"
        out_rel = os.path.relpath(outside / "passwd", d)
        for link, target in (
            # out of the root
            (d / "rel-out", out_rel),
            (d / "sub" / "rel-out2", os.path.relpath(outside / "passwd", d / "sub")),
            (d / "dir-root-up", "../.."),
            (d / "sub" / "dir-up2", "../../.."),
            (d / "abs-etc", "/etc"),
            (d / "abs-in", str(root / prefix / "hello.txt")),  # absolute: inside, via /
            # out of the prefix, inside the root
            (d / "rel-up", "../secret.txt"),
            (d / "sub" / "rel-up2", "../../secret.txt"),
            (d / "dir-up", ".."),
            (d / "cross", f"../{other}/hello.txt"),
            # to hidden names, inside the prefix or the root
            (d / "link-hidden", ".hidden"),
            (d / "link-git", ".git/config"),
            (d / "dir-git", ".git"),
            (d / "link-env", "../.env"),
        ):
            os.symlink(target, link)
            made.append(link)
    yield
    for link in made:
        link.unlink()
    (root / ".env").unlink()


ESCAPES = [
    # dot-dot, plain and percent-encoded in every spelling
    "/{p}/../secret.txt",
    "/{p}/../../../../../../etc/passwd",
    "/{p}/sub/../../secret.txt",
    "/{p}/%2e%2e/secret.txt",
    "/{p}/%2E%2E/%2E%2E/etc/passwd",
    "/{p}/.%2e/secret.txt",
    "/{p}/%2e./secret.txt",
    "/{p}/%2e%2e%2fsecret.txt",
    "/{p}/sub%2f..%2f..%2fsecret.txt",
    "/{p}%2f..%2fsecret.txt",
    "/{p}/sub/..%2f..%2fsecret.txt",
    # backslashes, raw and encoded
    "/{p}/..\\secret.txt",
    "/{p}/sub\\..\\..\\secret.txt",
    "/{p}/%5c..%5c..%5csecret.txt",
    "/{p}/..%5csecret.txt",
    # double encoding: decoded once, so these name files called "%2e%2e" etc.
    "/{p}/%252e%252e/secret.txt",
    "/{p}/%252e%252e%252fsecret.txt",
    "/{p}/%25252e%25252e/secret.txt",
    # absolute paths
    "//etc/passwd",
    "/{p}//etc/passwd",
    "/{p}/%2fetc%2fpasswd",
    "/{p}/%2Fetc/passwd",
    "/{p}/%2f%2e%2e%2fsecret.txt",
    # absolute-form request targets
    "http://t/{p}/../secret.txt",
    "http://t/etc/passwd",
    "http://t/../secret.txt",
    "https://evil.example/{p}/%2e%2e/secret.txt",
    "http://t//etc/passwd",
    "http://t",
    # NUL bytes
    "/{p}/hello.txt%00.png",
    "/{p}/%00",
    "/{p}/%00/../secret.txt",
    "/{p}/hello.txt%00",
    # symlinks out of the root: files and folders, absolute and relative
    "/{p}/link-out",
    "/{p}/dir-out/passwd",
    "/{p}/dir-out/",
    "/{p}/rel-out",
    "/{p}/sub/rel-out2",
    "/{p}/dir-root-up/outside-of-root/passwd",
    "/{p}/sub/dir-up2/etc/passwd",
    "/{p}/abs-etc/passwd",
    "/{p}/abs-in",  # an absolute target is refused even when it names a file inside
    # symlinks to hidden names: a link must not undo the hidden-segment rule
    "/{p}/link-hidden",
    "/{p}/link-git",
    "/{p}/dir-git/config",
    "/{p}/link-env",
    "/{p}/dir-up/.env",
    "/{p}/dir-up/{p}/.hidden",
    # hidden files, however they are spelled
    "/{p}/.hidden",
    "/{p}/.git/config",
    "/{p}/.git/",
    "/{p}/.git",
    "/{p}/%2ehidden",
    "/{p}/%2Egit/config",
    "/{p}/sub/../.hidden",
    "/{p}/sub/..%2f.hidden",
    "/{p}/sub%2f..%2f.hidden",
    "/{p}/sub%2F..%2F.git%2Fconfig",
    "/{p}/sub%2f.%2f..%2f.hidden",
    "/{p}/./.hidden",
    "/{p}/sub/./../.git/config",
]


# Links that leave their prefix but stay inside the root: (target, content) per prefix.
WITHIN_ROOT = [
    ("/{p}/rel-up", b"outside the prefixes\n"),
    ("/{p}/sub/rel-up2", b"outside the prefixes\n"),
    ("/{p}/dir-up/secret.txt", b"outside the prefixes\n"),
    ("/{p}/dir-up/{p}/hello.txt", b"hello\n"),
    ("/{p}/cross", b"hello\n"),
]
POLICIES = ["root", "prefix", "none"]


@pytest.fixture(scope="module")
def policy_servers(
    docroot: DocRoot, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], ServerProcess]]:
    """Servers started with ``--symlinks prefix`` / ``none``, one per shim mode, on demand."""
    started: dict[tuple[str, str], ServerProcess] = {}
    yield started
    for srv in started.values():
        assert stop_server(srv.proc) == 0, srv.log()


@pytest.fixture(params=POLICIES)
def policy(
    request: pytest.FixtureRequest,
    server: ServerProcess,
    policy_servers: dict[tuple[str, str], ServerProcess],
    docroot: DocRoot,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, ServerProcess]:
    name: str = request.param
    if name == "root":  # the default: the session server
        return name, server
    key = (server.mode, name)
    if key not in policy_servers:
        shim = stats = None
        if server.mode == "shim":
            shim = request.getfixturevalue("shim_so")
            stats = tmp_path_factory.mktemp("shimstats") / "stats"
        policy_servers[key] = start_server(
            docroot.path,
            docroot=docroot,
            mode=server.mode,
            shim=shim,
            stats_path=stats,
            workers=1,
            extra=["--symlinks", name],
        )
    return name, policy_servers[key]


@pytest.mark.usefixtures("extra_links")
@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_root_confinement(policy: tuple[str, ServerProcess], prefix: str) -> None:
    _, srv = policy
    refused = []
    for pattern in ESCAPES:
        target = pattern.replace("{p}", prefix)
        status, body = ask(srv, target)
        assert_no_secret(body)
        if status not in (400, 403, 404):
            refused.append((target, status))
    assert refused == [], "served instead of refused"


@pytest.mark.usefixtures("extra_links")
@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_links_inside_the_root_follow_the_policy(
    policy: tuple[str, ServerProcess], prefix: str
) -> None:
    """``root`` serves what a link finds anywhere inside the root; ``prefix`` and
    ``none`` refuse every link that leaves the prefix folder."""
    name, srv = policy
    for pattern, content in WITHIN_ROOT:
        target = pattern.replace("{p}", prefix)
        got = ask(srv, target)
        if name == "root":
            assert got == (200, content), target
        else:
            assert got[0] == 404, (target, got)
            assert_no_secret(got[1])


@pytest.mark.usefixtures("extra_links")
@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_what_stays_inside_is_still_served(policy: tuple[str, ServerProcess], prefix: str) -> None:
    name, srv = policy
    assert ask(srv, f"/{prefix}/hello.txt") == (200, b"hello\n")
    # a symlink inside the prefix: followed unless symlinks are off
    status, body = ask(srv, f"/{prefix}/link-in")
    assert (status, body) == (200, b"hello\n") if name != "none" else status == 404
    # ".." that stays inside may be resolved lexically or refused, never followed on disk
    status, body = ask(srv, f"/{prefix}/sub/../hello.txt")
    assert (status, body) == (200, b"hello\n") or status == 404
    assert ask(srv, f"/{prefix}/a%20b%25.txt") == (200, b"spaced\n")
    assert ask(srv, f"http://t/{prefix}/hello.txt") == (200, b"hello\n")  # absolute-form


@pytest.mark.parametrize("prefix", ["static", "dynamic"])
def test_symlink_swapped_in_while_requests_run(
    policy: tuple[str, ServerProcess], prefix: str, tmp_path: Path
) -> None:
    """Regular files are swapped (atomic rename) for symlinks leading out of the root and
    back, for about a second, while clients keep asking for them: each answer is the
    inside content or 404, never the outside bytes."""
    outside = tmp_path / "outside-target"
    outside.write_bytes(b"OUTSIDE-SWAP\n")
    _, server = policy
    d = server.root.path / prefix
    tag = uuid.uuid4().hex[:8]
    names = [f"swap-{tag}-{i}.txt" for i in range(40)]
    for name in names:
        (d / name).write_bytes(b"inside\n")
    stop = threading.Event()
    swaps = 0
    counts = {200: 0, 404: 0}
    leaks: list[bytes] = []
    errors: list[str] = []

    def swapper() -> None:
        nonlocal swaps
        i = 0
        while not stop.is_set():
            name = names[i % len(names)]
            tmp = d / f".tmp-{tag}-{i}"
            if (i // len(names)) % 2 == 0:
                os.symlink(outside, tmp)
            else:
                tmp.write_bytes(b"inside\n")
            os.replace(tmp, d / name)
            swaps += 1
            i += 1

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            name = rng.choice(names)
            try:
                status, body = ask(server, f"/{prefix}/{name}")
            except (OSError, AssertionError) as exc:
                errors.append(repr(exc))
                continue
            if b"OUTSIDE" in body:
                leaks.append(body)
            elif status == 200 and body == b"inside\n":
                counts[200] += 1
            elif status == 404:
                counts[404] += 1
            else:
                errors.append(f"{status} {body[:40]!r}")

    threads = [threading.Thread(target=swapper)]
    threads += [threading.Thread(target=client, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.2)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (d / name).unlink()
    assert leaks == []
    assert errors == []
    assert swaps > 100 and counts[200] > 0, (swaps, counts)


# -- fuzzing -------------------------------------------------------------------------------

VALID = [
    b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n",
    b"HEAD /dynamic/hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /dynamic/f4097.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=10-20\r\n\r\n",
    b"GET /static/sub/ HTTP/1.0\r\n\r\n",
    b"GET /static/f1.bin HTTP/1.1\r\nHost: t\r\nIf-None-Match: *\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /dynamic/hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
]
TOKENS = [
    b"\r\n", b"\n", b"\r", b"\0", b" ", b"\t", b":", b"%", b"%00", b"%2e%2e/", b"../", b"/",
    b"\\", b"\xff", b"HTTP/1.1", b"HTTP/9.9", b"Host: x\r\n", b"Content-Length: 99999999\r\n",
    b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n", b"Range: bytes=0-\r\n",
    b"Range: bytes=99999999999-\r\n", b"Connection: keep-alive\r\n", b"\r\n\r\n",
    b"GET /static/hello.txt HTTP/1.1\r\nHost: t\r\n\r\n", b"A" * 9000, b"%zz", b"?a=b", b"#f",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "token", "repeat"]))
        if op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "repeat":
            data[pos:pos] = bytes(data[max(0, pos - 20) : pos]) * draw(st.integers(1, 4))
    return bytes(data)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"get", b"G\x00T", b""]))
    segs = draw(
        st.lists(
            st.sampled_from(
                [b"static", b"dynamic", b"..", b".", b"%2e%2e", b"%2f", b".hidden", b"link-out",
                 b"dir-out", b"hello.txt", b"sub", b"", b"%00", b"%ff", b"\\", b"%252e"]
            ),
            max_size=6,
        )
    )  # fmt: skip
    target = b"/" + b"/".join(segs)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b""]))
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"Host", b"Range", b"Connection", b"Content-Length", b"X y", b""]),
                st.binary(max_size=20),
            ),
            max_size=5,
        )
    )
    head = method + b" " + target + b" " + version + b"\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + draw(st.sampled_from([b"\r\n", b"", b"\r\n\r\n", b"\n\n"]))


def exchange(srv: ServerProcess, data: bytes) -> bytes:
    """Send, half-close, read until the server closes (it must, and soon)."""
    with socket.create_connection(srv.addr, timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(1 << 20):
                out += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            raise AssertionError(f"no answer and not closed after {data[:200]!r}") from None
    return out


def check_answer(data: bytes, out: bytes) -> None:
    if not out:
        return  # closed: allowed
    assert out.startswith(b"HTTP/1.1 "), (data[:200], out[:200])
    status = int(out[9:12])
    assert status in (200, 206, 301, 304) or 400 <= status <= 599, (data[:200], out[:200])
    if b"/f" not in data:  # the f*.bin bodies are arbitrary bytes
        assert_no_secret(out)


@pytest.fixture
def survives(server: ServerProcess) -> Iterator[None]:
    """The workers that start the test are the ones that end it (no crash and restart),
    and nothing was logged as failing."""
    pids = sorted(server.worker_pids())
    mark = len(server.log())
    yield
    assert server.alive()
    assert sorted(server.worker_pids()) == pids, "a worker died and was restarted"
    new = server.log()[mark:]
    for bad in ("Traceback", "handler", "crashed", "died"):
        assert bad not in new, new[-2000:]


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.mark.usefixtures("survives")
@FUZZ
@given(data=st.one_of(mutated(), structured(), st.binary(max_size=400)), after=st.booleans())
def test_fuzz_requests_never_hurt_the_server(
    server: ServerProcess, data: bytes, after: bool
) -> None:
    if after:  # the same bytes on a connection that has just been answered (keep-alive)
        data = VALID[0] + data
    check_answer(data, exchange(server, data))
