"""The Twisted side of the wire format: a thin ``Protocol`` over ``FrameDecoder``.

Shaped like Twisted's ``IntNStringReceiver``: bytes arrive in
``dataReceived``, complete frames go up as ``messageReceived(message)``,
frames go down with ``sendMessage``. All parsing lives in ``framing``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast
from typing import Protocol as TypingProtocol

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHalfCloseableProtocol, IProducer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from sockapp.errors import RemoteProtocolError
from sockapp.wire.framing import (
    DEFAULT_MAX_CONTENT_LENGTH,
    NEED_DATA,
    FrameDecoder,
    Message,
    encode_frame,
    encode_json,
)
from sockapp.wire.text import peer_text

# How long a close that was decided on (a timeout, an error frame, a client's close()) may
# take to send what is queued; then the connection is aborted, whether or not the peer reads.
CLOSE_GRACE: Final = 2.0

# Writes a connection may have queued, whatever their size, before it stops reading. Twisted
# pauses reading by queued payload bytes only (``bufferSize``), but every queued write is also a
# Python object of about a hundred bytes: a peer that does not read and sends one byte per segment
# would otherwise make the echo server queue 256,000 one-byte writes, some 28 MB, before the pause.
MAX_QUEUED_WRITES: Final = 64


def error_document(error: RemoteProtocolError) -> dict[str, dict[str, str]]:
    """The content of the error frame sent for ``error``."""
    return {"error": {"code": error.code.value, "message": error.message}}


class StreamTransport(TypingProtocol):
    """What these helpers use of a connected stream transport (TCP, TLS, UNIX): ``ITransport``'s
    writing and closing plus the abort and producer registration, which Twisted declares only on
    ``ITCPTransport`` and ``IConsumer``, never together."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def read_only_as_fast_as_peer_reads(
    transport: StreamTransport,
    on_pause: Callable[[], object] | None = None,
    on_resume: Callable[[], object] | None = None,
) -> ReadingProducer:
    """Register the transport's reading as its own streaming producer.

    When the peer stops reading and our write buffer fills, Twisted pauses
    the producer, which for a transport means it stops reading from the
    peer; it resumes once the buffer drains. Memory per connection stays
    bounded by the transport's buffer plus one read. ``on_pause`` and
    ``on_resume`` are told when reading stops and starts again. The protocol
    may also stop reading for its own reasons (``ReadingProducer.hold``).
    """
    producer = ReadingProducer(transport, on_pause, on_resume)
    transport.registerProducer(producer, True)
    return producer


@implementer(IPushProducer)
class ReadingProducer:
    """The transport's own reading, stopped while the peer does not read our answers
    (Twisted pauses it) or while the protocol holds it; it reads only when neither does."""

    def __init__(
        self, transport: Any, on_pause: Callable[[], object] | None, on_resume: Callable[[], object] | None
    ) -> None:
        self.transport = transport
        self.on_pause = on_pause
        self.on_resume = on_resume
        self.paused = False  # by Twisted: the peer is not reading
        self._held = False  # by the protocol

    def pauseProducing(self) -> None:
        self.paused = True
        self._update(not self._held)

    def resumeProducing(self) -> None:
        self.paused = False
        self._update(not self._held, resume=True)

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """Stop reading until ``release``, whatever the peer does."""
        if not self._held:
            self._held = True
            self._update(not self.paused)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._update(not self.paused, resume=True)

    def _update(self, changed: bool, resume: bool = False) -> None:
        if not changed:
            return
        if resume:
            self.transport.resumeProducing()
            if self.on_resume is not None:
                self.on_resume()
        else:
            self.transport.pauseProducing()
            if self.on_pause is not None:
                self.on_pause()

    def stopProducing(self) -> None:
        self.transport.stopProducing()


def _plain_socket_transports() -> tuple[type, ...]:
    from twisted.internet import tcp, unix

    from sockapp.net.endpoints import ServerConnection

    return (tcp.Server, unix.Server, ServerConnection)


_PLAIN_TRANSPORTS = _plain_socket_transports()


def write_now(transport: ITransport, data: bytes) -> None:
    """Write ``data``, sending it at once if nothing is queued before it.

    Twisted's ``write`` only queues, and sends on the next reactor turn (two
    more epoll calls per answer). On a plain TCP or UNIX transport with an
    empty queue this sends straight away and queues only what the kernel did
    not take; anything else (TLS, a queue already there, an error) goes
    through ``transport.write`` as usual, so ordering, backpressure and error
    handling stay Twisted's.
    """
    if (
        type(transport) not in _PLAIN_TRANSPORTS
        or getattr(transport, "dataBuffer", True)
        or getattr(transport, "_tempDataLen", True)  # Twisted's queue; if it is ever renamed, just queue
        or transport.disconnecting  # type: ignore[attr-defined]
    ):
        transport.write(data)
        pause_if_many_writes_queued(transport)
        return
    try:
        sent = transport.socket.send(data)  # type: ignore[attr-defined]
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # let the transport meet the error its own way
        return
    if sent < len(data):
        transport.write(data[sent:])


def pause_if_many_writes_queued(transport: object) -> None:
    """Pause the socket transport's producer, as Twisted does when its buffer is full, once
    ``MAX_QUEUED_WRITES`` writes wait in its queue; Twisted resumes it when the queue has drained.

    ``transport`` may wrap the socket's transport (TLS, a PROXY header reader): the socket's is
    found a few ``.transport`` links down (a wrapper hands unknown attributes down, so it is told
    apart by its class, not by what it answers). Nothing to do where no producer is registered.
    """
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            break
        transport = getattr(transport, "transport", None)
    else:
        return
    if len(transport._tempDataBuffer) < MAX_QUEUED_WRITES:
        return
    producer = transport.producer
    if producer is None or not transport.streamingProducer or transport.producerPaused:
        return
    transport.producerPaused = True  # Twisted resumes it once the queue has drained
    cast(IPushProducer, producer).pauseProducing()  # streaming: a push producer


def send_without_delay(transport: ITransport) -> None:
    """Turn Nagle's algorithm off, for a stream that writes as soon as it reads.

    With it on, the tail of each large write waits in the kernel for the
    peer's ACK and is then pushed out from the ACK's softirq: about 15% more
    kernel time per echoed MB on loopback (asyncio and uvloop turn it off on
    every TCP socket). Not a TCP socket (UNIX), or none at all: nothing to do.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return
    try:
        set_no_delay(True)
    except (OSError, AttributeError, NotImplementedError):
        pass


def close_after_flush(transport: StreamTransport) -> None:
    """Close once buffered output is written.

    The transport must stop being its own producer first: Twisted does not
    finish a ``loseConnection`` while a producer is registered.
    """
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    transport.loseConnection()


def abort_if_peer_not_reading(transport: StreamTransport) -> None:
    """Close now; drop unsent output only if the peer has stopped reading it.

    A peer that reads gets what was written before the close; one that does
    not would hold a graceful close open for ever.
    """
    if getattr(transport, "producerPaused", False):
        transport.abortConnection()
    else:
        close_after_flush(transport)


def describe_address(address: object) -> str:
    """A short text for a peer address in logs: host:port, or unix:path (escaped: behind a
    PROXY header the host is the peer's own words)."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return peer_text(f"{host}:{port}", 80)
    name = getattr(address, "name", None)
    if name is not None:
        return peer_text(f"unix:{name.decode(errors='backslashreplace') if isinstance(name, bytes) else name}", 200)
    return peer_text(str(address), 200)


@implementer(IHalfCloseableProtocol)
class FramedProtocol(Protocol):
    """Splits the byte stream into ``Message`` objects.

    A malformed frame ends the connection: ``protocolError`` is called with
    the typed error, which by default answers with a ``text/json`` error
    frame and closes after it is written. Frames complete before the broken
    one are still delivered first, in order.

    A peer that half-closes (shuts down its sending side) still gets every
    answer to what it sent; then the connection closes.

    :cvar max_content_length: the largest ``content-length`` accepted.
    :cvar max_json_length: the largest ``text/json`` ``content-length``
        accepted; ``None``: the same limit as any other content.
    :cvar content_faults_in_band: false: a message whose content could not be
        read (``Message.error``) is a protocol error, as a client treats an
        answer; true: it goes to ``messageReceived`` (a server answers it in-band).
    :cvar holding: true while the protocol wants no more messages for now:
        complete frames wait in the decoder, and ``resumeMessages`` hands them out.
    :cvar log: where protocol errors are logged.
    :cvar closing: set once the connection is closing: no more messages are handed out.
    :cvar completed_in_read: frames completed by the last read: if it left a
        frame unfinished, that frame began in it.
    :cvar count_sent: told the length of everything written (for metrics); ``None`` costs nothing.
    """

    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH
    max_json_length: int | None = None  # None: text/json content has the same limit as any other
    # False: a message whose content could not be read (``Message.error``) is a protocol error,
    # as a client treats an answer; True: it goes to ``messageReceived`` (a server answers it in-band).
    content_faults_in_band: bool = False
    # True while the protocol wants no more messages for now (too many unanswered): complete
    # frames wait in the decoder, and ``resumeMessages`` hands them out.
    holding: bool = False
    log = Logger()

    # Connected: a TCP, TLS or UNIX transport (a StreamTransport); Twisted types it
    # ``ITransport | None``, without the producer and abort methods those transports have.
    transport: Any
    _decoder: FrameDecoder
    _batch: list[bytes] | None = None
    closing: bool = False
    # Frames completed by the last read: if it left a frame unfinished, that frame began in it.
    completed_in_read: int = 0
    # Told the length of everything written (for metrics); None costs nothing.
    count_sent: Callable[[int], None] | None = None

    def connectionMade(self) -> None:
        self._decoder = FrameDecoder(self.max_content_length, self.max_json_length)
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        """Decode ``data`` and hand out each complete message, in order, until ``holding`` or closing."""
        if self.closing:
            return
        decoder = self._decoder
        decoder.receive_data(data)
        self._batch = []
        self.completed_in_read = 0
        try:
            while not self.closing and not self.holding:
                try:
                    message = decoder.next_message()
                except RemoteProtocolError as error:
                    self.protocolError(error)
                    return
                if message is NEED_DATA:
                    return
                self.completed_in_read += 1
                if message.error is not None and not self.content_faults_in_band:  # type: ignore[union-attr]
                    self.protocolError(message.error)  # type: ignore[union-attr]
                    return
                self.messageReceived(message)  # type: ignore[arg-type]
        finally:
            self._flush()

    def resumeMessages(self) -> None:
        """Stop ``holding``: hand out the complete frames that waited meanwhile."""
        self.holding = False
        FramedProtocol.dataReceived(self, b"")  # no new bytes: what the decoder holds

    def writeFrame(self, frame: bytes) -> None:
        """Write an encoded frame.

        Frames written while one read is being handled are joined and given
        to the transport as one write at its end: pipelined answers cost one
        write (and one buffer entry) per read, not one per answer.
        """
        if self._batch is None:
            if self.count_sent is not None:
                self.count_sent(len(frame))
            write_now(self.transport, frame)
        else:
            self._batch.append(frame)

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            if self.count_sent is not None:
                self.count_sent(len(data))
            write_now(self.transport, data)

    def messageReceived(self, message: Message) -> None:
        """Override: called once for each complete frame, in arrival order."""
        raise NotImplementedError

    def protocolError(self, error: RemoteProtocolError) -> None:
        """The peer broke the protocol: answer with an error frame and close."""
        self.sendJSON(error_document(error))
        self.closeAfterFlush()

    def sendMessage(self, content: bytes, content_type: str, content_encoding: str) -> None:
        """Write one frame carrying ``content``."""
        self.writeFrame(encode_frame(content, content_type, content_encoding))

    def sendJSON(self, document: Any, content_encoding: str = "utf-8") -> None:
        """Write one ``text/json`` frame carrying ``document``."""
        self.writeFrame(encode_json(document, content_encoding))

    def closeAfterFlush(self) -> None:
        """Stop handling input and close once everything written has been sent."""
        self.closing = True
        self._flush()
        close_after_flush(self.transport)

    def readConnectionLost(self) -> None:
        """The peer sent EOF: what it sent is answered, so close after the answers."""
        self.closeAfterFlush()

    def writeConnectionLost(self) -> None:
        """The peer stopped reading our side for good; nothing more to do."""
        self.closeAfterFlush()
