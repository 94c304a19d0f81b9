"""--workers: one port served by several twistd processes, restarted when they die."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest
import pytest_twisted
from conftest import json_request, send_and_read_all, split_frames, tool
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage

from sockapp.server.workers import InheritedUNIXPort
from sockapp.tap import echo, search

TIMEOUT = 30
ACCEPTING = r"worker pid (\d+) accepting on the inherited socket"


def worker_pids(server) -> list[int]:
    return [int(pid) for pid in re.findall(ACCEPTING, server.log())]


def wait_for_workers(server, count: int) -> list[int]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if len(pids) >= count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} workers started:\n{server.log()}")


def search_answer(port: int) -> str:
    ((_, content),) = split_frames(
        send_and_read_all(("127.0.0.1", port), json_request({"action": "search", "value": "ring"}))
    )
    return content.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_serve_restart_and_stop_together(server_processes):
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--workers", "2", "--port", "tcp:0:interface=127.0.0.1"]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    first, second = wait_for_workers(server, 2)
    assert first != second
    for _ in range(40):
        assert "Misty Mountains" in search_answer(port)

    os.kill(first, signal.SIGKILL)  # a worker dies: another takes its place
    server.wait_for_log(r"worker \d ended .*starting another")
    replacement = wait_for_workers(server, 3)[2]
    assert replacement not in (first, second)
    for _ in range(10):
        assert "Misty Mountains" in search_answer(port)

    server.proc.send_signal(signal.SIGTERM)  # all stop together
    assert server.proc.wait(TIMEOUT) in (0, -signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while any(alive(pid) for pid in (second, replacement)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in (second, replacement))
    # (Whether the port now refuses is not checked: once released, any process may take it.)


def test_echo_workers(server_processes):
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "echo", "--workers", "2", "--port", "tcp:0:interface=127.0.0.1"]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    wait_for_workers(server, 2)
    assert send_and_read_all(("127.0.0.1", port), b"hello, universe.") == b"hello, universe."


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--workers", "0"], "at least 1"),
        (["--workers", "2", "--port", "ssl:0:privateKey=k.pem"], "needs a tcp:, tcp6: or unix: port"),
    ],
)
def test_bad_worker_options(argv, fragment):
    with pytest.raises(usage.UsageError, match=fragment):
        search.Options().parseOptions(argv)


def test_workers_get_every_option_but_where_and_how_many(tmp_path):
    data = tmp_path / "answers.json"
    data.write_text('{"neo": "The One."}')
    options = search.Options()
    options.parseOptions(
        [
            "--workers",
            "3",
            "--port",
            "6000",
            "--data",
            str(data),
            "--verbose",
            "--frame-timeout",
            "5",
            "--idle-timeout",
            "0",
        ]
    )
    args = options.worker_args()
    assert f"--data={data}" in args and "--verbose" in args
    assert "--frame-timeout=5.0" in args and "--idle-timeout=0.0" in args
    assert not [a for a in args if a.startswith(("--port", "--workers", "--listen-fd"))]
    reparsed = search.Options()
    reparsed.parseOptions(args)
    assert dict(reparsed["index"].answers) == {"neo": "The One."}
    defaults = echo.Options()
    defaults.parseOptions([])
    assert sorted(defaults.worker_args()) == ["--idle-timeout=300.0", "--max-connections=0", "--shutdown-timeout=10.0"]


def test_workers_stop_when_the_parent_is_killed(server_processes):
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--workers", "2", "--port", "tcp:0:interface=127.0.0.1"]
    )
    server.wait_for_log(r"starting on (\d+)")
    pids = wait_for_workers(server, 2)
    server.proc.kill()  # no chance to pass anything on: the workers see their stdin pipe close
    server.proc.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


def test_a_port_in_use_stops_the_parent_with_one_line(server_processes):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = server_processes(
            [tool("twistd"), "-n", "--pidfile=", "sockapp", "--workers", "2", "--port", str(port)]
        )
        assert server.proc.wait(TIMEOUT) == 1
    log = server.log()
    assert f"sockapp: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in log
    assert "Traceback" not in log and "worker" not in log


# -- a unix: port: the path is the parent's alone -------------------------------


@pytest.fixture
def socket_dir():
    """A short temporary directory: an AF_UNIX path is at most ~107 bytes, and tmp_path can be longer."""
    directory = Path(tempfile.mkdtemp(prefix="sockapp-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def unix_search_answer(path: Path) -> str:
    ((_, content),) = split_frames(
        send_and_read_all(str(path), json_request({"action": "search", "value": "ring"}), socket.AF_UNIX)
    )
    return content.decode()


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"worker {pid} still runs"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_unix_worker_that_exits_leaves_the_socket_to_the_others(server_processes, socket_dir, signum):
    path = socket_dir / "s.sock"
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--workers", "2", "--port", f"unix:{path}"]
    )
    first, second = wait_for_workers(server, 2)
    assert "Misty Mountains" in unix_search_answer(path)

    os.kill(first, signum)
    wait_until_gone(first)
    for _ in range(10):  # the other worker answers while the replacement starts
        assert "Misty Mountains" in unix_search_answer(path)
    replacement = wait_for_workers(server, 3)[2]

    os.kill(second, signum)  # now only replacements are left to answer
    wait_until_gone(second)
    for _ in range(10):
        assert "Misty Mountains" in unix_search_answer(path)
    assert alive(replacement)
    log = server.log()
    assert len(re.findall(r"worker \d ended", log)) == 2, log  # no replacement has died
    assert "Traceback" not in log


@pytest_twisted.inlineCallbacks
def test_an_inherited_unix_port_stops_without_touching_the_shared_socket(socket_dir):
    from twisted.internet import reactor

    path = socket_dir / "s.sock"
    with socket.socket(socket.AF_UNIX) as parents:
        parents.bind(str(path))
        os.chmod(path, 0o600)
        parents.listen()
        parents.setblocking(False)
        port = InheritedUNIXPort._fromListeningDescriptor(reactor, parents.fileno(), Factory.forProtocol(Protocol))
        port.startListening()
        yield port.stopListening()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # neither chmodded nor removed
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(str(path))  # refused had the port shut the socket down


def test_unix_workers_leave_the_path_and_its_mode_to_the_parent(server_processes, socket_dir):
    path = socket_dir / "s.sock"
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--workers", "2", "--port", f"unix:{path}:mode=600"]
    )
    pids = wait_for_workers(server, 2)
    assert "Misty Mountains" in unix_search_answer(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # as the parent made it

    server.proc.send_signal(signal.SIGTERM)  # the parent's clean shutdown removes the path and its lock
    assert server.proc.wait(TIMEOUT) in (0, -signal.SIGTERM)
    for pid in pids:
        wait_until_gone(pid)
    assert sorted(p.name for p in socket_dir.iterdir()) == []
    assert "Traceback" not in server.log()


# -- the parent's pool, driven by a Clock ---------------------------------------

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.error import ProcessExitedAlready  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from sockapp.server.workers import RESTART_DELAY, WorkerPool  # noqa: E402


class FakeProcess:
    """What WorkerPool uses of a process transport: its pid and signalProcess."""

    def __init__(self, pid, exited=False):
        self.pid = pid
        self.exited = exited
        self.signals = []

    def signalProcess(self, name):
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)


class SpawningClock(Clock):
    """A Clock that also records spawnProcess calls instead of starting processes."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        protocol.transport = FakeProcess(1000 + len(self.spawned))
        self.spawned.append(args)
        return protocol.transport


class HeldSocket:
    """The parent's listening port, as far as the pool uses it."""

    listening = True

    def fileno(self):
        return 99

    def stopListening(self):
        self.listening = False


def pool_of(count, shutdown_timeout=10.0):
    clock = SpawningClock()
    pool = WorkerPool(clock, "tcp:0", "sockapp", ["--verbose"], count, shutdown_timeout)
    pool.port = HeldSocket()
    pool.startService()
    return clock, pool


def test_the_pool_starts_its_workers_with_the_held_socket():
    clock, pool = pool_of(2)
    assert len(clock.spawned) == 2
    assert all(args[-2:] == ["--listen-fd", "3"] and "--verbose" in args for args in clock.spawned)


def test_workers_run_the_reactor_the_parent_runs():
    """``twistd --reactor poll sockapp --workers 2``: the workers serve every connection, so they
    get the parent's ``--reactor`` (found from the running reactor's module)."""
    from twisted.internet import pollreactor

    from sockapp.net.reactor import SockappReactor

    for made, name in [(pollreactor.PollReactor(), "poll"), (SockappReactor(), "sockapp")]:
        pool = WorkerPool(made, "tcp:0", "sockapp", [], 1, 10.0)
        assert pool.reactor_args() == ["--reactor", name]
        made.removeAll()
        made.waker.connectionLost(None)
    clock, pool = pool_of(1)  # a reactor no --reactor names: the worker is left to its default
    assert "--reactor" not in clock.spawned[0]


def test_a_chosen_reactor_runs_in_the_workers_too(server_processes):
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "--reactor", "poll", "sockapp", "--workers", "2"]
        + ["--port", "tcp:0:interface=127.0.0.1"]
    )
    wait_for_workers(server, 2)
    for index in range(2):
        server.wait_for_log(rf"worker {index}: .*reactor class: twisted\.internet\.pollreactor\.PollReactor\.")
    assert "SockappReactor" not in server.log()


def test_a_worker_that_ends_is_started_again_after_a_delay():
    clock, pool = pool_of(2)
    first = pool.workers[0]
    first.processEnded(Failure(Exception("killed")))
    assert 0 not in pool.workers and len(clock.spawned) == 2
    clock.advance(RESTART_DELAY)
    assert len(clock.spawned) == 3 and pool.workers[0] is not first


def test_workers_outliving_the_shutdown_timeout_are_killed():
    clock, pool = pool_of(2, shutdown_timeout=3)
    stopped: list[object] = []
    pool.stopService().addCallback(stopped.append)
    processes = [worker.transport for worker in pool.workers.values()]
    assert [p.signals for p in processes] == [["TERM"], ["TERM"]]
    clock.advance(3 + 5 - 0.1)
    assert [p.signals for p in processes] == [["TERM"], ["TERM"]]
    clock.advance(0.1)
    assert [p.signals for p in processes] == [["TERM", "KILL"], ["TERM", "KILL"]]
    for worker in list(pool.workers.values()):
        worker.processEnded(Failure(Exception("killed")))
    assert stopped and len(clock.spawned) == 2  # none is started again while stopping
    assert not pool.port.listening


def test_signalling_a_worker_that_has_already_exited_is_harmless():
    clock, pool = pool_of(1, shutdown_timeout=1)
    worker = pool.workers[0]
    worker.transport.exited = True
    stopped: list[object] = []
    pool.stopService().addCallback(stopped.append)
    clock.advance(1 + 5)  # TERM and then KILL meet ProcessExitedAlready
    worker.processEnded(Failure(Exception("gone")))
    assert stopped and not clock.getDelayedCalls()


def test_the_pool_has_stopped_only_once_its_socket_is_closed():
    # With no worker left to wait for, the parent's stop used to end before its
    # port had closed: the reactor stopped first, leaving a unix: path behind.
    clock, pool = pool_of(1)
    closing: Deferred[None] = Deferred()
    pool.port.stopListening = lambda: closing
    pool.workers[0].processEnded(Failure(Exception("killed")))
    stopped: list[object] = []
    pool.stopService().addCallback(stopped.append)
    assert not stopped
    closing.callback(None)
    assert stopped
