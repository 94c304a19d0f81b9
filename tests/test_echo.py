"""The echo Protocol over StringTransport, and its backpressure over real TCP."""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from sockapp.net.protocol import MAX_QUEUED_WRITES, read_only_as_fast_as_peer_reads, write_now
from sockapp.server.echo import EchoFactory


def connect():
    protocol = EchoFactory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
def test_echoes_every_byte(one_byte):
    protocol, transport = connect()
    data = bytes(range(256)) * 4
    if one_byte:
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])
    else:
        protocol.dataReceived(data)
    assert transport.value() == data
    assert not transport.disconnecting


def test_half_close_flushes_then_closes():
    protocol, transport = connect()
    protocol.dataReceived(b"last words")
    protocol.readConnectionLost()
    assert transport.value() == b"last words"
    assert transport.disconnecting and transport.producer is None


def test_transport_is_its_own_producer():
    from sockapp.net.protocol import ReadingProducer

    _, transport = connect()
    assert isinstance(transport.producer, ReadingProducer) and transport.streaming
    assert transport.producer.transport is transport


class GreedyClient(Protocol):
    """Writes a lot but does not read until told to."""

    transport: Any  # connected over TCP
    expected: int

    def connectionMade(self):
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.transport.pauseProducing()  # stop reading: the echo piles up server-side

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.expected:
            self.done.callback(bytes(self.received))


def settle(check, reactor, interval=0.05, quiet_rounds=6, limit=400):
    """Wait until ``check()`` stops changing for a few rounds (no timing is asserted)."""
    state: dict[str, Any] = {"last": None, "same": 0, "rounds": 0}
    done: defer.Deferred[Any] = defer.Deferred()

    def poll():
        value = check()
        state["same"] = state["same"] + 1 if value == state["last"] else 0
        state["last"] = value
        state["rounds"] += 1
        if state["same"] >= quiet_rounds or state["rounds"] >= limit:
            done.callback(value)
        else:
            reactor.callLater(interval, poll)

    poll()
    return done


def recording_factory(servers: list) -> EchoFactory:
    """An ``EchoFactory`` that appends each protocol it builds to ``servers``."""

    class Recording(EchoFactory):
        def buildProtocol(self, addr):
            protocol = super().buildProtocol(addr)
            servers.append(protocol)
            return protocol

    return Recording()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_does_not_read_is_not_read_from():
    servers: list = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(recording_factory(servers))
    try:
        total = 32 * 1024 * 1024
        client = cast(
            GreedyClient,
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
                Factory.forProtocol(GreedyClient)
            ),
        )
        client.expected = total
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(total // len(block)):
            client.transport.write(block)
        received = await settle(lambda: servers[0].received, reactor)
        # The server stopped reading long before the 32 MiB were through:
        # what it holds is its write buffer plus kernel socket buffers.
        print(f"server read {received} of {total} bytes before pausing")
        assert received < total // 2, received
        assert servers[0].transport.producerPaused
        client.transport.resumeProducing()
        echoed = await client.done.addTimeout(60, reactor)
        assert echoed == block * (total // len(block))
        client.transport.loseConnection()
    finally:
        await port.stopListening()


class NoDelayRecorder(StringTransport):
    def __init__(self, refuse=False):
        super().__init__()
        self.refuse = refuse
        self.no_delay = []

    def setTcpNoDelay(self, enabled):
        if self.refuse:
            raise OSError(95, "Operation not supported")  # a UNIX socket
        self.no_delay.append(enabled)


def test_echo_sends_without_nagle_delay():
    protocol = EchoFactory().buildProtocol(None)
    transport = NoDelayRecorder()
    protocol.makeConnection(transport)
    assert transport.no_delay == [True]


def test_a_transport_without_tcp_options_still_echoes():
    protocol = EchoFactory().buildProtocol(None)
    transport = NoDelayRecorder(refuse=True)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"still here")
    assert transport.value() == b"still here"


@pytest_twisted.ensureDeferred
async def test_echo_over_tcp_turns_nagle_off():
    import socket

    servers: list = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(recording_factory(servers))
    try:
        client = cast(
            Any,
            await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(Factory.forProtocol(Protocol)),
        )
        await settle(lambda: len(servers), reactor, quiet_rounds=2)
        handle = servers[0].transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.transport.loseConnection()
    finally:
        await port.stopListening()


async def wait_until(check, reactor, limit=2000):
    """Let the reactor run until ``check()`` is true (at most ``limit`` short turns; no time is asserted)."""
    for _ in range(limit):
        if check():
            return True
        await task.deferLater(reactor, 0.002, lambda: None)
    return check()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_does_not_read_and_sends_single_bytes_is_paused_after_a_bounded_number_of_writes():
    """Twisted pauses reading by queued payload bytes (``bufferSize``); each queued write also costs a
    Python object. A peer that does not read and sends one byte per segment would make the server queue
    some 256,000 one-byte writes (about 110 bytes of memory each) before that pause: reading pauses
    after ``MAX_QUEUED_WRITES`` queued writes instead, and everything is echoed once the peer reads."""
    servers: list = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(recording_factory(servers))
    peer = socket.socket()
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.connect(("127.0.0.1", port.getHost().port))
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.setblocking(False)
        assert await wait_until(lambda: servers, reactor)
        server = servers[0]
        transport = server.transport
        sent = 0
        for _ in range(5000):  # fill the kernel's buffers until the server has to queue
            if transport._tempDataBuffer or transport.producerPaused:
                break
            try:
                sent += peer.send(b"z" * 65536)
            except BlockingIOError:
                pass
            await task.deferLater(reactor, 0.002, lambda: None)
        assert transport._tempDataBuffer
        assert not transport.producerPaused  # less than bufferSize queued: Twisted alone would read on
        singles = 0
        while not transport.producerPaused and singles < 2 * MAX_QUEUED_WRITES:
            before = server.received
            sent += peer.send(b"y")
            singles += 1
            assert await wait_until(lambda before=before: server.received > before or transport.producerPaused, reactor)
        assert transport.producerPaused, f"still reading after {singles} queued one-byte writes"
        assert len(transport._tempDataBuffer) <= MAX_QUEUED_WRITES
        echoed = bytearray()

        def read_all() -> bool:
            try:
                while chunk := peer.recv(1 << 20):
                    echoed.extend(chunk)
            except BlockingIOError:
                pass
            return len(echoed) >= sent

        assert await wait_until(read_all, reactor, limit=20000)
        assert bytes(echoed) == b"z" * (sent - singles) + b"y" * singles
    finally:
        peer.close()
        await port.stopListening()


class StuckSocket(FileDescriptor):
    """A socket transport whose peer does not read: what is written stays queued until ``drain``."""

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = True
        self.reading = True
        self.peer_reads = False

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def writeSomeData(self, data) -> int:
        return len(data) if self.peer_reads else 0

    def drain(self) -> None:
        self.peer_reads = True
        self.doWrite()


def wrapped(stuck: StuckSocket) -> ProtocolWrapper:
    """``stuck`` behind a ``ProtocolWrapper``, as TLS and PROXY-header ports put one (it hands
    unknown attributes down to the socket's transport)."""
    wrapper = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), Protocol())
    wrapper.makeConnection(stuck)
    return wrapper


@pytest.mark.parametrize("wrap", [False, True], ids=["socket", "wrapped"])
def test_reading_pauses_after_max_queued_writes_and_resumes_when_they_drain(wrap):
    stuck = StuckSocket()
    transport: Any = wrapped(stuck) if wrap else stuck
    read_only_as_fast_as_peer_reads(transport)
    for _ in range(MAX_QUEUED_WRITES - 1):
        write_now(transport, b"y")
    assert stuck.reading and not stuck.producerPaused
    write_now(transport, b"y")
    assert not stuck.reading and stuck.producerPaused
    write_now(transport, b"y")  # written while paused: queued, nothing lost
    stuck.drain()
    assert stuck.reading and not stuck.producerPaused
    assert stuck.dataBuffer == b"" and not stuck._tempDataBuffer
