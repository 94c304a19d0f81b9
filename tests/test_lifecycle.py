"""Timeouts, connection limits and graceful shutdown, with time driven by a Clock."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from conftest import binary_request, json_request, split_frames
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from sockapp.server import SearchFactory
from sockapp.server.echo import EchoFactory
from sockapp.server.lifecycle import Deadlines, DeadlineSweep, Refused

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)

EMPTY_HEADER = b"\x00\x00"  # a frame fault: an error frame, then the close


class Recorder:
    def __init__(self):
        self.fired = []

    def idle(self):
        self.fired.append("idle")

    def frame(self):
        self.fired.append("frame")


def deadlines(clock, idle=300.0, frame=30.0):
    recorder = Recorder()
    return Deadlines(clock, idle, frame, recorder.idle, recorder.frame), recorder


def test_idle_deadline_moves_with_activity():
    clock = Clock()
    timer, recorder = deadlines(clock)
    clock.advance(299)
    timer.activity(in_frame=False)
    clock.advance(299)
    assert recorder.fired == []
    clock.advance(1)
    assert recorder.fired == ["idle"]


def test_frame_deadline_is_not_moved_by_trickling_bytes():
    clock = Clock()
    timer, recorder = deadlines(clock)
    for _ in range(29):
        timer.activity(in_frame=True)  # a slowloris: a byte a second, never a whole frame
        clock.advance(1)
    assert recorder.fired == []
    timer.activity(in_frame=True)
    clock.advance(1)
    assert recorder.fired == ["frame"]


def test_finishing_the_frame_clears_its_deadline():
    clock = Clock()
    timer, recorder = deadlines(clock)
    timer.activity(in_frame=True)
    clock.advance(20)
    timer.activity(in_frame=False)
    clock.advance(200)
    assert recorder.fired == []
    clock.advance(100)
    assert recorder.fired == ["idle"]


def test_zero_or_none_turns_timeouts_off():
    clock = Clock()
    timer, recorder = deadlines(clock, idle=0, frame=None)
    timer.activity(in_frame=True)
    clock.advance(10_000)
    assert recorder.fired == [] and not clock.getDelayedCalls()


def test_cancel_leaves_no_timer():
    clock = Clock()
    timer, _ = deadlines(clock)
    timer.cancel()
    assert not clock.getDelayedCalls()


def swept_deadlines(clock, sweep, idle=300.0, frame=30.0):
    recorder = Recorder()
    return Deadlines(clock, idle, frame, recorder.idle, recorder.frame, sweep), recorder


def test_far_deadlines_share_one_sweep_timer_until_they_come_near():
    clock = Clock()
    sweep = DeadlineSweep(clock, interval=1.0)
    timers = [swept_deadlines(clock, sweep) for _ in range(100)]
    assert len(clock.getDelayedCalls()) == 1  # the sweep's, not one per connection
    for _ in range(299):
        clock.advance(1)
    assert all(recorder.fired == [] for _, recorder in timers)
    assert not sweep.waiting and len(clock.getDelayedCalls()) == 100  # near: each has its own timer now
    clock.advance(1)
    assert all(recorder.fired == ["idle"] for _, recorder in timers)
    assert not clock.getDelayedCalls()  # nothing waits: the sweep stopped


# Times here are sums of powers of two, exact in floating point: "exact" means exact.
EPSILON = 1 / 1024


@pytest.mark.parametrize("idle", [0.5, 2.0, 2.5, 7.25, 300.0])
@pytest.mark.parametrize("step", [0.25, 1.0, 5.0, 1000.0])
def test_swept_idle_deadlines_fire_at_their_exact_time(idle, step):
    clock = Clock()
    timer, recorder = swept_deadlines(clock, DeadlineSweep(clock, interval=1.0), idle=idle, frame=None)
    clock.advance(0.25)
    timer.activity(in_frame=False)  # due at 0.25 + idle
    due = 0.25 + idle
    while clock.seconds() + step < due - EPSILON:
        clock.advance(step)
    clock.advance(due - EPSILON - clock.seconds())
    assert recorder.fired == []
    clock.advance(EPSILON)
    assert recorder.fired == ["idle"]


def test_swept_frame_deadline_fires_at_its_exact_time():
    clock = Clock()
    timer, recorder = swept_deadlines(clock, DeadlineSweep(clock, interval=1.0))
    clock.advance(10.5)
    timer.activity(in_frame=True)  # a frame begins: due at 40.5
    clock.advance(30 - EPSILON)
    assert recorder.fired == []
    clock.advance(EPSILON)
    assert recorder.fired == ["frame"]
    assert timer.last_activity == 10.5  # the idle deadline is still counted from the last read


def test_swept_close_deadline_fires_at_its_exact_time():
    clock = Clock()
    sweep = DeadlineSweep(clock, interval=1.0)
    timer, _ = swept_deadlines(clock, sweep)
    overdue = []
    timer.closing(100.0, lambda: overdue.append(clock.seconds()))
    clock.advance(100 - EPSILON)
    assert overdue == []
    clock.advance(EPSILON)
    assert overdue == [100.0]


def test_short_lived_connections_make_no_timer_of_their_own():
    clock = Clock()
    factory = SearchFactory(reactor=clock)
    request = json_request({"action": "search", "value": "ring"})
    opened = []
    for _ in range(50):
        protocol, transport = connect(factory)
        protocol.dataReceived(request)
        opened.append((protocol, transport))
    assert len(clock.getDelayedCalls()) == 1  # the sweep's
    for protocol, transport in opened:
        lose(protocol, transport)
    assert not factory.deadline_sweep.waiting
    assert [cast(DelayedCall, call).func for call in clock.getDelayedCalls()] == [factory._release_if_idle]


def connect(factory):
    protocol = factory.buildProtocol(ADDRESS)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=ADDRESS)
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol, transport):
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    protocol.connectionLost(Failure(ConnectionDone()))


def test_idle_connection_is_closed_and_logged():
    clock = Clock()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        protocol, transport = connect(SearchFactory(reactor=clock, idle_timeout=5))
        clock.advance(5)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert transport.disconnecting
    assert any("idle-timeout" in e.get("log_format", "") for e in events)


def test_slowloris_gets_a_frame_timeout_error_frame():
    clock = Clock()
    protocol, transport = connect(SearchFactory(reactor=clock, frame_timeout=30))
    request = json_request({"action": "search", "value": "ring"})
    for byte in request[:20]:
        protocol.dataReceived(bytes([byte]))
        clock.advance(2)
    assert transport.disconnecting
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content)["error"]["code"] == "frame-timeout"


def test_max_connections_refuses_the_extra_and_counts_it():
    factory = SearchFactory(reactor=Clock(), max_connections=2)
    first, first_transport = connect(factory)
    second, _ = connect(factory)
    third, third_transport = connect_unflushable(factory)
    assert isinstance(third, Refused) and factory.refused == 1
    assert third_transport.disconnecting and third not in cast(set[object], factory.connections)  # closed at once
    assert third_transport.value() == b""  # without a word
    factory.reactor.advance(factory.close_grace)
    assert third_transport.aborted  # a close that did not finish (TLS waits for the peer) is cut
    lose(third, third_transport)
    lose(first, first_transport)
    fourth, _ = connect(factory)
    assert fourth is not None and len(factory.connections) == 2


def test_shutdown_closes_idle_connections_and_lets_a_started_request_finish():
    clock = Clock()
    factory = SearchFactory(reactor=clock)
    idle, idle_transport = connect(factory)
    busy, busy_transport = connect(factory)
    request = json_request({"action": "search", "value": "morpheus"})
    busy.dataReceived(request[:10])
    done: list[None] = []
    factory.shutdown(timeout=10).addCallback(done.append)
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    refused, refused_transport = connect(factory)  # no new connections while shutting down
    assert isinstance(refused, Refused) and refused_transport.disconnecting
    lose(refused, refused_transport)
    lose(idle, idle_transport)
    busy.dataReceived(request[10:])
    assert busy_transport.disconnecting
    ((_, content),) = split_frames(busy_transport.value())
    assert json.loads(content) == {"result": "Follow the white rabbit. \U0001f430"}
    assert done == []
    lose(busy, busy_transport)
    assert done == [None]
    assert clock.getDelayedCalls() == []  # the abort timer and every deadline are gone


def test_shutdown_aborts_what_is_left_after_the_timeout():
    clock = Clock()
    factory = EchoFactory(reactor=clock, idle_timeout=None)
    protocol, transport = connect(factory)
    transport.abortConnection = lambda: lose(protocol, transport)  # StringTransport cannot abort
    transport.loseConnection = lambda: None  # a close that never completes (peer not reading)
    done: list[None] = []
    factory.shutdown(timeout=10).addCallback(done.append)
    clock.advance(9.9)
    assert done == []
    clock.advance(0.1)
    assert done == [None]


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
def test_connections_are_tracked(factory_class):
    factory = factory_class(reactor=Clock())
    protocol, transport = connect(factory)
    assert factory.connections == {protocol}
    lose(protocol, transport)
    assert factory.connections == set()


def test_freed_memory_is_released_once_the_server_has_been_idle_a_moment(monkeypatch):
    from sockapp.server import lifecycle

    calls: list[int] = []
    monkeypatch.setattr(lifecycle, "_malloc_trim", calls.append)
    clock = Clock()
    factory = SearchFactory(reactor=clock)
    first, first_transport = connect(factory)
    second, second_transport = connect(factory)
    lose(first, first_transport)
    clock.advance(lifecycle.RELEASE_MEMORY_DELAY)
    assert calls == []  # a connection is still open
    lose(second, second_transport)
    clock.advance(lifecycle.RELEASE_MEMORY_DELAY / 2)
    third, third_transport = connect(factory)  # busy again before the moment passed
    clock.advance(lifecycle.RELEASE_MEMORY_DELAY)
    assert calls == []
    lose(third, third_transport)
    clock.advance(lifecycle.RELEASE_MEMORY_DELAY)
    assert calls == [0]


# -- the frame deadline measures the frame in progress now ----------------------


def test_frame_deadline_restarts_when_a_read_completes_a_frame_and_begins_the_next():
    clock = Clock()
    timer, recorder = deadlines(clock, frame=30.0)
    timer.activity(in_frame=True)  # a frame begins at 0
    clock.advance(20)
    timer.activity(in_frame=True, frame_began=True)  # it ended, and the next one began, at 20
    clock.advance(25)
    assert recorder.fired == []  # 45 s after the first frame began, 25 s into this one
    clock.advance(5)
    assert recorder.fired == ["frame"]


def test_steady_pipelining_in_pieces_that_never_end_on_a_frame_boundary_is_not_timed_out():
    """1001-byte requests in 1000-byte pieces every 10 ms: every read leaves a frame
    unfinished, yet every frame is finished within 20 ms."""
    clock = Clock()
    factory = SearchFactory(reactor=clock, frame_timeout=3)
    protocol, transport = connect(factory)
    request = json_request({"action": "search", "value": "q" * 100})
    request = json_request({"action": "search", "value": "q" * (100 + 1001 - len(request))})
    assert len(request) == 1001
    stream = request * 1000
    for start in range(0, len(stream), 1000):  # 1001 pieces: 10 s of traffic
        protocol.dataReceived(stream[start : start + 1000])
        clock.advance(0.01)
    answers = [json.loads(content) for _, content in split_frames(transport.value())]
    assert len(answers) == 1000
    assert all("result" in answer for answer in answers), [a for a in answers if "result" not in a][:1]
    assert not transport.disconnecting


# -- a close that was decided on finishes ---------------------------------------


class Unflushable(StringTransport):
    """A transport whose graceful close never completes (the peer reads nothing, and
    Twisted's buffer is below the size that would pause reading): only an abort ends it."""

    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


def connect_unflushable(factory):
    protocol = factory.buildProtocol(ADDRESS)
    transport = Unflushable(peerAddress=ADDRESS)
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
def test_an_idle_timeout_close_is_aborted_after_the_grace_period(factory_class):
    clock = Clock()
    factory = factory_class(reactor=clock, idle_timeout=2)
    protocol, transport = connect_unflushable(factory)
    clock.advance(2)
    assert transport.disconnecting and not transport.aborted  # a graceful close first
    clock.advance(factory.close_grace - 0.01)
    assert not transport.aborted
    clock.advance(0.01)
    assert transport.aborted
    lose(protocol, transport)
    assert factory.connections == set() and not protocol.deadlines._call  # no timer left behind


def test_an_error_frame_close_is_aborted_after_the_grace_period():
    clock = Clock()
    factory = SearchFactory(reactor=clock)
    protocol, transport = connect_unflushable(factory)
    protocol.dataReceived(EMPTY_HEADER)
    assert transport.disconnecting and not transport.aborted
    clock.advance(factory.close_grace)
    assert transport.aborted


def test_a_frame_timeout_close_is_aborted_after_the_grace_period():
    clock = Clock()
    factory = SearchFactory(reactor=clock, frame_timeout=5)
    protocol, transport = connect_unflushable(factory)
    protocol.dataReceived(b"\x00")
    clock.advance(5)
    assert transport.disconnecting and not transport.aborted
    clock.advance(factory.close_grace)
    assert transport.aborted


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
def test_after_a_half_close_the_peer_gets_the_idle_timeout_to_read_its_answers(factory_class):
    clock = Clock()
    factory = factory_class(reactor=clock, idle_timeout=60)
    protocol, transport = connect_unflushable(factory)
    clock.advance(30)
    protocol.readConnectionLost()
    assert transport.disconnecting
    clock.advance(59.9)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
def test_a_peer_that_stops_reading_for_good_is_closed_within_the_grace_period(factory_class):
    clock = Clock()
    factory = factory_class(reactor=clock)
    protocol, transport = connect_unflushable(factory)
    protocol.writeConnectionLost()
    assert transport.disconnecting
    clock.advance(factory.close_grace)
    assert transport.aborted


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
def test_an_idle_peer_that_stopped_reading_is_aborted_at_once(factory_class):
    """Twisted paused reading (its buffer is full): the peer is not reading, no grace."""
    clock = Clock()
    factory = factory_class(reactor=clock, idle_timeout=2)
    protocol, transport = connect_unflushable(factory)
    transport.producerPaused = True
    clock.advance(2)
    assert transport.aborted


def test_no_second_error_frame_once_the_connection_is_closing():
    """A frame timer started by a partial frame must not fire after an error frame closed the connection."""
    from sockapp.server.metrics import ServerMetrics

    clock = Clock()
    metrics = ServerMetrics(process=False)
    factory = SearchFactory(reactor=clock, frame_timeout=2, metrics=metrics)
    protocol, transport = connect_unflushable(factory)
    request = json_request({"action": "search", "value": "ring"})
    protocol.dataReceived(request[:20])  # the frame deadline starts
    clock.advance(1)
    protocol.dataReceived(request[20:] + EMPTY_HEADER)  # answered, then empty-header
    clock.advance(10)
    frames = [json.loads(content) for _, content in split_frames(transport.value())]
    assert [f.get("error", {}).get("code") for f in frames] == [None, "empty-header"]
    assert sum(metrics.error_frames.values()) == 1


# -- nothing a connection held outlives it -----------------------------------------

import gc  # noqa: E402
import weakref  # noqa: E402

import pytest_twisted  # noqa: E402


@pytest.mark.parametrize("factory_class", [SearchFactory, EchoFactory])
@pytest_twisted.ensureDeferred
async def test_a_closed_connection_is_freed_without_the_cycle_collector(listen, factory_class):
    """Reference cycles would keep a closed connection's buffers until the cycle collector
    happened to run, which on a quiet server is rarely."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import deferLater

    factory = factory_class()
    endpoint = await listen(factory)
    port = int(endpoint.rsplit("=", 1)[1])
    gc.collect()
    gc.disable()
    try:
        client: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
        frame = binary_request(b"x" * 3_000_000)
        client.transport.write(frame[: len(frame) // 2])  # half a frame: the server buffers it
        for _ in range(500):
            if factory.connections:
                (server,) = factory.connections
                if factory_class is EchoFactory or server._decoder.buffered > 1_000_000:
                    break
            await deferLater(reactor, 0.01)
        (server,) = factory.connections
        refs = [weakref.ref(server)]
        if factory_class is SearchFactory:
            refs.append(weakref.ref(server._decoder))
        del server
        client.transport.loseConnection()
        for _ in range(500):
            if not factory.connections:
                break
            await deferLater(reactor, 0.01)
        await deferLater(reactor, 0)
        assert factory.connections == set()
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


def test_the_frame_deadline_stands_still_while_the_server_does_not_read():
    """Backpressure: the server stopped reading because the peer reads its answers slowly. The
    rest of the frame may be in the server's own kernel queue: the frame is not late."""
    clock = Clock()
    factory = SearchFactory(reactor=clock, frame_timeout=2)
    protocol, transport = connect_unflushable(factory)
    request = json_request({"action": "search", "value": "ring"})
    protocol.dataReceived(request[:20])
    clock.advance(1)
    transport.producer.pauseProducing()  # what Twisted does when its write buffer is full
    clock.advance(30)
    assert not transport.disconnecting
    transport.producer.resumeProducing()
    clock.advance(0.9)  # the frame had 1 s left
    assert not transport.disconnecting
    clock.advance(0.1)
    frames = [json.loads(content) for _, content in split_frames(transport.value())]
    assert frames == [{"error": {"code": "frame-timeout", "message": frames[0]["error"]["message"]}}]


def test_a_frame_finished_after_reading_resumes_is_answered():
    clock = Clock()
    factory = SearchFactory(reactor=clock, frame_timeout=2)
    protocol, transport = connect_unflushable(factory)
    request = json_request({"action": "search", "value": "ring"})
    protocol.dataReceived(request[:20])
    transport.producer.pauseProducing()
    clock.advance(60)
    transport.producer.resumeProducing()
    protocol.dataReceived(request[20:])
    clock.advance(60)
    frames = [json.loads(content) for _, content in split_frames(transport.value())]
    assert frames == [{"result": "In the caves beneath the Misty Mountains. \U0001f48d"}]


@pytest.mark.parametrize(
    "request_",
    [json_request({"action": "search", "value": "x"})[:-1] + b"!", binary_request(b"x" * 100)[:50]],
    ids=["content-not-json", "partial frame"],
)
def test_a_connection_that_failed_is_freed_without_the_cycle_collector(request_):
    """An error kept with its traceback would hold the decoder, the protocol and the content."""
    gc.collect()
    gc.disable()
    try:
        from twisted.logger import Logger

        factory = SearchFactory(reactor=Clock())
        protocol, transport = connect(factory)
        # As in a running server, events go to observers and are gone (not to the buffer Twisted
        # keeps, with every event's source, until logging begins: no test process begins it).
        protocol.log = Logger(observer=cast(ILogObserver, lambda event: None))
        protocol.dataReceived(request_)
        if transport.disconnecting:  # the error frame was sent; the decoder keeps refusing
            protocol.dataReceived(b"more")
        refs = [weakref.ref(protocol), weakref.ref(protocol._decoder)]
        lose(protocol, transport)
        del protocol, transport
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


def test_one_log_line_for_one_fault_even_when_the_close_is_cut():
    clock = Clock()
    factory = SearchFactory(reactor=clock)
    protocol, transport = connect_unflushable(factory)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        protocol.dataReceived(EMPTY_HEADER)
        clock.advance(factory.close_grace)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert transport.aborted
    assert len([e for e in events if "peer" in e]) == 1
