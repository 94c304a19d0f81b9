"""The load generator: percentiles, rate spacing, runs over loopback, and the command line."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess

import pytest
import pytest_twisted
from conftest import start_twistd, tool
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock, deferLater

from sockapp.bench import Bench, BenchConfig, Latencies, RateLimiter
from sockapp.echo import EchoFactory
from sockapp.search import SearchIndex
from sockapp.server import SearchFactory


def test_percentiles_are_exact_nearest_rank():
    latencies = Latencies()
    for ms in range(100, 0, -1):  # 1..100 ms, in reverse
        latencies.add(ms / 1000)
    assert latencies.summary() == {"p50": 0.05, "p90": 0.09, "p99": 0.099, "max": 0.1}
    assert Latencies().summary() == {}


def test_rate_limiter_spaces_sends_evenly():
    limiter = RateLimiter(rate=100)
    assert [round(limiter.delay(10.0), 6) for _ in range(4)] == [0.0, 0.01, 0.02, 0.03]
    assert limiter.delay(20.0) == 0.0  # idle for a while: no burst credit is kept beyond now


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither bound
        {"duration": 1, "requests": 10},
        {"requests": 0},
        {"requests": 10, "connections": 0},
        {"requests": 10, "protocol": "smtp"},
        {"requests": 10, "size": -1},
    ],
)
def test_config_is_validated(kwargs):
    with pytest.raises((ValueError, TypeError)):
        BenchConfig(endpoint="tcp:host=127.0.0.1:port=1", **kwargs)


async def run(listen, factory, **kwargs):
    endpoint = await listen(factory)
    return await Bench(reactor, BenchConfig(endpoint=endpoint, **kwargs)).run()


@pytest_twisted.ensureDeferred
async def test_app_bench_counts_every_request(listen):
    summary = await run(listen, SearchFactory(), connections=10, requests=300, pipeline=4)
    assert (summary.requests, summary.errors) == (300, {})
    lat = summary.latencies
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


@pytest_twisted.ensureDeferred
async def test_binary_requests_of_a_size(listen):
    summary = await run(listen, SearchFactory(), connections=3, requests=30, size=100_000)
    assert (summary.requests, summary.errors) == (30, {})


@pytest_twisted.ensureDeferred
async def test_echo_bench(listen):
    summary = await run(listen, EchoFactory(), protocol="echo", connections=5, requests=200, pipeline=3, size=1000)
    assert (summary.requests, summary.errors) == (200, {})


@pytest_twisted.ensureDeferred
async def test_wrong_answers_are_errors(listen):
    summary = await run(listen, SearchFactory(index=SearchIndex({"morpheus": "Take the blue pill."})), requests=20)
    assert summary.requests == 0 and summary.errors == {"wrong-answer": 20}


@pytest_twisted.ensureDeferred
async def test_expected_answer_can_be_given(listen):
    index = SearchIndex({"neo": "The One."})
    summary = await run(listen, SearchFactory(index=index), requests=20, query="neo", expect="The One.")
    assert (summary.requests, summary.errors) == (20, {})


@pytest_twisted.ensureDeferred
async def test_server_errors_are_counted_by_code(listen):
    summary = await run(listen, SearchFactory(max_content_length=10), requests=5, size=11)
    assert summary.errors == {"server-error:content-too-large": 5}


@pytest_twisted.ensureDeferred
async def test_duration_bounds_the_run(listen):
    """The run goes on until the duration has passed on its clock, then ends with what is in flight."""
    endpoint = await listen(SearchFactory())
    clock = Clock()
    bench = Bench(reactor, BenchConfig(endpoint=endpoint, connections=4, duration=5), now=clock.seconds, clock=clock)
    done = ensureDeferred(bench.run())
    while bench.completed < 200:  # real requests on loopback, while the bench's clock stands still
        await deferLater(reactor, 0.01)
    assert not done.called
    clock.advance(5)
    summary = await done
    assert summary.requests >= 200 and summary.errors == {}
    assert summary.elapsed == 5


class Silent(SearchFactory):
    """Reads requests and never answers."""

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.messageReceived = lambda message: None
        return protocol


class Garbled(SearchFactory):
    """Answers every request with bytes that are not a frame."""

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.messageReceived = lambda message: protocol.writeFrame(b"\x00\x05nope!")
        return protocol


@pytest_twisted.ensureDeferred
async def test_requests_without_an_answer_in_time_count_as_timeouts(listen):
    summary = await run(listen, Silent(), connections=2, requests=6, pipeline=3, request_timeout=0.2, retries=0)
    assert summary.requests == 0 and summary.errors == {"timeout": 6}


@pytest_twisted.ensureDeferred
async def test_malformed_answers_count_by_their_code(listen):
    summary = await run(listen, Garbled(), connections=1, requests=1, retries=0)
    assert summary.requests == 0 and summary.errors == {"bad-answer:header-not-json": 1}


class DyingBackend(SearchFactory):
    """Cuts the connection (no answer) at given request numbers, like a backend dying behind a balancer."""

    def __init__(self, cut_at):
        super().__init__()
        self.cut_at = set(cut_at)
        self.seen = 0

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        answer = protocol.messageReceived

        def messageReceived(message):
            self.seen += 1
            if self.seen in self.cut_at:
                protocol.closing = True
                protocol.transport.abortConnection()
            else:
                answer(message)

        protocol.messageReceived = messageReceived
        return protocol


@pytest_twisted.ensureDeferred
async def test_requests_on_dropped_connections_are_retried(listen):
    # Three cuts; a request can be caught by all three at most, so 3 retries always suffice.
    summary = await run(listen, DyingBackend([20, 40, 60]), connections=5, requests=200, pipeline=2, retries=3)
    assert (summary.requests, summary.errors) == (200, {})
    assert 3 <= summary.retries <= 3 * 5 * 2  # each cut drops what its connection had in flight


@pytest_twisted.ensureDeferred
async def test_without_retries_dropped_requests_are_errors(listen):
    # Cut before that connection answered anything: only --retries could send it again.
    summary = await run(listen, DyingBackend([1]), connections=1, requests=200, retries=0)
    assert summary.retries == 0
    assert summary.errors == {"connection-closed": 1} and summary.requests == 199


@pytest_twisted.ensureDeferred
async def test_rate_spaces_the_sends_on_the_clock(listen):
    """--rate 10: one request may start every 0.1 s of the bench's clock, over all connections."""
    endpoint = await listen(SearchFactory())
    clock = Clock()
    config = BenchConfig(endpoint=endpoint, connections=2, pipeline=2, requests=6, rate=10)
    bench = Bench(reactor, config, now=clock.seconds, clock=clock)
    done = ensureDeferred(bench.run())
    for step in range(1, 7):
        while bench.completed < step:  # the one send this slot allows, answered over loopback
            await deferLater(reactor, 0.01)
        await deferLater(reactor, 0.05)
        assert bench.completed == step  # and no more until the clock moves on
        clock.advance(0.1)
    summary = await done
    assert (summary.requests, summary.errors) == (6, {})


def bench_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("sockapp"), "bench", *args], capture_output=True, text=True, timeout=120)


def test_cli_json_summary_parses_and_output_stays_quiet_off_a_terminal(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    result = bench_cli("--connect", f"tcp:host=127.0.0.1:port={port}", "-c", "20", "-n", "500", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["requests"] == 500 and summary["errors"] == 0
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "max"}


def test_cli_rate_end_to_end(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    result = bench_cli("--connect", f"tcp:host=127.0.0.1:port={port}", "-c", "4", "-n", "40", "--rate", "200", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["requests"], summary["errors"]) == (40, 0)
    assert "capped at 200/s" in summary["description"]


def test_cli_text_summary_and_exit_status_on_errors(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    good = bench_cli("--connect", endpoint, "-c", "5", "-n", "100")
    assert good.returncode == 0
    assert "requests:   100 answered correctly, 0 errors" in good.stdout and "p99" in good.stdout
    bad = bench_cli("--connect", endpoint, "-c", "5", "-n", "100", "--expect", "something else")
    assert bad.returncode == 1
    assert "0 answered correctly, 100 errors (wrong-answer 100)" in bad.stdout


def test_cli_echo_mode(server_processes):
    port = start_twistd(server_processes, "echo", "--port", "tcp:0:interface=127.0.0.1")
    result = bench_cli("--protocol", "echo", "--connect", f"tcp:host=127.0.0.1:port={port}", "-c", "10", "-n", "300")
    assert result.returncode == 0, result.stderr
    assert "echo of 64-byte blocks" in result.stdout


def test_cli_refused_connection_is_one_line():
    result = bench_cli("--connect", "tcp:host=127.0.0.1:port=1", "-n", "10")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "connection refused" in result.stderr


def test_progress_is_shown_on_a_terminal(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [tool("sockapp"), "bench", "--connect", f"tcp:host=127.0.0.1:port={port}", "-c", "5", "-d", "1"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=dict(os.environ, TERM="xterm", COLUMNS="120"),
    )
    os.close(terminal)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    finally:
        assert proc.wait(30) == 0
        os.close(controller)
    text = shown.decode("utf-8", "replace")
    assert " done " in text and "/s" in text and "errors" in text  # the live line
    assert "throughput:" in text  # and the summary after it


def test_echo_refuses_empty_blocks():
    with pytest.raises(ValueError, match="size"):
        BenchConfig(endpoint="tcp:host=127.0.0.1:port=1", protocol="echo", requests=1, size=0)
    result = bench_cli("--protocol", "echo", "--size", "0", "--connect", "tcp:host=127.0.0.1:port=1", "-n", "1")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]  # under argparse's usage line
    assert error == "sockapp bench: error: --size must be at least 1 with --protocol echo"
