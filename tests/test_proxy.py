"""haproxy: ports: PROXY headers are checked before the addresses in them are trusted."""

from __future__ import annotations

import json
from typing import cast

import pytest
from conftest import json_request, split_frames
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from sockapp.net.proxy import CheckedProxyFactory, valid_address
from sockapp.server import SearchFactory

BALANCER = IPv4Address("TCP", "10.0.0.5", 41000)


class Transport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


def wrapped_connection():
    """A search server behind CheckedProxyWrapper, on a StringTransport from the balancer."""
    factory = SearchFactory()
    wrapper = CheckedProxyFactory(factory).buildProtocol(IPv4Address("TCP", "10.0.0.1", 5634))
    transport = Transport(peerAddress=BALANCER)
    wrapper.makeConnection(transport)
    return wrapper, transport, factory


def behind_proxy(header: bytes):
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        wrapper, transport, factory = wrapped_connection()
        wrapper.dataReceived(header + json_request({"action": "search", "value": "ring"}))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    return wrapper, transport, events, factory


def test_a_valid_v1_header_names_the_client():
    wrapper, transport, events, factory = behind_proxy(b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 5634\r\n")
    assert not transport.aborted
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content)["result"].startswith("In the caves")
    (protocol,) = factory.connections
    assert protocol.peer == "203.0.113.7:40000"


def test_a_valid_v2_header_names_the_client():
    import socket
    import struct

    addresses = socket.inet_aton("203.0.113.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 40000, 5634)
    header = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses
    wrapper, transport, events, factory = behind_proxy(header)
    assert not transport.aborted
    (protocol,) = factory.connections
    assert protocol.peer == "203.0.113.7:40000"


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 6.6.6.6\x1b[2K\rFAKE 10.0.0.1 1234 5634\r\n",
        b"PROXY TCP4 999.1.1.1 10.0.0.1 40000 5634\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 5634\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 5634\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 port 5634\r\n",
        b"PROXY TCP4 \xff\xfe.1.1.1 10.0.0.1 40000 5634\r\n",
        b"PROXY TCP4 ::1 ::1 40000 5634\r\n",
        b"PROXY TCP6 203.0.113.7 10.0.0.1 40000 5634\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["control characters", "no IPv4", "port too big", "negative port", "port not a number", "not ASCII",
         "IPv6 in TCP4", "IPv4 in TCP6", "no header"],
)  # fmt: skip
def test_a_header_whose_addresses_do_not_parse_closes_the_connection_with_one_line(header):
    wrapper, transport, events, factory = behind_proxy(header)
    assert transport.aborted
    assert transport.value() == b""  # nothing reached the server's protocol
    assert not [e for e in events if e.get("log_failure") or e.get("isError")]
    (warning,) = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
    assert warning["peer"] == "10.0.0.5:41000"


def test_unknown_and_local_headers_keep_the_real_address():
    assert valid_address(None)
    # (Twisted needs something after UNKNOWN; the spec says to ignore whatever it is.)
    wrapper, transport, events, factory = behind_proxy(b"PROXY UNKNOWN 0.0.0.0 0.0.0.0 0 0\r\n")
    assert not transport.aborted
    (protocol,) = factory.connections
    assert protocol.peer == "10.0.0.5:41000"


@pytest.mark.parametrize("split", [1, 4, 5, 7, 9, 15])
def test_a_v1_header_split_across_reads_is_read_as_a_header(split):
    wrapper, transport, factory = wrapped_connection()
    data = b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 5634\r\n" + json_request({"action": "search", "value": "ring"})
    wrapper.dataReceived(data[:split])
    wrapper.dataReceived(data[split:])
    assert not transport.aborted
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content)["result"].startswith("In the caves")
    (protocol,) = factory.connections
    assert protocol.peer == "203.0.113.7:40000"


def test_a_v2_header_split_across_reads_is_read_as_a_header():
    import socket
    import struct

    addresses = socket.inet_aton("203.0.113.7") + socket.inet_aton("10.0.0.1") + struct.pack("!HH", 40000, 5634)
    header = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses
    wrapper, transport, factory = wrapped_connection()
    for byte in header:
        wrapper.dataReceived(bytes([byte]))
    assert not transport.aborted
    (protocol,) = factory.connections
    assert protocol.peer == "203.0.113.7:40000"


def test_proxy_unknown_with_nothing_after_it_is_valid():
    wrapper, transport, events, factory = behind_proxy(b"PROXY UNKNOWN\r\n")
    assert not transport.aborted
    ((_, content),) = split_frames(transport.value())
    assert json.loads(content)["result"].startswith("In the caves")


def test_an_ipv6_scope_id_is_not_an_address():
    wrapper, transport, events, factory = behind_proxy(
        "PROXY TCP6 fe80::1%\x1b[2K\rFORGED ::1 4444 5634\r\n".encode("latin-1")
    )
    assert transport.aborted and transport.value() == b""
