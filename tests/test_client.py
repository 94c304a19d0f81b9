"""The Deferred-based clients over StringTransport: ordering, errors, connection loss."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from conftest import split_frames
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint, ITransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from sockapp.client import AppClient, EchoClient, request_frame
from sockapp.errors import ConnectionClosed, ErrorCode, RemoteProtocolError, ServerError
from sockapp.server import SearchFactory, SearchProtocol
from sockapp.wire.framing import encode_frame, encode_json


def connect(cls=AppClient):
    protocol = cls()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def collect(d):
    out: list[object] = []
    d.addBoth(out.append)
    return out


def test_request_sends_what_the_tutorial_client_sends():
    client, transport = connect()
    client.request("search", "morpheus")
    client.request("binary", "hello")
    (h1, c1), (h2, c2) = split_frames(transport.value())
    assert h1["content-type"] == "text/json" and json.loads(c1) == {"action": "search", "value": "morpheus"}
    assert h2["content-type"] == "binary/custom-client-binary-type" and h2["content-encoding"] == "binary"
    assert c2 == b"binaryhello"


def test_pipelined_answers_fire_in_order_even_when_fed_bytewise():
    client, transport = connect()
    queries = ["ring", "morpheus", "nobody"]
    results = [collect(client.request("search", q)) for q in queries]
    assert client.outstanding == 3
    # Answer with a real server protocol, one byte at a time.
    server = SearchFactory().buildProtocol(None)
    server_transport = StringTransport()
    server.makeConnection(server_transport)
    server.dataReceived(transport.value())
    answers = server_transport.value()
    for i in range(len(answers)):
        client.dataReceived(answers[i : i + 1])
    assert [r[0].result for r in results] == [
        "In the caves beneath the Misty Mountains. \U0001f48d",
        "Follow the white rabbit. \U0001f430",
        "No match for 'nobody'.",
    ]
    assert client.outstanding == 0


def test_binary_answer_exposes_content():
    client, _ = connect()
    first = collect(client.request("binary", "x"))
    second = collect(client.send(b"abc", "binary/x", "binary"))
    client.dataReceived(encode_frame(b"First", "binary/custom-server-binary-type", "binary"))
    client.dataReceived(encode_frame(b"Second", "binary/custom-server-binary-type", "binary"))
    assert first[0].content == b"First"
    assert second[0].content == b"Second" and second[0].content_type == "binary/custom-server-binary-type"
    assert second[0].result is None


def test_error_frame_fails_the_request_with_server_error():
    client, _ = connect()
    result = collect(client.request("search", "x"))
    client.dataReceived(encode_json({"error": {"code": "bad-request", "message": "nope"}}))
    assert isinstance(result[0], Failure) and isinstance(result[0].value, ServerError)
    assert result[0].value.code == "bad-request"


def test_connection_loss_fails_every_outstanding_request():
    client, _ = connect()
    results = [collect(client.request("search", str(i))) for i in range(3)]
    client.connectionLost(Failure(ConnectionDone()))
    assert all(isinstance(r[0], Failure) and r[0].check(ConnectionClosed) for r in results)
    after = collect(client.request("search", "late"))
    assert after[0].check(ConnectionClosed)


def test_malformed_answer_fails_outstanding_requests_with_a_typed_error():
    client, transport = connect()
    result = collect(client.request("search", "x"))
    client.dataReceived(b"\x00\x00")
    assert result[0].check(RemoteProtocolError) and result[0].value.code is ErrorCode.EMPTY_HEADER
    assert transport.disconnecting
    assert split_frames(transport.value())[-1][0]["content-type"] == "text/json"  # only our request was written


def test_answer_to_no_request_is_a_protocol_error():
    client, transport = connect()
    client.dataReceived(encode_json({"result": "surprise"}))
    assert transport.disconnecting


def test_request_frame_is_the_tutorial_clients():
    assert split_frames(request_frame("search", "a")) == [
        (
            {
                "byteorder": sys.byteorder,
                "content-type": "text/json",
                "content-encoding": "utf-8",
                "content-length": 34,
            },
            b'{"action": "search", "value": "a"}',
        )
    ]
    ((header, content),) = split_frames(request_frame("x", "\u00e9"))
    assert (header["content-type"], header["content-encoding"], content) == (
        "binary/custom-client-binary-type",
        "binary",
        "x\u00e9".encode(),
    )


def test_echo_client_waits_for_every_byte():
    client, transport = connect(EchoClient)
    result = collect(client.roundTrip(b"hello, universe."))
    assert transport.value() == b"hello, universe."
    for i in range(16):
        assert result == []
        client.dataReceived(b"hello, universe."[i : i + 1])
    assert result == [b"hello, universe."]


def test_echo_client_reports_a_short_echo():
    client, _ = connect(EchoClient)
    result = collect(client.roundTrip(b"abcdef"))
    client.dataReceived(b"abc")
    client.connectionLost(Failure(ConnectionDone()))
    assert result[0].check(ConnectionClosed) and "3 of 6" in str(result[0].value)


# -- Client: connections made on demand, timeouts, reconnecting ---------------

from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from sockapp.client import Client  # noqa: E402
from sockapp.errors import ConnectTimeout, RequestTimeout  # noqa: E402


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """A client endpoint whose connections are StringTransports, kept for inspection."""

    def __init__(self):
        self.connections = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


@implementer(IStreamClientEndpoint)
class NeverEndpoint:
    """A client endpoint whose connection attempts never finish (until cancelled)."""

    def connect(self, factory):
        return Deferred()


def answer_all(protocol, transport, *, close_after_each=False):
    """Answer what was written with a real server protocol; optionally close cleanly after one answer."""
    server = SearchFactory().buildProtocol(None)
    server_transport = StringTransport()
    server.makeConnection(server_transport)
    server.dataReceived(transport.value())
    transport.clear()
    frames = split_frames(server_transport.value())
    if close_after_each:
        frames = frames[:1]
    for header, content in frames:
        protocol.dataReceived(encode_frame(content, header["content-type"], header["content-encoding"]))
    if close_after_each:
        protocol.connectionLost(Failure(ConnectionDone()))


def test_client_connects_on_first_request_and_reuses_the_connection():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    first = collect(client.request("search", "ring"))
    second = collect(client.request("search", "morpheus"))
    assert len(endpoint.connections) == 1
    answer_all(*endpoint.connections[0])
    assert [first[0].result[:6], second[0].result[:6]] == ["In the", "Follow"]


def test_client_reconnects_when_the_server_closes_after_each_answer():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    results = [collect(client.request("search", q)) for q in ("ring", "morpheus", "nobody")]
    for round_ in range(3):
        answer_all(*endpoint.connections[round_], close_after_each=True)
    assert [r[0].result for r in results] == [
        "In the caves beneath the Misty Mountains. \U0001f48d",
        "Follow the white rabbit. \U0001f430",
        "No match for 'nobody'.",
    ]
    # Both went again after the first close, each then on a connection of its own.
    assert client.connections_made == 3 and client.resent == 2 and client.one_request_per_connection


def test_an_error_frame_then_a_close_does_not_switch_to_one_request_per_connection():
    """A server that keeps connections open closes one after an error frame (the first
    request was over its --max-content-length, say) with more pipelined behind it. That one
    answer and close is the server refusing a request, not the tutorial's habit: the others go
    again on one new connection, and later requests share a connection as before."""
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    refused = collect(client.request("search", "x" * 100))
    later = [collect(client.request("search", q)) for q in ("ring", "morpheus")]
    protocol, transport = endpoint.connections[0]
    transport.clear()
    protocol.dataReceived(encode_json({"error": {"code": "content-too-large", "message": "too large"}}))
    protocol.connectionLost(Failure(ConnectionDone()))
    assert isinstance(refused[0].value, ServerError)
    assert not client.one_request_per_connection
    assert len(endpoint.connections) == 2  # both pipelined requests went again, together
    answer_all(*endpoint.connections[1])
    assert [r[0].result[:6] for r in later] == ["In the", "Follow"]
    more = [collect(client.request("search", q)) for q in ("ring", "morpheus")]
    answer_all(*endpoint.connections[1])
    assert len(endpoint.connections) == 2 and [r[0].result[:6] for r in more] == ["In the", "Follow"]


def drop(protocol):
    """The connection ends with no answer to what is outstanding (a backend died)."""
    protocol.connectionLost(Failure(ConnectionDone()))


def test_a_request_dropped_before_its_answer_is_retried_on_a_new_connection():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    result = collect(client.request("search", "ring"))
    drop(endpoint.connections[0][0])
    assert result == [] and len(endpoint.connections) == 2
    answer_all(*endpoint.connections[1])
    assert result[0].result == "In the caves beneath the Misty Mountains. \U0001f48d"
    assert client.retried == 1 and client.resent == 0


def test_retries_are_bounded_and_then_the_request_fails():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint, retries=2)
    result = collect(client.ping())
    for number in range(3):
        drop(endpoint.connections[number][0])
    assert result[0].check(ConnectionClosed)
    assert "after 2 retries" in str(result[0].value)
    assert len(endpoint.connections) == 3 and client.retried == 2


def test_no_retries_fails_at_the_first_drop():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint, retries=0)
    result = collect(client.request("search", "ring"))
    drop(endpoint.connections[0][0])
    assert result[0].check(ConnectionClosed)
    assert len(endpoint.connections) == 1


def test_a_request_that_is_not_idempotent_is_never_sent_twice():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    once = collect(client.sendDocument({"action": "search", "value": "ring"}, idempotent=False))
    again = collect(client.request("search", "ring"))
    drop(endpoint.connections[0][0])
    assert once[0].check(ConnectionClosed)
    assert again == []  # the idempotent one goes again on a new connection
    _, transport = endpoint.connections[1]
    assert len(split_frames(transport.value())) == 1


def test_a_close_mid_answer_retries_the_cut_request_only():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    done = collect(client.request("search", "ring"))
    cut = collect(client.request("search", "morpheus"))
    protocol, _ = endpoint.connections[0]
    protocol.dataReceived(encode_json({"result": "one"}))
    protocol.dataReceived(encode_json({"result": "two"})[:5])
    drop(protocol)
    assert done[0].result == "one" and cut == []
    protocol, transport = endpoint.connections[1]
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content) == {"action": "search", "value": "morpheus"}
    protocol.dataReceived(encode_json({"result": "two"}))
    assert cut[0].result == "two" and client.retried == 1


def test_a_closed_client_does_not_retry():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    result = collect(client.request("search", "ring"))
    client.close()
    drop(endpoint.connections[0][0])
    assert result[0].check(ConnectionClosed)
    assert len(endpoint.connections) == 1


def test_negative_retries_are_refused():
    with pytest.raises(ValueError):
        Client(Clock(), StringEndpoint(), retries=-1)


def test_connect_timeout_is_typed():
    clock = Clock()
    client = Client(clock, NeverEndpoint(), connect_timeout=5)
    result = collect(client.request("search", "ring"))
    clock.advance(4.9)
    assert result == []
    clock.advance(0.1)
    assert result[0].check(ConnectTimeout)


def test_request_timeout_is_typed_and_a_late_answer_is_discarded():
    clock = Clock()
    endpoint = StringEndpoint()
    client = Client(clock, endpoint, request_timeout=2)
    slow = collect(client.request("search", "ring"))
    clock.advance(2)
    assert slow[0].check(RequestTimeout)
    protocol, _ = endpoint.connections[0]
    protocol.dataReceived(encode_json({"result": "late answer"}))  # the connection was given up: ignored
    assert slow[0].check(RequestTimeout)
    assert not clock.getDelayedCalls()


def test_closed_client_refuses_requests():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    pending = collect(client.request("search", "ring"))
    collect(client.close())
    endpoint.connections[0][0].connectionLost(Failure(ConnectionDone()))
    assert pending[0].check(ConnectionClosed)
    assert collect(client.request("search", "ring"))[0].check(ConnectionClosed)


def test_echo_round_trips_may_be_pipelined():
    client, transport = connect(EchoClient)
    first = collect(client.roundTrip(b"abc"))
    second = collect(client.roundTrip(b"defg"))
    client.dataReceived(b"abcde")
    assert first == [b"abc"] and second == []
    client.dataReceived(b"fg")
    assert second == [b"defg"]


def test_a_reset_between_answers_is_treated_like_a_close():
    from twisted.internet.error import ConnectionLost

    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    first = collect(client.request("search", "ring"))
    second = collect(client.request("search", "morpheus"))
    protocol, _ = endpoint.connections[0]
    protocol.dataReceived(encode_json({"result": "one"}))
    protocol.connectionLost(Failure(ConnectionLost()))
    assert first[0].result == "one" and second == []
    answer_all(*endpoint.connections[1])
    assert second[0].result.startswith("Follow")


def test_an_old_connection_ending_late_does_not_make_the_client_forget_the_live_one():
    """A server answers r0 and r1 and half-closes; r3 goes on a new connection; when the old
    one finally ends, r2 is sent on the live new connection, not on a third. (Two answers:
    a server that closes after its only answer makes the client send one request per connection.)"""
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    r0 = collect(client.request("search", "zero"))
    r1 = collect(client.request("search", "ring"))
    r2 = collect(client.request("search", "morpheus"))
    old, _ = endpoint.connections[0]
    old.dataReceived(encode_json({"result": "zero"}) + encode_json({"result": "one"}))
    old.readConnectionLost()  # the server's FIN: this connection takes no new requests
    r3 = collect(client.request("search", "nobody"))
    assert len(endpoint.connections) == 2
    drop(old)  # the server read the rest and closed without answering r2
    assert len(endpoint.connections) == 2
    live, live_transport = endpoint.connections[1]
    sent = [json.loads(content)["value"] for _, content in split_frames(live_transport.value())]
    assert sent == ["nobody", "morpheus"]
    live.dataReceived(encode_json({"result": "three"}) + encode_json({"result": "two"}))
    assert (r0[0].result, r1[0].result, r2[0].result, r3[0].result) == ("zero", "one", "two", "three")
    assert client.connections_made == 2 and client.resent == 1
    closed = collect(client.close())
    assert live_transport.disconnecting and closed == []
    drop(live)
    assert closed == [None]


def test_close_closes_every_open_connection_and_fires_once_all_are_gone():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    collect(client.request("search", "ring"))
    old, old_transport = endpoint.connections[0]
    old.readConnectionLost()  # closing, but still open: its answer may still come
    collect(client.request("search", "morpheus"))
    new, new_transport = endpoint.connections[1]
    old_transport.disconnecting = False  # StringTransport: see that close() asks again
    closed = collect(client.close())
    assert old_transport.disconnecting and new_transport.disconnecting
    drop(new)
    assert closed == []
    drop(old)
    assert closed == [None]


def test_close_during_a_connection_attempt_cancels_it_and_fails_what_waits():
    client = Client(Clock(), NeverEndpoint())
    pending = collect(client.request("search", "ring"))
    closed = collect(client.close())
    assert closed == [None]
    assert pending[0].check(ConnectionClosed)
    assert collect(client.request("search", "ring"))[0].check(ConnectionClosed)


def test_after_the_server_sends_eof_what_is_outstanding_goes_again_at_once():
    """An answer, then the server's EOF (and it reads no more): the rest cannot be answered there.
    The connection is aborted, not closed after our unsent output, which would never drain."""
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    first = collect(client.request("search", "ring"))
    big = collect(client.send(b"x" * 1000, "binary/x", "binary"))
    old, old_transport = endpoint.connections[0]
    old.dataReceived(encode_json({"result": "one"}))
    old.readConnectionLost()
    assert old_transport.disconnected  # aborted (StringTransport marks an abort so)
    drop(old)  # what the abort leads to
    assert first[0].result == "one" and big == []
    assert len(endpoint.connections) == 2 and client.resent == 1
    new, new_transport = endpoint.connections[1]
    ((header, content),) = split_frames(new_transport.value())
    assert content == b"x" * 1000


def test_close_aborts_connections_that_cannot_drain_after_the_grace_period():
    from sockapp.net.protocol import CLOSE_GRACE

    clock = Clock()
    endpoint = StringEndpoint()
    client = Client(clock, endpoint)
    collect(client.send(b"x" * 1000, "binary/x", "binary"))
    protocol, transport = endpoint.connections[0]
    closed = collect(client.close())
    assert transport.disconnecting and not transport.disconnected  # a graceful close first
    clock.advance(CLOSE_GRACE)
    assert transport.disconnected  # the server never read: aborted
    drop(protocol)
    assert closed == [None] and not clock.getDelayedCalls()


def test_the_client_takes_large_dense_json_answers_a_server_would_refuse():
    client, transport = connect()
    result = collect(client.request("search", "ring"))
    dense: list[list[list[object]]] = [[[]] * 10] * 20_000  # 100 KB, a '[' every 3 characters
    client.dataReceived(encode_json({"result": dense}))
    assert result[0].result == dense


# -- A request timeout gives the connection up ---------------------------------

from twisted.internet.error import ConnectionAborted  # noqa: E402


class AbortingEndpoint(StringEndpoint):
    """Like StringEndpoint, but an abort ends the connection as a real transport's does:
    ``connectionLost`` follows on the next reactor turn (``clock.advance(0)``)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = AbortingTransport(self.clock)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


class AbortingTransport(StringTransport):
    protocol: IProtocol

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def abortConnection(self):
        if not self.disconnected:
            super().abortConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionAborted()))


def sent_values(transport):
    return [json.loads(content)["value"] for _, content in split_frames(transport.value())]


def test_a_request_timeout_gives_up_its_connection_and_the_next_request_gets_a_new_one():
    clock = Clock()
    endpoint = AbortingEndpoint(clock)
    client = Client(clock, endpoint, request_timeout=2)
    slow = collect(client.request("search", "ring"))
    clock.advance(2)
    assert slow[0].check(RequestTimeout)
    old, old_transport = endpoint.connections[0]
    assert old_transport.disconnected  # aborted at once: nothing queued on it is of use any more
    clock.advance(0)
    assert not old.connected
    later = collect(client.request("search", "morpheus"))
    assert len(endpoint.connections) == 2
    new, new_transport = endpoint.connections[1]
    assert sent_values(new_transport) == ["morpheus"]
    new.dataReceived(encode_json({"result": "two"}))
    assert later[0].result == "two"
    assert not clock.getDelayedCalls()


def test_requests_pipelined_behind_a_timed_out_one_go_again_if_idempotent_else_fail():
    clock = Clock()
    endpoint = AbortingEndpoint(clock)
    client = Client(clock, endpoint, request_timeout=10)
    slow = collect(client.request("search", "ring", timeout=2))
    behind = collect(client.request("search", "morpheus"))
    once = collect(client.sendDocument({"action": "search", "value": "nobody"}, idempotent=False))
    clock.advance(2)
    old, _ = endpoint.connections[0]
    old.dataReceived(encode_json({"result": "late answer to ring"}))  # the stream cannot be trusted any more
    clock.advance(0)
    assert slow[0].check(RequestTimeout) and behind == []
    assert once[0].check(ConnectionClosed) and "timed out" in str(once[0].value)
    new, new_transport = endpoint.connections[1]
    assert sent_values(new_transport) == ["morpheus"]
    assert client.retried == 1 and client.resent == 0  # counted against retries, not a tutorial close
    new.dataReceived(encode_json({"result": "two"}))
    assert behind[0].result == "two"


def test_requests_behind_a_timed_out_one_fail_when_no_retries_are_left():
    clock = Clock()
    endpoint = AbortingEndpoint(clock)
    client = Client(clock, endpoint, request_timeout=10, retries=0)
    collect(client.request("search", "ring", timeout=2))
    behind = collect(client.request("search", "morpheus"))
    clock.advance(2)
    clock.advance(0)
    assert behind[0].check(ConnectionClosed)
    assert len(endpoint.connections) == 1


def test_a_request_that_times_out_before_its_connection_is_made_is_never_sent():
    clock = Clock()
    pending_connection: Deferred[None] = Deferred()

    class SlowEndpoint(StringEndpoint):
        def connect(self, factory):
            return pending_connection.addCallback(lambda _: StringEndpoint.connect(self, factory))

    endpoint = SlowEndpoint()
    client = Client(clock, endpoint, request_timeout=2)
    early = collect(client.request("search", "ring"))
    clock.advance(2)
    assert early[0].check(RequestTimeout)
    later = collect(client.request("search", "morpheus"))
    pending_connection.callback(None)
    protocol, transport = endpoint.connections[0]
    assert sent_values(transport) == ["morpheus"]
    protocol.dataReceived(encode_json({"result": "two"}))
    assert later[0].result == "two"


def test_requests_that_all_time_out_leave_nothing_behind():
    """A server that reads everything and never answers: what timed out is not kept."""
    clock = Clock()
    endpoint = AbortingEndpoint(clock)
    client = Client(clock, endpoint, request_timeout=0.05)
    for number in range(1000):
        result = collect(client.request("search", str(number)))
        clock.advance(0.05)
        clock.advance(0)
        assert result[0].check(RequestTimeout)
    kept = sum(protocol.outstanding for protocol, _ in endpoint.connections if protocol.connected)
    assert kept == 0
    assert client.connections_made == 1000 and not clock.getDelayedCalls()


# -- Cancelling connect() ------------------------------------------------------

from twisted.internet.defer import CancelledError, TimeoutError  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from sockapp.client import connect as client_connect  # noqa: E402


def test_cancelling_connect_before_the_connection_is_made_stops_the_attempt():
    reactor = MemoryReactorClock()
    result = collect(client_connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", 5634)))
    result_d = client_connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", 5634))
    cancelled = collect(result_d)
    result_d.cancel()
    assert cancelled[0].check(CancelledError)
    assert [c.stoppedConnecting for c in reactor.connectors] == [False, True]
    assert result == []


def test_connect_cut_off_by_add_timeout_stops_the_attempt():
    reactor = MemoryReactorClock()
    timed = collect(client_connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", 5634)).addTimeout(5, reactor))
    reactor.advance(5)
    assert timed[0].check(TimeoutError)  # addTimeout's own error: the Deferred was cancelled as usual
    assert reactor.connectors[0].stoppedConnecting


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """The connection is made at once but the endpoint fires only after a handshake
    (a proxy or TLS in front), and cannot stop anything once the connection is up."""

    def __init__(self):
        self.transports = []
        self.handshake: Deferred[None] = Deferred()

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return self.handshake.addCallback(lambda _: protocol)


def test_cancelling_connect_after_the_connection_is_made_closes_it():
    endpoint = HandshakeEndpoint()
    result_d = client_connect(Clock(), endpoint)
    cancelled = collect(result_d)
    result_d.cancel()
    assert cancelled[0].check(CancelledError)
    (transport,) = endpoint.transports
    assert transport.disconnecting


def test_a_connection_that_arrives_after_connect_was_cancelled_is_closed():
    """An endpoint that ignores cancellation: the connection it makes later is closed at once."""
    late = []

    @implementer(IStreamClientEndpoint)
    class IgnoresCancel:
        def connect(self, factory):
            late.append(factory)
            return Deferred()

    result_d = client_connect(Clock(), IgnoresCancel())
    cancelled = collect(result_d)
    result_d.cancel()
    assert cancelled[0].check(CancelledError)
    protocol = late[0].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_cancelled_connects_leave_no_connection_open_on_the_server(listen):
    from twisted.internet import reactor

    open_on_server = set()

    class Counted(SearchProtocol):
        def connectionMade(self):
            open_on_server.add(self)
            super().connectionMade()

        def connectionLost(self, reason=None):
            open_on_server.discard(self)
            super().connectionLost(reason)

    factory = SearchFactory()
    factory.protocol = Counted
    endpoint = await listen(factory)
    for _ in range(5):
        attempt = client_connect(reactor, endpoint)
        attempt.cancel()
        with pytest.raises(CancelledError):
            await attempt
    # One live connection after them: by its answer, the server has accepted any made before it.
    live = await client_connect(reactor, endpoint).addTimeout(30, reactor)
    assert (await live.ping().addTimeout(30, reactor)).result == "pong"
    assert len(open_on_server) == 1
    await live.close().addTimeout(30, reactor)


# -- The client's own limit ----------------------------------------------------


def test_an_answer_over_the_clients_limit_says_so():
    from conftest import raw_frame

    client, transport = connect()
    result = collect(client.request("search", "ring"))
    header = {"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}
    client.dataReceived(raw_frame(dict(header, **{"content-length": 64 * 1024 * 1024 + 1})))
    assert result[0].check(RemoteProtocolError) and result[0].value.code is ErrorCode.CONTENT_TOO_LARGE
    assert "over this client's limit of 67108864 bytes" in result[0].value.message


def test_a_servers_words_for_its_limit_are_unchanged():
    from conftest import raw_frame

    from sockapp.wire.framing import FrameDecoder

    decoder = FrameDecoder(max_content_length=1000, max_json_length=100)  # a server's, as SearchProtocol makes it
    header = {"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 101}
    decoder.receive_data(raw_frame(header))
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_message()
    assert caught.value.message == (
        "text/json content-length 101 is over this server's limit of 100 bytes for JSON (--max-json-length)"
    )


# -- call: any action of any app -------------------------------------------------


def answer_with(app, protocol, transport):
    """Answer what was written with a real server of ``app``."""
    from sockapp.server import AppFactory

    server = AppFactory(app, reactor=Clock()).buildProtocol(None)
    server_transport = StringTransport()
    server.makeConnection(server_transport)
    server.dataReceived(transport.value())
    transport.clear()
    for header, content in split_frames(server_transport.value()):
        protocol.dataReceived(encode_frame(content, header["content-type"], header["content-encoding"]))


def small_app():
    from sockapp.app import ActionError, App

    app = App("small")

    @app.action("add")
    def add(value):
        """Add two numbers."""
        return value["a"] + value["b"]

    @app.action("fail")
    def fail(value):
        raise ActionError("nope", "not this one")

    @app.action("raw")
    def raw(value):
        return b"\x00raw"

    return app


def test_call_sends_the_action_and_value_and_fires_with_the_result():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    added = collect(client.call("add", {"a": 2, "b": 3}))
    ((protocol, transport),) = endpoint.connections
    frames = split_frames(transport.value())
    assert [(h["content-type"], json.loads(c)) for h, c in frames] == [
        ("text/json", {"action": "add", "value": {"a": 2, "b": 3}})
    ]
    answer_with(small_app(), protocol, transport)
    assert added == [5]


def test_an_in_band_error_fails_the_call_and_the_connection_serves_on():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    failed = collect(client.call("fail"))
    added = collect(client.call("add", {"a": 1, "b": 1}))
    raw = collect(client.call("raw"))
    described = collect(client.describe())
    answer_with(small_app(), *endpoint.connections[0])
    assert isinstance(failed[0], Failure) and isinstance(failed[0].value, ServerError)
    assert (failed[0].value.code, failed[0].value.message) == ("nope", "not this one")
    assert added == [2] and raw == [b"\x00raw"]
    assert described[0]["name"] == "small" and described[0]["actions"]["add"] == "Add two numbers."
    assert len(endpoint.connections) == 1 and not endpoint.connections[0][1].disconnecting


def test_a_call_is_sent_again_after_a_dropped_connection_only_if_idempotent():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint, retries=2)
    once = collect(client.call("add", {"a": 1, "b": 2}))
    again = collect(client.call("add", {"a": 3, "b": 4}, idempotent=True))
    protocol, transport = endpoint.connections[0]
    transport.clear()
    protocol.connectionLost(Failure(ConnectionDone()))  # between answers: both were dropped
    assert once[0].check(ConnectionClosed)
    assert len(endpoint.connections) == 2
    answer_with(small_app(), *endpoint.connections[1])
    assert again == [7]


# -- Servers that close after every answer: one request per connection ----------

from twisted.internet.defer import gatherResults  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from sockapp.wire.framing import FrameDecoder, Message  # noqa: E402


def frames_sent(transport):
    return [json.loads(content)["value"] for _, content in split_frames(transport.value())]


def test_after_a_server_closes_right_after_its_only_answer_each_request_gets_a_connection_of_its_own():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    first = collect(client.request("search", "ring"))
    second = collect(client.request("search", "morpheus"))  # pipelined: nothing is known of the server yet
    answer_all(*endpoint.connections[0], close_after_each=True)  # one answer, then closed with "morpheus" unread
    assert client.resent == 1 and len(endpoint.connections) == 2
    third = collect(client.request("search", "nobody"))  # "morpheus" is still outstanding on the second
    assert len(endpoint.connections) == 3
    assert [frames_sent(t) for _, t in endpoint.connections[1:]] == [["morpheus"], ["nobody"]]
    for protocol, transport in endpoint.connections[1:]:
        answer_all(protocol, transport)
        assert transport.disconnecting  # done with after its one answer: never left open on the server
    assert [first[0].result[:6], second[0].result[:6], third[0].result[:6]] == ["In the", "Follow", "No mat"]
    assert (client.resent, client.retried, client.connections_made) == (1, 0, 3)


def test_a_keep_alive_server_closing_an_idle_connection_keeps_the_client_reusing_connections():
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    first = collect(client.request("search", "ring"))
    answer_all(*endpoint.connections[0])
    drop(endpoint.connections[0][0])  # an idle timeout: one answer, then closed with nothing outstanding
    later = [collect(client.request("search", q)) for q in ("morpheus", "nobody", "ring")]
    assert len(endpoint.connections) == 2 and frames_sent(endpoint.connections[1][1]) == ["morpheus", "nobody", "ring"]
    answer_all(*endpoint.connections[1])
    assert first[0].result[:6] == "In the" and [r[0].result[:6] for r in later] == ["Follow", "No mat", "In the"]
    assert not endpoint.connections[1][1].disconnecting
    assert (client.resent, client.retried) == (0, 0)


def test_a_server_that_closes_after_several_answers_keeps_the_client_pipelining():
    """A limit of requests per connection (2 here): a close with a request outstanding, but after two answers."""
    endpoint = StringEndpoint()
    client = Client(Clock(), endpoint)
    results = [collect(client.request("search", q)) for q in ("ring", "morpheus", "nobody")]
    protocol, transport = endpoint.connections[0]
    transport.clear()
    protocol.dataReceived(encode_json({"result": "one"}) + encode_json({"result": "two"}))
    drop(protocol)
    more = [collect(client.request("search", q)) for q in ("a", "b")]
    assert len(endpoint.connections) == 2 and frames_sent(endpoint.connections[1][1]) == ["nobody", "a", "b"]
    answer_all(*endpoint.connections[1])
    assert [r[0].result for r in results[:2]] == ["one", "two"] and all(r[0].result for r in results[2:] + more)
    assert (client.resent, client.retried, client.connections_made) == (1, 0, 2)


class AnswerOnceThenClose(Protocol):
    """The tutorial's app_msrvr.py in miniature: read one request, answer it, close."""

    factory: AnswerOnceFactory
    transport: ITransport  # connected

    def connectionMade(self):
        self.factory.connections += 1
        self.decoder = FrameDecoder()
        self.answered = False

    def dataReceived(self, data):
        if self.answered:
            return
        self.decoder.receive_data(data)
        message = self.decoder.next_message()
        if isinstance(message, Message):
            self.answered = True
            self.transport.write(encode_json({"result": f"answer to {message.document['value']}"}))
            self.transport.loseConnection()


class AnswerOnceFactory(Factory[AnswerOnceThenClose]):
    protocol = AnswerOnceThenClose
    connections = 0


def answer_once_factory():
    return AnswerOnceFactory()


REQUESTS = 10


@pytest_twisted.ensureDeferred
async def test_sequential_requests_to_a_server_that_closes_after_each_answer_are_sent_once(listen):
    from twisted.internet import reactor

    factory = answer_once_factory()
    client = await client_connect(reactor, await listen(factory), request_timeout=30)
    try:
        for n in range(REQUESTS):
            assert (await client.request("search", str(n))).result == f"answer to {n}"
        # The second request went on the first connection (its close was not known yet) and again on
        # the second; every later one went once, on a connection of its own.
        assert (client.resent, client.retried) == (1, 0)
        assert client.connections_made == factory.connections == REQUESTS
    finally:
        await client.close().addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_to_a_server_that_closes_after_each_answer_are_sent_again_once(listen):
    from twisted.internet import reactor

    factory = answer_once_factory()
    client = await client_connect(reactor, await listen(factory), request_timeout=30)
    try:
        answers = [client.request("search", str(n)) for n in range(REQUESTS)]
        results = await gatherResults(answers).addTimeout(30, reactor)
        assert [r.result for r in results] == [f"answer to {n}" for n in range(REQUESTS)]
        # All went on the first connection, which answered one; each of the rest went again, once.
        assert (client.resent, client.retried) == (REQUESTS - 1, 0)
        assert client.connections_made == factory.connections == REQUESTS
    finally:
        await client.close().addTimeout(30, reactor)
