"""The echo server as a Twisted ``Protocol``/``Factory`` pair.

Every byte received is written back, read up to 256,000 bytes at a time (as
uvloop reads) and sent at once with Nagle's algorithm off (as asyncio and
uvloop do). The transport is its own producer, so a peer that sends without
reading is read no faster than it reads: server memory per connection stays
bounded. A peer that half-closes gets every byte back before the connection
closes.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockapp.net.protocol import (
    abort_if_peer_not_reading,
    close_after_flush,
    describe_address,
    read_only_as_fast_as_peer_reads,
    send_without_delay,
    write_now,
)
from sockapp.net.tls import note_handshake_failure
from sockapp.server.lifecycle import ClosesInTime, ServerFactory

# uvloop's read size. A read of 256 KiB (asyncio's) empties the socket at every read when the
# client keeps exactly 256 KiB in flight, as compare.py's echo load does: then the two sides take
# turns and each MB costs the server about 15% more CPU (benchmarks/README.md, "Echo read size").
READ_SIZE = 256_000


@implementer(IHalfCloseableProtocol)
class EchoProtocol(ClosesInTime, Protocol):
    """Writes back everything it reads."""

    factory: EchoFactory
    log = Logger()

    @property
    def peer(self) -> str:
        """The client as host:port, for logs. Asked each time: on a ``haproxy:``
        port the PROXY header naming the real client comes after ``connectionMade``."""
        return describe_address(self.transport.getPeer())

    def connectionMade(self) -> None:
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        send_without_delay(self.transport)
        read_only_as_fast_as_peer_reads(self.transport)
        self.received = 0
        self.deadlines = self.factory.deadlines_for(self, frame_timeout=False)
        self.factory.opened(self)
        if self.factory.verbose:
            self.log.info("echo connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        write_now(self.transport, data)
        self.deadlines.activity(False)
        metrics = self.factory.metrics
        if metrics is not None:
            metrics.received(len(data))
            metrics.sent(len(data))

    def readConnectionLost(self) -> None:
        """The peer sent EOF: it gets its echo, for as long as the idle timeout allows."""
        close_after_flush(self.transport)
        self.closeWithin(self.factory.idle_timeout or None)

    def writeConnectionLost(self) -> None:
        close_after_flush(self.transport)
        self.closeWithin(self.factory.close_grace)

    def idleTimedOut(self) -> None:
        self.log.info(
            "{peer}: no traffic for {t:g} s (--idle-timeout); closing", peer=self.peer, t=self.factory.idle_timeout
        )
        abort_if_peer_not_reading(self.transport)
        self.closeWithin(self.factory.close_grace)

    def frameTimedOut(self) -> None:  # echo has no frames; never armed
        pass

    def drain(self) -> None:
        """Graceful shutdown: everything read has been written back; close once it is sent."""
        close_after_flush(self.transport)
        self.closeWithin(None)  # closing: no idle deadline; the shutdown timeout bounds it

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.deadlines.cancel()
        note_handshake_failure(self.log, self.peer, self.transport, reason, self.factory.metrics)
        self.factory.closed(self)
        if self.factory.verbose:
            self.log.info("echo connection from {peer} closed after {n} bytes", peer=self.peer, n=self.received)


class EchoFactory(ServerFactory[EchoProtocol]):
    """Builds ``EchoProtocol`` connections."""

    protocol = EchoProtocol
