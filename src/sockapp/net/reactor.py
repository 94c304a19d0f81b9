"""sockapp's reactor: Twisted's epoll reactor, with a cheaper hand-over of each I/O event.

Twisted's reactors run every I/O event through ``log.callWithLogger``, so that a legacy
``twisted.python.log`` message made while the event is handled is tagged with the
connection's log prefix (its ``system``). It gets there through five calls, two
thread-local lookups and three new dicts per event: about a fifth of the server's CPU
time per request under load (benchmarks/README.md, "Reactor dispatch"). This reactor
does the same inline: the legacy logging context of each event is the one Twisted
would make (a copy of the log context in force, ``system`` set to the log prefix),
pushed onto and popped off the thread's context stack directly, and an exception that
escapes the handler is logged with that ``system`` and the reactor goes on.

Everything else is ``EPollReactor``'s own code. ``twistd --reactor sockapp`` chooses it
for any twistd plugin; sockapp's own servers run on it unless ``--reactor`` names
another (``install_unless_chosen``).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.log import ILogContext


class SockappReactor(EPollReactor):
    """``EPollReactor`` whose ``doPoll`` does ``callWithLogger``'s work inline."""

    def doPoll(self, timeout: float | None) -> None:
        """Poll for events and handle each; ``EPollReactor.doPoll`` but for the dispatch."""
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        if not events:
            return
        handle = self._doReadOrWrite
        selectables = self._selectables
        tracker = _context_tracker()
        if tracker is None:  # a context tracker of someone else's making: Twisted's own way
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    log.callWithLogger(selectable, handle, selectable, fd, event)
            return
        # What callWithLogger pushes for each event: one frame holding a copy of the log
        # context in force (looked up through the whole stack) with "system" set to the
        # selectable's log prefix. Each event pops what it pushed, so the log context in force
        # is the same for every event of this poll.
        log_context = tracker.getContext(ILogContext) or {}
        stack = tracker.contexts
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:  # removed by an earlier event of this poll
                continue
            system = _log_prefix(selectable)
            event_log_context = log_context.copy()
            event_log_context["system"] = system
            stack.append({ILogContext: event_log_context})
            try:
                handle(selectable, fd, event)  # type: ignore[no-untyped-call]  # Twisted's, untyped
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt):
                    raise
                log.err(system=system)
            finally:
                stack.pop()

    doIteration = doPoll


def _context_tracker() -> context.ContextTracker | None:
    """This thread's tracker of context frames (``None`` if the installed tracker is not one of
    Twisted's two kinds, whose frames this reactor knows how to push)."""
    tracker: Any = context.theContextTracker
    if isinstance(tracker, context.ThreadedContextTracker):
        tracker = tracker.currentContext()
    return tracker if isinstance(tracker, context.ContextTracker) else None


def _log_prefix(selectable: Any) -> Any:
    """The selectable's log prefix, as ``callWithLogger`` names it (and logs a failure to ask)."""
    try:
        return selectable.logPrefix()
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001  # as callWithLogger: anything the method raises
        log.err(system="(buggy logPrefix method)")
        return "(buggy logPrefix method)"


def install() -> SockappReactor:
    """Install a ``SockappReactor`` as Twisted's global reactor (what ``--reactor sockapp`` runs)."""
    from twisted.internet.main import installReactor

    reactor = SockappReactor()  # type: ignore[no-untyped-call]  # EPollReactor.__init__ is untyped
    installReactor(reactor)
    return reactor


def install_unless_chosen() -> None:
    """Install sockapp's reactor, unless a reactor is installed already (``twistd --reactor``,
    a test runner, an embedding program) or this platform has no epoll."""
    if "twisted.internet.reactor" in sys.modules:
        return
    import select

    if not hasattr(select, "epoll"):
        return
    install()
