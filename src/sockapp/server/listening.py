"""Listening on an endpoint as a service that exits with one line when it cannot.

Shared by the twistd entry points (``sockapp.tap``) and the worker processes
(``sockapp.server.workers``), which is why it is neither: each imports it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory


class CannotListen(SystemExit, Exception):
    """Listening failed: exits with one line instead of a traceback.

    A ``SystemExit`` so that ``twistd -n`` ends quietly with status 1; also an
    ``Exception`` so that a daemonizing twistd reports it to the waiting
    parent (which only catches ``Exception``) instead of hanging.
    """


class ListeningService(StreamServerEndpointService):
    """Listens when started; if it cannot, the process exits with one line.

    Twisted's own service would log the failure and run on without a port
    (or, raising synchronously, end twistd with a traceback).
    """

    def __init__(
        self, endpoint: Any, factory: IProtocolFactory, description: str, shutdown_timeout: float | None = None
    ) -> None:
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self._raiseSynchronously = True
        self.description = description
        self.shutdown_timeout = shutdown_timeout

    def privilegedStartService(self) -> None:
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            raise CannotListen(f"sockapp: cannot listen on {self.description}: {reason}") from None

    def stopService(self) -> Any:
        """Stop listening, then let open connections finish (``ServerFactory.shutdown``, if it has one)."""
        stopped = StreamServerEndpointService.stopService(self)
        shutdown = getattr(self.factory, "shutdown", None)
        if shutdown is None:
            return stopped
        return stopped.addCallback(lambda _: shutdown(self.shutdown_timeout))
