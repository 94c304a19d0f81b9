"""Soak test: thousands of connections of every kind against one sockapp server, on loopback.

    make soak                                   # or:
    .venv/bin/python soak/soak.py --waves 10 --per-wave 500

Starts ``twistd -n sockapp`` on 127.0.0.1 (a port the kernel picks), then
sends waves of concurrent connections mixing:

- good clients: pipelined search and binary requests, every answer checked;
- malformed frames and requests: each must get its exact error code (a frame fault,
  then the close; a request fault in-band, the close following the peer's EOF);
- slow peers: half a frame, then silence, until ``--frame-timeout`` ends it;
- greedy peers: many requests, never reading, then an abrupt close;
- abrupt disconnects: half a request, then a reset.

Then it checks that every good request was answered correctly and that the
server's resident memory ends near where it stood after the first wave
(CPython keeps freed memory in its arenas, so the first wave's high-water
mark stays; growth after it would be a leak), and prints a
summary (connections, requests, errors by kind, peak memory). Exits 1 on
any failure. Bounded in time; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from sockapp.apps.search import TUTORIAL_ANSWERS
from sockapp.client import Client, request_frame
from sockapp.testing import ServerProcess, WaitForLogFailed, start_twistd
from sockapp.wire.framing import encode_frame

FRAME_TIMEOUT = 2


def _raw(header: bytes, content: bytes = b"") -> bytes:
    return len(header).to_bytes(2, "big") + header + content


MALFORMED = {
    b"\x00\x00": "empty-header",
    _raw(b"nope!"): "header-not-json",
    _raw(b"[]"): "header-not-object",
    _raw(b'{"byteorder": 1}'): "header-missing-key",
    _raw(
        b'{"byteorder": "little", "content-type": "x", "content-encoding": "binary", "content-length": 99999999}'
    ): "content-too-large",
    _raw(
        b'{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", "content-length": 3}',
        b"abc",
    ): "content-not-json",
}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Raw(Protocol):
    """Records what the server sends until it closes."""

    def connectionMade(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(self.received)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def until_idle(reactor, pid: int, limit: float = 30.0) -> None:
    """Wait until the server has used no CPU for a second: done with what it had read."""
    quiet, last, waited = 0, cpu_ticks(pid), 0.0
    while quiet < 4 and waited < limit:
        await task.deferLater(reactor, 0.25, lambda: None)
        waited += 0.25
        now = cpu_ticks(pid)
        quiet = quiet + 1 if now == last else 0
        last = now


def frame_length(data: bytes) -> int:
    length = int.from_bytes(data[:2], "big")
    return 2 + length + json.loads(data[2 : 2 + length])["content-length"]


def error_code(received: bytes) -> str | None:
    try:
        length = int.from_bytes(received[:2], "big")
        header = json.loads(received[2 : 2 + length])
        content = received[2 + length : 2 + length + header["content-length"]]
        return json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError, IndexError):  # not an error frame, or not a whole one
        return None


class Soak:
    def __init__(self, reactor, port: int, pid: int, rng: random.Random) -> None:
        self.reactor = reactor
        self.port = port
        self.pid = pid
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.peak = 0

    def endpoint(self) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=30)

    async def raw(self) -> Raw:
        return await connectProtocol(self.endpoint(), Raw())

    async def good(self) -> None:
        client = Client(self.reactor, self.endpoint(), connect_timeout=30, request_timeout=60)
        queries = [self.rng.choice([*TUTORIAL_ANSWERS, "nobody"]) for _ in range(self.rng.randint(1, 8))]
        contents = [bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, 2000))) for _ in range(2)]
        searches = [client.request("search", q) for q in queries]
        binaries = [client.send(c, "binary/x", "binary") for c in contents]
        for query, answer in zip(queries, searches, strict=True):
            response = await answer
            self.count_request(response.result == (TUTORIAL_ANSWERS.get(query) or f"No match for '{query}'."))
        for content, answer in zip(contents, binaries, strict=True):
            response = await answer
            self.count_request(response.content == b"First 10 bytes of request: " + content[:10])
        await client.close()
        self.counts["good connections"] += 1

    def count_request(self, correct: bool) -> None:
        self.counts["good requests"] += 1
        if not correct:
            self.errors["wrong answer"] += 1

    async def malformed(self) -> None:
        data, code = self.rng.choice(list(MALFORMED.items()))
        peer = await self.raw()
        peer.transport.write(request_frame("search", "ring") + data)
        peer.transport.loseWriteConnection()  # a fault in a sound frame is answered in-band: then EOF closes
        received = await peer.closed
        # First the answer to the good request, then the error frame.
        if received[:2] and error_code(received[frame_length(received) :]) == code:
            self.counts["malformed connections"] += 1
        else:
            self.errors[f"malformed {code}: wrong or no error frame"] += 1

    async def slow(self) -> None:
        peer = await self.raw()
        frame = request_frame("search", "morpheus")
        peer.transport.write(frame[: self.rng.randint(1, len(frame) - 1)])
        received = await peer.closed  # the frame timeout ends it
        if error_code(received) != "frame-timeout":
            self.errors["slow peer: no frame-timeout error"] += 1
        self.counts["slow connections"] += 1

    async def greedy(self) -> None:
        peer = await self.raw()
        peer.transport.pauseProducing()  # never read
        block = request_frame("search", "ring") * 200
        for _ in range(self.rng.randint(5, 50)):
            peer.transport.write(block)
        await task.deferLater(self.reactor, self.rng.uniform(0.2, 1.0), lambda: None)
        peer.transport.abortConnection()
        await peer.closed
        self.counts["greedy connections"] += 1

    async def abrupt(self) -> None:
        peer = await self.raw()
        frame = encode_frame(b"x" * 5000, "binary/x", "binary")
        peer.transport.write(frame[: self.rng.randint(1, len(frame) - 1)])
        peer.transport.abortConnection()
        await peer.closed
        self.counts["abrupt connections"] += 1

    async def wave(self, size: int) -> None:
        kinds = [self.good] * 10 + [self.malformed] * 4 + [self.slow] * 2 + [self.greedy] * 2 + [self.abrupt] * 2
        runs = [defer.ensureDeferred(self.rng.choice(kinds)()) for _ in range(size)]
        results = await defer.DeferredList(runs, consumeErrors=True)
        for ok, value in results:
            if not ok:
                self.errors[f"{type(value.value).__name__}: {value.value}"[:100]] += 1

    def sample(self) -> None:
        self.peak = max(self.peak, rss(self.pid))


async def soak(reactor, args: argparse.Namespace, port: int, pid: int) -> dict:
    run = Soak(reactor, port, pid, random.Random(args.seed))
    sampler = task.LoopingCall(run.sample)
    sampler.clock = reactor
    before = rss(pid)
    sampler.start(0.2)
    started = time.monotonic()
    warm = before
    after_each_wave = []
    for number in range(args.waves):
        await run.wave(args.per_wave)
        await until_idle(reactor, pid)
        after_each_wave.append(round(rss(pid) / 2**20, 1))
        if number == 0:
            warm = rss(pid)  # Python keeps freed memory in its arenas: compare later waves with this
    elapsed = time.monotonic() - started
    await task.deferLater(reactor, 2.0, lambda: None)  # past the server's idle memory release
    await until_idle(reactor, pid)
    sampler.stop()
    after = rss(pid)
    connections = sum(n for k, n in run.counts.items() if k.endswith("connections"))
    return {
        "connections": connections,
        "requests": run.counts["good requests"],
        "by_kind": {k: v for k, v in sorted(run.counts.items())},
        "errors": sum(run.errors.values()),
        "errors_by_kind": dict(run.errors),
        "seconds": round(elapsed, 1),
        "rss_mib": {
            "before": round(before / 2**20, 1),
            "after_first_wave": round(warm / 2**20, 1),
            "peak": round(run.peak / 2**20, 1),
            "after": round(after / 2**20, 1),
            "after_each_wave": after_each_wave,
        },
    }


def start_server(folder: Path, name: str, frame_timeout: float) -> ServerProcess:
    """``twistd -n sockapp`` on a loopback port the kernel picks, once it listens (its port in ``port``)."""
    port = "tcp:0:interface=127.0.0.1:backlog=1024"
    limits = ["--frame-timeout", str(frame_timeout), "--max-content-length", str(1 << 20)]
    try:
        return start_twistd("sockapp", "--port", port, *limits, folder=folder, name=name, grace=30)
    except WaitForLogFailed as error:
        raise SystemExit(f"soak: the server did not start: {error}") from None


async def big_frames(reactor, port: int, pid: int, count: int, size: int) -> dict:
    """``count`` connections each send one frame of ``size`` bytes slowly (64 KiB every 10 ms), all at once."""
    content = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_frame(content, "binary/x", "binary")
    expected = encode_frame(b"First 10 bytes of request: " + content[:10], "binary/custom-server-binary-type", "binary")
    before = rss(pid)
    peak = [before]
    sampler = task.LoopingCall(lambda: peak.append(max(peak[-1], rss(pid))))
    sampler.clock = reactor
    sampler.start(0.1)
    errors: Counter[str] = Counter()

    async def send_slowly(peer: Raw) -> None:
        for start in range(0, len(frame), 65536):
            peer.transport.write(frame[start : start + 65536])
            await task.deferLater(reactor, 0.01, lambda: None)
        peer.transport.loseWriteConnection()
        if await peer.closed != expected:
            errors["big frame: wrong or no answer"] += 1

    def count_failures(results: list) -> list:
        for ok, value in results:
            if not ok:
                errors[f"{type(value.value).__name__}: {value.value}"[:100]] += 1
        return [value for ok, value in results if ok]

    started = time.monotonic()
    peers = []
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=60)
    for _ in range(0, count, 100):  # open them 100 at a time, then let every one send at once
        batch = [connectProtocol(endpoint, Raw()) for _ in range(min(100, count - len(peers)))]
        peers += count_failures(await defer.DeferredList(batch, consumeErrors=True))
    count_failures(await defer.DeferredList([defer.ensureDeferred(send_slowly(p)) for p in peers], consumeErrors=True))
    sampler.stop()
    budget = before + count * (size + 128 * 1024)
    return {
        "connections": count,
        "frame_bytes": size,
        "seconds": round(time.monotonic() - started, 1),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "rss_mib": {"before": round(before / 2**20, 1), "peak": round(peak[-1] / 2**20, 1)},
        "budget_mib": round(budget / 2**20, 1),
        "within_budget": peak[-1] <= budget,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--per-wave", type=int, default=500, help="concurrent connections per wave")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--big-frames", type=int, default=1000, help="connections sending a maximum-size frame slowly")
    parser.add_argument("--big-frame-size", type=int, default=1 << 20, help="its size (the server's maximum)")
    parser.add_argument(
        "--memory-slack-mib", type=float, default=16, help="allowed RSS growth from after the first wave to the end"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * max(args.per_wave, args.big_frames) + 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))
    with (
        tempfile.TemporaryDirectory() as folder,
        start_server(Path(folder), "mixed", FRAME_TIMEOUT) as mixed,
        start_server(Path(folder), "big", 120) as big,
    ):
        task.react(lambda r: defer.ensureDeferred(_report(r, args, (mixed.port, mixed.pid), (big.port, big.pid))))


async def _report(reactor, args, mixed: tuple[int, int], big: tuple[int, int]) -> None:
    summary = await soak(reactor, args, *mixed)
    if args.big_frames:
        summary["big_frames"] = await big_frames(reactor, *big, args.big_frames, args.big_frame_size)
    memory = summary["rss_mib"]
    growth = memory["after"] - memory["after_first_wave"]
    print(json.dumps(summary, indent=2))
    big_summary = summary.get("big_frames", {"errors": 0, "within_budget": True})
    failed = (
        summary["errors"] or growth > args.memory_slack_mib or big_summary["errors"] or not big_summary["within_budget"]
    )
    print(
        f"soak: {summary['connections']} connections, {summary['requests']} good requests, "
        f"{summary['errors']} errors, RSS {memory['before']} MiB at start, {memory['after_first_wave']} after the "
        f"first wave, peak {memory['peak']}, {memory['after']} at the end (+{growth:.1f} MiB since the first wave): "
        f"{'FAILED' if failed else 'passed'}"
    )
    if "big_frames" in summary:
        print(
            f"soak: {big_summary['connections']} connections each sending a {big_summary['frame_bytes']}-byte frame "
            f"slowly: {big_summary['errors']} errors, server RSS {big_summary['rss_mib']['before']} -> peak "
            f"{big_summary['rss_mib']['peak']} MiB, budget {big_summary['budget_mib']} MiB"
        )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
