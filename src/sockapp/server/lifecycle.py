"""What every sockapp server does with its connections, apart from the protocol.

``ServerFactory`` holds the limits (``max_connections``, the idle and frame
timeouts), keeps the set of open connections and shuts them down
gracefully. ``Deadlines`` is the per-connection timer behind the timeouts;
``DeadlineSweep`` gives it a timer only once a deadline is near.
The reactor is passed in (the global one by default), so tests drive time
with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from sockapp.net.protocol import CLOSE_GRACE, describe_address

if TYPE_CHECKING:
    from twisted.internet.protocol import _ProtoWithFactory

    from sockapp.server.metrics import ServerMetrics

DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
RELEASE_MEMORY_DELAY = 1.0
# Deadlines further off than two of these have no timer yet (``DeadlineSweep``).
DEADLINE_SWEEP_INTERVAL = 1.0


def _find_malloc_trim() -> Any:
    try:
        import ctypes
        import ctypes.util

        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    """Hand memory freed by Python back to the operating system (glibc only).

    After a burst of connections, glibc keeps the freed heap for reuse, so a
    server's resident size would stay at its high-water mark.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


class ServerConnection(TypingProtocol):
    """What ``ServerFactory`` needs of a connection's protocol."""

    transport: Any

    @property
    def peer(self) -> str:
        """The client, for logs."""

    def drain(self) -> None:
        """Stop taking requests: answer what has arrived, then close."""


class DeadlineSweep:
    """Arms the timers of far-off deadlines only once they come near, for one factory.

    Most connections end long before their idle timeout (300 s by default), so a
    ``callLater`` per connection, pushed onto the reactor's heap at accept and
    cancelled at close, was pure cost (about 5% of the CPU time of a connection
    that carries one request). A deadline more than ``horizon`` seconds away
    waits in ``waiting`` instead, and one sweep every ``interval`` seconds arms
    the timer of each deadline that has come within the horizon. Since the
    horizon is two intervals, every deadline is armed at least an interval
    before it is due, and fires at its exact time, as before: the sweep only
    decides when its timer is made. It runs only while something waits, and
    costs one look at each waiting connection per interval.
    """

    def __init__(self, reactor: Any, interval: float = DEADLINE_SWEEP_INTERVAL) -> None:
        self.reactor = reactor
        self.interval = interval
        self.horizon = 2 * interval
        self.waiting: set[Deadlines] = set()
        self._call: IDelayedCall | None = None

    def watch(self, deadlines: Deadlines) -> None:
        """Arm ``deadlines`` once its deadline is within the horizon."""
        self.waiting.add(deadlines)
        if self._call is None:
            self._call = self.reactor.callLater(self.interval, self._sweep)

    def unwatch(self, deadlines: Deadlines) -> None:
        waiting = self.waiting
        waiting.discard(deadlines)
        if not waiting and self._call is not None:
            self._call.cancel()
            self._call = None

    def _sweep(self) -> None:
        self._call = None
        waiting = self.waiting
        limit = self.reactor.seconds() + self.horizon
        near = [deadlines for deadlines in waiting if deadlines.due_before(limit)]
        for deadlines in near:
            waiting.discard(deadlines)
            deadlines._arm()
        if waiting:
            self._call = self.reactor.callLater(self.interval, self._sweep)


class Deadlines:
    """An idle deadline and a frame deadline for one connection, on one timer,
    and once the connection is closing, a deadline for the close itself.

    ``activity(in_frame, frame_began)`` is called on every read. It only
    records the time: the single timer is re-armed when it fires early, not
    on every read, so the hot path costs one clock read. The frame deadline
    measures the frame in progress now: it starts when a read leaves a
    frame unfinished and no earlier frame was, or when a read completes a
    frame and leaves the next one unfinished (``frame_began``).

    ``closing(within, on_overdue)`` ends both deadlines (a closing
    connection is never timed out twice) and calls ``on_overdue`` if the
    connection is still open ``within`` seconds later, so a close that was
    decided on always finishes.

    With a ``sweep``, a deadline further off than its horizon has no timer
    yet: the sweep arms it in time (``DeadlineSweep``).
    """

    # One is made per connection: what starts out None is the class's until it is set.
    on_idle: Callable[[], object] | None
    on_frame_timeout: Callable[[], object] | None
    on_overdue: Callable[[], object] | None = None
    frame_started: float | None = None
    close_due: float | None = None
    paused_at: float | None = None  # reading paused by backpressure since then
    _call: IDelayedCall | None = None

    def __init__(
        self,
        reactor: Any,
        idle_timeout: float | None,
        frame_timeout: float | None,
        on_idle: Callable[[], object],
        on_frame_timeout: Callable[[], object],
        sweep: DeadlineSweep | None = None,
    ) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout = idle_timeout or None
        self.frame_timeout = frame_timeout or None
        self.on_idle = on_idle
        self.on_frame_timeout = on_frame_timeout
        self.last_activity = reactor.seconds()
        self._sweep = sweep
        if sweep is not None and idle_timeout is not None and idle_timeout > sweep.horizon:
            sweep.watch(self)  # what _arm would do: no frame yet, and the idle deadline is far off
        else:
            self._arm()

    def activity(self, in_frame: bool, frame_began: bool = False) -> None:
        """Bytes arrived; ``in_frame``: a frame is unfinished after them;
        ``frame_began``: a frame was completed by them, so the unfinished one began in them."""
        now = self.reactor.seconds()
        self.last_activity = now
        if not in_frame:
            self.frame_started = None
        elif self.frame_started is None:
            self.frame_started = now
            self._arm()
        elif frame_began:
            self.frame_started = now  # later than the timer: it re-arms when it fires

    def restart_idle(self) -> None:
        """The idle time counts from now (the peer was owed answers until now)."""
        self.last_activity = self.reactor.seconds()
        self._arm()

    def pause_frame(self) -> None:
        """The server stopped reading (backpressure): the frame deadline stands still until it reads again."""
        if self.paused_at is None:
            self.paused_at = self.reactor.seconds()

    def resume_frame(self) -> None:
        """The server reads again: the frame in progress gets the time it had left."""
        if self.paused_at is None:
            return
        if self.frame_started is not None:
            self.frame_started += self.reactor.seconds() - self.paused_at
        self.paused_at = None
        self._arm()

    def _frame_due(self) -> float | None:
        if self.frame_timeout is None or self.frame_started is None or self.paused_at is not None:
            return None
        return self.frame_started + self.frame_timeout

    def _due(self) -> float | None:
        if self.close_due is not None:
            return self.close_due
        due = []
        if self.idle_timeout is not None:
            due.append(self.last_activity + self.idle_timeout)
        frame_due = self._frame_due()
        if frame_due is not None:
            due.append(frame_due)
        return min(due) if due else None

    def due_before(self, limit: float) -> bool:
        """Whether the next deadline is before ``limit``, or there is none (for the sweep)."""
        due = self._due()
        return due is None or due <= limit

    def _arm(self) -> None:
        due = self._due()
        if due is None:
            return
        now = self.reactor.seconds()
        delay = max(0.0, due - now)
        call = self._call
        if call is None or not call.active():
            sweep = self._sweep
            if sweep is not None and delay > sweep.horizon:
                sweep.watch(self)  # far off: the sweep arms it when it comes near
                return
            self._call = self.reactor.callLater(delay, self._fire)
        elif call.getTime() > due:
            call.reset(delay)

    def _fire(self) -> None:
        self._call = None
        now = self.reactor.seconds()
        if self.close_due is not None:
            if now >= self.close_due and self.on_overdue is not None:
                self.on_overdue()
                return
            self._arm()
            return
        frame_due = self._frame_due()
        if frame_due is not None and self.on_frame_timeout is not None and now >= frame_due:
            self.on_frame_timeout()
            return
        if self.idle_timeout is not None and self.on_idle is not None and now >= self.last_activity + self.idle_timeout:
            self.on_idle()
            return
        self._arm()

    def closing(self, within: float | None, on_overdue: Callable[[], object]) -> None:
        """The connection is closing: no idle or frame deadline fires from now on,
        and ``on_overdue`` is called if it is still open ``within`` seconds from now
        (``None``: no bound). Called again, the earlier bound stands if it is sooner."""
        now = self.reactor.seconds()
        due = None if within is None else now + within
        if self.close_due is not None and (due is None or self.close_due <= due):
            return
        self.cancel()
        if due is None:
            return
        self.close_due = due
        self.on_overdue = on_overdue
        self._arm()

    def cancel(self) -> None:
        """No timer and no reference to the connection's callbacks is left."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._sweep is not None:
            self._sweep.unwatch(self)
        self.idle_timeout = self.frame_timeout = None
        self.on_idle = self.on_frame_timeout = self.on_overdue = None


class Refused(Protocol):
    """A connection over ``--max-connections``: closed as soon as it is made, and aborted
    if the close has not finished within the grace period (a TLS close waits for the peer)."""

    transport: Any  # connected: a TCP, TLS or UNIX transport (see StreamTransport), not just ITransport | None

    def __init__(self, reactor: Any, grace: float) -> None:
        self.reactor = reactor
        self.grace = grace
        self._overdue: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.loseConnection()
        self._overdue = self.reactor.callLater(self.grace, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: object = None) -> None:
        if self._overdue is not None and self._overdue.active():
            self._overdue.cancel()
        self._overdue = None


class ClosesInTime:
    """For server protocols with ``deadlines``: a close that was decided on always finishes.

    :ivar deadlines: the connection's idle and frame deadlines.
    :ivar transport: the connection's transport, aborted if a close is overdue.
    :ivar peer: the client, for the log line of an overdue close.
    :ivar log: where an overdue close is logged.
    """

    deadlines: Deadlines
    transport: Any
    log: Logger
    if TYPE_CHECKING:

        @property
        def peer(self) -> str: ...  # the protocol's own

    def closeWithin(self, seconds: float | None) -> None:
        """A close has been decided: no idle or frame deadline fires any more, and the
        connection is aborted if it is still open ``seconds`` from now (``None``: no bound)."""
        self.deadlines.closing(seconds, self._closeOverdue)

    def _closeOverdue(self) -> None:
        # The close was logged when it was decided: one line per fault, unless asked for more.
        if getattr(getattr(self, "factory", None), "verbose", False):
            self.log.info("{peer}: close not finished in time (the peer is not reading); aborting", peer=self.peer)
        self.transport.abortConnection()


# The connections' protocol class: Twisted's Factory is generic over it.
_P = TypeVar("_P", bound="_ProtoWithFactory")


class ServerFactory(Factory[_P]):
    """Connection limits, timeouts and graceful shutdown shared by the servers.

    :cvar noisy: false: Twisted logs no line per factory start and stop.
    :cvar log: where refused connections are logged.
    :ivar reactor: the reactor the deadlines run on (the global one if none was given).
    :ivar idle_timeout: seconds a connection may be silent before it is closed
        (``--idle-timeout``), or ``None``.
    :ivar frame_timeout: seconds a begun frame may take to arrive in full
        (``--frame-timeout``), or ``None``.
    :ivar max_connections: connections open at once past which new ones are
        refused (``--max-connections``), or ``None``.
    :ivar verbose: log every connection and request (``--verbose``), not only faults.
    :ivar metrics: the server's metrics (``--metrics``), or ``None``.
    :ivar close_grace: seconds a decided close may take before the connection is aborted.
    :ivar connections: the connections open now.
    :ivar refused: connections refused so far for ``max_connections``.
    :ivar shutting_down: set by `shutdown`: new connections are refused.
    :ivar deadline_sweep: arms the far-off deadlines of every connection only once they come near.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_connections: int | None = None,
        verbose: bool = False,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_connections = max_connections
        self.verbose = verbose
        self.metrics = metrics
        self.close_grace = CLOSE_GRACE
        self.connections: set[ServerConnection] = set()
        self.refused = 0
        self.shutting_down = False
        self._all_closed: list[Deferred[None]] = []
        self._release_call: IDelayedCall | None = None
        self.deadline_sweep = DeadlineSweep(reactor)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A connection's protocol, or one that closes it at once while shutting down or at ``max_connections``."""
        if self.shutting_down:
            return Refused(self.reactor, self.close_grace)
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self.refused += 1
            if self.metrics is not None:
                self.metrics.connection_refused()
            self.log.warn(
                "refused connection from {peer}: {open} connections open, the limit (--max-connections)",
                peer=describe_address(addr),
                open=len(self.connections),
            )
            # Not None: on a TLS or PROXY port a wrapper would wrap None and leave the
            # connection open; this closes it at once on every transport.
            return Refused(self.reactor, self.close_grace)
        return super().buildProtocol(addr)

    def deadlines_for(self, protocol: Any, frame_timeout: bool = True) -> Deadlines:
        """The idle (and optionally frame) deadlines of a new connection."""
        return Deadlines(
            self.reactor,
            self.idle_timeout,
            self.frame_timeout if frame_timeout else None,
            protocol.idleTimedOut,
            protocol.frameTimedOut,
            self.deadline_sweep,
        )

    def opened(self, protocol: ServerConnection) -> None:
        """Called by each connection once it is made: counted, and drained at `shutdown`."""
        self.connections.add(protocol)
        if self.metrics is not None:
            self.metrics.connection_opened()

    def closed(self, protocol: ServerConnection) -> None:
        """Called by each connection once it is gone; the last one fires `shutdown`'s Deferred."""
        if protocol in self.connections and self.metrics is not None:
            self.metrics.connection_closed()
        self.connections.discard(protocol)
        if self.connections:
            return
        if self._all_closed:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)
        elif not self.shutting_down and (self._release_call is None or not self._release_call.active()):
            # No connections left: once that has lasted a moment, return freed memory.
            self._release_call = self.reactor.callLater(RELEASE_MEMORY_DELAY, self._release_if_idle)

    def _release_if_idle(self) -> None:
        self._release_call = None
        if not self.connections:
            release_free_memory()

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> Deferred[None]:
        """Drain every connection; abort whatever is still open after ``timeout`` seconds.

        Fires once every connection is closed.
        """
        self.shutting_down = True
        if not self.connections:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._all_closed.append(done)
        self.log.info(
            "shutting down: draining {n} connections (at most {timeout:g} s)", n=len(self.connections), timeout=timeout
        )
        for protocol in list(self.connections):
            protocol.drain()
        if self.connections:
            overdue = self.reactor.callLater(timeout, self._abort_remaining, timeout)
            done.addBoth(lambda result: (overdue.cancel() if overdue.active() else None, result)[1])
        return done

    def _abort_remaining(self, timeout: float) -> None:
        for protocol in list(self.connections):
            self.log.warn(
                "{peer}: still open {timeout:g} s into shutdown; aborting", peer=protocol.peer, timeout=timeout
            )
            protocol.transport.abortConnection()
