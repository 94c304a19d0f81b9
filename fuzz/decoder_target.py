"""The fuzz target's body, plain Python so the test suite can replay inputs without atheris."""

from __future__ import annotations

from sockapp.apps.search import SearchIndex
from sockapp.errors import RemoteProtocolError
from sockapp.wire.framing import NEED_DATA, FrameDecoder

INDEX = SearchIndex()


def check(data: bytes) -> None:
    """Decode ``data`` in pieces and answer every message; only typed errors may escape."""
    if not data:
        return
    piece = data[0] % 64 + 1
    stream = data[1:]
    decoder = FrameDecoder(max_content_length=1 << 16)
    try:
        for start in range(0, len(stream), piece):
            decoder.receive_data(stream[start : start + piece])
            while (message := decoder.next_message()) is not NEED_DATA:
                if message.header.content_length != len(message.content):
                    raise AssertionError("content length mismatch")
                try:
                    INDEX.respond(message)
                except RemoteProtocolError:
                    pass
    except RemoteProtocolError:
        pass
