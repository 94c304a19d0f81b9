"""`make bench`: sockapp against the same protocol on asyncio (and uvloop), on this machine.

    make bench                               # or, with the venv active:
    python benchmarks/run.py [--rounds 3] [--seconds 5] [--clients 2]

Starts `twistd -n sockapp`, `twistd -n echo` and the peers in
benchmarks/asyncio_peer.py (plain asyncio, and uvloop when it is installed)
on 127.0.0.1, drives each with the same load from `sockapp bench` (the
close load, one request per connection, from benchmarks/close_load.py) (in
--clients processes at once, since one Python client cannot saturate a
server), alternating servers round by round, and writes the medians as a
markdown table and a bar chart (PNG) to benchmarks/results/. Loopback only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sockapp.testing import ServerProcess, WaitForLogFailed, tool, twistd_argv

HERE = Path(__file__).resolve().parent
LOADS = {
    "keep": ("app", ["--connections", "50"], "req/s"),
    "pipe": ("app", ["--connections", "50", "--pipeline", "16"], "req/s"),
    # One request per connection (the tutorial's client): benchmarks/close_load.py, not `sockapp bench`.
    "close": ("app", ["--connections", "25"], "req/s"),
    "echo": ("echo", ["--protocol", "echo", "--connections", "10", "--size", "65536"], "MB/s"),
}


def start(argv: list[str], pattern: str, folder: Path, name: str, servers: ExitStack) -> ServerProcess:
    """Run ``argv`` until its log matches ``pattern`` (group 1: the port); stopped when ``servers`` closes."""
    server = servers.enter_context(ServerProcess(argv, folder, name=name, grace=30))
    try:
        server.wait_until_listening(pattern)
    except WaitForLogFailed as error:
        raise SystemExit(f"bench: {name} did not start: {error}") from None
    return server


def servers(folder: Path, stack: ExitStack) -> dict[str, dict[str, ServerProcess]]:
    port = ["--port", "tcp:0:interface=127.0.0.1:backlog=1024"]
    found = {
        "sockapp": {
            "app": start(twistd_argv("sockapp", *port), r"starting on (\d+)", folder, "sockapp-app", stack),
            "echo": start(twistd_argv("echo", *port), r"starting on (\d+)", folder, "sockapp-echo", stack),
        }
    }
    peer = [sys.executable, str(HERE / "asyncio_peer.py")]
    flavours = {"asyncio": []}
    try:
        import uvloop  # noqa: F401

        flavours["uvloop"] = ["--uvloop"]
    except ImportError:
        print("bench: uvloop is not installed; comparing with plain asyncio only", file=sys.stderr)
    for name, extra in flavours.items():
        found[name] = {
            service: start(
                [*peer, "--service", service, *extra], r"listening on (\d+)", folder, f"{name}-{service}", stack
            )
            for service in ("app", "echo")
        }
    return found


def drive(load: str, port: int, seconds: float, clients: int) -> float:
    """Run `sockapp bench` in `clients` processes at once; return their summed throughput."""
    _, args, unit = LOADS[load]
    if load == "close":
        argv = [sys.executable, str(HERE / "close_load.py"), str(port), *args, "--seconds", str(seconds)]
    else:
        argv = [tool("sockapp"), "bench", "--connect", f"tcp:host=127.0.0.1:port={port}", *args]
        argv += ["--duration", str(seconds), "--json"]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(clients)]
    total = 0.0
    for run in runs:
        out, err = run.communicate(timeout=seconds + 60)
        summary = json.loads(out)
        if summary["errors"]:
            raise SystemExit(f"bench: {load} had errors: {summary.get('errors_by_kind', summary['errors'])}")
        rate = summary["throughput_per_s"]
        if unit == "MB/s":
            rate = rate * 65536 / 1e6
        total += rate
    return total


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def machine() -> str:
    return (
        f"{platform.machine()} ({cpu_model()}), {os.cpu_count()} cores, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


def write_results(medians: dict, order: list[str], args: argparse.Namespace) -> None:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    date = datetime.date.today().isoformat()
    peers = [name for name in order if name != "sockapp"]
    lines = [
        f"Measured {date} on {machine()}: `python benchmarks/run.py --rounds {args.rounds} --seconds {args.seconds:g}"
        f" --clients {args.clients}` (medians; load from `sockapp bench` in {args.clients} processes).",
        "",
        "| load | unit | " + " | ".join(order) + "".join(f" | sockapp / {peer}" for peer in peers) + " |",
        "|---|---|" + "---|" * (len(order) + len(peers)),
    ]
    for load, per_server in medians.items():
        values = " | ".join(f"{per_server[s]:,.0f}" for s in order)
        ratios = "".join(
            f" | {per_server['sockapp'] / per_server[peer]:.2f}" if per_server.get(peer) else " | n/a" for peer in peers
        )
        lines.append(f"| {load} | {LOADS[load][2]} | {values}{ratios} |")
    table = "\n".join(lines) + "\n"
    (results / "latest.md").write_text(table)
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(medians), figsize=(4 * len(medians), 4))
    for axis, (load, per_server) in zip(axes, medians.items(), strict=True):
        axis.bar(
            order, [per_server[s] for s in order], color=["#2a6f97" if s == "sockapp" else "#999999" for s in order]
        )
        axis.set_title(f"{load} ({LOADS[load][2]})")
    figure.suptitle(f"sockapp vs asyncio peers, {date}, {machine()}", fontsize=9)
    figure.tight_layout()
    figure.savefig(results / "latest.png", dpi=100)
    print(f"bench: wrote {results / 'latest.md'} and {results / 'latest.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    loads = args.loads.split(",")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        running = servers(Path(folder), stack)
        order = list(running)
        samples: dict[str, dict[str, list[float]]] = {load: {s: [] for s in order} for load in loads}
        for number in range(args.rounds):
            turn = order[number % len(order) :] + order[: number % len(order)]  # alternate who goes first
            for load in loads:
                service = LOADS[load][0]
                for name in turn:
                    rate = drive(load, running[name][service].port, args.seconds, args.clients)
                    samples[load][name].append(rate)
                    print(f"round {number + 1} {load:5} {name:8} {rate:12,.0f} {LOADS[load][2]}", flush=True)
    medians = {load: {s: statistics.median(v) for s, v in per.items()} for load, per in samples.items()}
    write_results(medians, order, args)


if __name__ == "__main__":
    main()
