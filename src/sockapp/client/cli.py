"""The ``sockapp`` command: the tutorial's clients, over any client endpoint.

Every failure a user can cause or meet (a refused connection, a bad
endpoint string, a server that closes mid-answer) ends in one line on
stderr and a non-zero exit, never a traceback. SIGINT and SIGTERM end a
command with one line and status 128 + the signal's number (130, 143), as
shells do. Whatever a server answers is printed as the terminal can show it.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO, cast

from attrs import evolve
from twisted.internet import defer, task
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from sockapp import __version__
from sockapp.client import DEFAULT_ENDPOINT, DEFAULT_RETRIES, Client, Response, conformance, connect, connect_echo
from sockapp.client.bench import Bench, BenchConfig, Summary
from sockapp.client.progress import live_progress
from sockapp.errors import SockappError, TLSFailure
from sockapp.wire.framing import loads as loads_json

DEFAULT_TIMEOUT = 30.0
TUTORIAL_ECHO_MESSAGE = "hello, universe.\nHi, friend."
TUTORIAL_MULTICONN_MESSAGES = ("hello message 1 from client.", "hi message 2 from client.")
INTERRUPTING_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# After SIGINT/SIGTERM, how long bench's requests in flight get to be answered and counted.
INTERRUPT_GRACE: Final = 1.0
# Not printable, but an answer's own line breaks and tabs are shown as they are.
KEPT_CONTROLS: Final = frozenset("\n\t")


def _encoding(stream: TextIO) -> str:
    return getattr(stream, "encoding", None) or "utf-8"


def _showable(char: str, encoding: str) -> bool:
    if not char.isprintable() and char not in KEPT_CONTROLS:
        return False
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _escape_unshowable(text: str, encoding: str, escape: Callable[[str], str]) -> str:
    """``text`` with each character ``encoding`` cannot show replaced by ``escape(char)``."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        pass
    else:
        if text.replace("\n", "").replace("\t", "").isprintable():
            return text  # the usual case, checked without a loop in Python
    shown: dict[str, str] = {}
    out = []
    for char in text:
        if char not in shown:
            shown[char] = char if _showable(char, encoding) else escape(char)
        out.append(shown[char])
    return "".join(out)


def terminal_text(text: str, encoding: str) -> str:
    """``text`` as a terminal in ``encoding`` can show it, for a user to read.

    Printable characters the encoding has, line breaks and tabs are kept;
    any other character (a control character such as ESC or NUL, a line
    separator, a lone surrogate, an emoji on an ASCII terminal) is written as
    its Python backslash escape (``\\x1b``, ``\\ud800``, ``\\U0001f430``), so it
    can neither move the cursor nor make printing fail.
    """
    return _escape_unshowable(text, encoding, lambda char: char.encode("unicode_escape").decode("ascii"))


def terminal_json(document: object, encoding: str) -> str:
    """``document`` as one line of JSON that a terminal in ``encoding`` can show.

    As ``terminal_text``, but with JSON's escapes (``\\u001b``, ``\\ud83d\\udc30``),
    so the line stays valid JSON that reads back as ``document``.
    """
    # json.dumps writes only ASCII outside strings, so every character escaped is inside one.
    return _escape_unshowable(json.dumps(document, ensure_ascii=False), encoding, lambda char: json.dumps(char)[1:-1])


def show(text: str, stream: TextIO | None = None) -> None:
    """Print ``text`` as ``stream`` (stdout by default) can show it."""
    stream = stream if stream is not None else sys.stdout
    print(terminal_text(text, _encoding(stream)), file=stream)


def show_json(document: object, stream: TextIO | None = None) -> None:
    """Print ``document`` as one line of JSON that ``stream`` (stdout by default) can show."""
    stream = stream if stream is not None else sys.stdout
    print(terminal_json(document, _encoding(stream)), file=stream)


class Interruption:
    """The first SIGINT or SIGTERM a command gets, and what the command does about it.

    The signal handlers only pass the signal to the reactor thread: the
    command then winds down (closing its connections) while the reactor
    still runs, rather than having the reactor stopped under it.
    ``on_interrupt`` is what the running command does (bench: stop and
    summarise); without one, the command is cancelled.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.on_interrupt: Callable[[], None] | None = None

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        assert self.signal is not None
        return 128 + self.signal

    def describe(self) -> str:
        assert self.signal is not None
        return f"interrupted by {signal.Signals(self.signal).name}"


def _response_json(response: Response) -> dict[str, Any]:
    out: dict[str, Any] = {"header": response.header.as_dict()}
    if response.content_type == "text/json":
        out["content"] = response.document
    else:
        out["content_base64"] = base64.b64encode(response.content).decode("ascii")
    return out


def _response_text(response: Response) -> str:
    if response.content_type == "text/json":
        if isinstance(response.document, dict) and "result" in response.document:
            result = response.document["result"]
            return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        return json.dumps(response.document, ensure_ascii=False)
    return response.content.decode("utf-8", "backslashreplace")


async def _ask(reactor: Any, args: argparse.Namespace, send: Callable[[Client], Deferred[Any]]) -> Any:
    """Connect to ``args.connect``, send one request with ``send(client)``, close; its answer."""
    client = await connect(reactor, args.connect, retries=args.retries)
    try:
        return await send(client)
    except defer.CancelledError:  # --timeout: say so if it was the TLS handshake that never finished
        if client.tls_handshake_pending:
            raise TLSFailure(
                f"TLS: the handshake did not finish within {args.timeout:g} s; does the server speak TLS?"
            ) from None
        raise
    finally:
        await client.close()


async def run_request(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    response = await _ask(reactor, args, lambda client: client.request(args.action, args.value))
    if args.json:
        show_json(_response_json(response))
    else:
        show(_response_text(response))
    return 0


def json_or_word(text: str) -> Any:
    """A command-line value: JSON if it parses (``5``, ``{"a": 1}``, ``"x"``), else the word itself
    (``NaN`` too: Python's json reads it, JSON has no such number)."""
    try:
        return loads_json(text)
    except ValueError:
        return text


async def run_call(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    result = await _ask(reactor, args, lambda client: client.call(args.action, args.value, idempotent=args.idempotent))
    if isinstance(result, bytes):
        show(result.decode("utf-8", "backslashreplace"))
    else:
        show_json(result)
    return 0


async def run_describe(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    described = await _ask(reactor, args, lambda client: client.describe())
    if args.json:
        show_json(described)
        return 0
    actions = described.get("actions", {}) if isinstance(described, dict) else {}
    show(f"{described.get('name', '?') if isinstance(described, dict) else '?'}: {len(actions)} actions")
    width = max((len(str(name)) for name in actions), default=0)
    for name, summary in actions.items():
        show(f"  {str(name):<{width}}  {summary}")
    return 0


async def run_ping(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    response = await _ask(reactor, args, lambda client: client.ping())
    show(str(response.result))
    return 0 if response.result == "pong" else 1


async def run_echo(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    data = args.message.encode("utf-8")
    client = await connect_echo(reactor, args.connect)
    try:
        echoed = await client.roundTrip(data)
    finally:
        await client.close()
    show(echoed.decode("utf-8", "backslashreplace"))
    return 0 if echoed == data else 1


async def _one_multiconn(reactor: Any, endpoint: str, messages: list[bytes]) -> bytes:
    client = await connect_echo(reactor, endpoint)
    try:
        return await client.roundTrip(b"".join(messages))
    finally:
        await client.close()


async def run_multiconn(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    messages = [m.encode("utf-8") for m in (args.message or TUTORIAL_MULTICONN_MESSAGES)]
    expected = b"".join(messages)
    results = await defer.DeferredList(
        [defer.ensureDeferred(_one_multiconn(reactor, args.connect, messages)) for _ in range(args.connections)],
        consumeErrors=True,
    )
    good = 0
    for number, (ok, value) in enumerate(results, start=1):
        if ok and value == expected:
            good += 1
        elif ok:
            show(f"connection {number}: echo differs: sent {expected!r}, got {value!r}", sys.stderr)
        else:
            # A failed item's value is its Failure (consumeErrors), which Twisted's typing leaves out.
            show(f"connection {number}: {describe_error(cast(Failure, value).value)}", sys.stderr)
    show(f"{good} of {args.connections} connections echoed {len(expected)} bytes exactly")
    return 0 if good == args.connections else 1


async def run_bench(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    config = BenchConfig(
        endpoint=args.connect,
        protocol=args.protocol,
        connections=args.connections,
        duration=args.duration if args.duration or args.requests else 10.0,
        requests=args.requests,
        pipeline=args.pipeline,
        rate=args.rate,
        size=args.size,
        query=args.query,
        expect=json_or_word(args.expect) if args.action is not None and args.expect is not None else args.expect,
        request_timeout=args.request_timeout,
        retries=args.retries,
        check_answers=args.check_answers,
        action=args.action,
        value=args.value,
    )
    acknowledged = args.acknowledged  # opened by main(), so a bad path is a usage error before connecting
    record = None
    if acknowledged is not None:

        def record(action: str, value: Any, result: Any) -> None:
            acknowledged.write(json.dumps({"action": action, "value": value, "result": result}) + "\n")

    bench = Bench(reactor, config, record=record)
    finished = defer.ensureDeferred(bench.run())
    grace: IDelayedCall | None = None  # once interrupted: when to stop waiting for requests in flight
    elapsed_when_interrupted = 0.0

    def interrupted() -> None:
        nonlocal grace, elapsed_when_interrupted
        elapsed_when_interrupted = bench.elapsed()
        bench.stop()
        grace = reactor.callLater(INTERRUPT_GRACE, finished.cancel)

    interruption.on_interrupt = interrupted
    with live_progress(reactor, bench):
        try:
            summary = await finished
        except defer.CancelledError:
            if grace is None:
                raise
            summary = _measured_so_far(bench, elapsed_when_interrupted)  # requests in flight stayed unanswered
        finally:
            if grace is not None and grace.active():
                grace.cancel()
    if interruption.signal is not None:
        summary = evolve(summary, interrupted=True)
    if args.json:
        show_json(summary.as_dict())
    else:
        show("\n".join(summary.lines()))
    return 1 if summary.error_count or not summary.requests else 0


async def run_conformance(reactor: Any, args: argparse.Namespace, interruption: Interruption) -> int:
    options = conformance.Options(args.connect, check_timeout=args.check_timeout)
    report = await conformance.run(reactor, options)
    if args.json:
        show_json(report.as_dict())
    else:
        show("\n".join(report.lines(vectors=args.vectors)))
    return 0 if report.passed else 1


def _measured_so_far(bench: Bench, elapsed: float) -> Summary:
    """A ``Summary`` of a run cut short before it wound down, timed to the interruption."""
    return evolve(bench.summary(), elapsed=elapsed, interrupted=True)


def describe_error(error: BaseException | None) -> str:
    """One line for the user about ``error``."""
    if isinstance(error, neterror.ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(error, neterror.ConnectError):
        return f"cannot connect: {error}".rstrip(".")
    if isinstance(error, (SockappError, neterror.ConnectionLost, neterror.ConnectionDone)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockapp",
        description="Clients for the sockapp search and echo servers (and the tutorial's own).",
    )
    parser.add_argument("--version", action="version", version=f"sockapp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, timeout: float = DEFAULT_TIMEOUT) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument(
            "--connect",
            default=DEFAULT_ENDPOINT,
            metavar="ENDPOINT",
            help=f"client endpoint string of the server (default: {DEFAULT_ENDPOINT})",
        )
        sub.add_argument(
            "--timeout",
            type=_seconds,
            default=timeout,
            metavar="SECONDS",
            help=f"give up if the whole command takes longer (default: {timeout:g}; 0 waits forever)",
        )
        return sub

    def retries(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--retries",
            type=_retries,
            default=DEFAULT_RETRIES,
            metavar="N",
            help="send a request again, on a new connection, at most N times if its connection drops "
            f"before the answer (default: {DEFAULT_RETRIES})",
        )

    request = command("request", "send one request, as the tutorial's app client does, and print the answer")
    request.add_argument("action", help="'search' sends a JSON search request; any other action a binary request")
    request.add_argument("value", help="the search query, or the rest of the binary request")
    request.add_argument("--json", action="store_true", help="print the whole response (header and content) as JSON")
    retries(request)
    request.set_defaults(run=run_request)

    call = command("call", "call an action of a sockapp app and print its result as JSON (an error: exit 1)")
    call.add_argument("action", help="the action's name")
    call.add_argument(
        "value",
        nargs="?",
        type=json_or_word,
        default=None,
        help="its value as JSON (a word that is not JSON: a string)",
    )
    call.add_argument(
        "--idempotent", action="store_true", help="may be sent again on a new connection if the first one drops"
    )
    retries(call)
    call.set_defaults(run=run_call)

    describe = command("describe", "list a sockapp app's actions with their descriptions")
    describe.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    retries(describe)
    describe.set_defaults(run=run_describe)

    ping = command("ping", 'health check: send {"action": "ping"}; prints pong, exit 0 if the server answers')
    retries(ping)
    ping.set_defaults(run=run_ping)

    echo = command("echo", "send a message to an echo server and print the complete echo")
    echo.add_argument(
        "message", nargs="?", default=TUTORIAL_ECHO_MESSAGE, help="what to send (default: the tutorial's)"
    )
    echo.set_defaults(run=run_echo)

    multiconn = command("multiconn", "the tutorial's many-connection echo client: check every echo is exact")
    multiconn.add_argument("--connections", "-n", type=_count, default=2, metavar="N", help="concurrent connections")
    multiconn.add_argument(
        "--message", action="append", metavar="TEXT", help="a message each connection sends (repeatable)"
    )
    multiconn.set_defaults(run=run_multiconn)

    bench = command("bench", "load generator: many connections, throughput and latency percentiles", timeout=0)
    bench.add_argument("--protocol", choices=["app", "echo"], default="app", help="app (search server) or echo")
    bench.add_argument("--connections", "-c", type=_count, default=10, metavar="N", help="concurrent connections")
    bound = bench.add_mutually_exclusive_group()
    bound.add_argument("--duration", "-d", type=_positive_seconds, metavar="SECONDS", help="run this long (default 10)")
    bound.add_argument("--requests", "-n", type=_count, metavar="N", help="send this many requests in all")
    bench.add_argument(
        "--pipeline", "-p", type=_count, default=1, metavar="D", help="requests in flight per connection"
    )
    bench.add_argument(
        "--rate",
        type=_positive_number,
        metavar="R",
        help="send R requests per second overall on a fixed timetable; latency then counts from each send's due time",
    )
    bench.add_argument(
        "--size",
        type=_size,
        metavar="BYTES",
        help="app: send binary requests of this size instead of searches; echo: block size (default 64)",
    )
    bench.add_argument("--query", default="morpheus", help="the search query sent (default: morpheus)")
    bench.add_argument("--action", metavar="NAME", help="call this action instead of searching (any sockapp app)")
    bench.add_argument(
        "--value", type=json_or_word, metavar="JSON", help="the --action's value (a word that is not JSON: a string)"
    )
    bench.add_argument(
        "--expect",
        metavar="ANSWER",
        help="the answer to expect (default: the tutorial's, or its 'No match'; with --action, as JSON: "
        "any answer that is not an error)",
    )
    bench.add_argument(
        "--request-timeout", type=_positive_seconds, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )
    retries(bench)
    bench.add_argument(
        "--no-answer-check",
        dest="check_answers",
        action="store_false",
        help="skip the two requests per connection that, after the load, check answers still match requests "
        "(for runs whose requests must be counted exactly)",
    )
    bench.add_argument(
        "--acknowledged",
        metavar="FILE",
        help="with --action: write each request answered correctly to FILE, one JSON line "
        '{"action", "value", "result"} each, with its {n} filled in (to check afterwards what the server acknowledged)',
    )
    bench.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bench.set_defaults(run=run_bench, usage_error=bench.error)

    check = command(
        "conformance",
        "check a server against PROTOCOL.md and its test vectors: a table of checks (exit 1 if any fails)",
        timeout=0,
    )
    check.add_argument(
        "--check-timeout",
        type=_positive_seconds,
        default=conformance.DEFAULT_CHECK_TIMEOUT,
        metavar="SECONDS",
        help=f"time each check (and each vector) gets (default: {conformance.DEFAULT_CHECK_TIMEOUT:g})",
    )
    check.add_argument("--vectors", action="store_true", help="also list each vector's result under its check")
    check.add_argument("--json", action="store_true", help="print the table as one JSON object")
    check.set_defaults(run=run_conformance, usage_error=check.error)
    return parser


def _number(kind: type, what: str, minimum: float, above: bool = False) -> Any:
    """An argparse type: a ``kind`` (int or float) of at least ``minimum`` (more, if ``above``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (value > minimum if above else value >= minimum):
            raise argparse.ArgumentTypeError(f"must be {'more than' if above else 'at least'} {minimum:g}")
        return value

    return parse


_seconds = _number(float, "a number of seconds", 0)
_positive_seconds = _number(float, "a number of seconds", 0, above=True)
_positive_number = _number(float, "a number", 0, above=True)
_size = _number(int, "a whole number of bytes", 0)
_count = _number(int, "a whole number", 1)
_retries = _number(int, "a whole number", 0)


def _catch_interruptions(reactor: Any, interrupt: Callable[[int], None]) -> None:
    """Hand SIGINT and SIGTERM to ``interrupt`` in the reactor thread, from now on.

    Installed at once and again once the reactor runs, since starting it
    installs Twisted's own handlers (which would stop the reactor under the
    command, leaving ``task.react`` to exit 0).
    """

    def handler(number: int, frame: object) -> None:
        reactor.callFromThread(interrupt, number)

    def install() -> None:
        for number in INTERRUPTING_SIGNALS:
            signal.signal(number, handler)

    install()
    reactor.callWhenRunning(install)


async def _guarded(reactor: Any, args: argparse.Namespace) -> None:
    interruption = Interruption()
    work = defer.ensureDeferred(args.run(reactor, args, interruption))

    def interrupt(number: int) -> None:
        if interruption.signal is not None or work.called:
            return
        interruption.signal = number
        (interruption.on_interrupt or work.cancel)()

    _catch_interruptions(reactor, interrupt)
    if args.timeout:
        work.addTimeout(args.timeout, reactor)
    try:
        code = await work
    except Exception as e:  # noqa: BLE001 - any failure of a command is its one line on stderr
        if interruption.signal is None:
            if isinstance(e, defer.TimeoutError):
                show(f"sockapp {args.command}: error: no complete answer within {args.timeout:g} s", sys.stderr)
            else:
                show(f"sockapp {args.command}: error: {describe_error(e)}", sys.stderr)
            raise SystemExit(1) from None
        code = 0  # a failure while the command wound down is part of being interrupted
    if interruption.signal is not None:
        show(f"sockapp {args.command}: {interruption.describe()}", sys.stderr)
        raise SystemExit(interruption.exit_status)
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.protocol == "echo" and args.size == 0:
        args.usage_error("--size must be at least 1 with --protocol echo")  # an empty echo measures nothing
    if args.command == "bench" and args.action is not None and (args.protocol == "echo" or args.size is not None):
        args.usage_error("--action sends text/json requests: not with --protocol echo or --size")
    if args.command == "bench" and args.value is not None and args.action is None:
        args.usage_error("--value is the value of an --action")
    if args.command == "conformance" and not args.check_timeout <= conformance.MAX_CHECK_TIMEOUT:
        args.usage_error(f"--check-timeout is at most {conformance.MAX_CHECK_TIMEOUT:g} seconds")
    if args.command == "bench" and args.acknowledged is not None:
        if args.action is None:
            args.usage_error("--acknowledged records the answers to an --action")
        try:
            args.acknowledged = open(args.acknowledged, "w", encoding="utf-8")  # closed below, once the run is over
        except OSError as e:
            args.usage_error(f"--acknowledged {args.acknowledged}: {e.strerror or e}")
    try:
        task.react(lambda reactor: defer.ensureDeferred(_guarded(reactor, args)))
    finally:
        if getattr(args, "acknowledged", None) is not None:
            args.acknowledged.close()
