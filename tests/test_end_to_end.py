"""Servers and clients over real loopback TCP (127.0.0.1, port 0), in one reactor."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from conftest import binary_request, json_request
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone

from sockapp.client import connect, connect_echo
from sockapp.errors import BadEndpoint, ServerError
from sockapp.server import SearchFactory
from sockapp.server.echo import EchoFactory

TIMEOUT = 30


def within(d):
    return d.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_search_requests_over_tcp(listen):
    endpoint = await listen(SearchFactory())
    client = await within(connect(reactor, endpoint))
    hit = await within(client.request("search", "morpheus"))
    miss = await within(client.request("search", "nobody"))
    binary = await within(client.request("binary", "hello"))
    assert hit.result == "Follow the white rabbit. \U0001f430"
    assert miss.result == "No match for 'nobody'."
    assert binary.content == b"First 10 bytes of request: binaryhell"
    await within(client.close())


@pytest_twisted.ensureDeferred
async def test_many_pipelined_requests_are_answered_in_order(listen):
    endpoint = await listen(SearchFactory())
    client = await within(connect(reactor, endpoint))
    queries = [f"q{i}" if i % 3 else "ring" for i in range(500)]
    answers = [client.request("search", q) for q in queries]
    results = [(await within(a)).result for a in answers]
    assert results == [
        "In the caves beneath the Misty Mountains. \U0001f48d" if q == "ring" else f"No match for '{q}'."
        for q in queries
    ]
    await within(client.close())


class Raw(Protocol):
    def connectionMade(self):
        self.received = b""
        from twisted.internet.defer import Deferred

        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=connectionDone):
        self.closed.callback(self.received)


@pytest_twisted.ensureDeferred
async def test_a_malformed_frame_closes_only_its_own_connection(listen):
    endpoint = await listen(SearchFactory())
    port = int(endpoint.rsplit("=", 1)[1])
    good = await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw()))
    bad = await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw()))
    request = json_request({"action": "search", "value": "ring"})
    good.transport.write(request[:15])  # the good peer is in the middle of a request
    bad.transport.write(b"\x00\x00")
    received = await within(bad.closed)
    error = json.loads(received[2 + int.from_bytes(received[:2], "big") :])
    assert error == {"error": {"code": "empty-header", "message": "header length is 0; a header is required"}}
    good.transport.write(request[15:])
    good.transport.loseWriteConnection()
    answer = await within(good.closed)
    assert answer.endswith('In the caves beneath the Misty Mountains. \U0001f48d"}'.encode())


@pytest_twisted.ensureDeferred
async def test_error_frame_reaches_the_client_as_server_error(listen):
    endpoint = await listen(SearchFactory())
    client = await within(connect(reactor, endpoint))
    with pytest.raises(ServerError) as caught:
        await within(client.sendDocument({"action": "search", "value": [5]}))
    assert caught.value.code == "bad-request"
    # Answered in-band: the connection serves on.
    assert (await within(client.request("search", "ring"))).result.startswith("In the caves")
    assert client.connections_made == 1
    await within(client.close())


@pytest_twisted.ensureDeferred
async def test_half_closing_peer_gets_its_answer(listen):
    endpoint = await listen(SearchFactory())
    port = int(endpoint.rsplit("=", 1)[1])
    raw = await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Raw()))
    raw.transport.write(json_request({"action": "search", "value": "morpheus"}) + binary_request(b"abc"))
    raw.transport.loseWriteConnection()
    received = await within(raw.closed)
    assert b"Follow the white rabbit" in received
    assert received.endswith(b"First 10 bytes of request: abc")


@pytest_twisted.ensureDeferred
async def test_echo_round_trips_and_large_blocks(listen):
    endpoint = await listen(EchoFactory())
    client = await within(connect_echo(reactor, endpoint))
    assert await within(client.roundTrip(b"hello, universe.\nHi, friend.")) == b"hello, universe.\nHi, friend."
    block = bytes(range(256)) * 40000  # ~10 MB
    assert await within(client.roundTrip(block)) == block
    await within(client.close())


@pytest_twisted.ensureDeferred
async def test_bad_endpoint_string_is_a_typed_error():
    with pytest.raises(BadEndpoint):
        await connect(reactor, "nonsense:foo")
