"""Faults against real twistd processes on loopback: connection limits, graceful shutdown,
and a peer that sends without reading (server memory measured while it pushes)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
import time
from typing import Any

import pytest
from conftest import binary_request, json_request, raw_frame, split_frames, start_twistd, tool

from sockapp.net.protocol import CLOSE_GRACE

LOOPBACK = "tcp:0:interface=127.0.0.1"
TIMEOUT = 30


def status_bytes(pid: int, field: str) -> int:
    """A size from /proc/PID/status (VmRSS, VmHWM ...), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def ask(sock: socket.socket, request: bytes) -> list:
    sock.sendall(request)
    received = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "closed before the answer"
        received += chunk
        try:
            return split_frames(received)
        except (ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError):
            continue


def is_complete(data: bytes) -> bool:
    try:
        split_frames(data)
        return True
    except Exception:  # noqa: BLE001 - any failure to split means incomplete here
        return False


def test_connections_beyond_the_limit_are_closed_at_once(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", LOOPBACK, "--max-connections", "2")
    request = json_request({"action": "search", "value": "ring"})
    inside = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(2)]
    try:
        for sock in inside:
            ask(sock, request)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as extra:
            assert extra.recv(100) == b""  # closed at once, without a word
        for sock in inside:  # the ones inside keep working
            ((_, content),) = ask(sock, request)
            assert json.loads(content)["result"].startswith("In the caves")
    finally:
        for sock in inside:
            sock.close()


def test_sigterm_drains_gracefully(server_processes):
    server = server_processes(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "sockapp", "--port", LOOPBACK]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    busy = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    request = json_request({"action": "search", "value": "morpheus"})
    # A whole request and the start of the next in one send: once the first is
    # answered, the server has read the partial one too.
    ((_, first),) = ask(busy, request + request[:12])
    assert json.loads(first)["result"].startswith("Follow")
    ask(idle, request)
    server.proc.send_signal(signal.SIGTERM)
    assert idle.recv(100) == b""  # the idle connection is closed
    busy.sendall(request[12:])  # the started request is finished, answered, then closed
    received = b""
    while chunk := busy.recv(65536):
        received += chunk
    ((_, content),) = split_frames(received)
    assert json.loads(content) == {"result": "Follow the white rabbit. \U0001f430"}
    assert server.proc.wait(TIMEOUT) in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
    assert "shutting down: draining 2 connections" in server.log()
    idle.close()
    busy.close()


def test_shutdown_timeout_cuts_a_frame_that_never_ends(server_processes):
    server = server_processes(
        [
            os.path.join(os.path.dirname(sys.executable), "twistd"),
            "-n",
            "--pidfile=",
            "sockapp",
            "--port",
            LOOPBACK,
            "--shutdown-timeout",
            "1",
        ]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    stuck = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    request = json_request({"action": "search", "value": "x"})
    ask(stuck, request + request[:5])  # answered, so the partial frame behind it was read too
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(TIMEOUT) in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
    assert "still open 1 s into shutdown; aborting" in server.log()
    stuck.close()


@pytest.mark.parametrize("service", ["sockapp", "echo"])
def test_server_memory_stays_bounded_while_a_peer_pushes_without_reading(server_processes, service):
    """The server stops reading from a peer that does not read its answers, and stays stopped.

    Without backpressure the server reads on for ever, buffering answers: the
    peer's sends never stall for long and it pushes far more than 64 MiB.
    """
    server = server_processes(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", service, "--port", LOOPBACK]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    before = rss_bytes(server.proc.pid)
    block = json_request({"action": "search", "value": "morpheus"}) * 1000  # ~70 KB of pipelined requests
    limit = 64 * 2**20  # kernel buffers and one server read hold a few MiB; 64 MiB means no backpressure
    pushed = 0
    offset = 0  # into block: a partial send is continued, never repeated, so the stream stays well-formed
    peak = before
    stalled = False
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as peer:
        peer.setblocking(False)
        deadline = time.monotonic() + 60
        stalled_since = None
        while pushed < limit and time.monotonic() < deadline:
            try:
                sent = peer.send(block[offset:])
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 2:  # the server stopped reading and stays stopped
                    stalled = True
                    break
                time.sleep(0.01)
            else:
                pushed += sent
                offset = (offset + sent) % len(block)
                stalled_since = None
            peak = max(peak, rss_bytes(server.proc.pid))
        peak = max(peak, rss_bytes(server.proc.pid))
        # Still the same connection, still well-formed: nothing was refused or closed.
        assert server.proc.poll() is None
    growth = peak - before
    print(
        f"{service}: peer pushed {pushed / 2**20:.1f} MiB before the server stopped reading; "
        f"server RSS {before / 2**20:.1f} -> peak {peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB)"
    )
    assert stalled, f"the server read {pushed / 2**20:.1f} MiB from a peer that reads nothing and never stopped"
    assert pushed < limit
    assert growth < 64 * 2**20
    assert "closing" not in server.log()  # measured backpressure, not a connection the server was closing


def server_send_queue(server_port: int, client_port: int) -> int:
    """Bytes the server's kernel holds unsent on the connection from ``client_port`` (/proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
                return int(fields[4].split(":")[0], 16)
    return 0


def fill_the_kernel_exactly(sock: socket.socket, server_port: int, request: bytes, answer_size: int) -> None:
    """Send requests one at a time, reading nothing, until an answer no longer fits in the kernel's
    buffers (ours to receive, the server's to send): the rest of it waits in the server's own buffer,
    below the size at which Twisted would stop reading, so the server still looks like it is reading."""
    client_port = sock.getsockname()[1]

    def in_kernel() -> int:
        unread = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]
        return unread + server_send_queue(server_port, client_port)

    before = in_kernel()
    for _ in range(10_000):
        sock.sendall(request)
        time.sleep(0.05)  # on loopback the answer is usually in the kernel by then
        now = in_kernel()
        if now - before < answer_size:
            time.sleep(1)  # a busy server may just be late: look again before deciding
            now = in_kernel()
            if now - before < answer_size:
                return
        before = now
    raise AssertionError("the kernel's buffers never filled")


def test_an_idle_peer_that_does_not_read_loses_its_connection_and_its_slot(server_processes):
    """--idle-timeout 2 --max-connections 1: the idle close of a peer that reads nothing, with part of
    an answer in the server's buffer, used to wait for ever (holding the slot); it is cut after the
    close grace period, and the next client is served."""
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", LOOPBACK, "--idle-timeout", "2"]
        + ["--max-connections", "1", "--verbose"]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    answer_size = 60_000
    request = json_request({"action": "search", "value": "x" * answer_size})  # a miss: the answer echoes it
    greedy = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        fill_the_kernel_exactly(greedy, port, request, answer_size)
        server.wait_for_log(r"no traffic for 2 s \(--idle-timeout\); closing", timeout=TIMEOUT)
        served = None
        # The grace period, and a generous margin for a busy machine: a held slot is never freed at all.
        closed_by = time.monotonic() + CLOSE_GRACE + 10
        while served is None and time.monotonic() < closed_by:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as probe:
                    probe.sendall(json_request({"action": "search", "value": "ring"}))
                    data = b""
                    while chunk := probe.recv(65536):
                        data += chunk
                        if is_complete(data):
                            served = json.loads(split_frames(data)[0][1])
                            break
            except ConnectionResetError:
                pass
            if served is None:
                time.sleep(0.1)  # refused: the slot is still held
        assert served == {"result": "In the caves beneath the Misty Mountains. \U0001f48d"}, server.log()[-2000:]
        # (Usually the server's log then says "close not finished in time": the state was reached.
        # Under coverage's tracing the timing differs and it may not be; the slot must be free either way.)
    finally:
        greedy.close()


def text_json_frame(content: bytes, encoding: str = "utf-8") -> bytes:
    header = {"byteorder": "little", "content-type": "text/json", "content-encoding": encoding}
    return raw_frame({**header, "content-length": len(content)}, content)


def nested_json_request(length: int) -> bytes:
    """A search whose value is JSON that parses to ~48 times its size: arrays nested 200 deep."""
    unit = b"[" * 200 + b"]" * 200
    head, tail = b'{"action": "search", "value": [', b"]}"
    count = (length - len(head) - len(tail)) // (len(unit) + 1)
    return text_json_frame(head + b",".join([unit] * count) + tail)


def test_peak_memory_stays_within_the_readme_budget(server_processes):
    """README: per connection, the larger of --max-content-length and 50 x --max-json-length, plus
    128 KiB. Connections send the worst of each at once and read nothing: JSON that parses to ~48
    times its size, cp437 searches whose answers are 3 times theirs, binary frames of the limit,
    and JSON of the binary limit (which only --max-json-length keeps from being parsed)."""
    max_content, max_json, per_kind = 4 * 2**20, 64 * 2**10, 8
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", LOOPBACK]
        + ["--max-content-length", str(max_content), "--max-json-length", str(max_json)]
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    pid = server.proc.pid
    before = status_bytes(pid, "VmRSS")
    cp437 = "\u2588" * (max_json - 40)  # one byte each in cp437, three in the UTF-8 answer
    frames = [
        nested_json_request(max_json),
        text_json_frame(json.dumps({"action": "search", "value": cp437}, ensure_ascii=False).encode("cp437"), "cp437"),
        binary_request(b"\xab" * max_content),
        nested_json_request(max_content),
    ]
    peers: list[list[Any]] = []  # [socket, data, bytes sent]
    try:
        for _ in range(per_kind):
            for frame in frames:
                peer = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                peer.setblocking(False)
                peers.append([peer, frame * 3, 0])  # pipelined, never read
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(sent < len(data) for _, data, sent in peers):
            for entry in peers:
                peer, data, sent = entry
                if sent < len(data):
                    try:
                        entry[2] += peer.send(data[sent : sent + 2**20])
                    except BlockingIOError:
                        pass
                    except OSError:
                        entry[2] = len(data)  # closed by the server (an error frame)
            time.sleep(0.001)
        time.sleep(1)
        peak = status_bytes(pid, "VmHWM")
    finally:
        for peer, _, _ in peers:
            peer.close()
    budget = len(peers) * (max(max_content, 50 * max_json) + 128 * 2**10)
    print(f"\n{len(peers)} connections: RSS {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
          f"(+{(peak - before) / 2**20:.1f}); budget {budget / 2**20:.1f} MiB")  # fmt: skip
    assert peak - before <= budget
    assert "Traceback" not in server.log()
