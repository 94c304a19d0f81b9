"""twistd plugins for sockapp: ``twistd sockapp`` and ``twistd echo``, the
``mtls:`` server endpoint (mutual TLS) and ``--reactor sockapp`` for any twistd plugin.

Two ServiceMaker calls, a Reactor and a small parser: the modules doing the work
are imported when a plugin is used, so scanning the plugin directory stays cheap.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

sockapp = ServiceMaker(
    "sockapp",
    "sockapp.tap.search",
    "The tutorial's search server: framed JSON requests over any endpoint.",
    "sockapp",
)

echo = ServiceMaker(
    "sockapp echo",
    "sockapp.tap.echo",
    "An echo server with backpressure, over any endpoint.",
    "echo",
)

sockapp_reactor = Reactor(
    "sockapp",
    "sockapp.net.reactor",
    "epoll, handing each event to its handler with less work per event (sockapp's servers' default).",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MutualTLSParser:
    """``mtls:PORT:privateKey=...:certKey=...:caCerts=...`` (see ``sockapp.net.tls``)."""

    prefix = "mtls"

    def parseStreamServer(self, reactor, *args, **kwargs):  # type: ignore[no-untyped-def]
        from sockapp.net.tls import mtls_server_endpoint

        return mtls_server_endpoint(reactor, *args, **kwargs)


mtls = _MutualTLSParser()
