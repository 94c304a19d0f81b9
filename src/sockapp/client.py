"""Clients over any Twisted client endpoint: the app (search) client and the echo client.

``connect(reactor, endpoint)`` gives an ``AppClient`` whose ``request`` and
``send`` return Deferreds firing with a frozen ``Response``. Requests may be
pipelined; answers are matched to them in order. If the connection ends,
every outstanding Deferred fails with ``ConnectionClosed``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from attrs import field, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from sockapp.errors import (
    BadEndpoint,
    ConnectionClosed,
    ErrorCode,
    RemoteProtocolError,
    ServerError,
)
from sockapp.framing import JSON_CONTENT_TYPE, Header, Message
from sockapp.protocol import FramedProtocol

DEFAULT_ENDPOINT: Final = "tcp:host=127.0.0.1:port=5634"
BINARY_REQUEST_TYPE: Final = "binary/custom-client-binary-type"
BINARY_REQUEST_ENCODING: Final = "binary"


@frozen
class Response:
    """One answer from the server.

    ``result`` is the ``"result"`` member of a ``text/json`` answer (for a
    search, the answer string); ``content`` and ``content_type`` give the
    raw content, which is what a binary answer is.
    """

    header: Header
    content: bytes
    document: Any = field(default=None, eq=False)

    @property
    def content_type(self) -> str:
        return self.header.content_type

    @property
    def result(self) -> Any:
        if isinstance(self.document, dict):
            return self.document.get("result")
        return None


def request_frame_fields(action: str, value: str) -> tuple[object, str, str]:
    """What the tutorial's client sends for ``action``/``value``.

    ``search`` is a ``text/json`` request ``{"action", "value"}``; any other
    action is a binary request whose content is ``action + value`` in UTF-8.
    Returns (content, content_type, content_encoding); JSON content is the
    document, not yet encoded.
    """
    if action == "search":
        return {"action": action, "value": value}, JSON_CONTENT_TYPE, "utf-8"
    return (action + value).encode("utf-8"), BINARY_REQUEST_TYPE, BINARY_REQUEST_ENCODING


def _server_error(message: Message) -> ServerError | None:
    document = message.document
    if message.is_json and isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        return ServerError(str(error.get("code", "unknown")), str(error.get("message", "")))
    return None


class _Closable:
    """``close()`` returning a Deferred that fires once the connection is gone."""

    transport: Any
    connected: bool | int

    def _start_close_tracking(self) -> None:
        self._closed_waiters: list[Deferred[None]] = []

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
        if not self.connected:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed_waiters.append(closed)
        self.transport.loseConnection()
        return closed

    def _notify_closed(self) -> None:
        self.connected = False
        waiters, self._closed_waiters = self._closed_waiters, []
        for closed in waiters:
            closed.callback(None)


class AppClient(_Closable, FramedProtocol):
    """Client side of the app protocol: requests out, responses matched in order."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self._outstanding: deque[Deferred[Response]] = deque()
        self._start_close_tracking()

    def send(self, content: bytes, content_type: str, content_encoding: str) -> Deferred[Response]:
        """Send one frame; the Deferred fires with its answer."""
        if self.closing or not self.connected:
            return fail(ConnectionClosed("the connection is closed"))
        answer: Deferred[Response] = Deferred()
        self._outstanding.append(answer)
        self.sendMessage(content, content_type, content_encoding)
        return answer

    def sendDocument(self, document: Any, content_encoding: str = "utf-8") -> Deferred[Response]:
        """Send a ``text/json`` request carrying ``document``."""
        if self.closing or not self.connected:
            return fail(ConnectionClosed("the connection is closed"))
        answer: Deferred[Response] = Deferred()
        self._outstanding.append(answer)
        self.sendJSON(document, content_encoding)
        return answer

    def request(self, action: str, value: str) -> Deferred[Response]:
        """Send what the tutorial's client sends for ``action``/``value``."""
        content, content_type, encoding = request_frame_fields(action, value)
        if content_type == JSON_CONTENT_TYPE:
            return self.sendDocument(content, encoding)
        return self.send(content, content_type, encoding)  # type: ignore[arg-type]

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._outstanding)

    def messageReceived(self, message: Message) -> None:
        if not self._outstanding:
            self.protocolError(
                RemoteProtocolError(ErrorCode.UNEXPECTED_RESPONSE, "the server sent an answer to no request")
            )
            return
        answer = self._outstanding.popleft()
        error = _server_error(message)
        if error is not None:
            answer.errback(error)
        else:
            answer.callback(Response(message.header, message.content, message.document))

    def protocolError(self, error: RemoteProtocolError) -> None:
        """A malformed answer: fail everything outstanding with it and close (no error frame back)."""
        self.closing = True
        self._fail_outstanding(error)
        self.transport.loseConnection()

    def close(self) -> Deferred[None]:
        self.closing = True
        return super().close()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._fail_outstanding(ConnectionClosed("the connection closed before the answer arrived"))
        self._notify_closed()

    def _fail_outstanding(self, error: Exception) -> None:
        outstanding, self._outstanding = self._outstanding, deque()
        for answer in outstanding:
            answer.errback(error)


class EchoClient(_Closable, Protocol):
    """Sends bytes and collects the echo."""

    def connectionMade(self) -> None:
        self._received = bytearray()
        self._expected = 0
        self._waiting: Deferred[bytes] | None = None
        self._start_close_tracking()

    def roundTrip(self, data: bytes) -> Deferred[bytes]:
        """Send ``data``; fire with exactly that many bytes of echo once all are back."""
        if self._waiting is not None:
            return fail(RuntimeError("one round trip at a time"))
        self._expected = len(data)
        self._waiting = Deferred()
        waiting = self._waiting
        self.transport.write(data)
        self._check()
        return waiting

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        self._check()

    def _check(self) -> None:
        if self._waiting is not None and len(self._received) >= self._expected:
            echoed = bytes(self._received[: self._expected])
            del self._received[: self._expected]
            waiting, self._waiting = self._waiting, None
            waiting.callback(echoed)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._waiting is not None:
            got = len(self._received)
            waiting, self._waiting = self._waiting, None
            waiting.errback(
                ConnectionClosed(f"the server closed the connection after echoing {got} of {self._expected} bytes")
            )
        self._notify_closed()


def _endpoint(reactor: Any, endpoint: str | IStreamClientEndpoint) -> IStreamClientEndpoint:
    if not isinstance(endpoint, str):
        return endpoint
    try:
        return clientFromString(reactor, endpoint)
    except (ValueError, TypeError, KeyError) as e:
        raise BadEndpoint(f"bad endpoint {endpoint!r}: {e}") from None


def connect(reactor: Any, endpoint: str | IStreamClientEndpoint = DEFAULT_ENDPOINT) -> Deferred[AppClient]:
    """Connect an ``AppClient`` to ``endpoint`` (a client endpoint string or object)."""
    try:
        ep = _endpoint(reactor, endpoint)
    except BadEndpoint as e:  # reported through the Deferred, like a refused connection
        return fail(e)
    return ep.connect(Factory.forProtocol(AppClient))


def connect_echo(reactor: Any, endpoint: str | IStreamClientEndpoint = DEFAULT_ENDPOINT) -> Deferred[EchoClient]:
    """Connect an ``EchoClient`` to ``endpoint``."""
    try:
        ep = _endpoint(reactor, endpoint)
    except BadEndpoint as e:
        return fail(e)
    return ep.connect(Factory.forProtocol(EchoClient))
