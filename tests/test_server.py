"""The search server's Protocol over StringTransport: answers, pipelining, errors, half-close."""

from __future__ import annotations

import json
from typing import cast

import pytest
from conftest import binary_request, json_request, raw_frame, split_frames
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent

from sockapp.apps.search import SearchIndex
from sockapp.server import SearchFactory


def connect(factory: SearchFactory | None = None):
    factory = factory or SearchFactory()
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def feed(protocol, data: bytes, one_byte_at_a_time: bool) -> None:
    if one_byte_at_a_time:
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
    else:
        protocol.dataReceived(data)


def results(transport: StringTransport) -> list:
    out = []
    for header, content in split_frames(transport.value()):
        out.append(json.loads(content) if header["content-type"] == "text/json" else content)
    return out


JSON_HEADER = {"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 2}
both = pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])


@both
def test_search_hit(one_byte):
    protocol, transport = connect()
    feed(protocol, json_request({"action": "search", "value": "morpheus"}), one_byte)
    assert results(transport) == [{"result": "Follow the white rabbit. \U0001f430"}]
    assert not transport.disconnecting


@both
def test_pipelined_requests_are_answered_in_order_on_one_connection(one_byte):
    protocol, transport = connect()
    stream = b"".join(
        [
            json_request({"action": "search", "value": "ring"}),
            binary_request(b"0123456789abcdef"),
            json_request({"action": "search", "value": "nobody"}),
            json_request({"action": "nope", "value": "x"}),
            json_request({"action": "search", "value": "\U0001f436"}),
        ]
    )
    feed(protocol, stream, one_byte)
    assert results(transport) == [
        {"result": "In the caves beneath the Misty Mountains. \U0001f48d"},
        b"First 10 bytes of request: 0123456789",
        {"result": "No match for 'nobody'."},
        {"result": "Error: invalid action 'nope'."},
        {"result": "\U0001f43e Playing ball! \U0001f3d0"},
    ]
    assert not transport.disconnecting


def test_connection_stays_open_between_requests():
    protocol, transport = connect()
    protocol.dataReceived(json_request({"action": "search", "value": "ring"}))
    first = transport.value()
    protocol.dataReceived(json_request({"action": "search", "value": "morpheus"}))
    assert len(split_frames(transport.value())) == 2 and transport.value().startswith(first)


@both
@pytest.mark.parametrize(
    "data, code",
    [
        (b"\x00\x00", "empty-header"),
        (raw_frame(None, header_bytes=b"not json"), "header-not-json"),
        (raw_frame({"byteorder": "little"}), "header-missing-key"),
    ],
)
def test_malformed_input_gets_an_error_frame_then_the_connection_closes(data, code, one_byte):
    protocol, transport = connect()
    feed(protocol, json_request({"action": "search", "value": "ring"}) + data + binary_request(b"ignored"), one_byte)
    answers = results(transport)
    assert len(answers) == 2, answers
    assert answers[0]["result"].startswith("In the caves")
    assert answers[1]["error"]["code"] == code
    assert answers[1]["error"]["message"]
    assert transport.disconnecting
    assert transport.producer is None  # unregistered, or loseConnection would never finish


@both
@pytest.mark.parametrize(
    "data, code",
    [
        (json_request([1, 2]), "request-not-object"),
        (json_request({"action": "search", "value": [3]}), "bad-request"),
        (raw_frame({**JSON_HEADER, "content-encoding": "klingon"}, b"{}"), "unknown-encoding"),
        (raw_frame({**JSON_HEADER, "content-length": 5}, b"hello"), "content-not-json"),
    ],
)
def test_a_bad_request_in_a_sound_frame_is_answered_in_its_place_and_the_connection_serves_on(data, code, one_byte):
    protocol, transport = connect()
    search = json_request({"action": "search", "value": "ring"})
    feed(protocol, search + data + binary_request(b"answered"), one_byte)
    answers = results(transport)
    assert len(answers) == 3, answers
    assert answers[0]["result"].startswith("In the caves")
    assert answers[1]["error"]["code"] == code and answers[1]["error"]["message"]
    assert answers[2] == b"First 10 bytes of request: answered"
    assert not transport.disconnecting


def test_an_error_on_one_connection_leaves_others_alone():
    factory = SearchFactory()
    bad, bad_transport = connect(factory)
    good, good_transport = connect(factory)
    good.dataReceived(json_request({"action": "search", "value": "ring"})[:10])
    bad.dataReceived(b"\x00\x00")
    good.dataReceived(json_request({"action": "search", "value": "ring"})[10:])
    assert bad_transport.disconnecting and not good_transport.disconnecting
    assert results(good_transport) == [{"result": "In the caves beneath the Misty Mountains. \U0001f48d"}]


def test_content_length_over_the_servers_limit_is_refused_at_the_header():
    protocol, transport = connect(SearchFactory(max_content_length=100))
    header = {"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 101}
    protocol.dataReceived(raw_frame(header))
    assert results(transport)[0]["error"]["code"] == "content-too-large"
    assert transport.disconnecting


def test_half_close_after_a_request_still_delivers_the_answer():
    protocol, transport = connect()
    protocol.dataReceived(json_request({"action": "search", "value": "morpheus"}))
    protocol.readConnectionLost()
    assert results(transport) == [{"result": "Follow the white rabbit. \U0001f430"}]
    assert transport.disconnecting


def test_the_transports_own_reading_is_the_producer_for_backpressure():
    protocol, transport = connect()
    assert transport.streaming and transport.producer.transport is transport
    transport.producer.pauseProducing()  # Twisted's call when its write buffer is full: reading stops
    assert transport.producerState == "paused"
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"


def test_custom_index_is_used():
    protocol, transport = connect(SearchFactory(index=SearchIndex({"neo": "The One."})))
    protocol.dataReceived(json_request({"action": "search", "value": "neo"}))
    assert results(transport) == [{"result": "The One."}]


def test_verbose_logs_each_request(capsys):
    from twisted.logger import globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        protocol, _ = connect(SearchFactory(verbose=True))
        protocol.dataReceived(binary_request(b"abc"))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert any(e.get("log_format", "").endswith("request, {length} bytes") and e["length"] == 3 for e in events)


def test_behind_a_proxy_header_the_logs_name_the_real_client():
    # On a haproxy: port Twisted wraps the connection; the PROXY header arrives after connectionMade.
    from twisted.internet.address import IPv4Address
    from twisted.logger import globalLogPublisher

    from sockapp.net.proxy import CheckedProxyFactory

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        wrapper = CheckedProxyFactory(SearchFactory()).buildProtocol(IPv4Address("TCP", "10.0.0.1", 5634))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 41000))
        wrapper.makeConnection(transport)
        # Twisted's wrapper needs the header's first 8 bytes in one read (HAProxy sends it in one write).
        wrapper.dataReceived(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 5634\r\n")
        feed(wrapper, b"\x00\x00", one_byte_at_a_time=True)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    (warning,) = [e for e in events if e.get("code") == "empty-header"]
    assert warning["peer"] == "203.0.113.7:40000"
    assert results(transport)[0]["error"]["code"] == "empty-header"


# -- every well-framed request gets an answer; nothing a peer sends breaks a log line ----


def logged(action):
    from twisted.logger import globalLogPublisher

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    return events


@pytest.mark.parametrize(
    "request_, answer",
    [
        ({"action": "search", "value": "\ud800"}, {"result": "No match for '\ud800'."}),
        ({"action": "\udc00x", "value": "ring"}, {"result": "Error: invalid action '\udc00x'."}),
    ],
    ids=["surrogate value", "surrogate action"],
)
def test_a_lone_surrogate_is_answered_not_a_traceback(request_, answer):
    protocol, transport = connect()
    raw = json.dumps(request_).encode("ascii")  # valid JSON: the surrogate as an escape
    frame = raw_frame(
        {"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": len(raw)},
        raw,
    )
    events = logged(lambda: protocol.dataReceived(frame + json_request({"action": "search", "value": "ring"})))
    assert results(transport) == [answer, {"result": "In the caves beneath the Misty Mountains. \U0001f48d"}]
    assert not [e for e in events if e.get("log_failure") or e.get("isError")]


def test_an_unknown_encoding_with_control_characters_is_logged_escaped_and_cut():
    from twisted.logger import formatEvent

    protocol, transport = connect(SearchFactory(verbose=True))  # in-band faults are logged with --verbose
    name = "\x1b[2K\rFAKE 127.0.0.1: all good\u2028\ud800" + "x" * 60_000
    header = {"byteorder": "little", "content-type": "text/json", "content-encoding": name, "content-length": 2}
    frame = raw_frame(header, b"{}", header_bytes=json.dumps(header).encode("ascii"))
    events = logged(lambda: protocol.dataReceived(frame))
    (event,) = [e for e in events if e.get("code") == "unknown-encoding"]
    line = formatEvent(event)
    assert line.isprintable() and len(line) < 500
    line.encode("utf-8")
    assert "\\x1b[2K\\x0dFAKE" in line
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content)["error"]["code"] == "unknown-encoding"


def test_verbose_logs_show_a_content_type_escaped():
    from twisted.logger import formatEvent

    protocol, transport = connect(SearchFactory(verbose=True))
    header = {
        "byteorder": "big",
        "content-type": "binary/HIDDEN\udc00\r",
        "content-encoding": "binary",
        "content-length": 1,
    }
    frame = raw_frame(header, b"x", header_bytes=json.dumps(header).encode("ascii"))
    events = logged(lambda: protocol.dataReceived(frame))
    (line,) = [formatEvent(e) for e in events if "request," in e.get("log_format", "")]
    assert "binary/HIDDEN\\udc00\\x0d request, 1 bytes" in line and line.isprintable()
    assert len(split_frames(transport.value())) == 1  # and it was answered


class _CountedPeer(StringTransport):
    """Counts ``getPeer`` calls: the peer's address is asked for only when it is logged."""

    peer_asked = 0

    def getPeer(self):
        self.peer_asked += 1
        return super().getPeer()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_plain_connection_asks_for_its_peer_only_to_log_it(verbose):
    from twisted.internet.task import Clock

    factory = SearchFactory(reactor=Clock(), verbose=verbose)
    protocol = factory.buildProtocol(None)
    transport = _CountedPeer()
    protocol.makeConnection(transport)
    protocol.dataReceived(json_request({"action": "search", "value": "ring"}))
    protocol.connectionLost(None)
    assert len(results(transport)) == 1
    # --verbose: "connection from", the request, "closed"; otherwise not once (not even at the close).
    assert transport.peer_asked == (3 if verbose else 0)
