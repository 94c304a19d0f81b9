"""The application API: declaring actions, dispatching requests, and an App served over
StringTransport (order, concurrency, timeouts, cancellation, backpressure)."""

from __future__ import annotations

import json
from typing import Any, cast

import attrs
import pytest
from conftest import binary_request, json_request, split_frames
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from sockapp.app import ActionError, Answer, App, Context, Reply
from sockapp.server import AppFactory
from sockapp.wire.framing import NEED_DATA, FrameDecoder, Message


def message_of(data: bytes):
    decoder = FrameDecoder(max_json_length=1 << 20)
    decoder.receive_data(data)
    message = decoder.next_message()
    assert message is not NEED_DATA
    return message


def no_context(message: Message) -> Any:
    """For a handler that asks for a context: none."""
    return None


def answer(app: App, request, context=None):
    """The decoded answer ``app`` gives to ``request`` (a document, or bytes for a binary request)."""
    data = binary_request(request) if isinstance(request, bytes) else json_request(request)
    result = app.dispatch(message_of(data), context or no_context)
    assert isinstance(result, Answer)
    ((header, content),) = split_frames(result.frame)
    return (json.loads(content) if header["content-type"] == "text/json" else (header, content)), result


def calculator() -> App:
    app = App("calc")

    @app.action("add")
    def add(value):
        """Add two numbers.

        More words that describe leaves out."""
        return value["a"] + value["b"]

    @app.action("lookup")
    def lookup(value):
        raise ActionError("not-found", f"no entry {value!r}")

    @app.action("broken")
    def broken(value):
        return 1 / 0

    @app.action("raw")
    def raw(value):
        return b"\x00\x01"

    @app.action("exact")
    def exact(value):
        return Reply(b"<p>hi</p>", "text/html", "utf-8")

    @app.action("unencodable")
    def unencodable(value):
        return {1, 2}

    return app


# -- declaring and dispatching ---------------------------------------------------


def test_a_sync_action_answers_its_result():
    document, result = answer(calculator(), {"action": "add", "value": {"a": 2, "b": 3}})
    assert document == {"result": 5}
    assert (result.action, result.outcome) == ("add", "ok")


def test_an_action_error_is_answered_with_its_code_and_message():
    document, result = answer(calculator(), {"action": "lookup", "value": "x"})
    assert document == {"error": {"code": "not-found", "message": "no entry 'x'"}}
    assert result.outcome == "not-found"


def test_any_other_exception_is_an_internal_error_with_the_traceback_in_the_log_only():
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        document, _ = answer(calculator(), {"action": "broken"})
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert document["error"]["code"] == "internal-error"
    assert "ZeroDivision" not in json.dumps(document)
    (failure,) = [e["log_failure"] for e in events if "log_failure" in e]
    assert failure.check(ZeroDivisionError)


def test_a_result_that_cannot_be_encoded_is_an_internal_error():
    document, _ = answer(calculator(), {"action": "unencodable"})
    assert document["error"]["code"] == "internal-error"


def test_bytes_and_reply_set_the_answer_content_exactly():
    (header, content), _ = answer(calculator(), {"action": "raw"})
    assert (header["content-type"], header["content-encoding"], content) == (
        "application/octet-stream",
        "binary",
        b"\x00\x01",
    )
    (header, content), _ = answer(calculator(), {"action": "exact"})
    assert (header["content-type"], header["content-encoding"], content) == ("text/html", "utf-8", b"<p>hi</p>")


def test_every_app_answers_ping_and_describe():
    app = calculator()
    assert answer(app, {"action": "ping"})[0] == {"result": "pong"}
    described = answer(app, {"action": "describe"})[0]["result"]
    assert described["name"] == "calc"
    assert described["actions"]["add"] == "Add two numbers."
    assert set(described["actions"]) == {"ping", "describe", "add", "lookup", "broken", "raw", "exact", "unencodable"}


@pytest.mark.parametrize("name", ["ping", "describe"])
def test_registering_a_built_in_name_is_an_error_at_once(name):
    with pytest.raises(ValueError, match="built into every app"):
        App("x").action(name)


def test_a_handler_that_needs_more_than_the_value_and_context_is_refused_at_once():
    with pytest.raises(TypeError, match="also requires other"):
        App("x").action("bad")(lambda value, other: None)
    App("x").action("fine")(lambda value, other=1, context=None: None)


def test_registering_a_name_twice_is_an_error():
    app = calculator()
    with pytest.raises(ValueError, match="already registered"):
        app.action("add")


@pytest.mark.parametrize("code", ["", "Upper", "has space", "-start", "x" * 65, 5])
def test_an_error_code_must_be_a_short_lowercase_word(code):
    with pytest.raises(ValueError):
        ActionError(code, "message")


def test_an_unknown_action_lists_the_actions_there_are():
    document, result = answer(calculator(), {"action": "dance"})
    assert document["error"]["code"] == "unknown-action"
    assert "add" in document["error"]["message"] and "dance" in document["error"]["message"]
    assert (result.action, result.outcome) == ("other", "unknown-action")


@pytest.mark.parametrize("request_", [{}, {"action": 5}, {"action": None}])
def test_a_missing_or_non_string_action_is_a_bad_request(request_):
    assert answer(calculator(), request_)[0]["error"]["code"] == "bad-request"


def test_a_request_that_is_not_an_object_is_answered_in_band():
    assert answer(calculator(), [1, 2])[0]["error"]["code"] == "request-not-object"


def test_binary_requests_need_a_binary_handler():
    app = calculator()
    assert answer(app, b"data")[0]["error"]["code"] == "unsupported-content-type"

    @app.binary
    def reverse(content, context):
        assert isinstance(context, Context)
        return content[::-1]

    (header, content), result = answer(app, b"data", context=lambda message: Context(None, message.header, None, None))
    assert content == b"atad" and result.action == "binary"


def test_a_handler_that_asks_for_the_context_gets_it():
    app = App("ctx")
    seen = []

    @app.action("who")
    def who(value, context):
        seen.append(context)
        return value

    def context(message):
        return Context(peer="peer", header=message.header, request=message.document, reactor="reactor")

    assert answer(app, {"action": "who", "value": 1, "extra": True}, context)[0] == {"result": 1}
    (ctx,) = seen
    assert ctx.request == {"action": "who", "value": 1, "extra": True}
    assert ctx.header.content_type == "text/json" and ctx.peer == "peer" and ctx.client_certificate is None


def test_a_handler_without_a_value_parameter_is_called_without_one():
    app = App("now")

    @app.action("now")
    def now():
        return 42

    assert answer(app, {"action": "now", "value": "ignored"})[0] == {"result": 42}
    assert answer(app, {"action": "now"})[0] == {"result": 42}


@attrs.frozen
class Point:
    x: int
    y: int
    label: str = ""


def typed() -> App:
    app = App("typed")

    @app.action("norm")
    def norm(value: Point):
        assert isinstance(value, Point)
        return abs(value.x) + abs(value.y)

    return app


def test_a_value_annotated_with_an_attrs_class_is_structured_into_it():
    assert answer(typed(), {"action": "norm", "value": {"x": 3, "y": -4}})[0] == {"result": 7}


@pytest.mark.parametrize(
    "value, field",
    [
        ({"x": 3}, "value.y"),
        ({"x": "3", "y": 4}, "value.x"),
        ({"x": 3, "y": 4, "label": 5}, "value.label"),
        ({"x": 3, "y": 4, "z": 0}, "z"),
        ([3, 4], "value"),
        (None, "value"),
    ],
)
def test_a_value_that_does_not_fit_is_a_bad_request_naming_the_field(value, field):
    document, _ = answer(typed(), {"action": "norm", "value": value})
    assert document["error"]["code"] == "bad-request"
    assert field in document["error"]["message"]


# -- served: order, concurrency, timeouts, cancellation, backpressure ------------------


class Slow:
    """An app whose ``wait`` action answers when the test says so."""

    def __init__(self) -> None:
        self.app = App("slow")
        self.waiting: list[Deferred] = []
        self.cancelled: list[object] = []

        @self.app.action("wait")
        def wait(value):
            deferred: Deferred[Any] = Deferred(lambda d: self.cancelled.append(value))
            self.waiting.append(deferred)
            return deferred.addCallback(lambda _: value)

        @self.app.action("echo")
        def echo(value):
            return value


def serve(app: App, **options):
    clock = Clock()
    factory = AppFactory(app, reactor=clock, **options)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, factory


def results(transport: StringTransport) -> list:
    return [json.loads(content) for _, content in split_frames(transport.value())]


def test_a_slow_request_pipelined_before_a_fast_one_is_still_answered_first():
    slow = Slow()
    protocol, transport, _, _ = serve(slow.app)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}) + json_request({"action": "echo", "value": 2}))
    assert transport.value() == b""  # the fast answer waits for the slow one
    slow.waiting[0].callback(None)
    assert results(transport) == [{"result": 1}, {"result": 2}]


def test_requests_on_one_connection_run_concurrently_and_answer_in_order():
    slow = Slow()
    protocol, transport, _, _ = serve(slow.app)
    protocol.dataReceived(b"".join(json_request({"action": "wait", "value": n}) for n in range(3)))
    assert len(slow.waiting) == 3  # all three started before any finished
    slow.waiting[2].callback(None)
    slow.waiting[1].callback(None)
    assert transport.value() == b""
    slow.waiting[0].callback(None)
    assert results(transport) == [{"result": 0}, {"result": 1}, {"result": 2}]


def test_an_async_handler_with_the_reactor_from_its_context():
    app = App("sleepy")

    @app.action("slow")
    async def slow(value, context):
        """Answer after VALUE seconds."""
        await task.deferLater(context.reactor, value)
        return {"slept": value}

    protocol, transport, clock, _ = serve(app)
    protocol.dataReceived(json_request({"action": "slow", "value": 5}))
    clock.advance(4.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert results(transport) == [{"result": {"slept": 5}}]


def test_a_deferred_that_fails_with_an_action_error_is_answered_in_band():
    app = App("failing")

    @app.action("later")
    async def later(value):
        raise ActionError("nope", "not today")

    protocol, transport, _, _ = serve(app)
    protocol.dataReceived(json_request({"action": "later"}) + json_request({"action": "ping"}))
    assert results(transport) == [{"error": {"code": "nope", "message": "not today"}}, {"result": "pong"}]


def test_connection_lost_cancels_every_pending_request_and_writes_nothing():
    slow = Slow()
    protocol, transport, _, factory = serve(slow.app)
    protocol.dataReceived(b"".join(json_request({"action": "wait", "value": n}) for n in range(3)))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        protocol.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    assert slow.cancelled == [0, 1, 2]
    assert transport.value() == b""
    assert not [e for e in events if "log_failure" in e]  # a cancellation is not an error
    assert factory.connections == set()


def test_an_async_handler_sees_cancelled_error_when_its_connection_closes():
    app = App("sees")
    seen = []
    never: Deferred = Deferred()

    @app.action("hang")
    async def hang(value):
        try:
            await never
        except CancelledError:
            seen.append("cancelled")
            raise

    protocol, transport, _, _ = serve(app)
    protocol.dataReceived(json_request({"action": "hang"}))
    protocol.connectionLost(None)
    assert seen == ["cancelled"]


def test_the_action_timeout_answers_timeout_and_cancels_the_handler():
    slow = Slow()
    protocol, transport, clock, _ = serve(slow.app, action_timeout=3)
    protocol.dataReceived(json_request({"action": "wait", "value": "a"}) + json_request({"action": "echo", "value": 1}))
    clock.advance(2.9)
    assert transport.value() == b""
    clock.advance(0.1)
    assert slow.cancelled == ["a"]
    (timeout, echoed) = results(transport)
    assert timeout["error"]["code"] == "timeout" and echoed == {"result": 1}
    assert not transport.disconnecting  # the connection serves on
    protocol.dataReceived(json_request({"action": "echo", "value": 2}))
    assert results(transport)[-1] == {"result": 2}


def test_no_action_timeout_when_it_is_off():
    slow = Slow()
    protocol, transport, clock, _ = serve(slow.app, action_timeout=0)
    protocol.dataReceived(json_request({"action": "wait", "value": "a"}))
    clock.advance(10_000)
    assert transport.value() == b"" and slow.cancelled == []


def test_backpressure_at_max_pending_stops_reading_until_one_is_answered():
    slow = Slow()
    protocol, transport, _, _ = serve(slow.app, max_pending=2)
    protocol.dataReceived(b"".join(json_request({"action": "wait", "value": n}) for n in range(5)))
    assert len(slow.waiting) == 2  # the other three wait, unparsed, in the decoder
    assert transport.producerState == "paused"  # and nothing more is read from the peer
    slow.waiting[0].callback(None)
    assert len(slow.waiting) == 3 and transport.producerState == "paused"
    for deferred in slow.waiting[1:3]:
        deferred.callback(None)
    assert len(slow.waiting) == 5
    for deferred in slow.waiting[3:]:
        deferred.callback(None)
    assert transport.producerState == "producing"
    assert results(transport) == [{"result": n} for n in range(5)]


def test_a_frame_fault_after_pending_answers_comes_after_them_then_the_close():
    slow = Slow()
    protocol, transport, _, _ = serve(slow.app)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}) + b"\x00\x00")
    assert transport.value() == b"" and not transport.disconnecting
    slow.waiting[0].callback(None)
    first, error = results(transport)
    assert first == {"result": 1} and error["error"]["code"] == "empty-header"
    assert transport.disconnecting


def test_a_half_closing_peer_gets_its_pending_answers_then_the_close():
    slow = Slow()
    protocol, transport, _, _ = serve(slow.app)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}))
    protocol.readConnectionLost()
    assert not transport.disconnecting
    slow.waiting[0].callback(None)
    assert results(transport) == [{"result": 1}]
    assert transport.disconnecting


def test_graceful_shutdown_answers_requests_still_waiting_on_async_handlers():
    slow = Slow()
    protocol, transport, _, factory = serve(slow.app)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}))
    done = factory.shutdown(10)
    assert not transport.disconnecting
    slow.waiting[0].callback(None)
    assert results(transport) == [{"result": 1}]
    assert transport.disconnecting
    protocol.connectionLost(None)
    assert done.called


# -- found by attacking the served API ---------------------------------------------


class Aborting(StringTransport):
    """A StringTransport that records an abort, and pauses its producer once more than
    64 KiB wait unsent, as a Twisted socket transport does when the peer does not read."""

    aborted = False

    def abortConnection(self):
        self.aborted = True

    def write(self, data):
        super().write(data)
        if self.producer is not None and len(self.value()) > 64 * 1024 and self.producerState == "producing":
            self.producer.pauseProducing()


def serve_on(app: App, transport: StringTransport, **options):
    clock = Clock()
    factory = AppFactory(app, reactor=clock, **options)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    return protocol, clock, factory


def test_answers_ready_at_once_from_async_handlers_keep_the_answers_before_them():
    """An async handler that returns before awaiting anything answers within the read."""
    app = App("quick")

    @app.action("now")
    async def now(value):
        return value

    @app.action("refuse")
    async def refuse(value):
        raise ActionError("nope", "at once")

    @app.action("sync")
    def sync(value):
        return value

    protocol, transport, _, _ = serve(app)
    protocol.dataReceived(
        json_request({"action": "ping"})
        + json_request({"action": "now", "value": 1})
        + json_request({"action": "refuse"})
        + json_request({"action": "sync", "value": 2})
    )
    assert results(transport) == [
        {"result": "pong"},
        {"result": 1},
        {"error": {"code": "nope", "message": "at once"}},
        {"result": 2},
    ]


def test_a_frame_fault_behind_a_slow_answer_waits_for_it_and_the_grace_starts_after():
    slow = Slow()
    transport = Aborting()
    protocol, clock, factory = serve_on(slow.app, transport)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}) + b"\x00\x00")
    clock.advance(factory.close_grace * 5)
    assert not transport.aborted and transport.value() == b""
    slow.waiting[0].callback(None)
    first, error = results(transport)
    assert first == {"result": 1} and error["error"]["code"] == "empty-header"
    assert transport.disconnecting and not transport.aborted
    clock.advance(factory.close_grace)
    assert transport.aborted  # the peer did not read the rest: cut after the grace


def test_a_peer_that_does_not_read_gets_no_more_answers_than_its_transport_holds():
    """Without this, one read of small requests for a large answer made the server build
    every answer at once: 96 KB sent held 407 MiB."""
    app = App("big")
    calls = []

    @app.action("big")
    def big(value):
        calls.append(value)
        return Reply(b"x" * 100_000)

    transport = Aborting()
    protocol, _, _ = serve_on(app, transport)
    protocol.dataReceived(b"".join(json_request({"action": "big", "value": n}) for n in range(50)))
    assert len(calls) <= 2 and len(transport.value()) <= 2 * 100_200
    assert transport.producerState == "paused"
    for _ in range(100):
        before = len(calls)
        transport.clear()  # the peer reads what was sent...
        assert transport.producer is not None
        transport.producer.resumeProducing()  # ...and Twisted resumes reading: one more answer fits
        assert 0 < len(calls) - before <= 2 or len(calls) == 50
        if len(calls) == 50:
            break
    assert calls == list(range(50))


def test_shutdown_closes_a_held_connection_once_its_answers_are_written():
    slow = Slow()
    protocol, transport, clock, factory = serve(slow.app, max_pending=2)
    protocol.dataReceived(b"".join(json_request({"action": "wait", "value": n}) for n in range(5)))
    done = factory.shutdown(10)
    for _ in range(5):  # answer what was handed out; each answer lets the next request in
        for deferred in [d for d in slow.waiting if not d.called]:
            deferred.callback(None)
    assert results(transport) == [{"result": n} for n in range(5)]
    assert transport.disconnecting  # closed once all five were answered, not at the timeout
    protocol.connectionLost(None)
    assert done.called


def test_a_peer_waiting_for_a_slow_answer_is_not_idle():
    slow = Slow()
    transport = Aborting()
    protocol, clock, factory = serve_on(slow.app, transport, idle_timeout=2)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}))
    clock.advance(10)
    assert not transport.disconnecting
    slow.waiting[0].callback(None)
    assert results(transport) == [{"result": 1}]
    clock.advance(2)  # idle from the answer on
    assert transport.disconnecting


def test_metrics_label_a_timed_out_request_with_its_action_and_time_async_answers():
    from sockapp.server.metrics import ServerMetrics

    slow = Slow()
    metrics = ServerMetrics(process=False)
    protocol, transport, clock, _ = serve(slow.app, metrics=metrics, action_timeout=1)
    protocol.dataReceived(json_request({"action": "wait", "value": 1}) + json_request({"action": "wait", "value": 2}))
    slow.waiting[1].callback(None)
    clock.advance(1)
    assert metrics.requests[("wait", "timeout")] == 1 and metrics.requests[("wait", "ok")] == 1
    assert ("other", "timeout") not in metrics.requests
    assert sum(metrics._latency_buckets) == 2  # both answers timed, though written after their read


def test_verbose_logs_escape_and_cut_an_apps_error_message():
    app = App("quoting")

    @app.action("lookup")
    def lookup(value):
        raise ActionError("not-found", f"no entry {value}")

    from twisted.logger import formatEvent

    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        protocol, transport, _, _ = serve(app, verbose=True)
        protocol.dataReceived(json_request({"action": "lookup", "value": "\x1b[31m\nFAKE" + "x" * 100_000}))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    (line,) = [formatEvent(e) for e in events if e.get("code") == "not-found"]
    assert len(line) < 500 and line.isprintable() and "\\x1b[31m\\x0aFAKE" in line


# -- found by the second attack: what waits in the decoder -------------------------


def test_requests_that_waited_in_the_decoder_are_not_a_frame_in_progress():
    slow = Slow()
    protocol, transport, clock, _ = serve(slow.app, max_pending=2, frame_timeout=1)
    protocol.dataReceived(b"".join(json_request({"action": "wait", "value": n}) for n in range(5)))
    for _ in range(5):
        clock.advance(0.5)
        for deferred in [d for d in slow.waiting if not d.called]:
            deferred.callback(None)
    clock.advance(5)
    assert results(transport) == [{"result": n} for n in range(5)]  # and no frame-timeout after them
    assert not transport.disconnecting


def test_every_answer_to_a_request_that_waited_is_timed():
    from sockapp.server.metrics import ServerMetrics

    slow = Slow()
    metrics = ServerMetrics(process=False)
    protocol, transport, _, _ = serve(slow.app, metrics=metrics, max_pending=1)
    protocol.dataReceived(
        json_request({"action": "wait", "value": 0})
        + b"".join(json_request({"action": "echo", "value": n}) for n in range(20))
    )
    slow.waiting[0].callback(None)
    assert len(results(transport)) == 21
    assert sum(metrics.requests.values()) == sum(metrics._latency_buckets) == 21


def test_async_answers_ready_at_once_are_bounded_like_sync_ones_for_a_peer_that_does_not_read():
    app = App("abig")
    calls = []

    @app.action("abig")
    async def abig(value):
        calls.append(value)
        return Reply(b"x" * 100_000)

    transport = Aborting()
    protocol, _, _ = serve_on(app, transport)
    protocol.dataReceived(b"".join(json_request({"action": "abig", "value": n}) for n in range(50)))
    assert len(calls) <= 2 and transport.producerState == "paused"


def test_a_peer_reading_steadily_what_it_is_owed_is_not_idle():
    app = App("big")

    @app.action("big")
    def big(value):
        return Reply(b"x" * 100_000)

    transport = Aborting()
    protocol, clock, _ = serve_on(app, transport, idle_timeout=2)
    protocol.dataReceived(b"".join(json_request({"action": "big", "value": n}) for n in range(20)))
    received = 0
    for _ in range(40):
        clock.advance(1)  # the peer takes a second to read each answer...
        received += len(transport.value())
        transport.clear()
        assert transport.producer is not None
        transport.producer.resumeProducing()  # ...and reads it
        assert not transport.disconnecting and not transport.aborted
    received += len(transport.value())
    assert received >= 20 * 100_000
