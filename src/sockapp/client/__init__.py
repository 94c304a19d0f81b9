"""Clients over any Twisted client endpoint: the app (search) client and the echo client.

``connect(reactor, endpoint)`` gives a ``Client`` whose ``request`` and
``send`` return Deferreds firing with a frozen ``Response``. Requests may be
pipelined; answers are matched to them in order. If the connection ends
before an answer, an idempotent request is sent again on a new connection:
without limit when the server closed between answers after answering (as
the tutorial's does after every answer), else up to ``retries`` times (a
server or balancer dropped the connection). Requests that are not
idempotent, or have no retries left, fail with ``ConnectionClosed``. The
sockapp servers keep no state, so every request to them is idempotent.
Once a server has closed a connection right after its only answer with
another request unanswered on it (as the tutorial's does), the client sends
one request per connection to it from then on, as an HTTP/1.0 client does.

``AppClient`` and ``EchoClient`` are the protocols underneath, usable on
their own over any transport.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from sockapp.errors import (
    BadEndpoint,
    ConnectionClosed,
    ConnectTimeout,
    ErrorCode,
    RemoteProtocolError,
    RequestTimeout,
    ServerError,
    TLSFailure,
)
from sockapp.net.endpoints import client_endpoint
from sockapp.net.protocol import CLOSE_GRACE, FramedProtocol
from sockapp.net.tls import handshake_unfinished, tls_failure_text
from sockapp.wire.framing import JSON_CONTENT_TYPE, FrameDecoder, Header, Message, encode_frame, encode_json

DEFAULT_ENDPOINT: Final = "tcp:host=127.0.0.1:port=5634"
"""Where the ``sockapp`` command connects without ``--connect``: the tutorial's server."""
DEFAULT_RETRIES: Final = 2
"""How many times a `Client` sends an idempotent request again after a dropped connection."""
BINARY_REQUEST_TYPE: Final = "binary/custom-client-binary-type"
"""The ``content-type`` of the tutorial client's binary requests (any action but ``search``)."""
BINARY_REQUEST_ENCODING: Final = "binary"
"""The ``content-encoding`` of the tutorial client's binary requests."""


@frozen
class Response:
    """One answer from the server.

    ``result`` is the ``"result"`` member of a ``text/json`` answer (for a
    search, the answer string); ``content`` and ``content_type`` give the
    raw content, which is what a binary answer is.

    :ivar header: the answer frame's header.
    :ivar content: the answer's content, exactly as received.
    :ivar document: the parsed JSON of a ``text/json`` answer; ``None`` otherwise.
    """

    header: Header
    content: bytes
    document: Any = field(default=None, eq=False)

    @property
    def content_type(self) -> str:
        """The answer's ``content-type``."""
        return self.header.content_type

    @property
    def is_json(self) -> bool:
        """Whether the answer is ``text/json`` (and so `document` is its JSON)."""
        return self.header.content_type == JSON_CONTENT_TYPE

    @property
    def result(self) -> Any:
        """The ``"result"`` member of a JSON object answer; ``None`` for any other answer."""
        if isinstance(self.document, dict):
            return self.document.get("result")
        return None


def request_frame(action: str, value: str) -> bytes:
    """The frame the tutorial's client sends for ``action``/``value``.

    ``search`` is a ``text/json`` request ``{"action", "value"}``; any other
    action is a binary request whose content is ``action + value`` in UTF-8.
    """
    if action == "search":
        return encode_json({"action": action, "value": value})
    return encode_frame((action + value).encode("utf-8"), BINARY_REQUEST_TYPE, BINARY_REQUEST_ENCODING)


def _result_of(response: Response) -> Any:
    if response.is_json and isinstance(response.document, dict) and "result" in response.document:
        return response.document["result"]
    if response.is_json:
        raise ServerError("unexpected-response", "a text/json answer without a result")
    return response.content


def _server_error(message: Message) -> ServerError | None:
    document = message.document
    if message.is_json and isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        return ServerError(str(error.get("code", "unknown")), str(error.get("message", "")))
    return None


class _Pending:
    """A request on its way: its frame (kept for a re-send), its Deferred, its timer,
    whether it may be sent twice and how many more times after a dropped connection,
    and the connection it was last sent on (to give that up if it times out)."""

    __slots__ = ("frame", "answer", "timer", "abandoned", "idempotent", "retries_left", "connection")

    def __init__(self, frame: bytes, answer: Deferred[Response], idempotent: bool = True, retries: int = 0) -> None:
        self.frame = frame
        self.answer = answer
        self.timer: IDelayedCall | None = None
        self.abandoned = False
        self.idempotent = idempotent
        self.retries_left = retries
        self.connection: AppClient | None = None

    def settle(self, outcome: Response | Exception) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.connection = None
        if self.abandoned:
            return
        self.abandoned = True
        if isinstance(outcome, Exception):
            self.answer.errback(outcome)
        else:
            self.answer.callback(outcome)


class _Closable:
    """``close()`` returning a Deferred that fires once the connection is gone.

    :ivar transport: the connection's transport.
    :ivar connected: true while the connection is up.
    """

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
        if handshake_unfinished(self.transport):
            # Twisted's TLS loseConnection waits for the handshake once something was
            # written, for ever if the server stalls: there is nothing to close cleanly yet.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
        return closed

    def _notify_closed(self) -> None:
        self.connected = False
        waiters, self._closed_waiters = self._closed_waiters, []
        for closed in waiters:
            closed.callback(None)


# Called when an AppClient's connection ends: (the AppClient, its unanswered
# requests, answers received on it, whether the server ended it between answers
# rather than inside one or we gave it up, the error to fail them with).
LostHandler = Callable[["AppClient", list[_Pending], int, bool, ConnectionClosed], None]
"""`AppClient.on_lost`: called with the connection, its unanswered requests, the
answers received on it, whether the server ended it between answers (not inside
one, and not given up by us), and the error to fail the requests with."""


def _loss_error(reason: Failure | None, transport: Any = None) -> ConnectionClosed:
    """The error for requests left unanswered by a lost connection; TLS refusals named as such."""
    error = reason.value if reason is not None else None
    text = tls_failure_text(transport, error)
    if text is not None:
        return TLSFailure(text)
    if handshake_unfinished(transport):
        return TLSFailure("TLS: the connection closed during the handshake; does the server speak TLS?")
    return ConnectionClosed("the connection closed before the answer arrived")


class AppClient(_Closable, FramedProtocol):
    """Client side of the app protocol on one connection: requests out, answers matched in order.

    :cvar on_made: called with the connection once it is made (a `Client` tracks its connections so).
    :cvar on_lost: called when the connection ends, to send its unanswered
        requests again; without it they fail with `ConnectionClosed`.
    :ivar given_up: set once a request on this connection timed out and the
        connection was given up (`giveUp`).
    :ivar single_request: set for a connection that carries one request only:
        it is closed once that is answered.
    :ivar closing: set once the connection is being closed: `usable` is false.
    :ivar submitted: requests written on this connection.
    :ivar answered: answers received on this connection.
    """

    on_made: Callable[[AppClient], None] | None = None
    on_lost: LostHandler | None = None
    # Set once a request on this connection timed out and the connection was given up.
    given_up: bool = False
    # Set for a connection that carries one request only: it is closed once that is answered.
    single_request: bool = False

    def connectionMade(self) -> None:
        """Start decoding answers (as a client, with a client's limits) and tell `on_made`."""
        super().connectionMade()
        self._decoder = FrameDecoder(self.max_content_length, self.max_json_length, side="client")
        self._outstanding: deque[_Pending] = deque()
        self.answered = 0
        self.submitted = 0
        self.last_answer_was_error = False  # an error frame: a close after it is a refusal, not a habit
        self._start_close_tracking()
        if self.on_made is not None:
            self.on_made(self)

    @property
    def usable(self) -> bool:
        """Connected and not closing: a request sent now can be answered."""
        return bool(self.connected) and not self.closing

    def submit(self, pending: _Pending) -> None:
        """Write an encoded request; its answer settles ``pending``."""
        if pending.abandoned:
            return
        if not self.usable:
            pending.settle(ConnectionClosed("the connection is closed"))
            return
        pending.connection = self
        self._outstanding.append(pending)
        self.submitted += 1
        self.transport.write(pending.frame)

    def sendFrame(self, frame: bytes) -> Deferred[Response]:
        """Send an encoded request frame; the Deferred fires with its answer."""
        pending = _Pending(frame, Deferred())
        self.submit(pending)
        return pending.answer

    def send(self, content: bytes, content_type: str, content_encoding: str) -> Deferred[Response]:
        """Send one frame carrying ``content``; the Deferred fires with its answer."""
        return self.sendFrame(encode_frame(content, content_type, content_encoding))

    def sendDocument(self, document: Any, content_encoding: str = "utf-8") -> Deferred[Response]:
        """Send a ``text/json`` request carrying ``document``."""
        return self.sendFrame(encode_json(document, content_encoding))

    def request(self, action: str, value: str) -> Deferred[Response]:
        """Send what the tutorial's client sends for ``action``/``value``."""
        return self.sendFrame(request_frame(action, value))

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
        pending = self._outstanding.popleft()
        self.answered += 1
        error = _server_error(message)
        self.last_answer_was_error = error is not None
        pending.settle(error if error is not None else Response(message.header, message.content, message.document))
        if self.single_request and not self._outstanding and self.connected:
            self.close()  # its one request is answered: not left open on the server

    def protocolError(self, error: RemoteProtocolError) -> None:
        """A malformed answer: fail everything outstanding with it and close (no error frame back)."""
        self.closing = True
        outstanding, self._outstanding = list(self._outstanding), deque()
        for pending in outstanding:
            pending.settle(error)
        self.transport.loseConnection()

    def close(self) -> Deferred[None]:
        self.closing = True
        return super().close()

    def giveUp(self) -> None:
        """A request on this connection went unanswered too long: abort the connection.

        Answers come in order, so once one is missing nothing after it can be
        matched to its request with confidence; and a server that stalls may
        never read what is queued. So the connection is aborted at once, not
        closed gracefully: a graceful close would send requests we no longer
        wait for (the server might act on them) and hold their buffers for the
        close grace. ``connectionLost`` then sends what else was outstanding
        again, within its retries, or fails it.
        """
        if not self.connected or self.given_up:
            return
        self.given_up = True
        self.closing = True
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """The server sent EOF: nothing outstanding can be answered on this connection any more.

        Aborted at once rather than closed after our unsent output (which a
        server that also stopped reading would never take): ``connectionLost``
        then sends what was outstanding again, or fails it, straight away.
        """
        self.closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Hand what is unanswered to `on_lost` (or fail it), then fire the Deferreds of ``close()``."""
        self.closing = True
        unanswered = [p for p in self._outstanding if not p.abandoned]
        self._outstanding = deque()
        for pending in unanswered:
            pending.connection = None
        # A close or reset between answers, not in the middle of one. (A server
        # that closes with our next request unread makes its kernel send a
        # reset, so a reset here is as ordinary as a close.) Not so if we gave it up.
        between_answers = not self._decoder.in_frame and not self.given_up
        if self.given_up:
            error = ConnectionClosed("the connection was given up after a request on it timed out")
        else:
            error = _loss_error(reason, self.transport)
        if self.on_lost is not None:
            self.on_lost(self, unanswered, self.answered, between_answers and not isinstance(error, TLSFailure), error)
        else:
            for pending in unanswered:
                pending.settle(error)
        self._notify_closed()


class Client:
    """Requests to one server endpoint, over one connection made when needed.

    A connection is made on first use and again whenever the last one has
    closed. When a connection ends with requests unanswered, each idempotent
    one is sent again on a new connection: always, if the connection had
    answered at least one request and ended between answers (closed or
    reset, as the tutorial's server does; each connection answers at least
    one, so this ends); otherwise (dropped before any answer or in the
    middle of one: a backend dying behind a balancer) at most ``retries``
    times. A request that is not idempotent or is out of retries fails with
    ``ConnectionClosed``. ``resent`` and ``retried`` count the two kinds.

    A server that closes after every answer (the tutorial's) would have
    every request but the first on a connection written to it after it had
    closed, and sent again. So once a connection is closed by the server
    right after its only answer while another request of ours was on it,
    ``one_request_per_connection`` is set and stays set: each request then
    goes on a connection of its own, made for it, which the client closes
    once it is answered (connections are made one after another, each as
    soon as the last is up, so concurrent requests are in flight on as many
    connections). Nothing else sets it: a close of an idle connection (an
    idle timeout) has no request on it, a server with a limit of requests
    per connection answered more than one, a close right after an error frame is a
    server refusing that request (a sockapp server closes after one), and a connection dropped before
    any answer or in the middle of one is a failure, not a habit.

    ``connect_timeout`` bounds each connection attempt (``ConnectTimeout``);
    ``request_timeout`` bounds each request from send to answer
    (``RequestTimeout``). A request that times out on a connection makes
    the client give that connection up (``AppClient.giveUp``): answers come
    in order, so after a missing one the stream cannot be trusted, and a
    stalled server would otherwise collect every later request on it. What
    else was outstanding there is treated as dropped (sent again within
    ``retries`` if idempotent) and later requests go on a new connection.

    :ivar reactor: the reactor connections are made with and timeouts run on.
    :ivar endpoint: the client endpoint every connection is made to.
    :ivar connect_timeout: seconds each connection attempt may take, or ``None``.
    :ivar request_timeout: seconds each request may wait for its answer, or
        ``None``; a request's own ``timeout`` overrides it.
    :ivar retries: how many times an idempotent request is sent again after a
        connection dropped before any answer or inside one.
    :ivar connections_made: connections made so far.
    :ivar resent: requests sent again after a server closed between answers.
    :ivar retried: requests sent again after a dropped connection (each one of ``retries``).
    :ivar one_request_per_connection: set once the server showed it closes
        after every answer; each request then goes on a connection of its own.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        connect_timeout: float | None = None,
        request_timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self.reactor = reactor
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retries = retries
        self.connections_made = 0
        self.resent = 0
        self.retried = 0
        self.one_request_per_connection = False
        self._protocol: AppClient | None = None  # the connection new requests go to
        self._connections: set[AppClient] = set()  # every connection still open, closing ones too
        self._connecting: Deferred[AppClient] | None = None
        self._waiting: dict[_Pending, None] = {}  # waiting for a connection, in order; a dict to drop timed-out ones
        self._connection_waiters: list[Deferred[AppClient]] = []
        self._closed = False

    @property
    def tls_handshake_pending(self) -> bool:
        """A connection of this client is TLS and its handshake has not finished
        (as with a server that does not speak TLS and waits for more)."""
        return any(handshake_unfinished(c.transport) for c in self._connections)

    def connection(self) -> Deferred[AppClient]:
        """The current connection, made first if there is none."""
        if self._protocol is not None and self._protocol.usable:
            return succeed(self._protocol)
        waiter: Deferred[AppClient] = Deferred()
        self._connection_waiters.append(waiter)
        if self._connecting is None:
            self._start_connecting()
        return waiter

    def _start_connecting(self) -> None:
        # Twisted types connect() as Deferred[IProtocol]; it fires with the factory's protocol.
        attempt = cast("Deferred[AppClient]", self.endpoint.connect(_AppClientFactory(self._made, self._lost)))
        self._connecting = attempt
        if self.connect_timeout is not None:
            attempt.addTimeout(self.connect_timeout, self.reactor, onTimeoutCancel=_connect_timed_out)
        attempt.addBoth(self._connected)

    def _made(self, protocol: AppClient) -> None:
        """A connection is up (its endpoint may not have said so yet): track it, or close it
        if the client was closed (or its ``connect()`` cancelled) while it was being made."""
        self._connections.add(protocol)
        if self._closed:
            _close_within_grace(self.reactor, [protocol])

    def _connected(self, result: AppClient | Failure) -> None:
        self._connecting = None
        waiting, self._waiting = self._waiting, {}
        waiters, self._connection_waiters = self._connection_waiters, []
        if not isinstance(result, Failure) and self._closed:
            result = Failure(ConnectionClosed("the client was closed"))  # ``_made`` closed the connection
        if isinstance(result, Failure):
            for pending in waiting:
                pending.settle(result.value)  # type: ignore[arg-type]
            for waiter in waiters:
                waiter.errback(result)
            return
        self.connections_made += 1
        self._protocol = result
        if self.one_request_per_connection and waiting:
            first, *rest = waiting
            self._submit(result, first)
            for pending in rest:  # each waits for a connection of its own: the next is made now
                self._dispatch(pending)
        else:
            for pending in waiting:
                result.submit(pending)
        for waiter in waiters:
            waiter.callback(result)

    def _lost(
        self,
        protocol: AppClient,
        unanswered: list[_Pending],
        answered: int,
        between_answers: bool,
        error: ConnectionClosed,
    ) -> None:
        self._connections.discard(protocol)
        if self._protocol is protocol:  # an older connection that was closing may end after a newer one opened
            self._protocol = None
        closed_by_tutorial_server = between_answers and answered > 0
        # One answer, then a close with more of ours on the connection: the tutorial's habit,
        # unless that answer was an error frame (a server refusing one request closes after it).
        if (
            closed_by_tutorial_server
            and answered == 1
            and unanswered
            and not protocol.last_answer_was_error
            and not self._closed
        ):
            self.one_request_per_connection = True
        for pending in unanswered:
            if self._closed or not pending.idempotent or isinstance(error, TLSFailure):
                pending.settle(error)
            elif closed_by_tutorial_server:
                self.resent += 1
                self._dispatch(pending)
            elif pending.retries_left > 0:
                pending.retries_left -= 1
                self.retried += 1
                self._dispatch(pending)
            else:
                retries = self.retries
                pending.settle(
                    ConnectionClosed(f"{error} (after {retries} {'retry' if retries == 1 else 'retries'})")
                    if retries
                    else error
                )

    def _dispatch(self, pending: _Pending) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            if not self.one_request_per_connection:
                protocol.submit(pending)
                return
            if protocol.submitted == 0:
                self._submit(protocol, pending)
                return
        self._waiting[pending] = None
        if self._connecting is None:
            self._start_connecting()

    def _submit(self, protocol: AppClient, pending: _Pending) -> None:
        """Send the one request ``protocol`` will carry; later ones go on a new connection."""
        if pending.abandoned:  # timed out or failed meanwhile: the connection stays free for the next
            return
        protocol.single_request = True
        if self._protocol is protocol:
            self._protocol = None
        protocol.submit(pending)

    def sendFrame(self, frame: bytes, timeout: float | None = None, idempotent: bool = True) -> Deferred[Response]:
        """Send an encoded request frame; the Deferred fires with its answer.

        ``idempotent=False`` for a request that must not reach a server twice:
        it is then never sent again after a dropped connection.
        """
        if self._closed:
            return fail(ConnectionClosed("the client is closed"))
        pending = _Pending(frame, Deferred(), idempotent, self.retries)
        timeout = self.request_timeout if timeout is None else timeout
        if timeout is not None:
            pending.timer = self.reactor.callLater(timeout, self._timed_out, pending, timeout)
        self._dispatch(pending)
        return pending.answer

    def _timed_out(self, pending: _Pending, timeout: float) -> None:
        """No answer in time: fail the request and give up the connection it was sent on."""
        connection = pending.connection
        self._waiting.pop(pending, None)
        why = f"no answer within {timeout:g} s"
        if connection is not None and handshake_unfinished(connection.transport):
            why += ": the TLS handshake did not finish (does the server speak TLS?)"
        pending.settle(RequestTimeout(why))
        if connection is not None:
            connection.giveUp()

    def send(
        self,
        content: bytes,
        content_type: str,
        content_encoding: str,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> Deferred[Response]:
        """Send one request carrying ``content`` under the given header fields."""
        return self.sendFrame(encode_frame(content, content_type, content_encoding), timeout, idempotent)

    def sendDocument(
        self, document: Any, content_encoding: str = "utf-8", timeout: float | None = None, idempotent: bool = True
    ) -> Deferred[Response]:
        """Send a ``text/json`` request carrying ``document``."""
        return self.sendFrame(encode_json(document, content_encoding), timeout, idempotent)

    def request(self, action: str, value: str, timeout: float | None = None) -> Deferred[Response]:
        """Send what the tutorial's client sends for ``action``/``value``."""
        return self.sendFrame(request_frame(action, value), timeout)

    def ping(self, timeout: float | None = None) -> Deferred[Response]:
        """A health check: the server answers ``{"result": "pong"}``."""
        return self.sendDocument({"action": "ping"}, timeout=timeout)

    def call(
        self, action: str, value: Any = None, timeout: float | None = None, idempotent: bool = False
    ) -> Deferred[Any]:
        """Call ``action`` of a sockapp app with ``value``: ``{"action", "value"}`` as ``text/json``.

        Fires with the answer's ``result`` (or its content, as bytes, for an
        answer that is not ``text/json``); fails with ``ServerError(code,
        message)`` for an in-band error, after which the connection serves on.
        The call is sent again after a dropped connection only if it is
        ``idempotent``.
        """
        if not isinstance(action, str):
            raise TypeError(f"an action is a str, not {type(action).__name__}")
        frame = encode_json({"action": action, "value": value})
        return self.sendFrame(frame, timeout, idempotent).addCallback(_result_of)

    def describe(self, timeout: float | None = None) -> Deferred[dict[str, Any]]:
        """The server's name and actions: ``{"name": ..., "actions": {name: summary}}``."""
        return self.call("describe", timeout=timeout, idempotent=True)

    def close(self) -> Deferred[None]:
        """Close every connection; outstanding requests fail with ``ConnectionClosed``.

        Fires once all of them are closed."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for pending in waiting:
            pending.settle(ConnectionClosed("the client was closed"))
        if self._connecting is not None:
            self._connecting.cancel()
        return _close_within_grace(self.reactor, list(self._connections))


class _AppClientFactory(Factory):
    """Builds a ``Client``'s connections, each reporting to it when made and when lost."""

    protocol = AppClient

    def __init__(self, on_made: Callable[[AppClient], None], on_lost: LostHandler) -> None:
        self.on_made = on_made
        self.on_lost = on_lost

    def buildProtocol(self, addr: Any) -> AppClient:
        protocol: AppClient = super().buildProtocol(addr)  # type: ignore[assignment]
        protocol.on_made = self.on_made
        protocol.on_lost = self.on_lost
        return protocol


def _close_within_grace(reactor: Any, connections: list[AppClient]) -> Deferred[None]:
    """Close ``connections``; fire once all are closed. A server that does not read would hold
    a graceful close open for ever, so what is still open after ``CLOSE_GRACE`` is aborted."""
    closing = [protocol.close() for protocol in connections]
    if not closing:
        return succeed(None)
    overdue = reactor.callLater(CLOSE_GRACE, _abort_all, connections)
    done = DeferredList(closing, consumeErrors=True)
    return done.addCallback(lambda _: overdue.cancel() if overdue.active() else None)


def _abort_all(connections: list[AppClient]) -> None:
    for protocol in connections:
        if protocol.connected:
            protocol.transport.abortConnection()


def _connect_timed_out(result: Any, timeout: float) -> Any:
    """``addTimeout`` hook: a connection attempt cut off by its timeout is a ``ConnectTimeout``."""
    if isinstance(result, Failure) and result.check(CancelledError):
        raise ConnectTimeout(f"no connection within {timeout:g} s")
    return result


class EchoClient(_Closable, Protocol):
    """Sends bytes and collects the echo; round trips may be pipelined."""

    def connectionMade(self) -> None:
        """Start collecting the echo."""
        self._received = bytearray()
        self._waiting: deque[tuple[int, Deferred[bytes]]] = deque()
        self._start_close_tracking()

    def roundTrip(self, data: bytes) -> Deferred[bytes]:
        """Send ``data``; fire with as many bytes of echo, once all are back, in order."""
        if not self.connected:
            return fail(ConnectionClosed("the connection is closed"))
        echoed: Deferred[bytes] = Deferred()
        self._waiting.append((len(data), echoed))
        self.transport.write(data)
        self._deliver()
        return echoed

    def dataReceived(self, data: bytes) -> None:
        """Collect echoed bytes; fire each round trip whose bytes are all back."""
        self._received += data
        self._deliver()

    def _deliver(self) -> None:
        while self._waiting and len(self._received) >= self._waiting[0][0]:
            length, echoed = self._waiting.popleft()
            data = bytes(self._received[:length])
            del self._received[:length]
            echoed.callback(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Fail the round trips still waiting (naming a TLS failure as such), then fire the Deferreds of ``close()``."""
        waiting, self._waiting = self._waiting, deque()
        got = len(self._received)
        tls_failure = _loss_error(reason, self.transport)  # a refused or unfinished TLS handshake says so
        for length, echoed in waiting:
            if isinstance(tls_failure, TLSFailure):
                echoed.errback(tls_failure)
            else:
                echoed.errback(
                    ConnectionClosed(f"the server closed the connection after echoing {got} of {length} bytes")
                )
            got = 0
        self._notify_closed()


def as_endpoint(reactor: Any, endpoint: str | IStreamClientEndpoint) -> IStreamClientEndpoint:
    """A client endpoint object from an endpoint string (or the object itself); ``BadEndpoint`` if unparsable."""
    if not isinstance(endpoint, str):
        return endpoint
    try:
        return client_endpoint(reactor, endpoint)
    except (ValueError, TypeError, KeyError) as e:
        if str(e).startswith("tls: "):  # sockapp's own tls: parser names the parameter and the file
            raise BadEndpoint(f"bad endpoint: {e}") from None
        raise BadEndpoint(f"bad endpoint {endpoint!r}: {e}") from None


def connect(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint = DEFAULT_ENDPOINT,
    *,
    connect_timeout: float | None = None,
    request_timeout: float | None = None,
    retries: int = DEFAULT_RETRIES,
) -> Deferred[Client]:
    """A ``Client`` for ``endpoint`` (a client endpoint string or object), once it is connected.

    Cancelling the Deferred (directly or through ``addTimeout``) closes the
    client: the connection attempt is stopped, and a connection already made
    (or made later by an endpoint that cannot stop) is closed, so none is
    left open on the server. The Deferred then fails with ``CancelledError``.
    """
    try:
        client = Client(reactor, as_endpoint(reactor, endpoint), connect_timeout, request_timeout, retries)
    except BadEndpoint as e:  # reported through the Deferred, like a refused connection
        return fail(e)
    cancelled = False

    def cancel(_: Deferred[Client]) -> None:
        nonlocal cancelled
        cancelled = True  # what closing does to the attempt is not the caller's result: CancelledError is
        client.close()

    connected: Deferred[Client] = Deferred(canceller=cancel)

    def deliver(result: AppClient | Failure) -> None:
        if cancelled:
            return
        if isinstance(result, Failure):
            connected.errback(result)
        else:
            connected.callback(client)

    client.connection().addBoth(deliver)
    return connected


def connect_echo(
    reactor: Any, endpoint: str | IStreamClientEndpoint = DEFAULT_ENDPOINT, *, connect_timeout: float | None = None
) -> Deferred[EchoClient]:
    """Connect an ``EchoClient`` to ``endpoint``."""
    try:
        ep = as_endpoint(reactor, endpoint)
    except BadEndpoint as e:
        return fail(e)
    # Twisted types connect() as Deferred[IProtocol]; it fires with the factory's protocol.
    attempt = cast("Deferred[EchoClient]", ep.connect(Factory.forProtocol(EchoClient)))
    if connect_timeout is not None:
        attempt.addTimeout(connect_timeout, reactor, onTimeoutCancel=_connect_timed_out)
    return attempt
