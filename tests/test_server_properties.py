"""Property tests: random bytes and mutated valid frames, split at random, fed to the server
protocol over StringTransport. It never raises, writes nothing but well-formed frames, and
always either answers or closes."""

from __future__ import annotations

import json

from conftest import binary_request, json_request, split_frames
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sockapp.server import SearchFactory

VALID_FRAMES = [
    json_request({"action": "search", "value": "morpheus"}),
    json_request({"action": "search", "value": "\U0001f436"}),
    json_request({"action": "nope", "value": "x"}),
    json_request({"action": "search", "value": "caf\u00e9"}, encoding="utf-16"),
    binary_request(b"binaryhello"),
    binary_request(b""),
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID_FRAMES), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


def feed(data: bytes, cuts: list[int]) -> tuple[StringTransport, bool]:
    """Feed the pieces, then EOF; return the transport and whether it closed before EOF."""
    protocol = SearchFactory(reactor=Clock(), max_content_length=10_000).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        protocol.dataReceived(data[previous:cut])  # must never raise
        previous = cut
    closed_before_eof = transport.disconnecting
    protocol.readConnectionLost()
    return transport, closed_before_eof


IN_BAND = {
    "unknown-encoding",
    "content-not-decodable",
    "content-not-json",
    "content-too-complex",
    "request-not-object",
    "bad-request",
    "unknown-action",
}


def check_frames(output: bytes) -> list[tuple[dict, bytes]]:
    frames = split_frames(output)  # raises on anything but back-to-back well-formed frames
    assert (
        b"".join(
            len(json.dumps(h, ensure_ascii=False).encode()).to_bytes(2, "big")
            + json.dumps(h, ensure_ascii=False).encode()
            + c
            for h, c in frames
        )
        == output
    )
    for header, content in frames:
        assert list(header) == ["byteorder", "content-type", "content-encoding", "content-length"]
        assert header["content-length"] == len(content)
    # A frame fault's error frame is the last thing written; a request fault's answer is
    # in-band, in its place, and the connection serves on.
    codes = [
        json.loads(c)["error"]["code"]
        for h, c in frames
        if h["content-type"] == "text/json" and "error" in json.loads(c)
    ]
    closing = [i for i, code in enumerate(codes) if code not in IN_BAND]
    assert closing in ([], [len(codes) - 1]), "an error frame that closes is the last thing written"
    last = frames[-1] if frames else None
    if closing:
        assert last is not None and json.loads(last[1])["error"]["code"] == codes[-1]
    return frames


cuts_for = st.lists(st.integers(0, 2000), max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500), cuts_for)
def test_random_bytes(data, cuts):
    transport, _ = feed(data, [c for c in cuts if c <= len(data)])
    check_frames(transport.value())
    assert transport.disconnecting


@settings(max_examples=300, deadline=None)
@given(mutated(), cuts_for)
def test_mutated_frames(data, cuts):
    transport, _ = feed(data, [c for c in cuts if c <= len(data)])
    check_frames(transport.value())
    assert transport.disconnecting


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(VALID_FRAMES), min_size=1, max_size=6), cuts_for)
def test_valid_frames_are_all_answered_and_the_connection_kept(frames, cuts):
    data = b"".join(frames)
    transport, closed_before_eof = feed(data, [c for c in cuts if c <= len(data)])
    assert not closed_before_eof
    assert len(check_frames(transport.value())) == len(frames)
