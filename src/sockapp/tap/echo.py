"""``twistd echo``: the echo server."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from sockapp.server.echo import EchoFactory
from sockapp.tap._listen import ListenOptions, limits, listen_service


class Options(ListenOptions):
    tapname = "echo"
    synopsis = "[--port PORT] [--verbose] [limits]"
    longdesc = (
        "Echo every byte back to any number of concurrent clients, reading from a "
        "client no faster than it reads the echo (bounded memory per connection)."
    )


def makeService(options: Options, reactor: Any = None) -> IService:
    return listen_service(options, EchoFactory(reactor=reactor, **limits(options)), reactor)
