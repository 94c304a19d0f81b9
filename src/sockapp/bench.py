"""``sockapp bench``: the tutorial's many-connection client grown into a load generator.

N connections each keep ``pipeline`` requests in flight (search or binary
requests of the app protocol, or blocks through an echo server) for a
duration or a number of requests, optionally capped to a total rate. Every
answer is checked; a wrong one counts as an error. The result is a
``Summary`` with throughput and exact latency percentiles.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from attrs import field, frozen, validators
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from sockapp.client import (
    BINARY_REQUEST_ENCODING,
    BINARY_REQUEST_TYPE,
    DEFAULT_RETRIES,
    Client,
    EchoClient,
    Response,
    as_endpoint,
    connect_echo,
)
from sockapp.errors import ConnectionClosed, RemoteProtocolError, RequestTimeout, ServerError
from sockapp.framing import encode_frame, encode_json
from sockapp.search import BINARY_RESPONSE_PREFIX, TUTORIAL_ANSWERS

PERCENTILES = (50, 90, 99)


def _positive(instance: object, attribute: Any, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@frozen
class BenchConfig:
    """What to run. Exactly one of ``duration`` and ``requests`` bounds the run."""

    endpoint: str | IStreamClientEndpoint
    protocol: Literal["app", "echo"] = field(default="app", validator=validators.in_(("app", "echo")))
    connections: int = field(default=10, validator=_positive)
    duration: float | None = field(default=None, validator=_positive)
    requests: int | None = field(default=None, validator=_positive)
    pipeline: int = field(default=1, validator=_positive)
    rate: float | None = field(default=None, validator=_positive)
    size: int | None = field(default=None, validator=validators.optional(validators.ge(0)))
    query: str = "morpheus"
    expect: str | None = None
    request_timeout: float = field(default=30.0, validator=_positive)
    retries: int = field(default=DEFAULT_RETRIES, validator=validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if (self.duration is None) == (self.requests is None):
            raise ValueError("give exactly one of duration and requests")
        if self.protocol == "echo" and self.size == 0:
            # An empty round trip measures nothing and completes at once, again and again.
            raise ValueError("echo blocks need a size of at least 1 byte")

    @property
    def expected_answer(self) -> str:
        if self.expect is not None:
            return self.expect
        return TUTORIAL_ANSWERS.get(self.query) or f"No match for '{self.query}'."

    def describe(self) -> str:
        if self.protocol == "echo":
            what = f"echo of {self.size if self.size is not None else 64}-byte blocks"
        elif self.size is not None:
            what = f"binary requests of {self.size} bytes"
        else:
            what = f"search requests for {self.query!r}"
        bound = f"{self.duration:g} s" if self.duration is not None else f"{self.requests} requests"
        rate = f", capped at {self.rate:g}/s" if self.rate else ""
        return f"{what}, {self.connections} connections, pipeline {self.pipeline}, {bound}{rate}"


@frozen
class Summary:
    """What a run measured. Latencies are in seconds."""

    description: str
    requests: int
    errors: dict[str, int]
    elapsed: float
    latencies: dict[str, float]
    retries: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "requests": self.requests,
            "errors": self.error_count,
            "errors_by_kind": dict(self.errors),
            "retries": self.retries,
            "elapsed_s": round(self.elapsed, 6),
            "throughput_per_s": round(self.throughput, 3),
            "latency_ms": {k: round(v * 1000, 4) for k, v in self.latencies.items()},
        }

    def lines(self) -> list[str]:
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items())) or "none"
        latency = "  ".join(f"{k} {v * 1000:.3f} ms" for k, v in self.latencies.items()) or "no answers"
        return [
            f"bench:      {self.description}",
            f"requests:   {self.requests} answered correctly, {self.error_count} errors ({errors})",
            f"retries:    {self.retries} requests sent again after a dropped connection",
            f"elapsed:    {self.elapsed:.3f} s",
            f"throughput: {self.throughput:.1f} requests/s",
            f"latency:    {latency}",
        ]


class Latencies:
    """Every latency, kept compactly; percentiles are exact (nearest rank)."""

    def __init__(self) -> None:
        self._values = array("d")

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict[str, float]:
        if not self._values:
            return {}
        ordered = sorted(self._values)
        n = len(ordered)
        out = {f"p{p}": ordered[max(0, math.ceil(p / 100 * n) - 1)] for p in PERCENTILES}
        out["max"] = ordered[-1]
        return out


class RateLimiter:
    """Spaces sends evenly so that no more than ``rate`` start per second overall."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send may start (and reserve that slot)."""
        slot = now if self._next is None or self._next < now else self._next
        self._next = slot + self.interval
        return slot - now


class _AppWorker:
    """Sends app requests on one reconnecting ``Client`` and checks each answer."""

    def __init__(self, client: Client, config: BenchConfig) -> None:
        self.client = client
        if config.size is not None:
            content = bytes(i % 251 for i in range(config.size))
            self.frame = encode_frame(content, BINARY_REQUEST_TYPE, BINARY_REQUEST_ENCODING)
            self.check: Callable[[Response], bool] = lambda r: r.content == BINARY_RESPONSE_PREFIX + content[:10]
        else:
            self.frame = encode_json({"action": "search", "value": config.query})
            expected = config.expected_answer
            self.check = lambda r: r.result == expected

    def send(self) -> Deferred[str | None]:
        return self.client.sendFrame(self.frame).addCallback(lambda r: None if self.check(r) else "wrong-answer")

    @property
    def retries(self) -> int:
        """Requests sent again because their connection closed before their answer."""
        return self.client.retried + self.client.resent

    def close(self) -> Deferred[None]:
        return self.client.close()


class _EchoWorker:
    """Sends blocks through one echo connection and checks each comes back intact."""

    def __init__(self, client: EchoClient, config: BenchConfig, number: int) -> None:
        self.client = client
        size = config.size if config.size is not None else 64
        self.block = bytes((i + number) % 256 for i in range(size))

    retries = 0  # an echo stream cannot be replayed safely

    def send(self) -> Deferred[str | None]:
        return self.client.roundTrip(self.block).addCallback(
            lambda echoed: None if echoed == self.block else "wrong-answer"
        )

    def close(self) -> Deferred[None]:
        return self.client.close()


def error_kind(failure: Failure) -> str:
    """A short name for why a request failed, for the error counts."""
    if failure.check(ServerError):
        return f"server-error:{failure.value.code}"
    if failure.check(RequestTimeout):
        return "timeout"
    if failure.check(RemoteProtocolError):
        return f"bad-answer:{failure.value.code.value}"
    if failure.check(ConnectionClosed):
        return "connection-closed"
    return type(failure.value).__name__


class Bench:
    """One run of a ``BenchConfig`` on ``reactor``.

    ``now`` reads the time for latencies and the elapsed time; ``clock`` (the
    reactor by default) times the duration and the rate's spacing, so a test
    can drive both with a ``Clock`` while the connections use the reactor.
    """

    def __init__(
        self,
        reactor: Any,
        config: BenchConfig,
        now: Callable[[], float] = time.perf_counter,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.config = config
        self.now = now
        self.latencies = Latencies()
        self.errors: Counter[str] = Counter()
        self.issued = 0
        self.in_flight = 0
        self.started = 0.0
        self.finished_at: float | None = None
        self._limiter = RateLimiter(config.rate) if config.rate else None
        self._done: Deferred[None] = Deferred()
        self._stopping = False
        self._running = False

    @property
    def completed(self) -> int:
        return len(self.latencies)

    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.now()
        return max(0.0, end - self.started) if self._running else 0.0

    async def _open(self, number: int) -> _AppWorker | _EchoWorker:
        config = self.config
        if config.protocol == "echo":
            return _EchoWorker(await connect_echo(self.reactor, config.endpoint), config, number)
        client = Client(
            self.reactor,
            as_endpoint(self.reactor, config.endpoint),
            request_timeout=config.request_timeout,
            retries=config.retries,
        )
        await client.connection()
        return _AppWorker(client, config)

    async def run(self) -> Summary:
        """Connect every connection, run the load, close, and summarise."""
        opened = await DeferredList(
            [ensureDeferred(self._open(n)) for n in range(self.config.connections)], consumeErrors=True
        )
        workers = [value for ok, value in opened if ok]
        failures = [value for ok, value in opened if not ok]
        if failures:
            for worker in workers:
                worker.close()
            failures[0].raiseException()
        self.started = self.now()
        self._running = True
        if self.config.duration is not None:
            self.clock.callLater(self.config.duration, self.stop)
        for worker in workers:
            for _ in range(self.config.pipeline):
                self._issue(worker)
        await self._done
        await DeferredList([worker.close() for worker in workers], consumeErrors=True)
        return Summary(
            description=self.config.describe(),
            requests=self.completed,
            errors=dict(self.errors),
            elapsed=self.elapsed(),
            latencies=self.latencies.summary(),
            retries=sum(worker.retries for worker in workers),
        )

    def stop(self) -> None:
        """Send nothing more; the run ends when the requests in flight are answered."""
        self._stopping = True
        self._check_done()

    def _may_issue(self) -> bool:
        if self._stopping:
            return False
        if self.config.requests is not None and self.issued >= self.config.requests:
            return False
        return True

    def _issue(self, worker: _AppWorker | _EchoWorker) -> None:
        if not self._may_issue():
            self._check_done()
            return
        self.issued += 1
        self.in_flight += 1
        delay = self._limiter.delay(self.now()) if self._limiter else 0.0
        if delay > 0:
            self.clock.callLater(delay, self._send, worker)
        else:
            self._send(worker)

    def _send(self, worker: _AppWorker | _EchoWorker) -> None:
        sent = self.now()
        worker.send().addBoth(self._answered, worker, sent)

    def _answered(self, outcome: str | None | Failure, worker: _AppWorker | _EchoWorker, sent: float) -> None:
        self.in_flight -= 1
        if outcome is None:
            self.latencies.add(self.now() - sent)
            self._issue(worker)
            return
        self.errors[outcome if isinstance(outcome, str) else error_kind(outcome)] += 1
        if isinstance(outcome, Failure) and isinstance(worker, _EchoWorker):
            self._check_done()  # an echo connection that failed is not used again
        else:
            self._issue(worker)

    def _check_done(self) -> None:
        """End the run once nothing is in flight; called whenever nothing more was sent."""
        if self.in_flight == 0 and self._running and not self._done.called:
            self.finished_at = self.now()
            self._done.callback(None)
