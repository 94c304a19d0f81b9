"""The same two servers written on asyncio's Protocol API: the peer `make bench` compares with.

    python benchmarks/asyncio_peer.py --service app|echo [--port 0] [--uvloop]

Prints "listening on PORT" once it accepts. Written the way a user would who
picked asyncio instead of sockapp: a bytearray buffer, the tutorial's
answers, one write per answer. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

ANSWERS = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}


def frame(content: bytes, content_type: str, encoding: str) -> bytes:
    header = json.dumps(
        {
            "byteorder": sys.byteorder,
            "content-type": content_type,
            "content-encoding": encoding,
            "content-length": len(content),
        },
        ensure_ascii=False,
    ).encode()
    return len(header).to_bytes(2, "big") + header + content


class App(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            header_length = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + header_length:
                return
            header = json.loads(bytes(buffer[2 : 2 + header_length]))
            end = 2 + header_length + header["content-length"]
            if len(buffer) < end:
                return
            content = bytes(buffer[2 + header_length : end])
            del buffer[:end]
            if header["content-type"] == "text/json":
                request = json.loads(content.decode(header["content-encoding"]))
                action = request.get("action")
                if action == "search":
                    query = request.get("value")
                    result = {"result": ANSWERS.get(query) or f"No match for '{query}'."}
                else:
                    result = {"result": f"Error: invalid action '{action}'."}
                answer = frame(json.dumps(result, ensure_ascii=False).encode(), "text/json", "utf-8")
            else:
                answer = frame(
                    b"First 10 bytes of request: " + content[:10], "binary/custom-server-binary-type", "binary"
                )
            self.transport.write(answer)  # type: ignore[attr-defined]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def serve(service: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(App if service == "app" else Echo, "127.0.0.1", port, backlog=1024)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--service", choices=["app", "echo"], default="app")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    run = asyncio.run
    if args.uvloop:
        import uvloop

        run = uvloop.run
    try:
        run(serve(args.service, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
