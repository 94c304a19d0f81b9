"""The search server as a Twisted ``Protocol``/``Factory`` pair.

The protocol only moves bytes: framing comes from ``FramedProtocol`` and
answers from ``SearchIndex``. Unlike the tutorial's server, a connection
stays open after an answer and serves further (also pipelined) requests.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.errors import RemoteProtocolError
from sockapp.framing import DEFAULT_MAX_CONTENT_LENGTH, Message
from sockapp.protocol import (
    FramedProtocol,
    describe_address,
    read_only_as_fast_as_peer_reads,
)
from sockapp.search import SearchIndex


class SearchProtocol(FramedProtocol):
    """Answers each request frame with the tutorial's response frame."""

    factory: SearchFactory
    log = Logger()

    def connectionMade(self) -> None:
        self.max_content_length = self.factory.max_content_length
        super().connectionMade()
        read_only_as_fast_as_peer_reads(self.transport)
        self.peer = describe_address(self.transport.getPeer())
        self.log.info("connection from {peer}", peer=self.peer)

    def messageReceived(self, message: Message) -> None:
        if self.factory.verbose:
            self.log.info(
                "{peer}: {content_type} request, {length} bytes",
                peer=self.peer,
                content_type=message.header.content_type,
                length=message.header.content_length,
            )
        try:
            response = self.factory.index.respond(message)
        except RemoteProtocolError as error:
            self.protocolError(error)
            return
        self.transport.write(response)

    def protocolError(self, error: RemoteProtocolError) -> None:
        self.log.warn(
            "{peer}: {code}: {message}; closing", peer=self.peer, code=error.code.value, message=error.message
        )
        super().protocolError(error)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.log.info("connection from {peer} closed", peer=getattr(self, "peer", "?"))


class SearchFactory(Factory):
    """Builds ``SearchProtocol`` connections sharing one ``SearchIndex``."""

    protocol = SearchProtocol
    noisy = False

    def __init__(
        self,
        index: SearchIndex | None = None,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        verbose: bool = False,
    ) -> None:
        self.index = index if index is not None else SearchIndex()
        self.max_content_length = max_content_length
        self.verbose = verbose
