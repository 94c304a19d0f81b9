"""``sockapp conformance`` against sockapp's servers, the tutorial's app_msrvr.py, and small
deliberately broken servers, one per kind of misbehaviour: each is reported failing, and
every run ends (the tests bound each with a timeout; nothing here measures time)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import pytest_twisted
from conftest import ROOT, raw_frame, split_frames, start_tutorial_server, start_twistd, tool
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue

from sockapp.apps.search import SearchIndex
from sockapp.client import conformance
from sockapp.errors import RemoteProtocolError
from sockapp.server import SearchFactory
from sockapp.wire.framing import NEED_DATA, FrameDecoder, encode_json

TIMEOUT = 120
QUICK = 0.3  # --check-timeout for servers that make the checker wait: every wait ends by it
MORPHEUS = encode_json({"result": "Follow the white rabbit. \U0001f430"})
CHECKS = [
    "keep-alive",
    "pipelining",
    "order",
    "half-close",
    "answers",
    "tutorial-bytes",
    "split-in-two",
    "byte-by-byte",
    "framing-faults",
    "error-frames",
    "in-band-errors",
    "limits",
    "fault-beside-good",
    "large-frame",
    "idle",
    "ping",
    "describe",
]
REQUIRED = {
    "order",
    "answers",
    "split-in-two",
    "byte-by-byte",
    "framing-faults",
    "in-band-errors",
    "fault-beside-good",
    "large-frame",
    "idle",
}


async def sockapp(*args: str) -> tuple[str, str, int]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    out, err, code = await getProcessOutputAndValue(tool("sockapp"), list(args), env=env).addTimeout(TIMEOUT, reactor)
    return out.decode("utf-8"), err.decode("utf-8"), code


async def check(endpoint: str, check_timeout: float = QUICK) -> conformance.Report:
    options = conformance.Options(endpoint, check_timeout=check_timeout)
    return await Deferred.fromCoroutine(conformance.run(reactor, options)).addTimeout(TIMEOUT, reactor)


def results(report: conformance.Report) -> dict[str, str]:
    return {row.name: row.status for row in report.checks}


def row(report: conformance.Report, name: str) -> conformance.Check:
    (found,) = [c for c in report.checks if c.name == name]
    return found


# -- servers that speak the protocol ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_our_server_passes_every_check_and_every_vector(listen):
    endpoint = await listen(SearchFactory())
    report = await check(endpoint, check_timeout=30)
    assert [c.name for c in report.checks] == CHECKS
    assert {c.name for c in report.checks if c.required} == REQUIRED
    assert results(report) == dict.fromkeys(CHECKS, "pass"), report.lines()
    vectors = conformance.load_vectors()
    answers = row(report, "answers").vectors
    assert [v.name for v in answers] == [v["name"] for v in vectors["exchanges"]]
    faults = (
        row(report, "framing-faults").vectors + row(report, "in-band-errors").vectors + row(report, "limits").vectors
    )
    assert sorted(v.name for v in faults) == sorted(v["name"] for v in vectors["faults"])
    assert report.passed


def test_the_command_passes_against_twistd_sockapp(server_processes):
    port = start_twistd(server_processes, "sockapp", "--port", "tcp:0:interface=127.0.0.1")
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    result = run_command("conformance", "--connect", endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["check", "level", "result", "detail"]
    assert list(parse_table(lines).items()) == [
        (name, ("required" if name in REQUIRED else "optional", "pass")) for name in CHECKS
    ]
    assert lines[-1] == "17 checks: 17 passed, 0 failed, 0 not supported"
    as_json = run_command("conformance", "--json", "--connect", endpoint)
    document = json.loads(as_json.stdout)
    assert (as_json.returncode, document["passed"], document["pass"]) == (0, True, 17)
    assert [c["check"] for c in document["checks"]] == CHECKS
    assert all(v["result"] == "pass" for v in document["checks"][CHECKS.index("answers")]["vectors"])


def run_command(*args: str):
    import subprocess

    return subprocess.run(
        [tool("sockapp"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )


# What the tutorial's server does (PROTOCOL.md, "Where the tutorial's server differs").
TUTORIAL = {
    "keep-alive": "not supported",
    "pipelining": "not supported",
    "order": "pass",  # it never answers two requests on one connection
    "half-close": "pass",
    "answers": "fail",  # the empty requests and the lone surrogate go unanswered
    "tutorial-bytes": "pass",
    "split-in-two": "pass",
    "byte-by-byte": "pass",
    "framing-faults": "fail",  # it does not check content-length's or the fields' types
    "error-frames": "not supported",
    "in-band-errors": "fail",  # it closes instead
    "limits": "not supported",
    "fault-beside-good": "pass",
    "large-frame": "pass",
    "idle": "pass",
    "ping": "not supported",
    "describe": "not supported",
}


def parse_table(table: list[str]) -> dict[str, tuple[str, str]]:
    """Each row's (level, result), read by column from the table's heading."""
    level, result, detail = (table[0].index(word) for word in ("level", "result", "detail"))
    return {line[:level].strip(): (line[level:result].strip(), line[result:detail].strip()) for line in table[1:-1]}


def readme_tutorial_table() -> list[str]:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## The protocol as a spec", 1)[1].split("\n## ", 1)[0]
    block = section.split("status 1:\n\n    $ sockapp conformance\n", 1)[1].split("\n\n", 1)[0]
    return [line.removeprefix("    ") for line in block.splitlines()]


def test_the_command_reports_what_the_tutorial_server_does_as_the_readme_shows(seed_dir, server_processes):
    port = start_tutorial_server(server_processes, seed_dir, "app_msrvr.py", "127.0.0.1", "5634")
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    result = run_command("conformance", "--vectors", "--check-timeout", "2", "--connect", endpoint)
    assert (result.returncode, result.stderr) == (1, "")
    lines = result.stdout.splitlines()
    table = [line for line in lines if not line.startswith("  ")]
    assert table == [line.replace("within 5 s", "within 2 s") for line in readme_tutorial_table()]
    assert {name: status for name, (_, status) in parse_table(table).items()} == TUTORIAL
    vectors = {}
    for line in lines:
        if line.startswith("  "):
            name, status = line.strip().split(": ")[:2]
            vectors[name] = status
    marks = {v["name"]: v["tutorial"] for v in conformance.load_vectors()["exchanges"]}
    assert {name: vectors[name] for name in marks} == {
        name: "pass" if mark == "same" else "fail" for name, mark in marks.items()
    }
    faults = [v["name"] for v in conformance.load_vectors()["faults"] if v["closes"] and v["required"]]
    assert [name for name in faults if vectors[name] == "fail"] == [
        "content-length-float",
        "byteorder-number",
        "content-type-number",
        "content-encoding-null",
    ]


# -- servers that misbehave ------------------------------------------------------------------


class NeverAnswers(Protocol):
    """Reads everything, answers nothing, never closes."""

    def dataReceived(self, data: bytes) -> None:
        pass


class ClosesMidFrame(Protocol):
    """Sends half of an answer, then closes."""

    transport: Any

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(MORPHEUS[: len(MORPHEUS) // 2])
        self.transport.loseConnection()


class SendsGarbage(Protocol):
    """Answers with bytes that are not a frame, and keeps the connection open."""

    transport: Any

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"\x00\x0bhello world\r\n")


class WrongContentLength(Protocol):
    """Announces 7 bytes more content than it sends, and keeps the connection open."""

    transport: Any

    def dataReceived(self, data: bytes) -> None:
        content = json.dumps({"result": "Follow the white rabbit. \U0001f430"}, ensure_ascii=False).encode()
        header = {"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8"}
        self.transport.write(raw_frame({**header, "content-length": len(content) + 7}, content))


class TinySearchServer(Protocol):
    """The search app on a bare Protocol, for servers that differ from a correct one in one way."""

    transport: Any

    def connectionMade(self) -> None:
        self.decoder = FrameDecoder(max_json_length=1024 * 1024)
        self.index = SearchIndex()

    def dataReceived(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        answers = []
        try:
            while (message := self.decoder.next_message()) is not NEED_DATA:
                answers.append(self.frame(self.index.respond(message)))  # type: ignore[arg-type]
        except RemoteProtocolError as e:
            answers.append(self.frame(encode_json({"error": {"code": e.code.value, "message": e.message}})))
            self.send(answers)
            self.transport.loseConnection()
            return
        self.send(answers)

    def frame(self, answer: bytes) -> bytes:
        return answer

    def send(self, answers: list[bytes]) -> None:
        self.transport.write(b"".join(answers))


class AnswersOutOfOrder(TinySearchServer):
    """Correct in every way but one: the answers to requests that arrive together go out last first."""

    def send(self, answers: list[bytes]) -> None:
        self.transport.write(b"".join(reversed(answers)))


class OtherLayout(TinySearchServer):
    """A correct server as a port to another language might write it: compact JSON with ASCII
    escapes, its header's fields in another order, byteorder big."""

    def frame(self, answer: bytes) -> bytes:
        ((header, content),) = split_frames(answer)
        if header["content-type"] == "text/json":
            content = json.dumps(json.loads(content), separators=(",", ":")).encode()
        fields = {"content-length": len(content), **header, "byteorder": "big"}
        fields["content-length"] = len(content)
        return raw_frame(None, content, header_bytes=json.dumps(fields, separators=(",", ":")).encode())


class ControlCharacters(Protocol):
    """Answers with a content-type and content that would drive a terminal."""

    transport: Any

    def dataReceived(self, data: bytes) -> None:
        header = {"byteorder": "little", "content-type": "text/\x1b[2J\u2028", "content-encoding": "binary"}
        self.transport.write(raw_frame({**header, "content-length": 6}, b"\x1b]0;x\x07"))


BROKEN = {
    # server: (the check that must fail, what its detail says)
    NeverAnswers: ("answers", "no answer within 0.3 s"),
    ClosesMidFrame: ("answers", "closed mid-frame"),
    SendsGarbage: ("answers", "sent bytes that are not a frame: header-not-json"),
    WrongContentLength: ("answers", "bytes of a frame and no more within 0.3 s"),
    AnswersOutOfOrder: ("order", "answer 1 is the answer to request 4 sent with it in one write: out of order"),
}


@pytest.mark.parametrize("server", list(BROKEN), ids=lambda server: server.__name__)
@pytest_twisted.ensureDeferred
async def test_a_broken_server_is_reported_failing(listen, server):
    endpoint = await listen(Factory.forProtocol(server))
    # The out-of-order server answers everything at once: a long timeout costs nothing and makes
    # its passing checks certain.
    report = await check(endpoint, 10 if server is AnswersOutOfOrder else QUICK)
    name, detail = BROKEN[server]
    failing = row(report, name)
    assert failing.status == "fail" and detail in failing.detail, failing
    assert not report.passed
    assert [c.name for c in report.checks] == CHECKS  # every check ran, and ended
    if server is AnswersOutOfOrder:  # only the order is wrong: what passes is what sends one request at
        # a time (a plain Protocol is closed by Twisted at a half-close, which the checker calls not
        # supported). A fault sent behind a sound search gets its error frame first: out of order too.
        assert {n: status for n, status in results(report).items() if status != "pass"} == {
            "pipelining": "fail",
            "order": "fail",
            "half-close": "not supported",
            "framing-faults": "fail",
            "error-frames": "not supported",
            "limits": "fail",
        }
        assert "the sound search sent before the fault" in row(report, "framing-faults").detail


def test_only_the_required_checks_decide_whether_a_server_passes():
    from sockapp.client.conformance import Check, Report

    optional_failed = Report("x", (Check("answers", True, "pass", ""), Check("keep-alive", False, "fail", "stopped")))
    assert optional_failed.passed  # shown as failed in the table, but the exit status is 0
    required_failed = Report("x", (Check("answers", True, "fail", ""), Check("keep-alive", False, "pass", "")))
    assert not required_failed.passed


@pytest_twisted.ensureDeferred
async def test_a_server_that_lays_out_its_frames_otherwise_passes(listen):
    """Only the layout differs: every check passes but tutorial-bytes, which is optional."""
    endpoint = await listen(Factory.forProtocol(OtherLayout))
    report = await check(endpoint, 10)
    assert {name: status for name, status in results(report).items() if status != "pass"} == {
        "tutorial-bytes": "not supported",
        "half-close": "not supported",  # a plain Protocol: Twisted closes it at a half-close
    }, report.lines()
    assert report.passed
    assert row(report, "tutorial-bytes").detail.startswith("29 of 29 answers are laid out otherwise")


@pytest_twisted.ensureDeferred
async def test_the_command_reports_a_silent_server_and_ends(listen):
    """The command itself, against a server that never answers: the table, exit 1."""
    endpoint = await listen(Factory.forProtocol(NeverAnswers))
    out, err, code = await sockapp("conformance", "--check-timeout", "0.3", "--connect", endpoint)
    assert (code, err) == (1, "")
    assert "answers            required  fail           32 of 32 vectors failed" in out
    assert out.splitlines()[-1] == "17 checks: 1 passed, 13 failed, 3 not supported"


@pytest_twisted.ensureDeferred
async def test_what_a_server_sends_is_escaped_in_the_table(listen):
    endpoint = await listen(Factory.forProtocol(ControlCharacters))
    out, err, code = await sockapp("conformance", "--check-timeout", "0.3", "--connect", endpoint)
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out and "\u2028" not in out
    assert "content-type text/\\x1b[2J\\u2028, expected" in out


def test_the_checker_reads_at_most_its_limit_from_a_connection():
    class Transport:
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True

    probe = conformance._Probe()
    probe.transport = Transport()
    for _ in range(64):
        probe.dataReceived(b"\x00" * 65536)  # 4 MiB offered
    assert probe.overflow and probe.transport.aborted
    assert len(probe.buffer) <= conformance.MAX_RECEIVED


# -- the command line ----------------------------------------------------------------------------


def test_a_refused_connection_is_one_line(unused_port):
    result = run_command("conformance", "--connect", f"tcp:host=127.0.0.1:port={unused_port}")
    assert result.returncode == 1
    assert result.stderr == "sockapp conformance: error: connection refused (is the server running?)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_check_timeout_is_a_usage_error(value):
    result = run_command("conformance", "--check-timeout", value)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("sockapp conformance: error: argument --check-timeout:")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- over TLS ------------------------------------------------------------------------------------


def test_the_command_checks_a_server_over_tls(server_processes, tls_files):
    server = f"ssl:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}"
    port = start_twistd(server_processes, "sockapp", "--port", server)
    endpoint = f"tls:localhost:{port}:trustRoots={tls_files['trust']}:endpoint=tcp\\:127.0.0.1\\:{port}"
    result = run_command("conformance", "--connect", endpoint)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = parse_table(result.stdout.splitlines())
    assert rows.pop("half-close") == ("optional", "not supported")  # a TLS connection cannot half-close here
    assert {status for _, status in rows.values()} == {"pass"}
    assert "not checked: this transport cannot half-close" in result.stdout
    wrong = endpoint.replace("tls:localhost:", "tls:wrong.example:")
    refused = run_command("conformance", "--connect", wrong)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.startswith("sockapp conformance: error: TLS: ") and "wrong.example" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


# -- what the attack on the checker found ---------------------------------------------------------


class TrailingBytes(TinySearchServer):
    """Correct, but for two bytes (a header length of 0: not a frame) after every answer."""

    def send(self, answers: list[bytes]) -> None:
        for answer in answers:
            self.transport.write(answer)
            self.transport.write(b"\x00\x00")


class AnswersBeforeAsked(Protocol):
    """Sends the answer to a search for morpheus as soon as a connection opens, and never reads."""

    transport: Any

    def connectionMade(self) -> None:
        self.transport.write(MORPHEUS)


class EncodingInCapitals(TinySearchServer):
    """Correct: its answers name their encoding UTF-8, which section 2.3 allows in any letter case."""

    def frame(self, answer: bytes) -> bytes:
        ((header, content),) = split_frames(answer)
        return raw_frame({**header, "content-encoding": header["content-encoding"].upper()}, content)


@pytest_twisted.ensureDeferred
async def test_bytes_after_an_answer_fail_the_answers(listen):
    report = await check(await listen(Factory.forProtocol(TrailingBytes)), 2)
    failing = row(report, "answers")
    assert failing.status == "fail" and "2 more bytes after its answer" in failing.detail, failing
    assert not report.passed


@pytest_twisted.ensureDeferred
async def test_a_canned_answer_sent_before_the_request_fails_the_framing_checks(listen):
    report = await check(await listen(Factory.forProtocol(AnswersBeforeAsked)))
    for name in ("split-in-two", "byte-by-byte", "fault-beside-good"):
        assert row(report, name).status == "fail", row(report, name)
    assert "before the request was complete" in row(report, "split-in-two").detail
    assert row(report, "byte-by-byte").detail.startswith("sent bytes when only")


@pytest_twisted.ensureDeferred
async def test_an_encoding_named_in_capitals_passes(listen):
    report = await check(await listen(Factory.forProtocol(EncodingInCapitals)), 10)
    assert row(report, "answers").status == "pass", row(report, "answers")
    assert report.passed, report.lines()


@pytest_twisted.ensureDeferred
async def test_a_frame_timeout_shorter_than_the_stall_passes_the_idle_check(listen):
    report = await check(await listen(SearchFactory(frame_timeout=0.3)), 4)  # the stall lasts 1 s
    assert row(report, "idle").status == "pass", row(report, "idle")


def test_a_check_timeout_must_be_finite_and_at_most_ten_minutes():
    for bad in (float("inf"), 1e9, conformance.MAX_CHECK_TIMEOUT + 1):
        with pytest.raises(ValueError):
            conformance.Options("tcp:host=127.0.0.1:port=1", check_timeout=bad)
    result = run_command("conformance", "--check-timeout", "inf", "--connect", "tcp:host=127.0.0.1:port=1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--check-timeout" in result.stderr.strip().splitlines()[-1]


@pytest_twisted.ensureDeferred
async def test_a_tls_handshake_that_never_finishes_is_one_line(listen):
    endpoint = await listen(Factory.forProtocol(NeverAnswers))
    port = endpoint.rsplit("=", 1)[1]
    out, err, code = await sockapp("conformance", "--check-timeout", "0.5", "--connect", f"tls:127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert err.strip() == (
        "sockapp conformance: error: the TLS handshake did not finish within 0.5 s; does the server speak TLS?"
    ), err


@pytest_twisted.ensureDeferred
async def test_a_connection_not_accepted_in_time_says_so():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted; the queue filled so that the next connection hangs in its handshake
    port = listener.getsockname()[1]
    fill = []
    for _ in range(4):
        waiting = socket.socket()
        waiting.setblocking(False)
        waiting.connect_ex(("127.0.0.1", port))
        fill.append(waiting)
    try:
        out, err, code = await sockapp(
            "conformance", "--check-timeout", "1", "--connect", f"tcp:host=127.0.0.1:port={port}"
        )
    finally:
        for sock in (*fill, listener):
            sock.close()
    assert (code, out) == (1, "")
    assert err.strip() == "sockapp conformance: error: no connection within 1 s", err


class ClosesAtOnce(Protocol):
    """Accepts every connection and closes it at once, reading nothing."""

    transport: Any

    def connectionMade(self) -> None:
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_server_that_closes_every_connection_does_not_pass_the_framing_faults(listen):
    report = await check(await listen(Factory.forProtocol(ClosesAtOnce)), 1)
    assert row(report, "framing-faults").status == "fail", row(report, "framing-faults")


class AnswersOneThenClosesAtOnce(TinySearchServer):
    """Keeps connections open for good requests, but closes at once on any connection whose first
    bytes come with more after them: it never reads the fault, yet would seem to refuse it."""

    def dataReceived(self, data: bytes) -> None:
        if len(data) > 200:
            self.transport.loseConnection()
            return
        super().dataReceived(data)


@pytest_twisted.ensureDeferred
async def test_a_close_before_the_sound_request_sent_ahead_of_a_fault_is_a_failure(listen):
    report = await check(await listen(Factory.forProtocol(AnswersOneThenClosesAtOnce)), 2)
    failing = row(report, "framing-faults")
    assert failing.status == "fail" and "the sound search sent before the fault" in failing.detail, failing
