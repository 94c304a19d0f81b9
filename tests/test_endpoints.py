"""Endpoint strings: Twisted's grammar, and sockapp's ssl: server ports checked at start-up."""

from __future__ import annotations

from typing import Any, cast

import pytest
import pytest_twisted
from conftest import send_and_read_all
from twisted.internet.endpoints import _parse as twisted_parse
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactor

from sockapp.net.endpoints import client_endpoint, endpoint_arguments, server_endpoint
from sockapp.net.proxy import CheckedProxyEndpoint

DESCRIPTIONS = [
    "tcp:5634",
    "tcp:host=127.0.0.1:port=5634",
    r"tls:localhost:5634:endpoint=tcp\:127.0.0.1\:5634",
    "ssl:5634:privateKey=a=b.pem:certKey=c.pem",  # '=' after the first belongs to the value
    r"unix:/tmp/x\:y.sock",
    r"tcp:a\\b:c",
    "tcp::",
    "",
    "tcp:5634:",
    r"x:trailing\\",
    "x:a=",
    "x:=b",
]


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_arguments_split_as_twisted_splits_them(description):
    assert endpoint_arguments(description) == twisted_parse(description)


def test_ssl_ports_are_built_by_sockapp_with_tls_1_2_at_least(tls_files):
    from OpenSSL import SSL

    endpoint = server_endpoint(MemoryReactor(), f"ssl:0:privateKey={tls_files['key']}:certKey={tls_files['cert']}")
    options = cast(Any, endpoint)._sslContextFactory.getContext().set_options(0)  # adds nothing; returns what is set
    assert options & SSL.OP_NO_TLSv1 and options & SSL.OP_NO_TLSv1_1


def test_haproxy_ports_wrap_what_follows_them(tls_files):
    endpoint = server_endpoint(
        MemoryReactor(), f"haproxy:ssl:0:privateKey={tls_files['key']}:certKey={tls_files['cert']}"
    )
    assert isinstance(endpoint, CheckedProxyEndpoint)


def test_a_wrong_argument_is_one_line_naming_the_scheme():
    with pytest.raises(ValueError, match=r"^ssl: got an unexpected keyword argument 'colour'$"):
        server_endpoint(MemoryReactor(), "ssl:0:colour=blue")
    with pytest.raises(ValueError, match=r"^tls: unknown parameter colour "):
        client_endpoint(MemoryReactor(), "tls:localhost:1:colour=blue")
    with pytest.raises(ValueError, match=r"^ssl: sockapp does not take sslmethod="):
        server_endpoint(MemoryReactor(), "ssl:0:sslmethod=TLSv1_METHOD")


def test_other_endpoints_are_twisteds(tmp_path):
    reactor = MemoryReactor()
    assert type(server_endpoint(reactor, "tcp:0")).__name__ == "TCP4ServerEndpoint"
    assert type(client_endpoint(reactor, f"unix:{tmp_path}/s")).__name__ == "UNIXClientEndpoint"


@pytest.mark.parametrize("description", [r"s\sl:0:privateKey=/nowhere.key", r"\ssl:0:privateKey=/nowhere.key"])
def test_an_escaped_ssl_prefix_is_still_sockapps_checked_ssl(description):
    """Twisted reads 's\\sl' as 'ssl': sockapp must too, or its checks (and TLS 1.2 at least) are skipped."""
    with pytest.raises(ValueError, match=r"^ssl: cannot read"):
        server_endpoint(MemoryReactor(), description)


def test_an_escaped_tls_prefix_is_still_sockapps_checked_tls():
    with pytest.raises(ValueError, match=r"^tls: cannot read trustRoots"):
        client_endpoint(MemoryReactor(), r"t\ls:localhost:1:trustRoots=/nowhere.pem")


@pytest.mark.parametrize("make", [server_endpoint, client_endpoint])
@pytest.mark.parametrize("description", ["tcp:5634\\", "tls:localhost:1\\", "ssl:0\\"])
def test_a_lone_backslash_at_the_end_is_a_value_error(make, description):
    """Twisted's parser raised RuntimeError('generator raised StopIteration'): a traceback from twistd."""
    with pytest.raises(ValueError, match="ends with a lone"):
        make(MemoryReactor(), description)


@pytest.mark.parametrize("prefix", ["HAPROXY", r"h\aproxy"])
def test_any_spelling_of_haproxy_gets_sockapps_checked_proxy_endpoint(prefix):
    """Twisted's own haproxy: plugin (which does not check what it reads) answered these."""
    endpoint = server_endpoint(MemoryReactor(), f"{prefix}:tcp:0")
    assert isinstance(endpoint, CheckedProxyEndpoint)


# tcp: server ports on a real reactor: Twisted's port and transport with less work per connection.


def test_tcp_ports_on_a_socket_reactor_are_sockapps_and_elsewhere_twisteds():
    from twisted.internet import reactor

    from sockapp.net.endpoints import TCPServerEndpoint

    endpoint = server_endpoint(reactor, "tcp:port=0:backlog=7:interface=127.0.0.1")
    assert isinstance(endpoint, TCPServerEndpoint)
    assert (endpoint.port, endpoint.backlog, endpoint.interface) == (0, 7, "127.0.0.1")
    assert type(server_endpoint(MemoryReactor(), "tcp:0")).__name__ == "TCP4ServerEndpoint"
    assert type(server_endpoint(reactor, "tcp6:0")).__name__ == "TCP6ServerEndpoint"
    assert isinstance(server_endpoint(reactor, "haproxy:tcp:0"), CheckedProxyEndpoint)


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` from a plain socket, half-close, read until the server closes (in a thread)."""
    return send_and_read_all(("127.0.0.1", port), data)


@pytest_twisted.ensureDeferred
async def test_a_tcp_connection_is_twisteds_transport_and_closes_in_order():
    """What sockapp's transport leaves out (the enum conversions of accept, shutdown before close)
    changes nothing a protocol or a peer sees: the same socket, log prefix, repr and addresses
    as Twisted's tcp.Server, and a close after an answer delivers the answer, then EOF."""
    import socket

    from twisted.internet import reactor, tcp
    from twisted.internet.address import IPv4Address
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.threads import deferToThread

    from sockapp.net.endpoints import ServerConnection
    from sockapp.net.protocol import _PLAIN_TRANSPORTS

    seen: dict[str, Any] = {}
    lost: Deferred[None] = Deferred()

    class Answering(Protocol):
        transport: Any

        def connectionMade(self):
            transport = self.transport
            sock = transport.getHandle()
            seen.update(
                type=type(transport),
                family=sock.family,
                type_=sock.type,
                timeout=sock.gettimeout(),
                logPrefix=transport.logPrefix(),
                repr=repr(transport),
                peer=transport.getPeer(),
                host=transport.getHost(),
                sessionno=transport.sessionno,
                transport=transport,
            )

        def dataReceived(self, data):
            self.transport.write(b"answer to " + data)
            self.transport.loseConnection()

        def connectionLost(self, reason=None):
            lost.callback(None)

    port: Any = await server_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Answering))
    try:
        assert type(port) is not tcp.Port and isinstance(port, tcp.Port)
        number = port.getHost().port
        assert await deferToThread(_exchange, number, b"question") == b"answer to question"
        await lost
    finally:
        await port.stopListening()
    assert seen["type"] is ServerConnection and ServerConnection in _PLAIN_TRANSPORTS
    assert (seen["family"], seen["type_"], seen["timeout"]) == (socket.AF_INET, socket.SOCK_STREAM, 0.0)
    assert seen["logPrefix"] == "Answering,0,127.0.0.1"  # tcp.Server's format: protocol, session, host
    assert seen["repr"] == f"<Answering #0 on {number}>" == repr(seen["transport"])  # the same once lost
    assert isinstance(seen["peer"], IPv4Address) and seen["peer"].host == "127.0.0.1" and seen["peer"].port > 0
    assert seen["host"] == IPv4Address("TCP", "127.0.0.1", number)


def test_sockapps_transport_closes_without_shutdown_only_once_the_peer_ended():
    """The switch is Twisted's own (private) attribute: if it is renamed, this says so."""
    from twisted.internet import tcp

    from sockapp.net.endpoints import ServerConnection

    assert tcp.Server._shouldShutdown is True
    assert isinstance(ServerConnection.__dict__["_shouldShutdown"], property)


@pytest_twisted.ensureDeferred
async def test_verbose_logs_the_peer_of_a_connection_on_sockapps_transport():
    from conftest import json_request, split_frames
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.logger import ILogObserver, globalLogPublisher

    from sockapp.server import SearchFactory

    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    factory = SearchFactory(verbose=True, reactor=reactor)
    port: Any = await server_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        data = await deferToThread(_exchange, port.getHost().port, json_request({"action": "search", "value": "ring"}))
        while factory.connections:
            await deferLater(reactor, 0.01)
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
        await port.stopListening()
    assert len(split_frames(data)) == 1
    peers = [e["peer"] for e in events if e.get("log_format", "").startswith("connection from {peer}")]
    assert len(peers) == 2 and peers[0] == peers[1] and peers[0].startswith("127.0.0.1:")  # made, closed


def _send_much_then_read(port_number: int, much: bytes) -> tuple[bytes, str]:
    """Send ``much`` (from a thread, as the server may stop reading it) and read until the
    server's close; what arrived, and how the stream ended: ``eof`` or ``reset``."""
    import socket
    import threading

    with socket.create_connection(("127.0.0.1", port_number), timeout=30) as sock:

        def send() -> None:
            try:
                sock.sendall(much)
            except OSError:
                pass  # the server closed with our bytes unread: its kernel refuses the rest

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        end = "eof"
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            end = "reset"
        sender.join(30)
    return received, end


@pytest_twisted.ensureDeferred
async def test_a_close_with_the_peers_bytes_unread_still_ends_with_eof_after_the_answer():
    """A server that closes before reading all the peer sent (an error frame, a refusal, the
    tutorial's close after one answer with more pipelined) makes Linux reset the connection
    on close(2). Twisted's shutdown(2) first sends the FIN, so the peer reads the answer, then
    EOF; close(2) alone made it a reset (ECONNRESET where there had been a clean end)."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.threads import deferToThread

    class AnswersFirstReadThenCloses(Protocol):
        transport: Any

        def dataReceived(self, data):
            self.transport.write(b"bye")
            self.transport.loseConnection()  # the rest of what the peer sends stays unread

    port: Any = await server_endpoint(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(AnswersFirstReadThenCloses)
    )
    try:
        received, end = await deferToThread(_send_much_then_read, port.getHost().port, b"x" * 2_000_000)
    finally:
        await port.stopListening()
    assert (received, end) == (b"bye", "eof")
