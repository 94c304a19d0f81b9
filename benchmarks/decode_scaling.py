"""How decoding time grows with frame size: feed 1, 8 and 64 MiB frames in 64 KiB pieces.

    python benchmarks/decode_scaling.py

Prints seconds per frame and per MiB for sockapp's FrameDecoder and, for
contrast, a decoder that grows its buffer with ``buffer = buffer + data``
the way Twisted's IntNStringReceiver does. Linear decoding shows as a flat
seconds-per-MiB column.
"""

from __future__ import annotations

import json
import sys
import time

from sockapp.wire.framing import NEED_DATA, FrameDecoder, encode_frame

PIECE = 64 * 1024


def sockapp_decode(frame: bytes) -> int:
    decoder = FrameDecoder(max_content_length=len(frame))
    view = memoryview(frame)
    for start in range(0, len(frame), PIECE):
        decoder.receive_data(bytes(view[start : start + PIECE]))
        message = decoder.next_message()
        if message is not NEED_DATA:
            return len(message.content)
    raise AssertionError("frame did not complete")


def concatenating_decode(frame: bytes) -> int:
    buffer = b""
    view = memoryview(frame)
    for start in range(0, len(frame), PIECE):
        buffer = buffer + bytes(view[start : start + PIECE])
        if len(buffer) >= 2:
            n = int.from_bytes(buffer[:2], "big")
            if len(buffer) >= 2 + n:
                length = json.loads(buffer[2 : 2 + n])["content-length"]
                if len(buffer) >= 2 + n + length:
                    return len(buffer[2 + n : 2 + n + length])
    raise AssertionError("frame did not complete")


def best_of(fn, frame: bytes, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(frame)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 8, 64]
    print(f"{'MiB':>4} {'sockapp s':>10} {'s/MiB':>8} {'concat s':>10} {'s/MiB':>8}")
    for mib in sizes:
        frame = encode_frame(b"x" * (mib * 1024 * 1024), "binary/x", "binary")
        ours = best_of(sockapp_decode, frame, 3)
        theirs = best_of(concatenating_decode, frame, 1) if mib <= 64 else float("nan")
        print(f"{mib:>4} {ours:>10.4f} {ours / mib:>8.5f} {theirs:>10.4f} {theirs / mib:>8.5f}")


if __name__ == "__main__":
    main()
