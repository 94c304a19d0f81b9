"""The echo server as a Twisted ``Protocol``/``Factory`` pair.

Every byte received is written back. The transport is its own producer, so
a peer that sends without reading is read no faster than it reads: server
memory per connection stays bounded. A peer that half-closes gets every
byte back before the connection closes.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockapp.protocol import (
    close_after_flush,
    describe_address,
    read_only_as_fast_as_peer_reads,
)


@implementer(IHalfCloseableProtocol)
class EchoProtocol(Protocol):
    """Writes back everything it reads."""

    factory: EchoFactory
    log = Logger()

    def connectionMade(self) -> None:
        read_only_as_fast_as_peer_reads(self.transport)
        self.peer = describe_address(self.transport.getPeer())
        self.received = 0
        self.log.info("echo connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        close_after_flush(self.transport)

    def writeConnectionLost(self) -> None:
        close_after_flush(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.factory.verbose:
            self.log.info("echo connection from {peer} closed after {n} bytes", peer=self.peer, n=self.received)
        else:
            self.log.info("echo connection from {peer} closed", peer=getattr(self, "peer", "?"))


class EchoFactory(Factory):
    """Builds ``EchoProtocol`` connections."""

    protocol = EchoProtocol
    noisy = False

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
