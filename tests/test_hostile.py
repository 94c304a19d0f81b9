"""Hostile input over real loopback TCP: each malformed frame gets its exact error code on
the wire and its connection closed, each bad request in a sound frame gets its code in-band
and its connection serves on, while a concurrent connection in the middle of its own
request completes normally."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import pytest_twisted
from conftest import binary_request, json_request, raw_frame, split_frames
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone

from sockapp.server import SearchFactory

TIMEOUT = 30
LIMIT = 1000
HEADER = {"byteorder": sys.byteorder, "content-type": "text/json", "content-encoding": "utf-8", "content-length": 2}


def header(**changes) -> dict:
    fields = dict(HEADER)
    for key, value in changes.items():
        fields[key.replace("_", "-")] = value
    return fields


def without(key: str) -> dict:
    return {k: v for k, v in HEADER.items() if k != key}


BAD_INPUT = {
    "header length 0": (b"\x00\x00", "empty-header"),
    "header not UTF-8": (raw_frame(None, header_bytes=b'{"byteorder": "\xc3\x28"}'), "header-not-utf8"),
    "header not JSON": (raw_frame(None, header_bytes=b"byteorder=little"), "header-not-json"),
    "header JSON not an object": (raw_frame(["byteorder", "little"]), "header-not-object"),
    **{f"header without {key}": (raw_frame(without(key), b"{}"), "header-missing-key") for key in HEADER},
    "content-length negative": (raw_frame(header(content_length=-1)), "bad-content-length"),
    "content-length a float": (raw_frame(header(content_length=2.5)), "bad-content-length"),
    "content-length a whole float": (raw_frame(header(content_length=2.0)), "bad-content-length"),
    "content-length a string": (raw_frame(header(content_length="2")), "bad-content-length"),
    "content-length a boolean": (raw_frame(header(content_length=True)), "bad-content-length"),
    "content-length null": (raw_frame(header(content_length=None)), "bad-content-length"),
    # Only the header is sent: the refusal must come without waiting for content.
    "content-length above the limit": (raw_frame(header(content_length=LIMIT + 1)), "content-too-large"),
    "content-length far above the limit": (raw_frame(header(content_length=2**62)), "content-too-large"),
}


# Faults inside a sound frame: answered in-band, in their place; the connection serves on.
BAD_REQUESTS = {
    "content not in its declared encoding": (
        raw_frame(header(content_length=4), b'"\xff\xfe"'),
        "content-not-decodable",
    ),
    "unknown content-encoding": (raw_frame(header(content_encoding="ebcdic-9000"), b"{}"), "unknown-encoding"),
    "content not JSON": (raw_frame(header(content_length=5), b"hello"), "content-not-json"),
    "content JSON not an object": (json_request(["search", "ring"]), "request-not-object"),
    "value an array": (json_request({"action": "search", "value": ["ring"]}), "bad-request"),
    "value an object": (json_request({"action": "search", "value": {"q": "ring"}}), "bad-request"),
}


class Peer(Protocol):
    """Collects everything until the connection closes."""

    transport: Any  # connected over TCP

    def connectionMade(self):
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=connectionDone):
        self.closed.callback(self.received)


async def open_peer(endpoint: str) -> Peer:
    return await connectProtocol(clientFromString(reactor, endpoint), Peer()).addTimeout(TIMEOUT, reactor)


def error_code(frame_content: bytes) -> str:
    return json.loads(frame_content)["error"]["code"]


@pytest.mark.parametrize("name", list(BAD_INPUT))
@pytest_twisted.ensureDeferred
async def test_bad_input_gets_its_error_code_and_only_its_connection_closes(listen, name):
    data, code = BAD_INPUT[name]
    endpoint = await listen(SearchFactory(max_content_length=LIMIT))
    good, bad = await open_peer(endpoint), await open_peer(endpoint)
    request = json_request({"action": "search", "value": "morpheus"})
    good.transport.write(request[:9])  # the good peer is in the middle of its request
    bad.transport.write(data)
    received = await bad.closed.addTimeout(TIMEOUT, reactor)
    ((answer_header, content),) = split_frames(received)
    assert answer_header["content-type"] == "text/json"
    assert error_code(content) == code
    assert json.loads(content)["error"]["message"]
    await good_peer_completes(good, request)


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_a_bad_request_is_answered_in_band_and_the_connection_serves_on(listen, name):
    data, code = BAD_REQUESTS[name]
    endpoint = await listen(SearchFactory(max_content_length=LIMIT))
    good, bad = await open_peer(endpoint), await open_peer(endpoint)
    request = json_request({"action": "search", "value": "morpheus"})
    good.transport.write(request[:9])
    bad.transport.write(data + json_request({"action": "search", "value": "ring"}))
    bad.transport.loseWriteConnection()  # the server closes only after answering both
    received = await bad.closed.addTimeout(TIMEOUT, reactor)
    (_, error), (_, answer) = split_frames(received)
    assert error_code(error) == code
    assert json.loads(error)["error"]["message"]
    assert json.loads(answer)["result"].startswith("In the caves")
    await good_peer_completes(good, request)


async def good_peer_completes(good: Peer, request: bytes) -> None:
    good.transport.write(request[9:])
    good.transport.loseWriteConnection()
    ((_, answer),) = split_frames(await good.closed.addTimeout(TIMEOUT, reactor))
    assert json.loads(answer) == {"result": "Follow the white rabbit. \U0001f430"}


@pytest_twisted.ensureDeferred
async def test_frames_before_a_broken_one_are_answered(listen):
    endpoint = await listen(SearchFactory())
    good, peer = await open_peer(endpoint), await open_peer(endpoint)
    request = json_request({"action": "search", "value": "morpheus"})
    good.transport.write(request[:9])
    peer.transport.write(
        json_request({"action": "search", "value": "ring"}) + binary_request(b"0123456789AB") + b"\x00\x00garbage"
    )
    frames = split_frames(await peer.closed.addTimeout(TIMEOUT, reactor))
    assert [json.loads(c) if h["content-type"] == "text/json" else c for h, c in frames] == [
        {"result": "In the caves beneath the Misty Mountains. \U0001f48d"},
        b"First 10 bytes of request: 0123456789",
        {"error": {"code": "empty-header", "message": "header length is 0; a header is required"}},
    ]
    await good_peer_completes(good, request)


@pytest_twisted.ensureDeferred
async def test_half_close_after_a_request_still_gets_the_answer(listen):
    endpoint = await listen(SearchFactory())
    good, peer = await open_peer(endpoint), await open_peer(endpoint)
    request = json_request({"action": "search", "value": "morpheus"})
    good.transport.write(request[:9])
    peer.transport.write(json_request({"action": "search", "value": "\U0001f436"}))
    peer.transport.loseWriteConnection()
    ((_, content),) = split_frames(await peer.closed.addTimeout(TIMEOUT, reactor))
    assert json.loads(content) == {"result": "\U0001f43e Playing ball! \U0001f3d0"}
    await good_peer_completes(good, request)


@pytest_twisted.ensureDeferred
async def test_client_gets_a_typed_error_for_an_oversized_answer(listen):
    from twisted.internet.protocol import Factory

    from sockapp.client import connect
    from sockapp.errors import RemoteProtocolError

    class Oversized(Protocol):
        transport: Any  # connected over TCP

        def dataReceived(self, data):
            self.transport.write(raw_frame(header(content_length=2**40)))  # then nothing: no hang allowed

    endpoint = await listen(Factory.forProtocol(Oversized))
    client = await connect(reactor, endpoint)
    with pytest.raises(RemoteProtocolError) as caught:
        await client.request("search", "ring").addTimeout(TIMEOUT, reactor)
    assert caught.value.code.value == "content-too-large"
