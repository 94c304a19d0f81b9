"""Endpoint strings as sockapp reads them: Twisted's syntax and endpoints, with
sockapp's own checks on the TLS and PROXY-protocol ones.

- ``haproxy:...`` server ports check their PROXY headers (``sockapp.net.proxy``).
- ``ssl:...`` server ports check their files at start-up, one line per
  problem, and refuse TLS below 1.2 (``sockapp.net.tls.ssl_server_endpoint``).
- ``tls:...`` client endpoints take a ``trustRoots=`` bundle file or a
  directory with keys in it too, and say why a handshake was refused
  (``sockapp.net.tls.tls_client_endpoint``).

- ``tcp:...`` server ports (and bare port numbers) listen with ``TCPServerEndpoint``:
  Twisted's TCP port and transport, with less work per accepted connection.

Everything else is Twisted's ``serverFromString`` / ``clientFromString``,
plugins (such as ``mtls:``) included.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import address, defer, tcp
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.posixbase import PosixReactorBase
from zope.interface import implementer


class ServerConnection(tcp.Server):
    """Twisted's TCP server transport, closed with ``close(2)`` alone when the peer ended
    first, its ``repr`` made when asked for.

    Twisted calls ``shutdown(2)`` before ``close(2)``. Once the peer has ended its side
    (EOF or a reset: the usual end of a connection that carries one request), ``close``
    alone ends the connection the same way, one system call less per connection (about
    3% of its CPU time). When the server closes first (``loseConnection``: an answer and
    close, an error frame, a timeout, a shutdown), the shutdown stays: with the peer's
    bytes still unread, Linux answers ``close`` alone with a reset, so the peer would read
    ECONNRESET where it read the answer, then EOF. Its ``__init__`` is ``tcp.Server``'s but
    for the ``repr`` text, which Twisted formats for every connection.
    ``tests/test_endpoints.py`` pins the closes, the log prefix and the ``repr`` against Twisted's.
    """

    _peer_ended_reading = False  # the peer's EOF was read (a half-close)

    @property
    def _shouldShutdown(self) -> bool:  # type: ignore[override]
        """Twisted's own switch (tcp._SocketCloser): on only for a close the server began
        while the peer may still be sending."""
        return bool(self.disconnecting) and not self._peer_ended_reading

    def readConnectionLost(self, reason: Any) -> None:
        self._peer_ended_reading = True
        super().readConnectionLost(reason)

    def __init__(
        self,
        sock: socket.socket,
        protocol: Any,
        client: tuple[Any, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        # tcp.Server.__init__, but its repr text is made when asked for, not for every connection.
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.logstr = f"{self._getLogPrefix(self.protocol)},{sessionno},{self.hostname}"
        # What the repr names, kept: the protocol is dropped when the connection is lost, the
        # port's number when it stops listening.
        self._named = (type(protocol), server._realPortNumber)
        self.startReading()  # type: ignore[no-untyped-call]
        self.connected = 1

    @property
    def repstr(self) -> str:  # type: ignore[override]
        """tcp.Server's ``repr``: ``<Protocol #sessionno on port>``."""
        protocol_class, port_number = self._named
        return f"<{protocol_class.__name__} #{self.sessionno} on {port_number}>"


class _AcceptingSocket(socket.socket):
    """A listening socket whose ``accept`` makes the new socket from the listener's family
    as a number: ``socket.accept`` converts family and type to enums for every connection
    (about 3% of the CPU time of a connection that carries one request)."""

    __slots__ = ("_family_number",)
    _family_number: int

    def accept(self) -> tuple[socket.socket, Any]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        # Twisted's listener is non-blocking, so socket.accept would leave the new socket's
        # mode alone too; Twisted's transport makes it non-blocking.
        return socket.socket(self._family_number, socket.SOCK_STREAM, 0, fd), addr


class ServerPort(tcp.Port):
    """Twisted's TCP port, with ``ServerConnection`` transports and a cheaper ``accept``."""

    transport = ServerConnection

    def createInternetSocket(self) -> socket.socket:
        plain: socket.socket = super().createInternetSocket()  # type: ignore[no-untyped-call]  # Twisted's options are set on the descriptor
        listener = _AcceptingSocket(plain.family, plain.type, plain.proto, plain.detach())
        listener._family_number = int(listener.family)
        return listener


@implementer(IStreamServerEndpoint)
class TCPServerEndpoint:
    """Twisted's ``tcp:`` server endpoint (``TCP4ServerEndpoint``), listening with a
    ``ServerPort`` (so on Twisted's own socket reactors only, as ``tcp.Port`` needs: a
    test's ``MemoryReactor`` gets Twisted's endpoint)."""

    def __init__(self, reactor: Any, port: int, backlog: int = 50, interface: str = "") -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog
        self.interface = interface

    def listen(self, protocolFactory: Any) -> defer.Deferred[Any]:
        return defer.execute(self._listen, protocolFactory)

    def _listen(self, factory: Any) -> Any:
        port = ServerPort(self.port, factory, self.backlog, self.interface, self.reactor)
        port.startListening()
        return port


def _tcp_arguments(port: str, interface: str = "", backlog: str = "50") -> tuple[int, int, str]:
    """A ``tcp:`` string's port, backlog and interface, as Twisted's parser reads them."""
    return int(port), int(backlog), interface


def endpoint_arguments(description: str) -> tuple[list[str], dict[str, str]]:
    """The positional and keyword arguments of an endpoint string, as Twisted splits them:
    ``:`` separates, the first ``=`` of an argument makes it a keyword, ``\\`` escapes.
    A ``\\`` that ends the string escapes nothing: ``ValueError`` (Twisted's parser
    raises ``RuntimeError`` there, a traceback from twistd)."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    parts = [""]  # the current argument: [value], or [name, value]

    def add() -> None:
        if len(parts) == 1:
            args.append(parts[0])
        else:
            kwargs[parts[0]] = parts[1]

    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("it ends with a lone \\ (write \\\\ for a backslash)")
            parts[-1] += escaped
        elif character == ":":
            add()
            parts = [""]
        elif character == "=" and len(parts) == 1:
            parts.append("")
        else:
            parts[-1] += character
    add()
    return args, kwargs


def _prefix(description: str) -> str:
    """The endpoint type, read as Twisted reads it (``s\\sl:`` is ``ssl:``), so no spelling
    of ``ssl:`` or ``tls:`` gets Twisted's unchecked endpoint; ``ValueError`` if unparsable."""
    args, _ = endpoint_arguments(description)
    return args[0].lower() if args else ""


def _after_prefix(description: str) -> str:
    """``description`` without its endpoint type and the ``:`` after it."""
    escaped = False
    for index, character in enumerate(description):
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            return description[index + 1 :]
    return ""


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The server endpoint ``description`` names; ``ValueError`` (one line) if it cannot be made."""
    from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString

    from sockapp.net.proxy import CheckedProxyEndpoint

    prefix = _prefix(description)
    if prefix == "haproxy":
        return CheckedProxyEndpoint(server_endpoint(reactor, _after_prefix(description)))
    if prefix == "ssl":
        from sockapp.net.tls import ssl_server_endpoint

        args, kwargs = endpoint_arguments(description)
        return _called(ssl_server_endpoint, "ssl:", reactor, *args[1:], **kwargs)  # type: ignore[no-any-return]
    endpoint = serverFromString(reactor, description)  # Twisted's checks and messages
    if type(endpoint) is TCP4ServerEndpoint and prefix == "tcp" and isinstance(reactor, PosixReactorBase):
        args, kwargs = endpoint_arguments(description)
        return TCPServerEndpoint(reactor, *_tcp_arguments(*args[1:], **kwargs))
    return endpoint  # type: ignore[no-any-return]


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """The client endpoint ``description`` names; ``ValueError`` (one line) if it cannot be made."""
    from twisted.internet.endpoints import clientFromString

    if _prefix(description) == "tls":
        from sockapp.net.tls import tls_client_endpoint

        args, kwargs = endpoint_arguments(description)
        return _called(tls_client_endpoint, "tls:", reactor, *args[1:], **kwargs)  # type: ignore[no-any-return]
    return clientFromString(reactor, description)  # type: ignore[no-any-return]


def _called(make: Any, scheme: str, reactor: Any, *args: str, **kwargs: str) -> Any:
    """``make(reactor, *args, **kwargs)``, a wrong number of arguments said as a ``ValueError``."""
    try:
        return make(reactor, *args, **kwargs)
    except TypeError as e:
        text = str(e).split("() ", 1)[-1]  # "ssl_server_endpoint() got an unexpected ..." -> "got an unexpected ..."
        raise ValueError(f"{scheme} {text}") from None
