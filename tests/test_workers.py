"""--workers: one port served by several twistd processes, restarted when they die."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
from conftest import json_request, send_and_read_all, split_frames, tool
from twisted.python import usage

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
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


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
