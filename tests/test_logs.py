"""--log-format json: the line format, the twistd wiring, and real twistd processes."""

from __future__ import annotations

import io
import json
import socket
import subprocess
from typing import cast

import pytest
from conftest import json_request, tool
from twisted.application import service
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.failure import Failure

from sockapp.server.logs import JSONLogging, event_as_json, json_lines_observer
from sockapp.tap import echo, search


def lines_of(out: io.StringIO) -> list[dict]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_an_event_is_one_flat_json_line():
    out = io.StringIO()
    log = Logger(namespace="sockapp.server.SearchProtocol", observer=json_lines_observer(out))
    log.warn("{peer}: {code}: {reason}; closing", peer="127.0.0.1:5000", code="bad-request", reason="no action")
    (line,) = lines_of(out)
    assert line["level"] == "warn"
    assert line["namespace"] == "sockapp.server.SearchProtocol"
    assert line["message"] == "127.0.0.1:5000: bad-request: no action; closing"
    assert (line["peer"], line["code"], line["reason"]) == ("127.0.0.1:5000", "bad-request", "no action")
    assert line["time"].endswith("+00:00") and "T" in line["time"]
    assert not any(key.startswith("log_") for key in line)


def test_fields_that_clash_or_are_not_json_still_come_out():
    out = io.StringIO()
    log = Logger(namespace="x", observer=json_lines_observer(out))
    log.info("{message} at {time}", message="clash", time=12, thing=object)
    (line,) = lines_of(out)
    assert line["message"] == "clash at 12"
    assert (line["field_message"], line["field_time"]) == ("clash", 12)
    assert line["thing"] == str(object)


def test_a_failure_carries_its_traceback():
    out = io.StringIO()
    log = Logger(namespace="x", observer=json_lines_observer(out))
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.failure("dividing", Failure())
    (line,) = lines_of(out)
    assert line["level"] == "critical" and line["message"] == "dividing"
    assert "ZeroDivisionError" in line["traceback"]


def test_legacy_events_are_flattened_too():
    out = io.StringIO()
    observer = json_lines_observer(out)
    legacy = legacy_log.LogPublisher(publishPublisher=observer)
    legacy.msg("SearchFactory starting on 5634")
    (line,) = lines_of(out)
    assert line["message"] == "SearchFactory starting on 5634"
    assert "format" not in line and "isError" not in line and "field_message" not in line


def test_json_logging_installs_the_observer_on_the_application():
    observer = json_lines_observer(io.StringIO())
    application = service.Application("sockapp")
    JSONLogging(observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer


@pytest.mark.parametrize("module", [search, echo])
def test_log_format_option(module):
    options = module.Options()
    options.parseOptions(["--log-format", "json"])
    assert isinstance(module.makeService(options), JSONLogging)
    plain = module.Options()
    plain.parseOptions([])
    assert plain["log-format"] == "text" and not isinstance(module.makeService(plain), JSONLogging)
    with pytest.raises(usage.UsageError, match="'xml' is not one of text, json"):
        module.Options().parseOptions(["--log-format", "xml"])


def test_workers_log_text_and_the_parent_formats_their_lines():
    options = search.Options()
    options.parseOptions(["--log-format", "json", "--workers", "2", "--verbose"])
    args = options.worker_args()
    assert "--verbose" in args and not any(arg.startswith("--log-format") for arg in args)


def twistd_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "how",
    [["sockapp", "--log-format", "json"], ["--logger", "sockapp.server.logs.json_observer", "sockapp"]],
    ids=["--log-format", "twistd --logger"],
)
def test_twistd_logs_one_json_object_per_line(server_processes, how):
    server = server_processes([tool("twistd"), "-n", "--pidfile=", *how, "--port", "tcp:0:interface=127.0.0.1"])
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    bad = b"\x00\x00"  # a frame fault: logged, answered with an error frame, closed
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(json_request({"action": "ping"}) + bad)
        while sock.recv(65536):
            pass
    server.wait_for_log(r"empty-header")
    lines = twistd_lines(server)  # every line parses
    assert any(line["message"].startswith("twistd ") for line in lines)
    (warning,) = [line for line in lines if line.get("code") == "empty-header"]
    assert warning["level"] == "warn" and warning["peer"].startswith("127.0.0.1:")
    assert warning["namespace"] == "sockapp.server.AppProtocol"


def test_tac_file_logs_json_too(server_processes):
    from conftest import ROOT

    server = server_processes(
        [tool("twistd"), "-n", "--pidfile=", "-y", str(ROOT / "tac" / "sockapp.tac")],
        {"SOCKAPP_ARGS": "--port tcp:0:interface=127.0.0.1 --log-format json"},
    )
    port = int(server.wait_for_log(r"starting on (\d+)").group(1))
    result = subprocess.run(
        [tool("sockapp"), "ping", "--connect", f"tcp:host=127.0.0.1:port={port}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout == "pong\n"
    assert any("starting on" in line["message"] for line in twistd_lines(server))


def test_level_names_are_twisteds():
    assert {level.name for level in LogLevel.iterconstants()} == {"debug", "info", "warn", "error", "critical"}
    line = json.loads(event_as_json({"log_level": LogLevel.error, "log_format": "x", "log_time": 0.0}))
    assert (line["level"], line["time"]) == ("error", "1970-01-01T00:00:00.000000+00:00")


def test_a_json_line_stays_under_the_cap_whatever_the_peer_text_escapes_to():
    """peer_text caps a field at 200 characters, but one emoji is 12 bytes of ASCII JSON
    (and a field also appears in the message): the line itself must stay bounded."""
    from sockapp.server.logs import MAX_JSON_LINE
    from sockapp.wire.text import peer_text

    hostile = peer_text("\U0001f436" * 300)
    escaped = peer_text("\x85" * 1000)
    log = Logger(namespace="test")
    lines: list[str] = []
    log.observer = cast(ILogObserver, lambda event: lines.append(event_as_json(event)))
    log.warn("{peer}: unknown encoding {encoding} {uri}", peer="1.2.3.4:5", encoding=hostile, uri=escaped)
    (line,) = lines
    assert len(line.encode()) <= MAX_JSON_LINE
    record = json.loads(line)
    assert record["peer"] == "1.2.3.4:5"  # short fields are whole
    assert record["encoding"].startswith("\U0001f436") and "cut" in record["encoding"]
