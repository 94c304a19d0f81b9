"""``--workers N``: one listening socket, N worker processes accepting on it.

The parent listens (so a bad port fails once, at start), stops accepting on
its own copy, and starts N ``twistd -n`` workers of the same service that
adopt the socket (``--listen-fd``). A worker that dies is started again; on
SIGTERM/SIGINT the parent stops listening, passes SIGTERM on, and waits for
every worker to drain (killing any that outlive ``--shutdown-timeout``).
A ``unix:`` path is the parent's alone: it makes it and removes it when it
stops; a worker never touches it (``InheritedUNIXPort``).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.server.listening import CannotListen

RESTART_DELAY = 1.0
WORKER_FD = 3
# A worker leads its own process group, so a signal sent to the parent's group
# (Ctrl-C, a supervisor) reaches the parent alone, which passes it on once.
TWISTD = "import os, sys; os.setsid(); from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


class Workers(Factory):
    """The parent's factory: the parent never accepts, its workers do."""

    noisy = False
    protocol = Protocol


class _Worker(ProcessProtocol):
    """One worker process: its log lines are passed on to the parent's log."""

    transport: IProcessTransport  # set by spawnProcess, before the pool uses it

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.strip():
                self.pool.log.info(
                    "worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace").rstrip()
                )

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """Runs ``count`` worker processes sharing the parent's listening socket."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        tapname: str,
        worker_args: list[str],
        count: int,
        shutdown_timeout: float,
    ) -> None:
        self.reactor = reactor
        self.description = description
        self.tapname = tapname
        self.worker_args = worker_args
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.workers: dict[int, _Worker] = {}
        self.port: Any = None
        self.stopping = False
        self._reactor_args: list[str] = []

    def privilegedStartService(self) -> None:
        listening = serverFromString(self.reactor, self.description).listen(Workers())
        result: list[Any] = []
        listening.addBoth(result.append)
        if isinstance(result[0], Failure):
            error = result[0].value
            reason = getattr(getattr(error, "socketError", None), "strerror", None) or error
            if isinstance(error, CannotListenError):
                raise CannotListen(f"sockapp: cannot listen on {self.description}: {reason}")
            result[0].raiseException()
        self.port = result[0]
        self.port.stopReading()  # the workers accept; the parent only holds the socket
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self._reactor_args = self.reactor_args()  # found once: it scans the reactor plugins
        for index in range(self.count):
            self._spawn(index)

    def reactor_args(self) -> list[str]:
        """``--reactor NAME`` for the reactor this process runs (``twistd --reactor poll`` or
        sockapp's default), so that the workers, which serve every connection, run it too; nothing
        for a reactor no installed reactor plugin names (the worker then takes sockapp's default)."""
        module = type(self.reactor).__module__
        for installer in getReactorTypes():
            if getattr(installer, "moduleName", None) == module:  # Twisted's Reactor plugins have one
                return ["--reactor", installer.shortName]
        return []

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        worker = _Worker(self, index)
        argv = [sys.executable, "-c", TWISTD, *self._reactor_args, "-n", "--pidfile=", self.tapname, *self.worker_args]
        argv += ["--listen-fd", str(WORKER_FD)]
        self.reactor.spawnProcess(
            worker,
            sys.executable,
            argv,
            env=os.environ.copy(),
            # stdin: a pipe the worker watches, so it stops if the parent dies.
            childFDs={0: "w", 1: "r", 2: "r", WORKER_FD: self.port.fileno()},
        )
        self.workers[index] = worker
        self.log.info("worker {index} started: pid {pid}", index=index, pid=worker.transport.pid)

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self.stopping:
            return
        self.log.warn(
            "worker {index} ended ({reason}); starting another in {delay:g} s",
            index=worker.index,
            reason=reason.getErrorMessage(),
            delay=RESTART_DELAY,
        )
        self.reactor.callLater(RESTART_DELAY, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        self.stopping = True
        # Waited for: with no worker left to wait on, the reactor would stop
        # before the port closed, leaving a unix: path (and its lock) behind.
        closed = maybeDeferred(self.port.stopListening) if self.port is not None else succeed(None)
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        overdue = self.reactor.callLater(self.shutdown_timeout + 5, self._kill, workers)
        done = DeferredList([closed, *(w.ended for w in workers)], consumeErrors=True)
        return done.addBoth(lambda result: (overdue.cancel() if overdue.active() else None, result)[1])

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            _signal(worker, "KILL")


def _signal(worker: _Worker, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except (ProcessExitedAlready, OSError):
        pass


# -- the worker's side ---------------------------------------------------------


class AdoptedPortService(Service):
    """A worker's side of ``--workers``: serves a listening socket it inherited."""

    log = Logger()

    def __init__(self, reactor: Any, fd: int, factory: Any, shutdown_timeout: float) -> None:
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self.shutdown_timeout = shutdown_timeout
        self.port: Any = None

    def startService(self) -> None:
        Service.startService(self)
        inherited = socket.socket(fileno=self.fd)
        if inherited.family == socket.AF_UNIX:
            self.port = InheritedUNIXPort._fromListeningDescriptor(self.reactor, inherited.fileno(), self.factory)
            self.port.startListening()
        else:
            self.port = self.reactor.adoptStreamPort(inherited.fileno(), inherited.family, self.factory)
        inherited.close()  # the port holds its own copy
        self.log.info("worker pid {pid} accepting on the inherited socket", pid=os.getpid())
        StandardIO(_StopWhenParentGoes(self.reactor), reactor=self.reactor)

    def stopService(self) -> Any:
        Service.stopService(self)
        stopped = maybeDeferred(self.port.stopListening) if self.port is not None else succeed(None)
        return stopped.addCallback(lambda _: self.factory.shutdown(self.shutdown_timeout))


class InheritedUNIXPort(unix.Port):
    """A worker's copy of the parent's listening UNIX socket.

    The path belongs to the parent, which made it and removes it when it stops.
    Twisted's ``unix.Port`` treats the socket as its own: it chmods the path
    when it starts (undoing the parent's ``mode=``, or failing if the path is
    gone), and when it stops it removes the path and shuts the socket down,
    which ends accepting in every process sharing it. This port does neither:
    a worker that exits leaves the socket to the others and to its replacement.
    """

    def startListening(self) -> None:
        tcp._reservedFD.reserve()  # as tcp.Port does, so that running out of descriptors is handled
        listening, self._preexistingSocket = self._preexistingSocket, None
        assert listening is not None and self.factory is not None  # _fromListeningDescriptor set both
        self._shouldShutdown = False  # close our copy only; shutdown() would stop the parent's socket
        self.factory.doStart()
        self.connected = True
        self.socket = listening
        self.fileno = listening.fileno  # type: ignore[method-assign]  # as Twisted's own ports do
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # not unix.Port's, which removes the path


class _StopWhenParentGoes(Protocol):
    """A worker's stdin is a pipe from its parent: when it closes, the parent is gone."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()
