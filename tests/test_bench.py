"""The benchmark's own machinery (bench/httpbench), without running a benchmark: the idle
connections against a real aws, server CPU per request and the growth section in the
report, the many-connections configurations, and the command line."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.httpbench import cli, cold, idle
from bench.httpbench.growth import growth_lines
from bench.httpbench.report import cpu_median, median_of, medians_table, raw_table
from bench.httpbench.servers import (
    MANY_CONNECTIONS,
    SERVERS,
    Context,
    nginx_conf,
    with_room_for_many,
)
from bench.httpbench.workloads import WORKLOADS
from bench.httpbench.wrk import Outcome, Sample
from tests.conftest import DocRoot, ServerProcess, make_content, start_server, stop_server

pytestmark = pytest.mark.timeout(60)
BY_KEY = {wl.key: wl for wl in WORKLOADS}
SPECS = {spec.name: spec for spec in SERVERS}
BODY = make_content(1024)
DIGEST = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def small_root(tmp_path: Path) -> DocRoot:
    (tmp_path / "static").mkdir()
    (tmp_path / "dynamic").mkdir()
    (tmp_path / "static" / "1k.bin").write_bytes(BODY)
    (tmp_path / "static" / "hello.txt").write_bytes(b"hello\n")  # ServerProcess.alive()
    return DocRoot(tmp_path, {"/static/1k.bin": BODY})


def one_worker(root: DocRoot, *extra: str) -> Iterator[ServerProcess]:
    srv = start_server(root.path, docroot=root, workers=1, extra=list(extra))
    code = None
    try:
        yield srv
    finally:
        code = stop_server(srv.proc)
    assert code == 0, f"aws exited with {code}:\n{srv.log()}"


@pytest.fixture
def aws(small_root: DocRoot) -> Iterator[ServerProcess]:
    yield from one_worker(small_root, "--max-connections", "1000")


@pytest.fixture
def aws_short_keepalive(small_root: DocRoot) -> Iterator[ServerProcess]:
    yield from one_worker(small_root, "--keepalive-timeout", "0.5")


def wait_closed(pool: idle.IdlePool, count: int, within: float) -> int:
    deadline = time.monotonic() + within
    while (closed := pool.closed()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return closed


# -- idle connections against a real server --------------------------------------------


def test_idle_connections_are_held_open_and_cost_memory(aws: ServerProcess) -> None:
    """300 verified keep-alive connections stay open; the server's RSS grows with them."""
    before = idle.group_rss_kib(aws.proc.pid)
    assert before > 1000  # a Python process: several MiB resident
    with idle.held_idle(aws.port, 300, "/static/1k.bin", DIGEST) as pool:
        assert len(pool.socks) == 300
        time.sleep(0.3)
        assert pool.closed() == 0
        assert idle.group_rss_kib(aws.proc.pid) > before
    assert pool.socks == []
    assert aws.alive()


def test_a_server_closing_idle_connections_is_noticed(aws_short_keepalive: ServerProcess) -> None:
    """A keep-alive timeout shorter than the run shows up as closed idle connections."""
    with idle.held_idle(aws_short_keepalive.port, 40, "/static/1k.bin", DIGEST) as pool:
        assert pool.closed() == 0
        assert wait_closed(pool, 40, within=5.0) == 40


def test_a_wrong_body_fails_the_idle_setup(aws: ServerProcess) -> None:
    with (
        pytest.raises(idle.IdleError, match="body differs"),
        idle.held_idle(aws.port, 10, "/static/1k.bin", "0" * 64),
    ):
        pass


def test_a_missing_file_fails_the_idle_setup(aws: ServerProcess) -> None:
    with (
        pytest.raises(idle.IdleError, match="not a 200"),
        idle.held_idle(aws.port, 10, "/static/nope.bin", DIGEST),
    ):
        pass


def test_response_parsing() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n"
    assert not idle.response_complete(bytearray(head + BODY[:100]), DIGEST)
    assert idle.response_complete(bytearray(head + BODY), DIGEST)
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1024\r\n\r\n"
    with pytest.raises(idle.IdleError, match="Connection: close"):
        idle.response_complete(bytearray(closing + BODY), DIGEST)
    with pytest.raises(idle.IdleError, match="body differs"):
        idle.response_complete(bytearray(head + BODY + b"x"), DIGEST)


def test_raise_nofile_keeps_a_sufficient_limit() -> None:
    idle.raise_nofile(64)  # far below any real limit: nothing to do, nothing raised


# -- server configurations for the idle row --------------------------------------------


def test_many_connections_configs(tmp_path: Path) -> None:
    ctx = Context(tmp=tmp_path, root=tmp_path / "root", digests={}, nginx_aio="threads")
    plain = nginx_conf(ctx, 8080).read_text()
    assert "worker_connections 4096;" in plain
    assert "worker_rlimit_nofile" not in plain
    argv = with_room_for_many(SPECS["nginx"]).argv(ctx, 8080)
    many = Path(argv[argv.index("-c") + 1]).read_text()
    assert f"worker_connections {MANY_CONNECTIONS};" in many
    limit = int(many.split("worker_rlimit_nofile ", 1)[1].split(";", 1)[0])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert limit >= MANY_CONNECTIONS or limit == hard  # never above what nginx can set
    assert hard == resource.RLIM_INFINITY or limit <= hard
    aws_argv = with_room_for_many(SPECS["aws"]).argv(ctx, 0)
    assert aws_argv[aws_argv.index("--max-connections") + 1] == str(MANY_CONNECTIONS)
    with pytest.raises(ValueError):
        with_room_for_many(SPECS["granian"])


# -- server CPU per request and the growth section -------------------------------------


def sample(requests: int, cpu_s: float, nbytes: int = 0, kib: float | None = None) -> Sample:
    return Sample(
        requests=requests,
        nbytes=nbytes or requests * 1200,
        duration_us=2_000_000,
        status=0,
        connect=0,
        read=0,
        write=0,
        timeout=0,
        p50_us=100,
        p99_us=900,
        server_cpu=50 * cpu_s,
        client_cpu=60,
        server_cpu_s=cpu_s,
        idle_kib=kib,
    )


def fake_results() -> dict[tuple[str, str], list[Outcome]]:
    big = 64 << 20
    return {
        ("ka-1k", "nginx"): [sample(200_000, 1.9)],
        ("ka-1k", "aws"): [sample(190_000, 1.9)],
        ("ka-1k-idle", "nginx"): [sample(196_000, 1.9, kib=0.5)],
        ("ka-1k-idle", "aws"): [sample(152_000, 1.9, kib=2.0)],
        ("static-64m", "nginx"): [sample(40, 1.0, nbytes=40 * big)],
        ("static-64m", "aws"): [sample(40, 1.0, nbytes=40 * big)],
        ("static-64m-c256", "nginx"): [sample(0, 1.0, nbytes=36 * big)],
        ("static-64m-c256", "aws"): [sample(0, 1.0, nbytes=30 * big)],
    }


def test_server_cpu_per_request_and_per_mib() -> None:
    assert sample(200_000, 2.0).server_cost(BY_KEY["ka-1k"]) == pytest.approx(10.0)
    big = sample(0, 1.0, nbytes=100 << 20)
    assert big.server_us_per_request is None  # no request completed
    assert big.server_cost(BY_KEY["static-64m-c256"]) == pytest.approx(10_000.0)


def test_medians_and_raw_tables_show_server_cpu() -> None:
    results = fake_results()
    specs = [SPECS["nginx"], SPECS["aws"], SPECS["granian"]]
    medians = {k: median_of(v, BY_KEY[k[0]]) for k, v in results.items()}
    cpu = {k: cpu_median(v, BY_KEY[k[0]]) for k, v in results.items()}
    table = medians_table(specs, {}, medians, {}, cpu)
    assert "| aws server CPU |" in table[0]
    ka = next(line for line in table if line.startswith("| 1 KiB static, keep-alive, c50 |"))
    assert "9.5 µs/req" in ka and "10.0 µs/req" in ka
    raw = raw_table(results)
    assert "server CPU" in raw[0] and "idle KiB/conn" in raw[0]
    assert any("| 2.00 |" in line for line in raw)
    c256 = [line for line in raw if "| static-64m-c256 |" in line]
    assert c256 and all("| n/a | n/a |" in line for line in c256)  # no request completed


def test_growth_section_states_the_figures() -> None:
    results = fake_results()
    medians = {k: median_of(v, BY_KEY[k[0]]) for k, v in results.items()}
    cpu = {k: cpu_median(v, BY_KEY[k[0]]) for k, v in results.items()}
    text = "\n".join(growth_lines(results, medians, cpu))
    assert "## How the cost grows" in text
    assert (
        "aws: 10,000 idle keep-alive connections change its 1 KiB keep-alive rate by -20.0%" in text
    )
    assert "hold 2.00 KiB of its memory each" in text
    assert (
        "nginx: 10,000 idle keep-alive connections change its 1 KiB keep-alive rate by -2.0%"
        in text
    )
    assert "256 clients instead of 4 on the 64 MiB file change its throughput by -25.0%" in text
    assert "aws/nginx: 4.0x (2.00 KiB against 0.50 KiB)" in text
    assert growth_lines({}, {}, {}) == []


# -- the command line -------------------------------------------------------------------


def test_workloads_can_be_chosen() -> None:
    args = cli.parse_args(
        ["--servers", "aws,nginx", "--workloads", "ka-1k-idle", "static-64m-c256"]
    )
    assert [wl.key for wl in args.workloads] == ["ka-1k-idle", "static-64m-c256"]
    assert [s.name for s in args.specs] == ["nginx", "aws"]
    with pytest.raises(SystemExit):
        cli.parse_args(["--workloads", "nope"])


def test_growth_rows_are_aws_and_nginx_only() -> None:
    for key in ("ka-1k-idle", "static-64m-c256"):
        assert BY_KEY[key].aws_nginx_only
    assert BY_KEY["ka-1k-idle"].idle == 10_000
    assert BY_KEY["static-64m-c256"].conns == 256


def test_cold_reads_the_loops_own_p99_turn_from_two_scrapes() -> None:
    before = [(0.0005, 10.0), (0.001, 10.0), (float("inf"), 10.0)]
    after = [(0.0005, 910.0), (0.001, 1008.0), (float("inf"), 1010.0)]
    # 1000 turns in between: 900 within 0.5 ms, 998 within 1 ms, 2 beyond
    assert cold.turn_p99(before, after) == 0.001
    after[1] = (0.001, 985.0)  # only 975 within 1 ms: the p99 is beyond the last bound
    assert cold.turn_p99(before, after) == float("inf")
    row = cold.report({("cached", "aws"): [cold.Cell(1.0, 1.0, 1.0, 1.0, 1.0, 0.001)]}, ["aws"], 1)
    assert "| cached | aws |" in row and "| <= 1 |" in row


def test_cold_downloads_only_reports_the_cost_of_a_mib() -> None:
    cells = {("downloads", "nginx"): [cold.Cell(0.0, 0.0, 0.0, 0.0, 2000.0, None, 0.5)] * 3}
    text = cold.report(cells, ["nginx"], 3)
    assert "| downloads only | nginx | — | — | — | — | 2,000 (0.500 ms of the server core" in text
    assert "core 0.500 ms/MiB" in text
    total, idle = cold.core_times("0")
    assert total > 0 and 0 <= idle <= total


def test_cold_reports_each_rounds_steal_beside_its_p99() -> None:
    before = [(1000, 5), (1000, 0)]
    after = [(1400, 5), (1400, 8)]  # the client CPU lost 8 of 400 ticks, the server's none
    assert cold.steal_share(before, after) == 0.02
    now = cold.steal_ticks()
    assert len(now) == 2 and all(0 <= stolen <= total for total, stolen in now)
    runs = [
        cold.Cell(1.0, 0.1, p99, 5.0, 900.0, 0.0005, steal=st)
        for p99, st in ((17.0, 0.02), (0.6, 0.0))
    ]
    text = cold.report({("evicted", "aws"): runs}, ["aws"], 2)
    assert "| <= 0.5 | 2.0% |" in text  # the row: the round with the most
    assert "p99 17.00 ms" in text and "steal 2.0%" in text and "steal 0.0%" in text


def test_cold_paced_case_hands_wrk_a_delay_and_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []
    wrk_out = (
        "  Latency   300.00us  100.00us   2.00ms   90.00%\n"
        "  Latency Distribution\n     50%  250.00us\n     75%  300.00us\n"
        "     90%  400.00us\n     99%  900.00us\nRequests/sec:   1900.50\n"
    )

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, wrk_out, "")

    monkeypatch.setattr(cold.subprocess, "run", run)
    pace = tmp_path / "pace.lua"
    pace.write_text(f"function delay()\n  return {cold.PACE_MS}\nend\n")
    assert cold.run_wrk(1234, 8, pace) == (1900.5, 0.25, 0.9, 2.0)
    assert seen[0][seen[0].index("-s") + 1] == str(pace)
    cold.run_wrk(1234, 8)
    assert "-s" not in seen[1]
    row = cold.report({(cold.PACED, "aws"): [cold.Cell(1.0, 1.0, 1.0, 1.0, 2.0, None)]}, ["aws"], 1)
    assert "| cached-paced | aws |" in row and f"waiting {cold.PACE_MS} ms" in row
