"""The server of an ``App`` as a Twisted ``Protocol``/``Factory`` pair.

The protocol moves bytes and keeps order: framing comes from
``FramedProtocol``, answers from ``App.dispatch``, limits and shutdown from
``ServerFactory``. Unlike the tutorial's server, a connection stays open
after an answer and serves further (also pipelined) requests; requests on
one connection run concurrently, and their answers go out in request order.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.app import Answer, App, Context, error_answer
from sockapp.apps.search import SearchApp, SearchIndex
from sockapp.errors import ErrorCode, RemoteProtocolError
from sockapp.net.protocol import (
    FramedProtocol,
    ReadingProducer,
    abort_if_peer_not_reading,
    describe_address,
    read_only_as_fast_as_peer_reads,
)
from sockapp.net.tls import client_certificate, handshake_failure, note_handshake_failure
from sockapp.server.lifecycle import ClosesInTime, ServerFactory
from sockapp.wire.framing import DEFAULT_MAX_CONTENT_LENGTH, DEFAULT_MAX_JSON_LENGTH, Message
from sockapp.wire.text import peer_text

if TYPE_CHECKING:
    from sockapp.server.metrics import ServerMetrics


DEFAULT_MAX_PENDING: Final = 64
"""The default limit on a connection's unanswered requests (``--max-pending``): past it, the server stops reading."""
DEFAULT_ACTION_TIMEOUT: Final = 30.0
"""The default seconds a handler may take (``--action-timeout``) before it is cancelled and ``timeout`` answered."""


class _Pending:
    """One request whose answer is not written yet: it waits for its handler, or for
    the answers before it."""

    __slots__ = ("answer", "deferred", "timer", "timed_out", "action", "started")

    def __init__(self, action: str = "", started: float | None = None) -> None:
        self.answer: Answer | None = None
        self.deferred: Deferred[Answer] | None = None
        self.timer: IDelayedCall | None = None
        self.timed_out = False
        self.action = action
        self.started = started  # perf_counter() of the read that completed the request (with --metrics)


class AppProtocol(ClosesInTime, FramedProtocol):
    """Answers each request frame with its app's answer, in request order.

    One is built per connection by `AppFactory`, which it takes its app,
    limits and deadlines from. Handlers of requests on one connection run
    concurrently; at most ``max_pending`` requests wait unanswered, and
    while the peer does not read its answers no more are read from it.

    :cvar factory: the `AppFactory` that built it.
    :cvar log: where connections' faults (and, with ``--verbose``, their
        requests) are logged.
    :cvar BATCH_LIMIT: bytes of answers handed to the transport within one
        read before the rest of the read's requests wait for the peer to read
        them (a peer that does not read must not make the server answer a
        whole read of requests into memory).
    :cvar content_faults_in_band: true: a sound frame with unreadable
        ``text/json`` content is answered with an error, not fatal.
    :ivar max_content_length: the factory's limit on a frame's content.
    :ivar max_json_length: the factory's limit on ``text/json`` content.
    :ivar metrics: the server's metrics (``--metrics``), or ``None``.
    :ivar count_sent: told the length of every write, for the metrics.
    :ivar deadlines: the idle and frame deadlines of this connection.
    :ivar reading: pauses reading while the peer does not read its answers.
    :ivar holding: true while requests wait in the decoder (too many are
        unanswered, or the peer does not read).
    :ivar closing: set once a close has been decided: no more requests are handed out.
    :ivar draining: set by `drain`: close between requests, once every one received is answered.
    :ivar lost: set once the connection is gone.
    :ivar answered_in_read: answers written within the current read, for the latency metric.
    """

    factory: AppFactory
    log = Logger()
    draining = False
    metrics: ServerMetrics | None = None
    answered_in_read = 0
    content_faults_in_band = True  # a sound frame with unreadable content is answered, not fatal
    reading: ReadingProducer
    lost = False
    _pending: deque[_Pending] | None = None  # created when the first answer has to wait
    _close_when_answered = False
    _grace_after_answers: float | None = None  # a close decided while answers were pending: its bound
    _read_started: float | None = None
    # Answers handed to the transport within one read, before the rest of the read's requests
    # wait for the peer to read them (a peer that does not read must not make the server
    # answer a whole read of requests into memory).
    BATCH_LIMIT: Final = 64 * 1024
    _batched = 0

    @property
    def peer(self) -> str:
        """The client as host:port, for logs. Asked each time: on a ``haproxy:``
        port the PROXY header naming the real client comes after ``connectionMade``."""
        return describe_address(self.transport.getPeer())

    def connectionMade(self) -> None:
        """Take the factory's limits, start the deadlines and backpressure, and register with the factory."""
        factory = self.factory
        self.max_content_length = factory.max_content_length
        self.max_json_length = factory.max_json_length
        self.metrics = factory.metrics
        if self.metrics is not None:
            self.count_sent = self.metrics.sent
        super().connectionMade()
        self.deadlines = factory.deadlines_for(self)
        # While the server itself does not read (the peer is slow to read its answers, or too
        # many of its requests are unanswered), a frame in the kernel's queue is not late: its
        # deadline stands still.
        self.reading = read_only_as_fast_as_peer_reads(self.transport, self._readingPaused, self._readingResumed)
        self._dispatch = factory.app.dispatch
        factory.opened(self)
        if factory.verbose:
            self.log.info("connection from {peer}", peer=self.peer)

    def _readingPaused(self) -> None:
        self.deadlines.pause_frame()

    def _readingResumed(self) -> None:
        """The peer reads again (or fewer requests are unanswered): hand out what waited."""
        self.deadlines.resume_frame()
        if not self.reading.paused:
            self.deadlines.restart_idle()  # the peer took what we sent: it is not idle
        self._resume_if_allowed()
        self._close_if_done()

    def resumeMessages(self) -> None:
        """Hand out the complete requests that waited, timed and counted as a read is."""
        metrics = self.metrics
        self._batched = 0
        if metrics is None:
            super().resumeMessages()
        else:
            started = self._read_started = perf_counter()
            self.answered_in_read = 0
            super().resumeMessages()
            metrics.latency(perf_counter() - started, self.answered_in_read)
        if not self.closing:
            # What waited was complete: no frame is in progress unless bytes of one remain.
            self.deadlines.activity(self._decoder.in_frame, self.completed_in_read > 0)

    def _resume_if_allowed(self) -> None:
        if not self.holding or self.closing or self._must_hold():
            return
        if self._batch is not None:
            self.holding = False  # called back within a read: its own loop goes on
        else:
            self.resumeMessages()

    def _must_hold(self) -> bool:
        """Whether to stop handing out requests: too many unanswered, or the peer not reading."""
        pending = self._pending
        return (pending is not None and len(pending) >= self.factory.max_pending) or self.reading.paused

    def dataReceived(self, data: bytes) -> None:
        """Decode and dispatch the requests in ``data``, timed and counted with ``--metrics``."""
        metrics = self.metrics
        self._batched = 0
        if metrics is None:
            super().dataReceived(data)
        else:
            started = self._read_started = perf_counter()
            self.answered_in_read = 0
            super().dataReceived(data)
            metrics.received(len(data))
            metrics.latency(perf_counter() - started, self.answered_in_read)
        if not self.closing:
            in_frame = self._decoder.in_frame
            self.deadlines.activity(in_frame, self.completed_in_read > 0)
            if self.draining and not in_frame:
                self.closeAfterFlush()

    def context(self, message: Message) -> Context:
        """What a handler that asks for it knows of its request."""
        return Context(
            peer=self.transport.getPeer(),
            header=message.header,
            request=message.document,
            reactor=self.factory.reactor,
            client_certificate=client_certificate(self.transport),
            connection=self,
        )

    def messageReceived(self, message: Message) -> None:
        if self.factory.verbose:
            self.log.info(
                "{peer}: {content_type} request, {length} bytes",
                peer=self.peer,
                content_type=peer_text(message.header.content_type, 64),
                length=message.header.content_length,
            )
        answer = self._dispatch(message, self.context)
        pending = self._pending
        if type(answer) is Answer:
            if not pending:  # the usual case: nothing waits before it; written as _write_answer does
                frame = answer[0]
                batch = self._batch
                if batch is not None:
                    batch.append(frame)
                    self._batched += len(frame)
                    if self._batched > self.BATCH_LIMIT:
                        self._hand_over_batch()
                else:
                    FramedProtocol.writeFrame(self, frame)
                if self.metrics is not None:
                    self.metrics.answered(answer[1], answer[2])
                    self.answered_in_read += 1
                if answer[3] and self.factory.verbose:
                    self._log_fault(answer)
                return
            slot = _Pending(answer.action, self._read_started)
            slot.answer = answer
            pending.append(slot)
        else:
            if pending is None:
                pending = self._pending = deque()
            deferred, action = answer
            slot = _Pending(action, self._read_started)
            pending.append(slot)
            slot.deferred = deferred
            timeout = self.factory.action_timeout
            if timeout:
                slot.timer = self.factory.reactor.callLater(timeout, self._timed_out, slot)
            deferred.addCallbacks(self._ready, self._failed, callbackArgs=(slot,), errbackArgs=(slot,))
        if len(pending) >= self.factory.max_pending and not self.holding:
            # Backpressure: no more requests from this peer until one is answered.
            self.holding = True
            self.reading.hold()

    def _hand_over_batch(self) -> None:
        """Give the answers of this read so far to the transport now; if the peer is not
        reading them (Twisted pauses our reading), the rest of the read's requests wait."""
        self._flush()
        self._batch = []
        self._batched = 0
        if self.reading.paused:
            self.holding = True

    def _write_answer(self, answer: Answer, started: float | None = None) -> None:
        FramedProtocol.writeFrame(self, answer.frame)
        if self._batch is not None:
            self._batched += len(answer.frame)
            if self._batched > self.BATCH_LIMIT:
                self._hand_over_batch()
        if self.metrics is not None and answer.action:  # not an error frame queued behind answers
            self.metrics.answered(answer.action, answer.outcome)
            if started is not None:  # it waited: its own latency, from the read that completed it
                self.metrics.latency(perf_counter() - started)
            else:
                self.answered_in_read += 1
        if answer.reason and self.factory.verbose:
            self._log_fault(answer)

    def _log_fault(self, answer: Answer) -> None:
        # A fault in a sound frame is answered and the connection serves on: one line per
        # request would let a peer fill the log, so only --verbose shows them.
        self.log.info(
            "{peer}: {action}: {code}: {reason}",
            peer=self.peer,
            action=peer_text(answer.action, 64),
            code=answer.outcome,
            reason=peer_text(answer.reason, 200),  # an app's message may quote the peer
        )

    def _ready(self, answer: Answer, slot: _Pending) -> None:
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None
        slot.deferred = None
        slot.answer = answer
        self._send_ready()

    def _failed(self, failure: Failure, slot: _Pending) -> None:
        # App.dispatch turns every failure into an answer but a cancellation: ours.
        if slot.timer is not None and slot.timer.active():
            slot.timer.cancel()
        slot.timer = None
        slot.deferred = None
        if self.lost:
            return None  # cancelled because the connection is gone: nothing to answer, nothing to log
        if slot.timed_out:
            timeout = self.factory.action_timeout
            slot.answer = error_answer(slot.action, "timeout", f"no answer within {timeout:g} s (--action-timeout)")
        else:
            # A handler's own CancelledError: the app did not answer, which is an internal error.
            slot.answer = error_answer(slot.action, "internal-error", "the action was cancelled")
            if not failure.check(CancelledError):
                self.log.failure("unexpected failure of an answer", failure)
        self._send_ready()
        return None

    def _timed_out(self, slot: _Pending) -> None:
        slot.timer = None
        slot.timed_out = True
        if slot.deferred is not None:
            slot.deferred.cancel()

    def _send_ready(self) -> None:
        """Write the answers at the head of the queue that are ready, in order."""
        pending = self._pending
        if self.lost or not pending or pending[0].answer is None:
            return
        in_read = self._batch is not None  # called back within a read: its batch collects them
        if not in_read:
            self._batch = []
        try:
            while pending and pending[0].answer is not None:
                slot = pending.popleft()
                self._write_answer(slot.answer, slot.started)  # type: ignore[arg-type]
        finally:
            if not in_read:
                self._flush()
        if not pending:
            self.deadlines.restart_idle()  # nothing owed any more: idle from the last answer
        if self.reading.held and len(pending) < self.factory.max_pending:
            self.reading.release()  # which resumes handing out requests, if the peer reads
        self._resume_if_allowed()
        self._close_if_done()

    def _close_if_done(self) -> None:
        """A close waiting for answers (an error frame, EOF, shutdown) happens once none is owed."""
        if self._pending or self.lost:
            return
        if self._close_when_answered:
            self._close_when_answered = False
            self.closeAfterFlush()
            if self._grace_after_answers is not None:
                self.closeWithin(self._grace_after_answers)
        elif self.draining and not self.closing and not self._decoder.in_frame:
            self.closeAfterFlush()

    def writeFrame(self, frame: bytes) -> None:
        if self._pending:  # an error frame, say, goes after the answers still to come
            slot = _Pending()
            slot.answer = Answer(frame, "", "")
            self._pending.append(slot)
            return
        super().writeFrame(frame)

    def protocolError(self, error: RemoteProtocolError) -> None:
        if self.closing:  # one error frame at most; a closing connection is not judged again
            return
        self.log.warn("{peer}: {code}: {reason}; closing", peer=self.peer, code=error.code.value, reason=error.message)
        if self.metrics is not None:
            self.metrics.error_frame(error.code)
        super().protocolError(error)
        if self._pending:
            # The answers before the fault are still to come: the grace starts after them
            # (and the action timeout bounds them).
            self._grace_after_answers = self.factory.close_grace
            self.closeWithin(None)
        else:
            self.closeWithin(self.factory.close_grace)

    def idleTimedOut(self) -> None:
        """No traffic for ``--idle-timeout``: close, unless answers owed to the peer are still to come."""
        if self._pending:
            self.deadlines.restart_idle()  # the peer waits for answers it is owed: not idle
            return
        self.log.info(
            "{peer}: no traffic for {t:g} s (--idle-timeout); closing", peer=self.peer, t=self.factory.idle_timeout
        )
        self.closing = True
        abort_if_peer_not_reading(self.transport)
        self.closeWithin(self.factory.close_grace)

    def closeAfterFlush(self) -> None:
        if self._pending:
            # Answers are still to come: stop taking requests, close once they are written.
            self.closing = True
            self._close_when_answered = True
            return
        super().closeAfterFlush()
        self.closeWithin(None)  # closing: the idle and frame deadlines no longer apply

    def readConnectionLost(self) -> None:
        """The peer sent EOF: it gets its answers, for as long as the idle timeout allows."""
        super().readConnectionLost()
        self.closeWithin(self.factory.idle_timeout or None)

    def writeConnectionLost(self) -> None:
        super().writeConnectionLost()
        self.closeWithin(self.factory.close_grace)

    def frameTimedOut(self) -> None:
        """A frame was begun and not finished within ``--frame-timeout``: answer ``frame-timeout`` and close."""
        timeout = self.factory.frame_timeout
        self.protocolError(
            RemoteProtocolError(ErrorCode.FRAME_TIMEOUT, f"a frame was started and not finished within {timeout:g} s")
        )
        abort_if_peer_not_reading(self.transport)

    def drain(self) -> None:
        """Graceful shutdown: close between requests, once every request received is answered."""
        self.draining = True
        if self.closing:
            return
        if self._pending:
            self._close_if_done()  # later: _send_ready closes once the answers are written
        elif not self._decoder.in_frame:
            self.closeAfterFlush()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Cancel the handlers still running and the deadlines; log a failed TLS handshake."""
        self.lost = True
        self.deadlines.cancel()
        # The transport may keep its producer: it must not keep this protocol (and its buffers).
        self.reading.on_pause = self.reading.on_resume = None
        pending, self._pending = self._pending, None
        while pending:
            slot = pending.popleft()
            if slot.timer is not None and slot.timer.active():
                slot.timer.cancel()
            if slot.deferred is not None:
                slot.deferred.cancel()  # the handler sees CancelledError; _failed ignores it
        if handshake_failure(self.transport, reason) is not None:
            # Only then the peer's text and a bound logger: both cost at every close otherwise.
            note_handshake_failure(self.log, self.peer, self.transport, reason, self.metrics)
        self.factory.closed(self)
        if self.factory.verbose:
            self.log.info("connection from {peer} closed", peer=self.peer)


class AppFactory(ServerFactory[AppProtocol]):
    """Builds ``AppProtocol`` connections serving one ``App``.

    The keyword arguments after ``action_timeout`` are the limits of every
    sockapp server (`sockapp.server.lifecycle.ServerFactory`): ``reactor``,
    ``idle_timeout``, ``frame_timeout``, ``max_connections``, ``verbose``
    and ``metrics``.

    :ivar app: the `App` every connection serves.
    :ivar max_content_length: the largest request content, in bytes (``content-too-large`` past it).
    :ivar max_json_length: the largest ``text/json`` request content, in bytes.
    :ivar max_pending: how many requests of one connection may wait unanswered
        before the server stops reading from it.
    :ivar action_timeout: seconds a handler may take before it is cancelled
        and ``timeout`` answered; ``None`` for no limit.
    """

    protocol = AppProtocol

    def __init__(
        self,
        app: App,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        max_json_length: int = DEFAULT_MAX_JSON_LENGTH,
        max_pending: int = DEFAULT_MAX_PENDING,
        action_timeout: float | None = DEFAULT_ACTION_TIMEOUT,
        **limits: Any,
    ) -> None:
        super().__init__(**limits)
        if type(max_pending) is not int or max_pending < 1:
            raise ValueError(f"max_pending must be an int of at least 1, not {max_pending!r}")
        self.app = app
        self.max_content_length = max_content_length
        self.max_json_length = max_json_length
        self.max_pending = max_pending
        self.action_timeout = action_timeout or None
        if self.metrics is not None:
            self.metrics.serving(app)


class SearchFactory(AppFactory):
    """The tutorial's search server: an ``AppFactory`` of a ``SearchApp`` (over ``index``).

    :ivar index: the search's answers.
    """

    def __init__(self, index: SearchIndex | SearchApp | None = None, **options: Any) -> None:
        app = index if isinstance(index, SearchApp) else SearchApp(index)
        self.index = app.index
        super().__init__(app, **options)


SearchProtocol = AppProtocol  # the name before applications other than the search existed
