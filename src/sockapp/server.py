"""The search server as a Twisted ``Protocol``/``Factory`` pair.

The protocol only moves bytes: framing comes from ``FramedProtocol``,
answers from ``SearchIndex``, limits and shutdown from ``ServerFactory``.
Unlike the tutorial's server, a connection stays open after an answer and
serves further (also pipelined) requests.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.errors import ErrorCode, RemoteProtocolError
from sockapp.framing import DEFAULT_MAX_CONTENT_LENGTH, DEFAULT_MAX_JSON_LENGTH, Message
from sockapp.lifecycle import ClosesInTime, ServerFactory
from sockapp.protocol import (
    FramedProtocol,
    abort_if_peer_not_reading,
    describe_address,
    read_only_as_fast_as_peer_reads,
)
from sockapp.search import SearchIndex
from sockapp.text import peer_text

if TYPE_CHECKING:
    from sockapp.metrics import ServerMetrics


class SearchProtocol(ClosesInTime, FramedProtocol):
    """Answers each request frame with the tutorial's response frame."""

    factory: SearchFactory
    log = Logger()
    draining = False
    metrics: ServerMetrics | None = None
    answered_in_read = 0

    @property
    def peer(self) -> str:
        """The client as host:port, for logs. Asked each time: on a ``haproxy:``
        port the PROXY header naming the real client comes after ``connectionMade``."""
        return describe_address(self.transport.getPeer())

    def connectionMade(self) -> None:
        factory = self.factory
        self.max_content_length = factory.max_content_length
        self.max_json_length = factory.max_json_length
        self.metrics = factory.metrics
        if self.metrics is not None:
            self.count_sent = self.metrics.sent
        super().connectionMade()
        self.deadlines = factory.deadlines_for(self)
        # While the server itself does not read (the peer is slow to read its answers), a frame
        # in the kernel's queue is not late: its deadline stands still.
        read_only_as_fast_as_peer_reads(self.transport, self.deadlines.pause_frame, self.deadlines.resume_frame)
        factory.opened(self)
        if factory.verbose:
            self.log.info("connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        metrics = self.metrics
        if metrics is None:
            super().dataReceived(data)
        else:
            started = perf_counter()
            self.answered_in_read = 0
            super().dataReceived(data)
            metrics.received(len(data))
            metrics.latency(perf_counter() - started, self.answered_in_read)
        if not self.closing:
            in_frame = self._decoder.in_frame
            self.deadlines.activity(in_frame, self.completed_in_read > 0)
            if self.draining and not in_frame:
                self.closeAfterFlush()

    def messageReceived(self, message: Message) -> None:
        if self.factory.verbose:
            self.log.info(
                "{peer}: {content_type} request, {length} bytes",
                peer=self.peer,
                content_type=peer_text(message.header.content_type, 64),
                length=message.header.content_length,
            )
        try:
            response, action, outcome = self.factory.index.handle(message)
        except RemoteProtocolError as error:
            self.protocolError(error)
            return
        self.writeFrame(response)
        if self.metrics is not None:
            self.metrics.answered(action, outcome)
            self.answered_in_read += 1

    def protocolError(self, error: RemoteProtocolError) -> None:
        if self.closing:  # one error frame at most; a closing connection is not judged again
            return
        self.log.warn("{peer}: {code}: {reason}; closing", peer=self.peer, code=error.code.value, reason=error.message)
        if self.metrics is not None:
            self.metrics.error_frame(error.code)
        super().protocolError(error)
        self.closeWithin(self.factory.close_grace)

    def idleTimedOut(self) -> None:
        self.log.info(
            "{peer}: no traffic for {t:g} s (--idle-timeout); closing", peer=self.peer, t=self.factory.idle_timeout
        )
        self.closing = True
        abort_if_peer_not_reading(self.transport)
        self.closeWithin(self.factory.close_grace)

    def closeAfterFlush(self) -> None:
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
        timeout = self.factory.frame_timeout
        self.protocolError(
            RemoteProtocolError(ErrorCode.FRAME_TIMEOUT, f"a frame was started and not finished within {timeout:g} s")
        )
        abort_if_peer_not_reading(self.transport)

    def drain(self) -> None:
        """Graceful shutdown: close now if between requests, else once the current one is answered."""
        self.draining = True
        if not self.closing and not self._decoder.in_frame:
            self.closeAfterFlush()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.deadlines.cancel()
        self.factory.closed(self)
        if self.factory.verbose:
            self.log.info("connection from {peer} closed", peer=self.peer)


class SearchFactory(ServerFactory):
    """Builds ``SearchProtocol`` connections sharing one ``SearchIndex``."""

    protocol = SearchProtocol

    def __init__(
        self,
        index: SearchIndex | None = None,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        max_json_length: int = DEFAULT_MAX_JSON_LENGTH,
        **limits: Any,
    ) -> None:
        super().__init__(**limits)
        self.index = index if index is not None else SearchIndex()
        self.max_content_length = max_content_length
        self.max_json_length = max_json_length
