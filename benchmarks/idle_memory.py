"""Resident memory per idle connection held by one sockapp server.

    python benchmarks/idle_memory.py [--connections 10000] [--service sockapp|echo]

Starts ``twistd -n SERVICE`` on 127.0.0.1 (a port the kernel picks), opens
the connections from this process (plain sockets, nothing sent), and reads
the server's VmRSS before and after from /proc. Loopback only.
"""

from __future__ import annotations

import argparse
import resource
import socket
import tempfile
import time
from pathlib import Path

from sockapp.testing import WaitForLogFailed, start_twistd


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def settle(pid: int) -> int:
    """RSS once it stops changing for a second."""
    last, same = rss(pid), 0
    while same < 4:
        time.sleep(0.25)
        now = rss(pid)
        same = same + 1 if now == last else 0
        last = now
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--service", choices=["sockapp", "echo"], default="sockapp")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.connections + 1024  # this process and the server each hold one end
    if hard < wanted:
        raise SystemExit(f"idle_memory: needs {wanted} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    with tempfile.TemporaryDirectory() as folder:
        try:
            server = start_twistd(
                args.service, "--port", "tcp:0:interface=127.0.0.1:backlog=1024", folder=Path(folder), grace=60
            )
        except WaitForLogFailed as error:
            raise SystemExit(f"idle_memory: the server did not start: {error}") from None
        with server:
            before = settle(server.pid)
            held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(args.connections)]
            after = settle(server.pid)
            per = (after - before) / args.connections
            print(
                f"{args.service}: {args.connections} idle connections; server RSS {before / 2**20:.1f} -> "
                f"{after / 2**20:.1f} MiB, {per / 1024:.2f} KiB per connection"
            )
            for sock in held:
                sock.close()


if __name__ == "__main__":
    main()
