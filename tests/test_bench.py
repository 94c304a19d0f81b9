"""The load generator: percentiles, rate spacing, runs over loopback, and the command line."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from typing import Any, cast

import pytest
import pytest_twisted
from conftest import start_twistd, tool
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.test import iosim
from zope.interface import implementer

from sockapp.apps.search import SearchIndex
from sockapp.client.bench import Bench, BenchConfig, Latencies, SendSchedule
from sockapp.net.protocol import FramedProtocol
from sockapp.server import SearchFactory
from sockapp.server.echo import EchoFactory


def test_percentiles_are_exact_nearest_rank():
    latencies = Latencies()
    for ms in range(100, 0, -1):  # 1..100 ms, in reverse
        latencies.add(ms / 1000)
    assert latencies.summary() == {"p50": 0.05, "p90": 0.09, "p99": 0.099, "max": 0.1}
    assert Latencies().summary() == {}


def test_send_schedule_spaces_sends_evenly_and_skips_none():
    schedule = SendSchedule(rate=100, start=10.0, end=11.0)
    assert [round(schedule.take(), 6) for _ in range(4)] == [10.0, 10.01, 10.02, 10.03]
    assert round(cast(float, schedule.next_due()), 6) == 10.04  # however late it is now: sends fall behind, never away
    assert schedule.due_by(10.5) == 51 and schedule.due_by(99.0) == 100  # none due at or after the end
    schedule.taken = 100
    assert schedule.next_due() is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # neither bound
        {"duration": 1, "requests": 10},
        {"requests": 0},
        {"requests": 10, "connections": 0},
        {"requests": 10, "protocol": "smtp"},
        {"requests": 10, "size": -1},
        {"requests": 10, "action": "add", "size": 10},
        {"requests": 10, "action": "add", "protocol": "echo", "size": 10},
        {"requests": 10, "action": 5},
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


def recording_app():
    from sockapp.app import ActionError, App

    app: Any = App("recording")
    app.seen = []

    @app.action("put")
    def put(value):
        app.seen.append(value)
        if value.get("fail"):
            raise ActionError("refused", "as asked")
        return True

    return app


@pytest_twisted.ensureDeferred
async def test_an_action_with_a_placeholder_gets_a_value_of_its_own_for_every_request(listen):
    from sockapp.server import AppFactory

    app = recording_app()
    value = {"key": "k{n}", "tags": ["{n}", "fixed"]}
    summary = await run(listen, AppFactory(app), connections=5, requests=200, pipeline=2, action="put", value=value)
    assert (summary.requests, summary.errors) == (200, {})
    keys = [seen["key"] for seen in app.seen]
    assert len(keys) == len(set(keys)) == 200
    assert all(seen["tags"] == [seen["key"][1:], "fixed"] for seen in app.seen)


@pytest_twisted.ensureDeferred
async def test_record_gets_each_acknowledged_request_with_the_value_sent_and_nothing_refused(listen):
    from sockapp.server import AppFactory

    app = recording_app()
    recorded: list[tuple] = []
    endpoint = await listen(AppFactory(app))
    config = BenchConfig(endpoint=endpoint, connections=3, requests=60, pipeline=2, action="put", value={"key": "k{n}"})
    summary = await Bench(reactor, config, record=lambda *answer: recorded.append(answer)).run()
    assert (summary.requests, summary.sent) == (60, 60)
    assert sorted(recorded, key=repr) == sorted((("put", seen, True) for seen in app.seen), key=repr)
    # Requests answered with an error are not acknowledged, so not recorded.
    recorded.clear()
    config = BenchConfig(endpoint=endpoint, requests=5, action="put", value={"fail": True})
    summary = await Bench(reactor, config, record=lambda *answer: recorded.append(answer)).run()
    assert (summary.requests, summary.sent, recorded) == (0, 5, [])


def test_acknowledged_needs_an_action_and_a_file_it_can_write(tmp_path):
    endpoint = "tcp:host=127.0.0.1:port=1"
    result = bench_cli("--connect", endpoint, "-n", "1", "--acknowledged", str(tmp_path / "a.jsonl"))
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == "sockapp bench: error: --acknowledged records the answers to an --action"
    )
    missing = tmp_path / "missing" / "a.jsonl"
    result = bench_cli("--connect", endpoint, "-n", "1", "--action", "set", "--acknowledged", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"sockapp bench: error: --acknowledged {missing}: No such file or directory"
    )


@pytest_twisted.ensureDeferred
async def test_an_action_answered_with_an_error_counts_its_code(listen):
    from sockapp.server import AppFactory

    summary = await run(listen, AppFactory(recording_app()), requests=7, action="put", value={"fail": True})
    assert summary.requests == 0 and summary.errors == {"server-error:refused": 7}


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


# In memory, on a Clock: fake servers built here, connected through iosim's transports, so the
# bench's clock, the requests' timeouts and the servers' stalls all run on one fake time.


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Each connection goes to a new protocol of ``server`` in memory; ``pump()`` moves the bytes."""

    def __init__(self, server: Factory, clock: Clock) -> None:
        self.server = server
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory):
        client = factory.buildProtocol(iosim.FakeAddress())
        server = self.server.buildProtocol(iosim.FakeAddress())
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(client, isServer=False)
        self.pumps.append(iosim.connect(server, server_io, client, client_io, greet=False, clock=self.clock))
        return succeed(client)

    def pump(self) -> None:
        for pump in self.pumps:
            pump.flush()


def run_in_memory(server: Factory[Any], clock: Clock, step: float = 0.001, limit: float = 60.0, **kwargs):
    """Run a bench against ``server`` on ``clock`` until it ends (or ``limit`` fake seconds pass)."""
    endpoint = MemoryEndpoint(server, clock)
    bench = Bench(clock, BenchConfig(endpoint=endpoint, **kwargs), now=clock.seconds, clock=clock)
    done = ensureDeferred(bench.run())
    while not done.called and clock.seconds() < limit:
        endpoint.pump()
        clock.advance(step)
    endpoint.pump()
    assert done.called, f"the bench was still running after {limit:g} s on its clock"
    return done.result, bench


class FakeSearch(FramedProtocol):
    """Answers each request as the search server does (``factory.answer`` may hold or repeat it)."""

    def messageReceived(self, message):
        if not (message.is_json and message.document["value"].startswith("sockapp-bench-check-")):
            self.factory.received.append(self.factory.clock.seconds())  # the run's own requests
        self.factory.answer(self, SearchIndex().respond(message))


class FakeSearchFactory(Factory):
    protocol = FakeSearch

    def __init__(self, clock):
        self.clock = clock
        self.received = []  # when each request arrived, on the clock

    def answer(self, protocol, frame):
        protocol.transport.write(frame)


class StallsOnce(FakeSearchFactory):
    """Holds every answer for ``stall`` seconds once, from request number ``at`` on."""

    def __init__(self, clock, at, stall):
        super().__init__(clock)
        self.at, self.stall, self.held = at, stall, None

    def answer(self, protocol, frame):
        if len(self.received) == self.at:
            self.held = []
            self.clock.callLater(self.stall, self.release)
        if self.held is not None:
            self.held.append((protocol, frame))
        else:
            protocol.transport.write(frame)

    def release(self):
        held, self.held = self.held, None
        assert held is not None
        for protocol, frame in held:
            protocol.transport.write(frame)


class AnswersTwice(FakeSearchFactory):
    def answer(self, protocol, frame):
        protocol.transport.write(frame + frame)


class SilentEcho(Protocol):
    """Reads everything and echoes nothing."""


def test_rate_latency_counts_from_the_intended_start_across_a_stall():
    """Coordinated omission: a 2 s stall holds up 200 sends at 100/s; each counts from when it should have started."""
    clock = Clock()
    summary, _ = run_in_memory(StallsOnce(clock, at=150, stall=2.0), clock, connections=1, duration=5, rate=100)
    assert summary.errors == {}
    assert summary.requests == 500  # every slot of 5 s at 100/s, none dropped
    assert summary.latencies["p99"] >= 1.9  # on the fake clock: the stall is inside the percentiles
    assert summary.latencies["p90"] >= 1.0
    assert summary.latencies["p50"] < 0.01


def test_rate_sends_nothing_after_the_duration():
    clock = Clock()
    server = FakeSearchFactory(clock)
    summary, _ = run_in_memory(server, clock, connections=10, duration=1, rate=2)
    assert server.received == pytest.approx([0.0, 0.5])  # two slots in 1 s; nothing scheduled beyond the stop
    assert summary.requests == 2 and summary.elapsed == pytest.approx(1)


def test_echo_refuses_empty_blocks():
    with pytest.raises(ValueError, match="size"):
        BenchConfig(endpoint="tcp:host=127.0.0.1:port=1", protocol="echo", requests=1, size=0)
    result = bench_cli("--protocol", "echo", "--size", "0", "--connect", "tcp:host=127.0.0.1:port=1", "-n", "1")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]  # under argparse's usage line
    assert error == "sockapp bench: error: --size must be at least 1 with --protocol echo"


def test_echo_requests_time_out():
    clock = Clock()
    silent = Factory.forProtocol(SilentEcho)
    summary, _ = run_in_memory(silent, clock, protocol="echo", connections=2, pipeline=2, duration=2, request_timeout=1)
    assert summary.requests == 0 and summary.errors == {"timeout": 4}  # each connection closed at its first


def test_answers_to_requests_never_made_are_counted():
    clock = Clock()
    summary, _ = run_in_memory(AnswersTwice(clock), clock, connections=2, requests=100)
    assert summary.errors.get("unexpected-answer") == 2  # one for each connection
    assert any("more answers than requests" in line for line in summary.lines())


def test_answers_to_requests_never_made_are_counted_with_a_rate():
    clock = Clock()
    summary, _ = run_in_memory(AnswersTwice(clock), clock, connections=2, duration=1, rate=50)
    # Between sends, an extra answer arrives with no request waiting and closes its connection unseen;
    # the two check requests, sent side by side, still catch the server at it.
    assert summary.errors.get("unexpected-answer") == 2


def test_stop_at_any_time_gives_what_was_measured_so_far():
    clock = Clock()
    server = FakeSearchFactory(clock)
    endpoint = MemoryEndpoint(server, clock)
    config = BenchConfig(endpoint=endpoint, connections=2, duration=10, rate=10)
    bench = Bench(clock, config, now=clock.seconds, clock=clock)
    assert bench.summary().requests == 0  # before it runs
    done = ensureDeferred(bench.run())
    for _ in range(950):  # 0.95 s of the 10: ten slots
        endpoint.pump()
        clock.advance(0.001)
    bench.stop()
    so_far = bench.summary()
    assert (so_far.requests, so_far.errors) == (10, {})
    endpoint.pump()
    clock.advance(10)
    endpoint.pump()
    result: Any = done.result
    assert done.called and result.requests == 10 and len(server.received) == 10

    stopped_first = Bench(clock, BenchConfig(endpoint=endpoint, requests=5), now=clock.seconds, clock=clock)
    stopped_first.stop()
    done = ensureDeferred(stopped_first.run())
    endpoint.pump()
    summary: Any = done.result
    assert (summary.requests, summary.errors) == (0, {})


class Deaf(Protocol):
    """Accepts a connection and never reads from it."""

    transport: Any  # connected over TCP

    def connectionMade(self):
        self.transport.pauseProducing()


@pytest.mark.parametrize("protocol", ["app", "echo"])
@pytest_twisted.ensureDeferred
async def test_the_run_ends_against_a_server_that_does_not_read(listen, protocol):
    """Requests the server never reads are dropped at the end and the connection aborted after a grace period."""
    endpoint = await listen(Factory.forProtocol(Deaf))
    config = BenchConfig(
        endpoint=endpoint,
        protocol=protocol,
        connections=1,
        size=8_000_000,
        duration=0.5,
        request_timeout=0.3,
        retries=0,
    )
    run = ensureDeferred(Bench(reactor, config).run())
    summary = await run.addTimeout(30, reactor)  # a bound for a hang, not a timing assertion
    # A timeout gives its connection up (sockapp.client): a request queued behind it on that
    # connection fails as connection-closed rather than being sent to a server that does not read.
    assert summary.requests == 0 and "timeout" in summary.errors
    assert set(summary.errors) <= {"timeout", "connection-closed"}


@pytest.mark.parametrize("check, served", [(True, 36), (False, 30)])
@pytest_twisted.ensureDeferred
async def test_the_answer_check_can_be_skipped_for_exact_counts(listen, check, served):
    from sockapp.server.metrics import ServerMetrics

    metrics = ServerMetrics(process=False)
    summary = await run(listen, SearchFactory(metrics=metrics), connections=3, requests=30, check_answers=check)
    assert (summary.requests, summary.errors) == (30, {})
    assert sum(metrics.requests.values()) == served  # 2 check requests a connection, or none


class AnswerOnceThenClose(Protocol):
    """The tutorial's app_msrvr.py in miniature: read one request, answer it as the search does, close."""

    transport: Any  # connected over TCP

    def connectionMade(self):
        from sockapp.wire.framing import FrameDecoder

        self.decoder = FrameDecoder()
        self.answered = False

    def dataReceived(self, data):
        from sockapp.apps.search import TUTORIAL_ANSWERS
        from sockapp.wire.framing import Message, encode_json

        if self.answered:
            return
        self.decoder.receive_data(data)
        message = self.decoder.next_message()
        if isinstance(message, Message):
            self.answered = True
            value = message.document["value"]
            self.transport.write(encode_json({"result": TUTORIAL_ANSWERS.get(value, f"No match for '{value}'.")}))
            self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_against_a_server_that_closes_after_each_answer_requests_are_sent_once(listen):
    # Each connection's Client learns from its first connection (which had its second request
    # written before the close was seen) and then sends each request once, on a connection of its own.
    connections = 5
    summary = await run(listen, Factory.forProtocol(AnswerOnceThenClose), connections=connections, requests=200)
    assert (summary.requests, summary.errors) == (200, {})
    assert summary.retries <= connections
