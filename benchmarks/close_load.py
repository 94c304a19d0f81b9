"""The close load of `make bench`: one request per connection, as the tutorial's client does.

    python benchmarks/close_load.py PORT [--connections 25] [--seconds 5]

Each of the connections opens, sends one search request, reads the whole
answer, and closes, over and over, for the given time; prints one JSON line
with the requests answered, the errors and the rate. (`sockapp bench` keeps
its connections open, so it cannot make this load.) Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time

from sockapp.wire.framing import encode_json

REQUEST = encode_json({"action": "search", "value": "morpheus"})


async def one_request(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        head = await reader.readexactly(2)
        header = json.loads(await reader.readexactly(int.from_bytes(head, "big")))
        content = await reader.readexactly(header["content-length"])
        return b'"result"' in content
    finally:
        # Abortive close, as the C load generator does: no TIME_WAIT pile-up of ephemeral ports.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def run(port: int, connections: int, seconds: float) -> dict[str, float]:
    counts = {"requests": 0, "errors": 0}
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            try:
                answered = await one_request(port)
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                answered = False
            counts["requests" if answered else "errors"] += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {**counts, "throughput_per_s": counts["requests"] / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.port, args.connections, args.seconds))))


if __name__ == "__main__":
    main()
