"""Several servers under one of compare.py's loads, in alternating rounds: throughput and the
server's own CPU time per request (or per MB), medians of the rounds.

    python benchmarks/server_cpu.py keep 'sockapp=twistd -n --pidfile= sockapp --port tcp:{port}:interface=127.0.0.1' \\
        'epoll=twistd -n --pidfile= --reactor epoll sockapp --port tcp:{port}:interface=127.0.0.1' \\
        'uvloop=python ../shared/bench/asyncio_peer.py app {port} uvloop' [--rounds 6] [--seconds 2]

compare.py gives ratios of throughput; this also gives what each request costs the server
in CPU (user + system, from /proc/PID/stat), which moves less with the machine's load.
Servers run on CPU 0 and the load generator (compare.py's loadgen.c, built on first
use) on CPU 1, as in compare.py. ``--payload`` changes the echo block (the load keeps
four blocks in flight per connection). Loopback only. The last server named is the
one the others are compared with.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
CONNECTIONS = {"keep": 50, "pipe": 50, "close": 50, "big": 4, "echo": 10}
LOADGEN_MODE = {"keep": "app-keep", "pipe": "app-pipe", "close": "app-close", "big": "app-big", "echo": "echo"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(CONNECTIONS))
    parser.add_argument("servers", nargs="+", metavar="NAME=COMMAND", help="a server command with {port} in it")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--payload", type=int, default=None, help="echo block or big request size in bytes")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH))
    from compare import Server, build_loadgen  # type: ignore[import-not-found]  # ../shared/bench, not a package

    loadgen = build_loadgen()
    payload = args.payload or {"echo": 65536, "big": 8 * 1024 * 1024}.get(args.mode)
    servers: list[Any] = []  # compare.Server: started on CPU 0, {port} filled in, stop()
    try:
        for spec in args.servers:
            name, _, command = spec.partition("=")
            servers.append(Server(name, shlex.split(command)))
        rates: dict[str, list[float]] = {s.name: [] for s in servers}
        costs: dict[str, list[float]] = {s.name: [] for s in servers}
        busy: dict[str, list[float]] = {s.name: [] for s in servers}
        client: dict[str, list[float]] = {s.name: [] for s in servers}
        for r in range(args.rounds):
            for server in servers if r % 2 == 0 else servers[::-1]:
                argv = ["taskset", "-c", "1", loadgen, LOADGEN_MODE[args.mode], "127.0.0.1", str(server.port)]
                argv += [str(CONNECTIONS[args.mode]), str(args.seconds)] + ([str(payload)] if payload else [])
                before = cpu_seconds(server.proc.pid)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60).stdout
                used = cpu_seconds(server.proc.pid) - before
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                loadgen_used = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                fields = dict(field.split("=", 1) for field in out.split())
                if args.mode == "echo":
                    rate = float(fields["MBps"])
                else:
                    rate = float(fields["rps"]) * (payload / 1e6 if args.mode == "big" else 1)
                rates[server.name].append(rate)
                costs[server.name].append(1e6 * used / (rate * args.seconds) if rate else float("nan"))
                busy[server.name].append(100 * used / args.seconds)
                client[server.name].append(1e6 * loadgen_used / (rate * args.seconds) if rate else float("nan"))
    finally:
        for server in servers:
            server.stop()
    unit = "MB/s" if args.mode in ("echo", "big") else "req/s"
    per = "MB" if args.mode in ("echo", "big") else "request"
    base = statistics.median(rates[servers[-1].name])
    for server in servers:
        rate = statistics.median(rates[server.name])
        print(
            f"{server.name:12} {rate:10,.0f} {unit}  x {servers[-1].name} {rate / base:.2f}  "
            f"server CPU {statistics.median(costs[server.name]):.1f} us per {per} "
            f"(busy {statistics.median(busy[server.name]):.0f}%), "
            f"load generator {statistics.median(client[server.name]):.1f} us per {per}  "
            f"rounds {[round(x) for x in rates[server.name]]}"
        )


if __name__ == "__main__":
    main()
