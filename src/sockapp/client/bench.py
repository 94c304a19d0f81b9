"""``sockapp bench``: the tutorial's many-connection client grown into a load generator.

N connections each keep ``pipeline`` requests in flight (search or binary
requests of the app protocol, or blocks through an echo server) for a
duration or a number of requests. Every answer is checked; a wrong one
counts as an error. The result is a ``Summary`` with throughput and exact
latency percentiles.

Without a rate the load is closed-loop: a connection sends its next request
when an answer comes back, and latency is service time from the actual send.
With a rate the sends follow a fixed timetable (one every 1/rate s from the
start, none skipped, as wrk2 does) and latency counts from the intended
send time, so a stalled server's queueing delay is measured rather than
hidden (coordinated omission).
"""

from __future__ import annotations

import json
import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final, Literal, cast

from attrs import field, frozen, validators
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from sockapp.apps.search import BINARY_RESPONSE_PREFIX, TUTORIAL_ANSWERS
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
from sockapp.errors import ConnectionClosed, RemoteProtocolError, RequestTimeout, ServerError, TLSFailure
from sockapp.net.protocol import CLOSE_GRACE
from sockapp.wire.framing import encode_frame, encode_json
from sockapp.wire.text import peer_text

PERCENTILES = (50, 90, 99)
UNEXPECTED_ANSWER = "unexpected-answer"


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
    expect: Any = None  # the answer's result; default: the tutorial's answer to ``query``
    request_timeout: float = field(default=30.0, validator=_positive)
    retries: int = field(default=DEFAULT_RETRIES, validator=validators.ge(0))
    # After the load, two requests per connection check that answers still match requests.
    check_answers: bool = True
    action: str | None = field(default=None, validator=validators.optional(validators.instance_of(str)))
    value: Any = field(default=None, eq=False)  # the action's value (any JSON)

    def __attrs_post_init__(self) -> None:
        if (self.duration is None) == (self.requests is None):
            raise ValueError("give exactly one of duration and requests")
        if self.action is not None and (self.protocol != "app" or self.size is not None):
            raise ValueError("an action is a text/json request of the app protocol: not with echo or a size")
        if self.protocol == "echo" and self.size == 0:
            # An empty round trip measures nothing and completes at once, again and again.
            raise ValueError("echo blocks need a size of at least 1 byte")

    @property
    def expected_answer(self) -> Any:
        if self.expect is not None:
            return self.expect
        return TUTORIAL_ANSWERS.get(self.query) or f"No match for '{self.query}'."

    def describe(self) -> str:
        if self.protocol == "echo":
            what = f"echo of {self.size if self.size is not None else 64}-byte blocks"
        elif self.size is not None:
            what = f"binary requests of {self.size} bytes"
        elif self.action is not None:
            what = f"{self.action!r} requests"
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
    unsent: int = 0
    sent: int = 0  # requests sent (a request sent again after a dropped connection counts once)
    interrupted: bool = False  # stopped by a signal: the figures cover the run until then
    first_errors: dict[str, str] = {}  # the message of the first error of each kind

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
            "sent": self.sent,
            "errors": self.error_count,
            "errors_by_kind": dict(self.errors),
            "first_error_by_kind": dict(self.first_errors),
            "retries": self.retries,
            "unsent": self.unsent,
            "elapsed_s": round(self.elapsed, 6),
            "throughput_per_s": round(self.throughput, 3),
            "latency_ms": {k: round(v * 1000, 4) for k, v in self.latencies.items()},
            "interrupted": self.interrupted,
        }

    def lines(self) -> list[str]:
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items())) or "none"
        latency = "  ".join(f"{k} {v * 1000:.3f} ms" for k, v in self.latencies.items()) or "no answers"
        lines = [
            f"bench:      {self.description}",
            f"requests:   {self.requests} answered correctly, {self.error_count} errors ({errors})",
            f"sent:       {self.sent} requests",
            f"retries:    {self.retries} requests sent again after a dropped connection",
            f"elapsed:    {self.elapsed:.3f} s",
            f"throughput: {self.throughput:.1f} requests/s",
            f"latency:    {latency}",
        ]
        for kind, message in sorted(self.first_errors.items()):
            lines.append(f"first {kind}: {message}")
        if self.unsent:
            lines.append(f"unsent:     {self.unsent} sends the rate called for had not started when the run ended")
        if self.errors.get(UNEXPECTED_ANSWER):
            lines.append(
                f"answers:    the server sent more answers than requests on {self.errors[UNEXPECTED_ANSWER]} "
                "connections, so answers may have been counted for the wrong requests"
            )
        if self.interrupted:
            lines.append("interrupted: the run was cut short; the figures cover it until then")
        return lines


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


class SendSchedule:
    """The timetable of a run with a rate: send number k is due at ``start + k / rate``.

    A send that could not start on time (every connection busy) stays due:
    none is skipped, and its latency counts from its due time.
    """

    def __init__(self, rate: float, start: float, end: float | None = None) -> None:
        self.rate = rate
        self.start = start
        self.end = end
        self.taken = 0

    def due_time(self, number: int) -> float:
        return self.start + number / self.rate

    def next_due(self) -> float | None:
        """When the next send is due; None once the next would be due at or after ``end``."""
        due = self.due_time(self.taken)
        return None if self.end is not None and due >= self.end else due

    def take(self) -> float:
        """The next send's due time, which is then the caller's to send."""
        due = self.due_time(self.taken)
        self.taken += 1
        return due

    def due_by(self, now: float) -> int:
        """How many sends were due by ``now`` (before ``end``)."""
        if now < self.start:
            return 0
        due = math.floor((now - self.start) * self.rate) + 1
        if self.end is not None:
            due = min(due, math.ceil((self.end - self.start) * self.rate))
        return due


PLACEHOLDER: Final = "{n}"  # in an --action's value: filled with a number no other request of the run has


def _fill(value: Any, number: str) -> Any:
    """``value`` with ``{n}`` in each of its strings (keys included) replaced by ``number``."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, number)
    if isinstance(value, list):
        return [_fill(item, number) for item in value]
    if isinstance(value, dict):
        return {_fill(key, number): _fill(item, number) for key, item in value.items()}
    return value


Record = Callable[[str, Any, Any], None]
"""Called with (action, value sent, result) for each request of an ``--action`` that was answered correctly."""


class _AppWorker:
    """Sends app requests on one reconnecting ``Client`` and checks each answer."""

    usable = True  # the Client reconnects whenever it needs to
    template: tuple[str, Any] | None = None
    sent = 0

    def __init__(self, client: Client, config: BenchConfig, number: int, record: Record | None = None) -> None:
        self.client = client
        self.number = number
        self.timed_out = False
        self.action = config.action
        self.value = config.value
        self.record = record
        if config.size is not None:
            content = bytes(i % 251 for i in range(config.size))
            self.frame = encode_frame(content, BINARY_REQUEST_TYPE, BINARY_REQUEST_ENCODING)
            self.check: Callable[[Response], bool] = lambda r: r.content == BINARY_RESPONSE_PREFIX + content[:10]
        elif config.action is not None:
            # Any answer but an error (which fails the request: server-error:CODE) is right,
            # unless an answer to expect was given.
            self.frame = encode_json({"action": config.action, "value": config.value})
            if PLACEHOLDER in json.dumps(config.value):
                self.template = (config.action, config.value)
            wanted = config.expect
            self.check = (lambda r: True) if wanted is None else (lambda r: r.result == wanted)
        else:
            self.frame = encode_json({"action": "search", "value": config.query})
            expected = config.expected_answer
            self.check = lambda r: r.result == expected

    def send(self) -> Deferred[str | None]:
        frame, value = self.frame, self.value
        if self.template is not None:  # a value of its own for every request: "{n}" filled in
            self.sent += 1
            action, template = self.template
            value = _fill(template, f"{self.number}-{self.sent}")
            frame = encode_json({"action": action, "value": value})

        def judge(response: Response) -> str | None:
            if not self.check(response):
                return "wrong-answer"
            if self.record is not None and self.action is not None:
                self.record(self.action, value, response.result)
            return None

        return self.client.sendFrame(frame).addCallback(judge)

    def answers_match(self, timeout: float) -> Deferred[bool | None]:
        """Whether two searches for queries of their own, sent together, each get their own answer.

        Answers come back in order and carry no request number, so an extra
        answer is taken for the next request's. Two fresh requests side by
        side expose that: one gets an answer meant for another. None if the
        check says nothing (no answer in time, an error frame, a closed
        connection).
        """
        queries = [f"sockapp-bench-check-{self.number}-{n}" for n in (1, 2)]
        answers = [self.client.sendDocument({"action": "search", "value": q}, timeout=timeout) for q in queries]

        def judge(results: list[tuple[bool, Any]]) -> bool | None:
            if not all(ok for ok, _ in results):
                return None
            return all(isinstance(r.result, str) and q in r.result for q, (_, r) in zip(queries, results, strict=True))

        return DeferredList(answers, consumeErrors=True).addCallback(judge)

    @property
    def retries(self) -> int:
        """Requests sent again because their connection closed before their answer."""
        return self.client.retried + self.client.resent

    def close(self) -> Deferred[None]:
        """Requests still queued are dropped; a connection that cannot flush in CLOSE_GRACE is aborted."""
        return self.client.close()


class _EchoWorker:
    """Sends blocks through one echo connection and checks each comes back intact.

    A block not echoed within the request timeout ends the connection: a late
    echo could not be told apart from the next block's, so every block still
    outstanding on it counts as timed out too.
    """

    retries = 0  # an echo stream cannot be replayed safely

    def __init__(self, reactor: Any, client: EchoClient, config: BenchConfig, number: int) -> None:
        self.reactor = reactor
        self.client = client
        self.timeout = config.request_timeout
        size = config.size if config.size is not None else 64
        self.block = bytes((i + number) % 256 for i in range(size))
        self.usable = True
        self.timed_out = False
        self._outstanding: deque[Deferred[bytes]] = deque()

    def _round_trip(self, data: bytes, timeout: float) -> Deferred[bytes]:
        echoed: Deferred[bytes] = Deferred()
        self._outstanding.append(echoed)
        timer = self.reactor.callLater(timeout, self._timed_out, timeout)

        def settle(result: bytes | Failure) -> None:
            if timer.active():
                timer.cancel()
            if echoed in self._outstanding:
                self._outstanding.remove(echoed)
                if isinstance(result, Failure):
                    echoed.errback(result)
                else:
                    echoed.callback(result)

        self.client.roundTrip(data).addBoth(settle)
        return echoed

    def _timed_out(self, timeout: float) -> None:
        self.usable = False
        self.timed_out = True
        outstanding, self._outstanding = self._outstanding, deque()
        for echoed in outstanding:
            echoed.errback(RequestTimeout(f"no echo within {timeout:g} s"))
        self.client.transport.abortConnection()

    def send(self) -> Deferred[str | None]:
        def judged(outcome: bytes | Failure) -> str | None | Failure:
            if isinstance(outcome, Failure):
                self.usable = False  # the stream's position is lost: not used again
                return outcome
            return None if outcome == self.block else "wrong-answer"

        return self._round_trip(self.block, self.timeout).addBoth(judged)

    def answers_match(self, timeout: float) -> Deferred[bool | None]:
        """Whether two blocks of their own, sent together, come back as sent (see ``_AppWorker``):
        echoed bytes beyond what was sent would shift them."""
        blocks = [b"sockapp-bench-check-1:" + self.block[:8], b"sockapp-bench-check-2:" + self.block[:8]]
        echoes = [self._round_trip(block, timeout) for block in blocks]

        def judge(results: list[tuple[bool, Any]]) -> bool | None:
            if not all(ok for ok, _ in results):
                return None
            return all(echoed == block for block, (_, echoed) in zip(blocks, results, strict=True))

        return DeferredList(echoes, consumeErrors=True).addCallback(judge)

    def close(self) -> Deferred[None]:
        """Close; a connection that cannot send what it has queued within CLOSE_GRACE is aborted."""
        closed = self.client.close()
        if closed.called:
            return closed
        overdue = self.reactor.callLater(CLOSE_GRACE, self.client.transport.abortConnection)
        return closed.addBoth(lambda result: overdue.cancel() if overdue.active() else None)


def error_kind(failure: Failure) -> str:
    """A short name for why a request failed, for the error counts."""
    error = failure.value
    if isinstance(error, ServerError):
        return f"server-error:{error.code}"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, RemoteProtocolError):
        return f"bad-answer:{error.code.value}"
    if isinstance(error, TLSFailure):
        return "tls"
    if isinstance(error, ConnectionClosed):
        return "connection-closed"
    return type(error).__name__


Worker = _AppWorker | _EchoWorker


class Bench:
    """One run of a ``BenchConfig`` on ``reactor``.

    ``now`` reads the time for latencies and the elapsed time; ``clock`` (the
    reactor by default) times the duration and the rate's timetable, so a
    test can drive both with a ``Clock`` while the connections use the reactor.
    ``record``, if given, is called for each correctly answered request of an
    ``action`` with the value that was sent (its ``{n}`` filled in) and the
    result: what the server acknowledged, for checking afterwards.

    ``stop()`` may be called at any time (before ``run``, while connecting,
    during the load): nothing more is sent, and ``run`` ends once the
    requests in flight are answered or time out. ``summary()`` gives what was
    measured so far at any time.
    """

    def __init__(
        self,
        reactor: Any,
        config: BenchConfig,
        now: Callable[[], float] = time.perf_counter,
        clock: Any = None,
        record: Record | None = None,
    ) -> None:
        self.reactor = reactor
        self.record = record
        self.clock = clock if clock is not None else reactor
        self.config = config
        self.now = now
        self.latencies = Latencies()
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}
        self.issued = 0
        self.in_flight = 0
        self.started = 0.0
        self.finished_at: float | None = None
        self.unsent = 0
        self.workers: list[Worker] = []
        self._schedule: SendSchedule | None = None
        self._free: deque[Worker] = deque()  # one entry per request a connection may still have in flight
        self._next_send: Any = None  # the timer for the schedule's next due send
        self._end_of_duration: Any = None
        self._pumping = False
        self._done: Deferred[None] = Deferred()
        self._stopping = False
        self._running = False

    @property
    def completed(self) -> int:
        return len(self.latencies)

    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.now()
        return max(0.0, end - self.started) if self._running else 0.0

    def summary(self) -> Summary:
        """What was measured so far (all of it, once ``run`` has ended)."""
        return Summary(
            description=self.config.describe(),
            requests=self.completed,
            errors=dict(self.errors),
            first_errors=dict(self.first_errors),
            elapsed=self.elapsed(),
            latencies=self.latencies.summary(),
            retries=sum(worker.retries for worker in self.workers),
            unsent=self.unsent,
            sent=self.issued,
        )

    async def _open(self, number: int) -> Worker:
        config = self.config
        if config.protocol == "echo":
            client = await connect_echo(self.reactor, config.endpoint)
            return _EchoWorker(self.reactor, client, config, number)
        app = Client(
            self.reactor,
            as_endpoint(self.reactor, config.endpoint),
            request_timeout=config.request_timeout,
            retries=config.retries,
        )
        await app.connection()
        return _AppWorker(app, config, number, self.record)

    async def run(self) -> Summary:
        """Connect every connection, run the load, check the answers kept count, close, and summarise."""
        opened = await DeferredList(
            [ensureDeferred(self._open(n)) for n in range(self.config.connections)], consumeErrors=True
        )
        self.workers = [value for ok, value in opened if ok]
        # With consumeErrors, a failed item's value is its Failure, which Twisted's typing leaves out.
        failures = [cast(Failure, value) for ok, value in opened if not ok]
        if failures and not self._stopping:
            for worker in self.workers:
                worker.close()
            failures[0].raiseException()
        self.started = self.now()
        self._running = True
        if self._stopping:
            self.finished_at = self.started
        else:
            self._start_load()
            await self._done
        if self._end_of_duration is not None and self._end_of_duration.active():
            self._end_of_duration.cancel()
        await self._count_unexpected_answers()
        await DeferredList([worker.close() for worker in self.workers], consumeErrors=True)
        return self.summary()

    def _start_load(self) -> None:
        config = self.config
        end = None
        if config.duration is not None:
            end = self.started + config.duration
            self._end_of_duration = self.clock.callLater(config.duration, self.stop)
        if config.rate:
            self._schedule = SendSchedule(config.rate, self.started, end)
        for _ in range(config.pipeline):
            self._free.extend(self.workers)
        self._pump()

    def stop(self) -> None:
        """Send nothing more, not even sends already due; the run ends when the requests in flight are done."""
        if self._stopping:
            return
        self._stopping = True
        if self._next_send is not None and self._next_send.active():
            self._next_send.cancel()
        self._next_send = None
        if self._schedule is not None and self._running:
            due = self._schedule.due_by(self.now())
            if self.config.requests is not None:
                due = min(due, self.config.requests)
            self.unsent = max(0, due - self._schedule.taken)
        self._check_done()

    def _may_issue(self) -> bool:
        if self._stopping:
            return False
        if self.config.requests is not None and self.issued >= self.config.requests:
            return False
        return self._schedule is None or self._schedule.next_due() is not None

    def _pump(self) -> None:
        """Send on free connections whatever is due: at once without a rate, else by the timetable.

        Re-entrant calls (an answer that completes within its own send) return
        at once: the loop that is running sends on the connection they freed.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._free and self._may_issue():
                due: float | None = None
                if self._schedule is not None:
                    due = self._schedule.next_due()
                    assert due is not None  # _may_issue
                    wait = due - self.now()
                    if wait > 0:
                        if self._next_send is None:
                            self._next_send = self.clock.callLater(wait, self._send_due)
                        break
                    self._schedule.take()
                self._send(self._free.popleft(), due)
        finally:
            self._pumping = False
        self._check_done()

    def _send_due(self) -> None:
        self._next_send = None
        self._pump()

    def _send(self, worker: Worker, due: float | None) -> None:
        """Send one request; its latency counts from ``due`` (its place in the timetable) if given."""
        self.issued += 1
        self.in_flight += 1
        started = self.now() if due is None else due
        worker.send().addBoth(self._answered, worker, started)

    def _answered(self, outcome: str | None | Failure, worker: Worker, started: float) -> None:
        self.in_flight -= 1
        if outcome is None:
            self.latencies.add(self.now() - started)
        else:
            if isinstance(outcome, Failure) and outcome.check(RequestTimeout):
                worker.timed_out = True
            kind = outcome if isinstance(outcome, str) else error_kind(outcome)
            self.errors[kind] += 1
            if isinstance(outcome, Failure):
                self.first_errors.setdefault(kind, peer_text(str(outcome.value), 300))
        if worker.usable:  # an echo connection that failed is not used again
            self._free.append(worker)
        self._pump()

    def _check_done(self) -> None:
        """End the run once nothing is in flight and nothing more will be sent."""
        if not self._running or self._done.called or self.in_flight:
            return
        bound = self.config.requests
        if not (self._stopping or (bound is not None and self.issued >= bound) or not self._free):
            return  # more to send, now or when due; a duration ends with stop()
        if self._next_send is not None and self._next_send.active():
            self._next_send.cancel()
        self.finished_at = self.now()
        self._done.callback(None)

    async def _count_unexpected_answers(self) -> None:
        """After the load: each connection that answered in time checks its answers still match its requests."""
        if not self.issued or not self.config.check_answers:
            return
        checked = [w for w in self.workers if w.usable and not w.timed_out]
        timeout = min(self.config.request_timeout, CLOSE_GRACE)
        results = await DeferredList([w.answers_match(timeout) for w in checked], consumeErrors=True)
        mismatched = sum(1 for ok, matched in results if ok and matched is False)
        if mismatched:
            self.errors[UNEXPECTED_ANSWER] += mismatched
