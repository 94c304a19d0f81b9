"""sockapp.testing: a real server started until it listens, and stopped with nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import json_request, send_and_read_all, split_frames

from sockapp.testing import ServerProcess, WaitForLogFailed, start_twistd

TIMEOUT = 60


def group_gone(pid: int) -> bool:
    """Whether no process is left in the process group (and session) ``pid`` led."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_twistd_listens_answers_and_stop_leaves_no_process(tmp_path: Path):
    with start_twistd("sockapp", "--port", "tcp:0:interface=127.0.0.1", folder=tmp_path, timeout=TIMEOUT) as server:
        assert server.port and server.port > 0
        received = send_and_read_all(
            ("127.0.0.1", server.port), json_request({"action": "search", "value": "morpheus"})
        )
        [(_, content)] = split_frames(received)
        assert json.loads(content) == {"result": "Follow the white rabbit. \U0001f430"}
        assert f"starting on {server.port}" in server.log()
        assert not group_gone(server.pid)
    assert server.proc.returncode is not None
    assert group_gone(server.pid)


def test_a_unix_socket_is_port_0(tmp_path: Path):
    with start_twistd("sockapp", "--port", f"unix:{tmp_path / 's.sock'}", folder=tmp_path, timeout=TIMEOUT) as server:
        assert server.port == 0
    assert group_gone(server.pid)


def test_a_process_that_exits_at_once_fails_the_wait_with_its_log(tmp_path: Path):
    server = ServerProcess(
        [sys.executable, "-c", "print('no such option: --frobnicate'); raise SystemExit(2)"], tmp_path
    )
    try:
        with pytest.raises(WaitForLogFailed) as failed:
            server.wait_until_listening(timeout=TIMEOUT)
        message = str(failed.value)
        assert "server exited with 2" in message
        assert "no such option: --frobnicate" in message
    finally:
        server.stop()


def test_twistd_with_a_bad_option_fails_with_its_usage_error(tmp_path: Path):
    with pytest.raises(WaitForLogFailed, match="frobnicate"):
        start_twistd("sockapp", "--frobnicate", folder=tmp_path, timeout=TIMEOUT)


def test_a_process_that_never_logs_the_pattern_is_stopped_after_the_timeout(tmp_path: Path):
    server = ServerProcess([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"], tmp_path)
    try:
        server.wait_for_log("up", timeout=TIMEOUT)  # it runs: the stop below is the wait's doing
        with pytest.raises(WaitForLogFailed, match=r"no 'starting on' in the server log within 0.5 s:\nup"):
            server.wait_for_log("starting on", timeout=0.5)
        assert server.proc.returncode is not None  # stopped, and reaped
        assert group_gone(server.pid)
    finally:
        server.stop()


def test_stop_kills_what_ignores_sigterm_after_the_grace(tmp_path: Path):
    ignores_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    server = ServerProcess([sys.executable, "-c", ignores_term], tmp_path, grace=0.5)
    try:
        server.wait_for_log("up", timeout=TIMEOUT)
        server.stop()
        assert server.proc.returncode == -9
        assert group_gone(server.pid)
    finally:
        server.stop()


def test_extra_env_reaches_the_process(tmp_path: Path):
    code = "import os; print(os.environ['SOCKAPP_TESTING'], os.environ['PYTHONUNBUFFERED'])"
    with ServerProcess([sys.executable, "-c", code], tmp_path, {"SOCKAPP_TESTING": "here"}) as server:
        with pytest.raises(WaitForLogFailed, match="exited with 0"):
            server.wait_for_log("never", timeout=TIMEOUT)
        assert server.log() == "here 1\n"


def test_start_twistd_stops_the_server_when_the_wait_fails_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Not only WaitForLogFailed: a pattern without group 1, a KeyboardInterrupt... must not leave the server running.
    started: list[ServerProcess] = []

    def broken_wait(self: ServerProcess, pattern: str, timeout: float) -> int:
        started.append(self)
        self.wait_for_log("starting on", timeout)
        raise IndexError("no such group")

    monkeypatch.setattr(ServerProcess, "wait_until_listening", broken_wait)
    with pytest.raises(IndexError):
        start_twistd("echo", "--port", "tcp:0:interface=127.0.0.1", folder=tmp_path, timeout=TIMEOUT)
    try:
        assert group_gone(started[0].pid)
    finally:
        started[0].stop()


def test_what_a_server_forked_is_stopped_even_when_the_server_itself_has_exited(tmp_path: Path):
    """A worker parent that dies at start-up leaves its workers in its process group."""
    server = ServerProcess([sys.executable, "-c", CHILD_THEN_EXIT], tmp_path, grace=5)
    with pytest.raises(WaitForLogFailed):
        server.wait_for_log(r"never printed", timeout=10)
    child = _child_pid(server)
    for _ in range(100):  # the signal needs a moment to land (bounded)
        if _zombie_or_gone(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)  # leave nothing behind, then fail
        raise AssertionError(f"the child {child} of an exited server is still running")


CHILD_THEN_EXIT = (
    "import subprocess, sys; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
    "print('child', child.pid, flush=True); sys.exit(1)"
)


def _child_pid(server: ServerProcess) -> int:
    found = re.search(r"child (\d+)", server.log())
    assert found, server.log()
    return int(found.group(1))


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
