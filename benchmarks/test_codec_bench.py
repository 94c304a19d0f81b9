"""Codec micro-benchmarks (pytest-benchmark): `make microbench`, a few seconds.

Encode and decode of a small search request, a small answer, and 1 MiB and
8 MiB binary frames (decoded whole and in 64 KiB pieces), so a slowdown in
the hot path shows up without a load test.
"""

from __future__ import annotations

import pytest

from sockapp.apps.search import SearchIndex
from sockapp.wire.framing import NEED_DATA, FrameDecoder, encode_frame, encode_json

SEARCH = encode_json({"action": "search", "value": "morpheus"})
MISS = encode_json({"action": "search", "value": "nobody"})
PIECE = 64 * 1024


def decode(stream: bytes, piece: int | None = None) -> int:
    decoder = FrameDecoder()
    count = 0
    step = piece or len(stream)
    for start in range(0, len(stream), step):
        decoder.receive_data(stream[start : start + step])
        while decoder.next_message() is not NEED_DATA:
            count += 1
    return count


def test_encode_small_answer(benchmark):
    benchmark(encode_json, {"result": "No match for 'nobody'."})


def test_decode_small_request(benchmark):
    assert benchmark(decode, SEARCH) == 1


def test_decode_and_answer_100_pipelined_misses(benchmark):
    index = SearchIndex()
    stream = MISS * 100

    def run() -> int:
        decoder = FrameDecoder()
        decoder.receive_data(stream)
        answered = 0
        while (message := decoder.next_message()) is not NEED_DATA:
            index.respond(message)
            answered += 1
        return answered

    assert benchmark(run) == 100


@pytest.mark.parametrize("mib", [1, 8])
def test_encode_large_binary(benchmark, mib):
    content = b"x" * (mib << 20)
    benchmark(encode_frame, content, "binary/x", "binary")


@pytest.mark.parametrize("mib", [1, 8])
@pytest.mark.parametrize("piece", [None, PIECE], ids=["whole", "64KiB-pieces"])
def test_decode_large_binary(benchmark, mib, piece):
    frame = encode_frame(b"x" * (mib << 20), "binary/x", "binary")
    assert benchmark(decode, frame, piece) == 1
