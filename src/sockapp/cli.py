"""The ``sockapp`` command: the tutorial's clients, over any client endpoint.

Every failure a user can cause or meet (a refused connection, a bad
endpoint string, a server that closes mid-answer) ends in one line on
stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.internet import error as neterror

from sockapp import __version__
from sockapp.bench import Bench, BenchConfig
from sockapp.client import DEFAULT_ENDPOINT, DEFAULT_RETRIES, Response, connect, connect_echo
from sockapp.errors import SockappError
from sockapp.progress import live_progress

DEFAULT_TIMEOUT = 30.0
TUTORIAL_ECHO_MESSAGE = "hello, universe.\nHi, friend."
TUTORIAL_MULTICONN_MESSAGES = ("hello message 1 from client.", "hi message 2 from client.")


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


async def run_request(reactor: Any, args: argparse.Namespace) -> int:
    client = await connect(reactor, args.connect, retries=args.retries)
    try:
        response = await client.request(args.action, args.value)
    finally:
        await client.close()
    if args.json:
        print(json.dumps(_response_json(response), ensure_ascii=False))
    else:
        print(_response_text(response))
    return 0


async def run_ping(reactor: Any, args: argparse.Namespace) -> int:
    client = await connect(reactor, args.connect, retries=args.retries)
    try:
        response = await client.ping()
    finally:
        await client.close()
    print(response.result)
    return 0 if response.result == "pong" else 1


async def run_echo(reactor: Any, args: argparse.Namespace) -> int:
    data = args.message.encode("utf-8")
    client = await connect_echo(reactor, args.connect)
    try:
        echoed = await client.roundTrip(data)
    finally:
        await client.close()
    print(echoed.decode("utf-8", "backslashreplace"))
    return 0 if echoed == data else 1


async def _one_multiconn(reactor: Any, endpoint: str, messages: list[bytes]) -> bytes:
    client = await connect_echo(reactor, endpoint)
    try:
        return await client.roundTrip(b"".join(messages))
    finally:
        await client.close()


async def run_multiconn(reactor: Any, args: argparse.Namespace) -> int:
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
            print(f"connection {number}: echo differs: sent {expected!r}, got {value!r}", file=sys.stderr)
        else:
            print(f"connection {number}: {describe_error(value.value)}", file=sys.stderr)
    print(f"{good} of {args.connections} connections echoed {len(expected)} bytes exactly")
    return 0 if good == args.connections else 1


async def run_bench(reactor: Any, args: argparse.Namespace) -> int:
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
        expect=args.expect,
        request_timeout=args.request_timeout,
        retries=args.retries,
    )
    bench = Bench(reactor, config)
    with live_progress(reactor, bench):
        summary = await bench.run()
    if args.json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False))
    else:
        print("\n".join(summary.lines()))
    return 1 if summary.error_count or not summary.requests else 0


def describe_error(error: BaseException) -> str:
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
    bench.add_argument(
        "--expect", metavar="ANSWER", help="the answer to expect (default: the tutorial's, or its 'No match')"
    )
    bench.add_argument(
        "--request-timeout", type=_positive_seconds, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )
    retries(bench)
    bench.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    bench.set_defaults(run=run_bench, usage_error=bench.error)
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


async def _guarded(reactor: Any, args: argparse.Namespace) -> None:
    work = defer.ensureDeferred(args.run(reactor, args))
    if args.timeout:
        work.addTimeout(args.timeout, reactor)
    try:
        code = await work
    except defer.TimeoutError:
        print(f"sockapp {args.command}: error: no complete answer within {args.timeout:g} s", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:
        print(f"sockapp {args.command}: error: {describe_error(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.protocol == "echo" and args.size == 0:
        args.usage_error("--size must be at least 1 with --protocol echo")  # an empty echo measures nothing
    task.react(lambda reactor: defer.ensureDeferred(_guarded(reactor, args)))
