"""``haproxy:`` ports whose PROXY headers are checked before anything trusts them.

Twisted's PROXY protocol wrapper takes the addresses of a version 1 header
as they come: any text, any port number, so that a peer could be logged as
``6.6.6.6\\x1b[2K\\rFAKE:1234`` or ``999.1.1.1:99999``, and a header whose
address is not ASCII or whose port is not a number raises out of
``dataReceived`` (a traceback per connection). Here a header whose
addresses are not IP addresses of the declared family, or whose ports are
not 0 to 65535, closes the connection with one log line; the rest is
Twisted's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy import _info
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from zope.interface import implementer

from sockapp.net.protocol import describe_address

PREFIX = "haproxy:"
log = Logger()


def valid_address(address: object) -> bool:
    """An address from a PROXY header: an IP address of its declared family and a port in range."""
    if address is None:
        return True  # "UNKNOWN" or LOCAL: Twisted then reports the real connection's address
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False
    if type(address.port) is not int or not 0 <= address.port <= 65535:
        return False
    if "%" in address.host:  # an IPv6 scope id: any text at all
        return False
    try:
        parsed = ipaddress.ip_address(address.host)
    except ValueError:
        return False
    return parsed.version == (4 if isinstance(address, IPv4Address) else 6)


UNKNOWN_V1 = b"PROXY UNKNOWN\r\n"  # valid (the spec allows nothing after UNKNOWN); Twisted's parser refuses it


class CheckedProxyWrapper(HAProxyProtocolWrapper):
    """Twisted's PROXY wrapper, refusing headers whose addresses do not parse.

    Unlike Twisted's, it waits for the first 16 bytes (or fewer, once they
    cannot start a PROXY header) before it decides, so a header split across
    reads is read as a header.
    """

    _start = b""
    transport: Any  # connected: a TCP or UNIX transport (see StreamTransport), not just ITransport | None

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        parser = self._parser
        if parser is None:
            data = self._start + data
            v1, v2 = V1Parser.PROXYSTR, V2Parser.PREFIX
            if data.startswith(UNKNOWN_V1):
                self._accept(_info.ProxyInfo(UNKNOWN_V1[:-2], None, None), data[len(UNKNOWN_V1) :])
                return
            if len(data) < 16 and (v2.startswith(data[:12]) or (v1 + b" ").startswith(data[:6])):
                self._start = data  # the start of either header: wait for more (16 bytes at most)
                return
            self._start = b""
            if len(data) >= 16 and data[:12] == v2 and ord(data[12:13]) & 0b11110000 == 0x20:
                self._parser = parser = V2Parser()
            elif len(data) >= 8 and data[:5] == v1:
                self._parser = parser = V1Parser()
            else:
                self._refuse("no PROXY header")
                return
        try:
            info, remaining = parser.feed(data)
        except (InvalidProxyHeader, ValueError):  # a non-ASCII address or a port that is no number
            self._refuse("a PROXY header that does not parse")
            return
        if info is None:
            return
        if not (valid_address(info.source) and valid_address(info.destination)):
            self._refuse("a PROXY header whose addresses are not IP addresses and ports")
            return
        self._accept(info, remaining)

    def _accept(self, info: _info.ProxyInfo, remaining: bytes | None) -> None:
        self._proxyInfo = info
        if remaining:
            self.wrappedProtocol.dataReceived(remaining)

    def _refuse(self, what: str) -> None:
        log.warn("{peer}: {what}; closing", peer=describe_address(self.transport.getPeer()), what=what)
        self.transport.abortConnection()  # reads nothing more, so nothing reaches the wrapped protocol


class CheckedProxyFactory(HAProxyWrappingFactory):
    # Twisted types the wrapper's __init__ as taking WrappingFactory[Self], which no subclass can match.
    protocol = CheckedProxyWrapper  # type: ignore[assignment]


@implementer(IStreamServerEndpoint)
class CheckedProxyEndpoint:
    """``haproxy:DESCRIPTION``: the wrapped endpoint, its connections behind ``CheckedProxyWrapper``."""

    def __init__(self, wrapped: IStreamServerEndpoint) -> None:
        self.wrapped = wrapped

    def listen(self, factory: IProtocolFactory) -> Any:
        return self.wrapped.listen(CheckedProxyFactory(factory))
