"""sockapp's reactor hands events over as Twisted's epoll reactor does: the same legacy log
context, the same logging of what escapes a handler; and sockapp's servers run on it by default.

The in-process tests drive reactors that are not the global one with ``doPoll(0)``, once with
Twisted's ``EPollReactor`` and once with ``SockappReactor``: each must hold for both.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest
from conftest import json_request, send_and_read_all, split_frames
from twisted.internet import epollreactor
from twisted.internet.abstract import FileDescriptor
from twisted.python import context, log
from twisted.python.log import ILogContext

from sockapp.net.reactor import SockappReactor
from sockapp.testing import twistd_argv

REACTORS = [epollreactor.EPollReactor, SockappReactor]
PREFIX = "Reader,7,127.0.0.1"


class Reader(FileDescriptor):
    """One end of a socket pair, read by the reactor; ``on_read`` says what a read does."""

    def __init__(self, reactor, sock: socket.socket, on_read, prefix: str = PREFIX) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read
        self.prefix = prefix
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self):
        self.sock.recv(100)
        return self.on_read()

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


@pytest.fixture(params=REACTORS, ids=lambda cls: cls.__name__)
def reactor(request, pairs):
    """A reactor of each class, not the global one; stopped before ``pairs`` closes its sockets."""
    made = request.param()
    yield made
    made.removeAll()
    waker = getattr(made, "waker", None)
    if waker is not None:
        waker.connectionLost(None)


@pytest.fixture
def logged():
    """Every legacy log event while the test runs."""
    events: list[dict] = []
    log.addObserver(events.append)
    yield events
    log.removeObserver(events.append)


@pytest.fixture
def pairs():
    made: list[tuple[socket.socket, socket.socket]] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        made.append((ours, theirs))
        return ours, theirs

    yield pair
    for ours, theirs in made:
        ours.close()
        theirs.close()


def ready_reader(reactor, pair, on_read, prefix: str = PREFIX) -> Reader:
    ours, theirs = pair()
    theirs.send(b"x")
    reader = Reader(reactor, ours, on_read, prefix)
    reactor.addReader(reader)
    return reader


def test_a_handler_runs_in_the_log_context_twisted_gives_it(reactor, pairs, logged):
    seen = []

    def on_read():
        seen.append((dict(context.get(ILogContext)), context.get("outer")))
        log.msg("from the handler")

    ready_reader(reactor, pairs, on_read)
    context.call({"outer": "kept"}, reactor.doPoll, 0)
    assert seen == [({"system": PREFIX}, "kept")]
    assert [event["system"] for event in logged if event["message"] == ("from the handler",)] == [PREFIX]
    # Popped after the event: the context is what it was before.
    assert dict(context.get(ILogContext)) == {"system": "-"}


def test_a_handler_inherits_the_log_context_of_every_frame_below(reactor, pairs, logged):
    """Twisted looks a key up through the whole context stack, not only its top frame: a log
    context set further down (here under another frame) still reaches the handler."""
    seen = []

    def on_read():
        seen.append(dict(context.get(ILogContext)))
        log.msg("from the handler")

    ready_reader(reactor, pairs, on_read)
    log.callWithContext({"service": "svc-1"}, context.call, {"request-id": 7}, reactor.doPoll, 0)
    assert seen == [{"system": PREFIX, "service": "svc-1"}]
    (event,) = [event for event in logged if event["message"] == ("from the handler",)]
    assert (event["system"], event.get("service")) == (PREFIX, "svc-1")


def test_a_reactor_under_a_context_tracker_of_one_thread_hands_events_over_the_same(reactor, pairs, logged):
    """``context.installContextTracker`` may put a plain ``ContextTracker`` in place."""
    tracker = context.theContextTracker
    context.installContextTracker(context.ContextTracker())
    try:
        seen = []
        ready_reader(reactor, pairs, lambda: seen.append(dict(context.get(ILogContext))))
        reactor.doPoll(0)
    finally:
        context.installContextTracker(tracker)
    assert seen == [{"system": PREFIX}]


def test_an_exception_in_a_handler_is_logged_with_the_connection_and_closes_it(reactor, pairs, logged):
    def on_read():
        raise RuntimeError("handler broke")

    reader = ready_reader(reactor, pairs, on_read)
    reactor.doPoll(0)
    errors = [event for event in logged if event.get("isError")]
    assert [(event["failure"].getErrorMessage(), event["system"]) for event in errors] == [("handler broke", PREFIX)]
    assert len(reader.lost) == 1


def test_an_exception_escaping_the_reactors_handling_is_logged_and_the_next_event_is_handled(reactor, pairs, logged):
    handled = []

    class BreaksOnClose(Reader):
        def connectionLost(self, reason) -> None:
            raise RuntimeError("close broke")

    ours, theirs = pairs()
    theirs.send(b"x")
    breaking = BreaksOnClose(reactor, ours, lambda: RuntimeError("read says: close"), "Breaking,1,127.0.0.1")
    reactor.addReader(breaking)
    ready_reader(reactor, pairs, lambda: handled.append("read"))
    reactor.doPoll(0)
    assert handled == ["read"]
    errors = [event for event in logged if event.get("isError")]
    assert [(event["failure"].getErrorMessage(), event["system"]) for event in errors] == [
        ("close broke", "Breaking,1,127.0.0.1")
    ]


def test_a_log_prefix_that_fails_is_logged_and_the_event_handled(reactor, pairs, logged):
    handled = []

    class NoPrefix(Reader):
        def logPrefix(self) -> str:
            raise RuntimeError("no prefix")

    ours, theirs = pairs()
    theirs.send(b"x")
    reactor.addReader(NoPrefix(reactor, ours, lambda: handled.append(context.get(ILogContext)["system"])))
    reactor.doPoll(0)
    assert handled == ["(buggy logPrefix method)"]
    errors = [event for event in logged if event.get("isError")]
    assert [(event["failure"].getErrorMessage(), event["system"]) for event in errors] == [
        ("no prefix", "(buggy logPrefix method)")
    ]


def installed_reactor(before: str) -> str:
    """The class of the global reactor after ``before`` and ``install_unless_chosen``, in a new process."""
    program = (
        f"{before}\n"
        "from sockapp.net.reactor import install_unless_chosen\n"
        "install_unless_chosen()\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_sockapps_reactor_is_installed_unless_one_was_chosen():
    assert installed_reactor("") == "SockappReactor"
    assert installed_reactor("from twisted.internet import pollreactor; pollreactor.install()") == "PollReactor"


@pytest.mark.parametrize(
    ("args", "reactor_class"),
    [
        (["sockapp"], "sockapp.net.reactor.SockappReactor"),
        (["echo"], "sockapp.net.reactor.SockappReactor"),
        (["--reactor", "epoll", "sockapp"], "twisted.internet.epollreactor.EPollReactor"),
        (["--reactor", "poll", "echo"], "twisted.internet.pollreactor.PollReactor"),
        (["--reactor", "sockapp", "echo"], "sockapp.net.reactor.SockappReactor"),
    ],
)
def test_twistd_runs_sockapps_servers_on_sockapps_reactor_unless_told_otherwise(server_processes, args, reactor_class):
    server = server_processes(twistd_argv(*args, "--port", "tcp:0:interface=127.0.0.1"))
    port = server.wait_until_listening()
    server.wait_for_log(re.escape(f"reactor class: {reactor_class}."))
    if "echo" in args:
        assert send_and_read_all(("127.0.0.1", port), b"ping" * 1000) == b"ping" * 1000
    else:
        answer = send_and_read_all(("127.0.0.1", port), json_request({"action": "search", "value": "morpheus"}))
        expected = json.dumps({"result": "Follow the white rabbit. \U0001f430"}, ensure_ascii=False).encode()
        assert [content for _, content in split_frames(answer)] == [expected]
