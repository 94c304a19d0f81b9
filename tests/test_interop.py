"""Interoperability with the tutorial's own programs, run unchanged as subprocesses.

The programs are found at ../shared/seed/reference beside the checkout (or
$SOCKAPP_SEED_DIR) and never copied. They hard-code port 5634 in places, so
they run under a small wrapper that moves 5634 to the port of the test.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from conftest import (
    WRAPPER,
    binary_request,
    json_request,
    raw_frame,
    send_and_read_all,
    split_frames,
    start_tutorial_server,
    start_twistd,
    tool,
    tutorial_env,
)

from sockapp.client import connect

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"
TIMEOUT = 60


def run_tutorial_client(seed: Path, script: str, *args: str, target_port: int = 0) -> str:
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(seed / script), *args],
        capture_output=True,
        env=tutorial_env(target_port),
        timeout=TIMEOUT,
    )
    out = result.stdout.decode("utf-8")
    assert result.returncode == 0, out + result.stderr.decode()
    assert "Traceback" not in out and "Error" not in out, out
    return out


def run_sockapp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("sockapp"), *args], capture_output=True, text=True, timeout=TIMEOUT, env=tutorial_env())


# -- the tutorial's clients against our servers -----------------------------


@pytest.mark.parametrize(
    "action, value, expected",
    [
        ("search", "morpheus", "got result: Follow the white rabbit. \U0001f430"),
        ("search", "ring", "got result: In the caves beneath the Misty Mountains. \U0001f48d"),
        ("search", "\U0001f436", "got result: \U0001f43e Playing ball! \U0001f3d0"),
        ("search", "nobody", "got result: No match for 'nobody'."),
        ("binary", "hello", "got response: b'First 10 bytes of request: binaryhell'"),
        ("x", "", "got response: b'First 10 bytes of request: x'"),
    ],
)
def test_tutorial_app_client_against_twistd_sockapp(seed_dir, server_processes, action, value, expected):
    port = start_twistd(server_processes, "sockapp", "--port", LOOPBACK_ANY_PORT)
    out = run_tutorial_client(seed_dir, "app_mclient.py", "127.0.0.1", str(port), action, value)
    assert expected in out.splitlines()


def test_tutorial_echo_client_against_twistd_echo(seed_dir, server_processes):
    port = start_twistd(server_processes, "echo", "--port", LOOPBACK_ANY_PORT)
    out = run_tutorial_client(seed_dir, "echo_clnt.py", target_port=port)
    assert "data=b'hello, universe.\\nHi, friend.'" in out.splitlines()


def received_by_connection(out: str) -> dict[int, bytes]:
    received: dict[int, bytes] = {}
    for literal, number in re.findall(r"^received (b'.*'|b\".*\") from connection (\d+)$", out, re.M):
        received[int(number)] = received.get(int(number), b"") + ast.literal_eval(literal)
    return received


def test_tutorial_multiconn_client_against_twistd_echo(seed_dir, server_processes):
    port = start_twistd(server_processes, "echo", "--port", LOOPBACK_ANY_PORT)
    out = run_tutorial_client(seed_dir, "multiconn_clnt.py", "127.0.0.1", str(port), "20")
    expected = b"hello message 1 from client.hi message 2 from client."
    assert received_by_connection(out) == {n: expected for n in range(1, 21)}


# -- our clients against the tutorial's servers -----------------------------


@pytest.mark.parametrize(
    "action, value, expected",
    [
        ("search", "morpheus", "Follow the white rabbit. \U0001f430"),
        ("search", "nobody", "No match for 'nobody'."),
        ("binary", "hello", "First 10 bytes of request: binaryhell"),
    ],
)
def test_sockapp_request_against_tutorial_server(seed_dir, server_processes, action, value, expected):
    port = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    result = run_sockapp("request", "--connect", f"tcp:host=127.0.0.1:port={port}", action, value)
    assert (result.stdout, result.returncode) == (expected + "\n", 0), result.stderr


def test_sockapp_echo_against_tutorial_echo_server(seed_dir, server_processes):
    port = start_tutorial_server(server_processes, seed_dir, "echo_srv.py")
    result = run_sockapp("echo", "--connect", f"tcp:host=127.0.0.1:port={port}")
    assert (result.stdout, result.returncode) == ("hello, universe.\nHi, friend.\n", 0), result.stderr


def test_sockapp_multiconn_against_tutorial_multiconn_server(seed_dir, server_processes):
    port = start_tutorial_server(server_processes, seed_dir, "multiconn_srvr.py", "127.0.0.1", "5634")
    result = run_sockapp("multiconn", "-n", "50", "--connect", f"tcp:host=127.0.0.1:port={port}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "50 of 50 connections echoed 53 bytes exactly\n"


# -- our server's bytes against the tutorial server's bytes ----------------


def unknown_action(action: str, value: str) -> bytes:
    return json_request({"action": action, "value": value})


REQUESTS = {
    "search hit": json_request({"action": "search", "value": "morpheus"}),
    "search hit ring": json_request({"action": "search", "value": "ring"}),
    "search emoji key": json_request({"action": "search", "value": "\U0001f436"}),
    "search miss": json_request({"action": "search", "value": "nobody"}),
    "search miss non-ascii": json_request({"action": "search", "value": "caf\u00e9 \u2615"}),
    "search empty": json_request({"action": "search", "value": ""}),
    "unknown json action": unknown_action("find", "morpheus"),
    "unknown json action non-ascii": unknown_action("\u00e9", "x"),
    "binary": binary_request(b"binaryhello"),
    "binary short": binary_request(b"abc"),
    "binary non-ascii": binary_request("\U0001f436\u00e9".encode()),
    "binary bytes": binary_request(bytes(range(256))),
    "binary other content-type": raw_frame(
        {
            "byteorder": "big",
            "content-type": "application/octet-stream",
            "content-encoding": "binary",
            "content-length": 4,
        },
        b"\x00\x01\x02\x03",
    ),
    "json in utf-16": json_request({"action": "search", "value": "ring"}, encoding="utf-16"),
    # The tutorial's server formats what it was sent with str(): sockapp answers the same.
    "search value a number": json_request({"action": "search", "value": 5}),
    "search value a float, a boolean": json_request({"action": "search", "value": 1.5}),
    "search value true": json_request({"action": "search", "value": True}),
    "search value missing": json_request({"action": "search"}),
    "no action": json_request({"value": "morpheus"}),
    "action a number": json_request({"action": 7, "value": "x"}),
    "action an array": json_request({"action": [1, "two", None], "value": "x"}),
}


def ask_tutorial(port: int, request: bytes) -> bytes:
    """The tutorial's server answers once, then closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def ask_ours(port: int, request: bytes) -> bytes:
    """Ours keeps the connection open; half-close so it answers, then closes."""
    return send_and_read_all(("127.0.0.1", port), request, timeout=TIMEOUT)


def test_our_response_bytes_equal_the_tutorial_servers(seed_dir, server_processes):
    theirs = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    ours = start_twistd(server_processes, "sockapp", "--port", LOOPBACK_ANY_PORT)
    for name, request in REQUESTS.items():
        expected = ask_tutorial(theirs, request)
        assert len(split_frames(expected)) == 1, f"{name}: the tutorial's server did not answer"
        assert ask_ours(ours, request) == expected, name


def test_pipelined_requests_match_the_tutorials_answers_in_order(seed_dir, server_processes):
    theirs = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    ours = start_twistd(server_processes, "sockapp", "--port", LOOPBACK_ANY_PORT)
    requests = list(REQUESTS.values())
    expected = b"".join(ask_tutorial(theirs, r) for r in requests)
    assert ask_ours(ours, b"".join(requests)) == expected


@pytest_twisted.ensureDeferred
async def test_python_client_reconnects_to_the_tutorial_server(seed_dir, server_processes):
    from twisted.internet import reactor

    port = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    client = await connect(reactor, f"tcp:host=127.0.0.1:port={port}", request_timeout=TIMEOUT)
    one = await client.request("search", "morpheus")
    two = await client.request("search", "ring")  # the server closed after the first answer
    pipelined = [client.request("search", q) for q in ("nobody", "\U0001f436", "ring")]
    rest = [(await answer).result for answer in pipelined]
    assert one.result == "Follow the white rabbit. \U0001f430"
    assert two.result == "In the caves beneath the Misty Mountains. \U0001f48d"
    assert rest == ["No match for 'nobody'.", "\U0001f43e Playing ball! \U0001f3d0", two.result]
    assert client.connections_made == 5
    await client.close()


def test_sockapp_bench_against_the_tutorial_server_sends_each_request_once(seed_dir, server_processes):
    """The tutorial's server closes after every answer: after its first connection shows that,
    each bench connection sends every request once, on a connection of its own."""
    port = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    connections = 4
    result = run_sockapp(
        "bench", "--connect", f"tcp:host=127.0.0.1:port={port}", "-c", str(connections), "-n", "400", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["requests"], summary["errors"]) == (400, 0)
    assert summary["retries"] <= connections
