"""The Deferred-based clients over StringTransport: ordering, errors, connection loss."""

from __future__ import annotations

import json

from conftest import split_frames
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sockapp.client import AppClient, EchoClient, request_frame_fields
from sockapp.errors import ConnectionClosed, ErrorCode, RemoteProtocolError, ServerError
from sockapp.framing import encode_frame, encode_json
from sockapp.search import SearchIndex
from sockapp.server import SearchFactory


def connect(cls=AppClient):
    protocol = cls()
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def collect(d):
    out = []
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
    assert [r[0].result for r in results] == [SearchIndex().answer(q) for q in queries]
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
    assert isinstance(result[0], Failure) and result[0].check(ServerError)
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


def test_request_frame_fields():
    assert request_frame_fields("search", "a") == ({"action": "search", "value": "a"}, "text/json", "utf-8")
    assert request_frame_fields("x", "\u00e9") == ("x\u00e9".encode(), "binary/custom-client-binary-type", "binary")


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
