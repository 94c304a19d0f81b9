"""twistd plugins and .tac files as real processes, on a port the kernel picks."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from conftest import (
    ROOT,
    binary_request,
    json_request,
    metric_samples,
    send_and_read_all,
    split_frames,
    start_twistd,
    tool,
)

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


def exchange(port: int, data: bytes, expect_frames: int = 1) -> list[tuple[dict, bytes]]:
    frames = split_frames(send_and_read_all(("127.0.0.1", port), data))
    assert len(frames) == expect_frames
    return frames


def echo_round_trip(port: int, data: bytes) -> bytes:
    return send_and_read_all(("127.0.0.1", port), data)


def check_search(port: int) -> None:
    (h1, c1), (h2, c2) = exchange(
        port, json_request({"action": "search", "value": "morpheus"}) + binary_request(b"hello"), 2
    )
    assert json.loads(c1) == {"result": "Follow the white rabbit. \U0001f430"}
    assert c2 == b"First 10 bytes of request: hello"


def test_twistd_sockapp(server_processes):
    check_search(start_twistd(server_processes, "sockapp", "--port", LOOPBACK_ANY_PORT))


def test_twistd_sockapp_with_data_file(server_processes, tmp_path):
    data = tmp_path / "answers.json"
    data.write_text(json.dumps({"neo": "The One."}))
    port = start_twistd(server_processes, "sockapp", "--port", LOOPBACK_ANY_PORT, "--data", str(data))
    ((_, content),) = exchange(port, json_request({"action": "search", "value": "neo"}))
    assert json.loads(content) == {"result": "The One."}


def test_twistd_echo(server_processes):
    port = start_twistd(server_processes, "echo", "--port", LOOPBACK_ANY_PORT)
    data = bytes(range(256)) * 1000
    assert echo_round_trip(port, data) == data


def test_sockapp_tac(server_processes):
    env = {"SOCKAPP_ARGS": f"--port {LOOPBACK_ANY_PORT}"}
    check_search(start_twistd(server_processes, "-y", str(ROOT / "tac" / "sockapp.tac"), env=env))


def test_echo_tac(server_processes):
    env = {"SOCKAPP_ARGS": f"--port {LOOPBACK_ANY_PORT}"}
    port = start_twistd(server_processes, "-y", str(ROOT / "tac" / "echo.tac"), env=env)
    assert echo_round_trip(port, b"hello, universe.") == b"hello, universe."


def test_unix_socket_endpoint(server_processes, tmp_path):
    path = tmp_path / "s.sock"
    server = server_processes([tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", f"unix:{path}"])
    server.wait_for_log("starting on")
    received = send_and_read_all(str(path), json_request({"action": "search", "value": "ring"}), socket.AF_UNIX)
    assert b"Misty Mountains" in received
    result = subprocess.run(
        [tool("sockapp"), "request", "--connect", f"unix:path={path}", "search", "ring"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "In the caves beneath the Misty Mountains. \U0001f48d\n")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["sockapp", "--port", "nonsense:1"], "not a usable endpoint description"),
        (["sockapp", "--data", "/nonexistent/answers.json"], "cannot read data file"),
        (["echo", "--bogus"], "option --bogus not recognized"),
    ],
)
def test_bad_command_line_is_a_short_usage_error(argv, fragment, tmp_path):
    result = subprocess.run(
        [tool("twistd"), "-n", "--pidfile=", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert fragment in result.stdout.strip().splitlines()[-1]
    assert len(result.stdout.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "{n}"], "sockapp: cannot listen on tcp:{n}:interface=127.0.0.1: Address already in use"),
        (
            ["--port", LOOPBACK_ANY_PORT, "--metrics", "{n}"],
            "cannot listen on tcp:{n}:interface=127.0.0.1 (--metrics): Address already in use",
        ),
    ],
    ids=["--port", "--metrics"],
)
def test_port_in_use_stops_twistd(args, message, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        result = subprocess.run(
            [tool("twistd"), "-n", "--pidfile=", "sockapp", *(arg.format(n=number) for arg in args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert message.format(n=number) in output


@pytest.mark.parametrize("name", ["sockapp", "echo"])
def test_twistd_help_explains_every_option(name, tmp_path):
    result = subprocess.run([tool("twistd"), name, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--port" in result.stdout and "--verbose" in result.stdout
    if name == "sockapp":
        assert "--data" in result.stdout and "--max-content-length" in result.stdout


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics as Prometheus would; samples by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return metric_samples(response.read().decode("utf-8"))


def test_metrics_endpoint_counts_a_running_server(server_processes):
    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "sockapp", "--port", LOOPBACK_ANY_PORT, "--metrics", LOOPBACK_ANY_PORT]
    )
    port = int(server.wait_for_log(r"SearchFactory starting on (\d+)").group(1))
    metrics_port = int(server.wait_for_log(r"MetricsSite starting on (\d+)").group(1))
    hits = ("sockapp_requests_total", (("action", "search"), ("outcome", "ok")))
    before = scrape(metrics_port)
    assert before[hits] == 0 and before[("sockapp_connections_total", ())] == 0
    for _ in range(3):
        check_search(port)  # a hit and a binary request per connection
    after = scrape(metrics_port)
    assert after[hits] == 3
    assert after[("sockapp_requests_total", (("action", "binary"), ("outcome", "ok")))] == 3
    assert after[("sockapp_connections_total", ())] == 3
    assert after[("sockapp_received_bytes_total", ())] > 0 and after[("sockapp_sent_bytes_total", ())] > 0
    assert after[("sockapp_request_duration_seconds_count", ())] == 6
    assert after[("process_resident_memory_bytes", ())] > 0
