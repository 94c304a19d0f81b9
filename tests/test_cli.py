"""The ``sockapp`` command as a user runs it: a real process against servers on 127.0.0.1:0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from conftest import tool
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue

from sockapp.apps.search import TUTORIAL_ANSWERS, SearchIndex
from sockapp.server import SearchFactory
from sockapp.server.echo import EchoFactory
from sockapp.wire.framing import encode_frame, encode_result


async def sockapp(*args: str, encoding: str = "utf-8") -> tuple[str, str, int]:
    env = dict(os.environ, PYTHONIOENCODING=encoding)
    out, err, code = await getProcessOutputAndValue(tool("sockapp"), list(args), env=env).addTimeout(60, reactor)
    return out.decode(encoding), err.decode(encoding), code


@pytest_twisted.ensureDeferred
async def test_request_prints_the_result(listen):
    endpoint = await listen(SearchFactory())
    out, err, code = await sockapp("request", "--connect", endpoint, "search", "morpheus")
    assert (out, err, code) == ("Follow the white rabbit. \U0001f430\n", "", 0)
    out, _, code = await sockapp("request", "--connect", endpoint, "binary", "hello")
    assert (out, code) == ("First 10 bytes of request: binaryhell\n", 0)


@pytest_twisted.ensureDeferred
async def test_request_json_prints_the_decoded_response(listen):
    endpoint = await listen(SearchFactory())
    out, _, code = await sockapp("request", "--json", "--connect", endpoint, "search", "\U0001f436")
    assert code == 0
    response = json.loads(out)
    assert response["content"] == {"result": "\U0001f43e Playing ball! \U0001f3d0"}
    assert response["header"]["content-type"] == "text/json"
    assert response["header"]["byteorder"] == sys.byteorder


@pytest_twisted.ensureDeferred
async def test_echo_and_multiconn(listen):
    endpoint = await listen(EchoFactory())
    out, _, code = await sockapp("echo", "--connect", endpoint)
    assert (out, code) == ("hello, universe.\nHi, friend.\n", 0)
    out, err, code = await sockapp("multiconn", "--connections", "200", "--connect", endpoint)
    assert code == 0, err
    assert out == "200 of 200 connections echoed 53 bytes exactly\n"


class Mangler(Protocol):
    """An 'echo server' that changes one byte: multiconn must notice."""

    transport: Any  # connected over TCP

    def dataReceived(self, data):
        self.transport.write(data.replace(b"1", b"7"))


class HangUp(Protocol):
    """Reads a little, then closes mid-answer."""

    transport: Any  # connected over TCP

    def dataReceived(self, data):
        self.transport.write(data[:3])
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_multiconn_fails_on_a_wrong_echo(listen):
    endpoint = await listen(Factory.forProtocol(Mangler))
    out, err, code = await sockapp("multiconn", "-n", "3", "--connect", endpoint)
    assert code == 1
    assert "0 of 3" in out and "echo differs" in err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest_twisted.ensureDeferred
async def test_refused_connection_is_one_line():
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
    number = port.getHost().port
    await port.stopListening()  # now nothing listens there
    out, err, code = await sockapp("request", "--connect", f"tcp:host=127.0.0.1:port={number}", "search", "x")
    assert code == 1 and out == ""
    assert "connection refused" in one_line_error(err)


@pytest_twisted.ensureDeferred
async def test_unknown_endpoint_is_one_line():
    _, err, code = await sockapp("echo", "--connect", "carrier-pigeon:coop=1")
    assert code == 1
    assert "bad endpoint" in one_line_error(err)


@pytest_twisted.ensureDeferred
async def test_server_closing_mid_answer_is_one_line(listen):
    endpoint = await listen(Factory.forProtocol(HangUp))
    _, err, code = await sockapp("request", "--connect", endpoint, "search", "x")
    assert code == 1 and "closed" in one_line_error(err)
    _, err, code = await sockapp("echo", "--connect", endpoint, "abcdef")
    assert code == 1 and "3 of 6" in one_line_error(err)


@pytest_twisted.ensureDeferred
async def test_silent_server_times_out_with_one_line(listen):
    endpoint = await listen(Factory.forProtocol(Protocol))
    _, err, code = await sockapp("request", "--timeout", "0.5", "--connect", endpoint, "search", "x")
    assert code == 1 and "no complete answer within 0.5 s" in one_line_error(err)


@pytest_twisted.ensureDeferred
async def test_bad_arguments_are_usage_errors():
    _, err, code = await sockapp("multiconn", "--connections", "zero")
    assert code == 2 and "Traceback" not in err and "error:" in err


@pytest_twisted.ensureDeferred
async def test_ping(listen):
    endpoint = await listen(SearchFactory())
    assert await sockapp("ping", "--connect", endpoint) == ("pong\n", "", 0)


class CutsFirstConnections(SearchFactory):
    """Drops its first ``cuts`` connections without an answer, then serves."""

    def __init__(self, cuts):
        super().__init__()
        self.cuts = cuts

    def buildProtocol(self, addr):
        if self.cuts:
            self.cuts -= 1
            return HangUp()
        return super().buildProtocol(addr)


@pytest_twisted.ensureDeferred
async def test_retries_survive_dropped_connections(listen):
    endpoint = await listen(CutsFirstConnections(2))
    assert await sockapp("ping", "--connect", endpoint) == ("pong\n", "", 0)  # default: 2 retries
    endpoint = await listen(CutsFirstConnections(1))
    _, err, code = await sockapp("request", "--retries", "0", "--connect", endpoint, "search", "ring")
    assert code == 1 and "closed" in one_line_error(err)
    _, err, code = await sockapp("ping", "--retries", "-1")
    assert code == 2 and "Traceback" not in err and "--retries" in err


class Silent(Protocol):
    """Takes requests and never answers; ``factory.requested`` fires at the first bytes."""

    def dataReceived(self, data):
        if not self.factory.requested.called:
            self.factory.requested.callback(None)


class AnswersThenStalls(Protocol):
    """Answers the first ``factory.answers`` search requests with the tutorial's answer, then goes silent.

    ``factory.requested`` fires when the request after those arrives: from then on the
    client has measured exactly ``factory.answers`` answers and is waiting.
    """

    transport: Any  # connected over TCP

    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 2:
            header_length = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + header_length:
                return
            content_length = json.loads(self.buffer[2 : 2 + header_length])["content-length"]
            end = 2 + header_length + content_length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            if self.factory.answers:
                self.factory.answers -= 1
                self.transport.write(encode_result(TUTORIAL_ANSWERS["morpheus"]))
            elif not self.factory.requested.called:
                self.factory.requested.callback(None)


def waiting_factory(protocol, **attributes) -> Factory:
    factory: Any = Factory.forProtocol(protocol)  # with the attributes its protocol reads
    factory.requested = Deferred()
    for name, value in attributes.items():
        setattr(factory, name, value)
    return factory


class Collect(ProcessProtocol):
    """A child's output and exit code (None if a signal killed it)."""

    def __init__(self):
        self.out, self.err = b"", b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(0 if reason.check(ProcessDone) else reason.value.exitCode)


async def interrupted_sockapp(factory: Any, endpoint: str, number: int, *args: str) -> tuple[str, str, int | None]:
    """Run ``sockapp ARGS --connect ENDPOINT``, send it signal ``number`` once it has sent a request."""
    child = Collect()
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    process = reactor.spawnProcess(child, tool("sockapp"), ["sockapp", *args, "--connect", endpoint], env=env)
    try:
        await factory.requested.addTimeout(60, reactor)
        process.signalProcess(number)
        code = await child.ended.addTimeout(60, reactor)
    finally:
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
    return child.out.decode("utf-8"), child.err.decode("utf-8"), code


COMMANDS = {
    "ping": ["ping"],
    "request": ["request", "search", "morpheus"],
    "bench": ["bench", "-c", "1", "-d", "600"],
    "conformance": ["conformance", "--check-timeout", "600"],
}


@pytest.mark.parametrize("number, code, name", [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")])
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest_twisted.ensureDeferred
async def test_a_killed_command_says_so_and_exits_128_plus_the_signal(listen, command, number, code, name):
    factory = waiting_factory(Silent)
    out, err, exit_code = await interrupted_sockapp(factory, await listen(factory), number, *COMMANDS[command])
    assert exit_code == code, (out, err)
    assert one_line_error(err) == f"sockapp {command}: interrupted by {name}"
    if command == "bench":  # what it measured: nothing was answered
        assert "requests:   0 answered correctly, 0 errors" in out and "interrupted" in out
    else:
        assert out == ""


@pytest_twisted.ensureDeferred
async def test_an_interrupted_bench_prints_what_it_measured(listen):
    factory = waiting_factory(AnswersThenStalls, answers=3)
    out, err, exit_code = await interrupted_sockapp(
        factory, await listen(factory), signal.SIGINT, "bench", "-c", "1", "-d", "600", "--json"
    )
    assert exit_code == 130
    assert one_line_error(err) == "sockapp bench: interrupted by SIGINT"
    summary = json.loads(out)
    assert (summary["requests"], summary["errors"], summary["interrupted"]) == (3, 0, True)


class Answers(Protocol):
    """Answers anything with ``factory.frame``."""

    transport: Any  # connected over TCP

    def dataReceived(self, data):
        self.transport.write(self.factory.frame)
        self.transport.loseConnection()


def answering(frame: bytes) -> Factory:
    factory: Any = Factory.forProtocol(Answers)  # with the frame its protocol answers
    factory.frame = frame
    return factory


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest_twisted.ensureDeferred
async def test_an_answer_the_terminal_cannot_show_is_escaped(listen, encoding):
    endpoint = await listen(SearchFactory())
    out, err, code = await sockapp("request", "--connect", endpoint, "search", "morpheus", encoding=encoding)
    assert (out, err, code) == ("Follow the white rabbit. \\U0001f430\n", "", 0)
    out, err, code = await sockapp("request", "--json", "--connect", endpoint, "search", "ring", encoding=encoding)
    assert (err, code) == ("", 0)
    assert json.loads(out)["content"] == {"result": TUTORIAL_ANSWERS["ring"]}


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_an_answer_is_escaped(listen):
    endpoint = await listen(SearchFactory(index=SearchIndex({"odd": "half \ud800 a pair"})))
    out, err, code = await sockapp("request", "--connect", endpoint, "search", "odd")
    assert (out, err, code) == ("half \\ud800 a pair\n", "", 0)
    out, err, code = await sockapp("request", "--json", "--connect", endpoint, "search", "odd")
    assert (err, code) == ("", 0)
    assert json.loads(out)["content"] == {"result": "half \ud800 a pair"}


UNPRINTABLE = "clear\x1b[2J nul\x00 csi\x9b1m line\u2028sep cr\rend"
UNPRINTABLE_SHOWN = "clear\\x1b[2J nul\\x00 csi\\x9b1m line\\u2028sep cr\\rend"


@pytest_twisted.ensureDeferred
async def test_control_characters_in_answers_are_escaped(listen):
    binary = encode_frame(UNPRINTABLE.encode("utf-8"), "binary/custom-server-binary-type", "binary")
    out, err, code = await sockapp("request", "--connect", await listen(answering(binary)), "binary", "x")
    assert (out, err, code) == (UNPRINTABLE_SHOWN + "\n", "", 0)
    text = encode_result(UNPRINTABLE)
    out, err, code = await sockapp("request", "--connect", await listen(answering(text)), "search", "x")
    assert (out, err, code) == (UNPRINTABLE_SHOWN + "\n", "", 0)
    out, err, code = await sockapp("request", "--json", "--connect", await listen(answering(text)), "search", "x")
    assert (err, code) == ("", 0)
    assert out.endswith("\n") and out[:-1].isprintable()  # no control character reaches the terminal
    assert json.loads(out)["content"] == {"result": UNPRINTABLE}


@pytest_twisted.ensureDeferred
async def test_multi_line_answers_keep_their_lines(listen):
    endpoint = await listen(SearchFactory(index=SearchIndex({"poem": "one\n\ttwo"})))
    assert await sockapp("request", "--connect", endpoint, "search", "poem") == ("one\n\ttwo\n", "", 0)


@pytest.mark.parametrize(
    "text, value",
    [
        ("5", 5),
        ('{"a": 1}', {"a": 1}),
        ('"quoted"', "quoted"),
        ("word", "word"),
        ("two words", "two words"),
        ("null", None),
        ("NaN", "NaN"),  # not JSON (RFC 8259), though Python's json reads it: a word
        ("-Infinity", "-Infinity"),
        ("1e400", "1e400"),
    ],
)
def test_a_call_value_is_json_or_else_a_word(text, value):
    from sockapp.client.cli import json_or_word

    assert json_or_word(text) == value


@pytest.mark.parametrize(
    "args, says",
    [
        (["--action", "add", "--size", "10"], "--action sends text/json requests"),
        (["--action", "add", "--protocol", "echo"], "--action sends text/json requests"),
        (["--value", "5"], "--value is the value of an --action"),
    ],
)
def test_bench_action_options_that_do_not_go_together_are_a_usage_error(args, says):
    result = subprocess.run([tool("sockapp"), "bench", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
