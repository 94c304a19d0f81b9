"""``sockapp conformance``: check a server against PROTOCOL.md and its test vectors.

The checker is a client facing a server it does not trust: every check has a
deadline (``check_timeout``), every connection reads at most ``MAX_RECEIVED``
bytes, whatever the server sends is parsed with the client's limits and
described with `peer_text`, and every connection a check opened is aborted
when the check ends. A server that never answers, closes mid-frame, sends
garbage, announces a wrong ``content-length`` or answers out of order gets
a table of failures, never a hang or a traceback.

Checks are *required* (a server must pass them) or *optional* (a server may
decline the feature cleanly: it closes after every answer, or answers
``ping`` as any unknown action; that is "not supported"). An optional
feature done wrongly (a kept connection that stops answering) is shown as
failed, but only the required checks decide `Report.passed`: answers out
of order break the required ``order`` check, since whatever a server
answers on one connection it must answer in request order.

The vectors are read from ``tests/vectors`` of a checkout or, in an
installed wheel, from ``sockapp/vectors``. Every request sent is a vector's
bytes, but for the large frame, ``ping`` and ``describe``, which sockapp's
encoder builds.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from attrs import field, frozen
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IHandshakeListener, INegotiated, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sockapp.errors import ConnectTimeout, RemoteProtocolError, TLSFailure
from sockapp.net.tls import handshake_unfinished, tls_failure_text
from sockapp.wire.framing import JSON_CONTENT_TYPE, Header, encode_frame, encode_json, parse_header, parse_json_content
from sockapp.wire.text import peer_text

__all__ = ["Check", "Options", "Report", "VectorResult", "run", "load_vectors"]

Status = Literal["pass", "fail", "not supported"]
"""A check's result: ``not supported`` only for an optional check."""
PASS: Final = "pass"
FAIL: Final = "fail"
NOT_SUPPORTED: Final = "not supported"

DEFAULT_CHECK_TIMEOUT: Final = 5.0
MAX_CHECK_TIMEOUT: Final = 600.0
"""The longest ``check_timeout``: with more (or ``inf``), "every check ends" would mean nothing."""
TRAILING_WAIT: Final = 0.05
"""Seconds the ``answers`` check waits after each answer for bytes that should not come (nothing was asked)."""
"""Seconds each check (and each vector) gets, by default."""
MAX_RECEIVED: Final = 1024 * 1024
SEARCHES: Final = ("search-morpheus", "search-ring", "search-miss")
"""The most bytes the checker reads on one connection; a server sending more fails the check."""
LARGE_CONTENT: Final = 1024 * 1024
"""The large-frame check's request content: the size every server must accept (PROTOCOL.md)."""
CONCURRENCY: Final = 16
"""Vectors checked at once, each on a connection of its own."""
SPLIT_PAUSE: Final = 0.002
"""Seconds between the pieces of a split request, so that they travel as separate segments."""
DETAIL_LIMIT: Final = 80
"""The most characters of peer-chosen text quoted in a detail."""
BINARY_ANSWER_TYPE: Final = "binary/custom-server-binary-type"


@frozen
class VectorResult:
    """One vector's outcome inside a check.

    :ivar name: the vector's name in its JSON file.
    :ivar status: pass, fail or not supported.
    :ivar detail: one line saying what the server did.
    """

    name: str
    status: Status
    detail: str


@frozen
class Check:
    """One row of the table.

    :ivar name: the check's name (PROTOCOL.md, "Conformance").
    :ivar required: required (must pass) or optional (may be not supported).
    :ivar status: pass, fail or not supported.
    :ivar detail: one line: what was seen, or the first failure.
    :ivar vectors: each vector's outcome, for checks that run vectors.
    """

    name: str
    required: bool
    status: Status
    detail: str
    vectors: tuple[VectorResult, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON: ``check``, ``level``, ``result``, ``detail`` (and ``vectors``)."""
        row: dict[str, Any] = {
            "check": self.name,
            "level": "required" if self.required else "optional",
            "result": self.status,
            "detail": self.detail,
        }
        if self.vectors:
            row["vectors"] = [{"name": v.name, "result": v.status, "detail": v.detail} for v in self.vectors]
        return row


@frozen
class Report:
    """Every check's row, in the order they ran.

    :ivar endpoint: the server checked, as given.
    :ivar checks: the rows.
    """

    endpoint: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        """True when every required check passed (the command's exit status 0); optional ones may say anything."""
        return all(check.status == PASS for check in self.checks if check.required)

    def counts(self) -> dict[str, int]:
        """How many checks passed, failed and are not supported."""
        return {status: sum(c.status == status for c in self.checks) for status in (PASS, FAIL, NOT_SUPPORTED)}

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "endpoint": self.endpoint,
            "passed": self.passed,
            **self.counts(),
            "checks": [c.as_dict() for c in self.checks],
        }

    def lines(self, vectors: bool = False) -> list[str]:
        """The table, one check a line (and, with ``vectors``, one line per vector under its check)."""
        width = max([len(c.name) for c in self.checks] + [5])
        out = [f"{'check':<{width}}  {'level':<8}  {'result':<13}  detail"]
        for c in self.checks:
            level = "required" if c.required else "optional"
            out.append(f"{c.name:<{width}}  {level:<8}  {c.status:<13}  {c.detail}")
            if vectors:
                out.extend(f"  {v.name}: {v.status}: {v.detail}" for v in c.vectors)
        counts = self.counts()
        out.append(
            f"{len(self.checks)} checks: {counts[PASS]} passed, {counts[FAIL]} failed, "
            f"{counts[NOT_SUPPORTED]} not supported"
        )
        return out


@frozen
class Options:
    """What to check and how long to give each check.

    :ivar endpoint: a client endpoint string (or object) for the server.
    :ivar check_timeout: seconds for each check, and for each vector.
    """

    endpoint: Any
    check_timeout: float = field(default=DEFAULT_CHECK_TIMEOUT)

    @check_timeout.validator
    def _positive(self, attribute: Any, value: float) -> None:
        if not 0 < value <= MAX_CHECK_TIMEOUT:
            raise ValueError(f"check_timeout must be more than 0 and at most {MAX_CHECK_TIMEOUT:g}, not {value!r}")


# -- the vectors ----------------------------------------------------------------------------


def _vectors_text(name: str) -> str:
    shipped = resources.files("sockapp") / "vectors" / name  # in a wheel (pyproject's force-include)
    if shipped.is_file():
        return shipped.read_text("ascii")
    checkout = Path(__file__).resolve().parents[3] / "tests" / "vectors" / name  # a checkout, installed editable
    return checkout.read_text("ascii")


def load_vectors() -> dict[str, list[dict[str, Any]]]:
    """The exchanges and faults of ``tests/vectors`` (see PROTOCOL.md), by file."""
    return {
        "exchanges": json.loads(_vectors_text("exchanges.json"))["exchanges"],
        "faults": json.loads(_vectors_text("faults.json"))["faults"],
    }


# -- one connection, read with bounds -------------------------------------------------------


@frozen
class _Frame:
    header: Header
    content: bytes
    raw: bytes
    document: Any = None
    document_error: str | None = None

    @property
    def error_code(self) -> str | None:
        """The code of an error frame, ``{"error": {"code": ...}}``; None for any other frame."""
        if isinstance(self.document, dict) and isinstance(self.document.get("error"), dict):
            code = self.document["error"].get("code")
            return code if isinstance(code, str) else repr(code)
        return None

    def describe(self) -> str:
        if self.header.content_type == JSON_CONTENT_TYPE and self.document_error is None:
            return peer_text(json.dumps(self.document, ensure_ascii=False), DETAIL_LIMIT)
        return f"{peer_text(self.header.content_type, 40)} {peer_text(repr(self.content[:40]), DETAIL_LIMIT)}"


class _NoFrame(Exception):
    """No whole frame came: ``kind`` is ``closed`` (nothing pending), ``timeout``, ``cut`` (closed or
    timed out mid-frame) or ``bad`` (bytes that are not a frame)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """A raw connection: bytes out as the check writes them, at most ``MAX_RECEIVED`` bytes in."""

    transport: Any

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.consumed = 0
        self.ended = False
        self.tls_failure: str | None = None  # why a TLS connection ended, if a TLS failure ended it
        self.handshake_done = False
        self.overflow = False
        self._waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # split requests go out in the pieces they are written in

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self._wake()

    def dataReceived(self, data: bytes) -> None:
        if self.overflow:
            return
        if len(self.buffer) + len(data) > MAX_RECEIVED:
            self.overflow = True
            self.transport.abortConnection()
        else:
            self.buffer += data
        self._wake()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended = True
        self.tls_failure = tls_failure_text(self.transport, reason.value if reason is not None else None)
        if self.tls_failure is None and handshake_unfinished(self.transport):
            self.tls_failure = "TLS: the connection closed during the handshake; does the server speak TLS?"
        self._wake()

    def event(self) -> Deferred[None]:
        """Fires on the next bytes or the end of the connection."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def write(self, data: bytes) -> None:
        if not self.ended:
            self.transport.write(data)

    @property
    def pending(self) -> int:
        """Bytes received and not yet taken as a frame."""
        return len(self.buffer) - self.consumed

    def take_frame(self) -> _Frame | None:
        """The next whole frame received, or None; ``_NoFrame("bad")`` for bytes that are not one."""
        buffer, at = self.buffer, self.consumed
        if len(buffer) - at < 2:
            return None
        length = (buffer[at] << 8) | buffer[at + 1]
        if length == 0:
            raise _NoFrame("bad", "sent a frame whose header length is 0")
        if len(buffer) - at < 2 + length:
            return None
        try:
            header = parse_header(bytes(buffer[at + 2 : at + 2 + length]), MAX_RECEIVED, side="client")
        except RemoteProtocolError as e:
            raise _NoFrame("bad", f"sent bytes that are not a frame: {e.code.value}: {e.message}") from None
        end = at + 2 + length + header.content_length
        if len(buffer) < end:
            return None
        content = bytes(buffer[at + 2 + length : end])
        raw = bytes(buffer[at:end])
        self.consumed = end
        if header.content_type != JSON_CONTENT_TYPE:
            return _Frame(header, content, raw)
        try:
            document = parse_json_content(content, header.content_encoding, limit_complexity=False)
        except RemoteProtocolError as e:
            return _Frame(header, content, raw, None, f"{e.code.value}: {e.message}")
        return _Frame(header, content, raw, document)


class _Session:
    """One check's (or one vector's) connections and deadline: every wait ends by it."""

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, timeout: float) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.timeout = timeout
        self.deadline: float = reactor.seconds() + timeout
        self.probes: list[_Probe] = []

    def remaining(self) -> float:
        now: float = self.reactor.seconds()
        return max(0.0, self.deadline - now)

    async def open(self) -> _Probe:
        """A new connection; ``_NoFrame("closed")`` if none could be made in time."""
        attempt = self.endpoint.connect(Factory.forProtocol(_Probe))
        try:
            probe = await attempt.addTimeout(max(self.remaining(), 0.001), self.reactor)
        except (TimeoutError, defer.TimeoutError, defer.CancelledError, ConnectingCancelledError):
            raise _NoFrame("timeout", f"no connection within {self.timeout:g} s") from None
        except Exception as e:  # noqa: BLE001 - a refused connection is the check's detail
            raise _NoFrame("closed", f"cannot connect: {peer_text(e, DETAIL_LIMIT)}") from None
        assert isinstance(probe, _Probe)
        self.probes.append(probe)
        return probe

    async def sleep(self, seconds: float) -> None:
        waiter: Deferred[None] = Deferred()
        call = self.reactor.callLater(min(seconds, self.remaining()), waiter.callback, None)
        try:
            await waiter
        finally:
            if call.active():
                call.cancel()

    async def until(self, probe: _Probe, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()``, the connection's end, or the deadline; whether ``ready()``."""
        while not ready() and not probe.ended:
            remaining = self.remaining()
            if remaining <= 0:
                break
            try:
                await probe.event().addTimeout(remaining, self.reactor)
            except (TimeoutError, defer.TimeoutError):
                break
        return ready()

    async def frame(self, probe: _Probe) -> _Frame:
        """The next frame from ``probe``, or ``_NoFrame`` saying why there is none."""
        found: list[_Frame] = []

        def ready() -> bool:
            if not found:
                got = probe.take_frame()
                if got is not None:
                    found.append(got)
            return bool(found)

        if await self.until(probe, ready):
            return found[0]
        if probe.overflow:
            raise _NoFrame("bad", f"sent more than {MAX_RECEIVED} bytes")
        if probe.ended:
            if probe.tls_failure is not None:
                raise _NoFrame("closed", probe.tls_failure)
            if probe.pending:
                raise _NoFrame("cut", f"closed mid-frame, {probe.pending} bytes into it")
            raise _NoFrame("closed", "closed the connection without an answer")
        if probe.pending:
            raise _NoFrame("cut", f"sent {probe.pending} bytes of a frame and no more within {self.timeout:g} s")
        raise _NoFrame("timeout", f"no answer within {self.timeout:g} s")

    async def only_answer(self, probe: _Probe, wait: float = 0.0) -> None:
        """After the answer to a lone request: nothing more may come (within ``wait`` seconds), since
        nothing more was asked; a client would take such bytes for the next answer, or fail on them."""
        if wait > 0 and not probe.pending:
            end = self.reactor.seconds() + min(wait, self.remaining())
            while not probe.pending and not probe.ended and self.reactor.seconds() < end:
                await self.sleep(end - self.reactor.seconds())
                break
        if probe.pending:
            raise _NoFrame("bad", f"sent {probe.pending} more bytes after its answer, which no request asked for")

    async def closed(self, probe: _Probe) -> bool:
        """Whether the server closes ``probe`` by the deadline (bytes it sends meanwhile are kept)."""
        return await self.until(probe, lambda: probe.ended)

    def end(self) -> None:
        for probe in self.probes:
            if not probe.ended:
                probe.transport.abortConnection()


# -- comparing answers ------------------------------------------------------------------------


def _frame_of(raw: bytes) -> _Frame:
    """A frame from the vectors (trusted)."""
    probe = _Probe()
    probe.buffer += raw
    frame = probe.take_frame()
    assert frame is not None
    return frame


def _same_json(one: Any, other: Any) -> bool:
    """The same JSON document: ``1``, ``1.0`` and ``true`` are three different values here."""
    return json.dumps(one, sort_keys=True) == json.dumps(other, sort_keys=True)


def _difference(got: _Frame, expected: _Frame) -> str | None:
    """What differs between an answer and the vector's, as the spec counts it; None if nothing.

    The content type and encoding must be the same; so must the content: for ``text/json``, the same
    JSON document (its bytes may be laid out otherwise), for any other type the same bytes."""
    if got.error_code is not None and expected.error_code is None:
        return f"answered an error: {got.describe()}"
    for name in ("content_type", "content_encoding"):
        ours: str = getattr(got.header, name)
        theirs: str = getattr(expected.header, name)
        if name == "content_encoding":  # section 2.3: an encoding's name in any letter case
            ours, theirs = ours.lower(), theirs.lower()
        if ours != theirs:
            wire = name.replace("_", "-")
            return f"{wire} {peer_text(getattr(got.header, name), 40)}, expected {getattr(expected.header, name)}"
    if expected.header.content_type == JSON_CONTENT_TYPE:
        if got.document_error is not None:
            return f"answered content that is not JSON: {peer_text(got.document_error, DETAIL_LIMIT)}"
        same = _same_json(got.document, expected.document)
    else:
        same = got.content == expected.content
    return None if same else f"answered {got.describe()}, expected {expected.describe()}"


# -- the checks ---------------------------------------------------------------------------------


class _Checker:
    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, options: Options) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.timeout = options.check_timeout
        vectors = load_vectors()
        self.exchanges = vectors["exchanges"]
        self.faults = vectors["faults"]
        self.by_name = {v["name"]: v for v in self.exchanges}
        self.keep_alive: bool | None = None  # learned by the keep-alive check
        self.out_of_order: str | None = None  # learned by the pipelining check: which answer went to which request
        self.in_order = 0  # learned by the pipelining check: how many answers to requests sent together were in order
        self.answered_any = False  # learned by the answers check: the server answered at least one sound request
        self.exact: dict[str, bool] = {}  # vector -> its answer was byte for byte the vector's
        self.silent: list[str] = []  # framing faults closed without an error frame
        self.refused: list[str] = []  # framing faults refused with an error frame of their code
        self.checks: list[Check] = []

    def session(self) -> _Session:
        return _Session(self.reactor, self.endpoint, self.timeout)

    def request(self, name: str) -> bytes:
        return bytes.fromhex(self.by_name[name]["request"])

    def answer(self, name: str) -> _Frame:
        return _frame_of(bytes.fromhex(self.by_name[name]["answer"]))

    async def run(self) -> list[Check]:
        steps: list[tuple[str, bool, Callable[[], Coroutine[Any, Any, Check]]]] = [
            ("keep-alive", False, self.keep_alive_check),
            ("pipelining", False, self.pipelining),
            ("order", True, self.order),
            ("half-close", False, self.half_close),
            ("answers", True, self.answers),
            ("tutorial-bytes", False, self.tutorial_bytes),
            ("split-in-two", True, self.split_in_two),
            ("byte-by-byte", True, self.byte_by_byte),
            ("framing-faults", True, self.framing_faults),
            ("error-frames", False, self.error_frames),
            ("in-band-errors", True, self.in_band_errors),
            ("limits", False, self.limits),
            ("fault-beside-good", True, self.fault_beside_good),
            ("large-frame", True, self.large_frame),
            ("idle", True, self.idle),
            ("ping", False, self.ping),
            ("describe", False, self.describe),
        ]
        for name, required, step in steps:
            self.checks.append(await self.bounded(name, required, step))
        return self.checks

    async def bounded(self, name: str, required: bool, step: Callable[[], Coroutine[Any, Any, Check]]) -> Check:
        """Run one check, never raising, and never for longer than its vectors' rounds of
        ``check_timeout`` could take (each wait in a check already ends by its deadline). A check
        that ends in ``_NoFrame`` (no answer, a cut or bad frame) is a failed row with its detail."""
        most = max(len(self.exchanges), len(self.faults), len(self.request("search-morpheus")))  # split-in-two's
        rounds = -(-most // CONCURRENCY) + 2
        limit = self.timeout * rounds + 1
        interrupted = False

        def interrupt(_: Deferred[Check]) -> None:  # the command was interrupted: stop the check too
            nonlocal interrupted
            interrupted = True
            stop()

        outcome: Deferred[Check] = Deferred(canceller=interrupt)

        def finish(check: Check) -> None:
            if not outcome.called and not interrupted:
                outcome.callback(check)

        def ended(result: Check | Failure) -> None:
            if isinstance(result, Failure) and isinstance(result.value, _NoFrame):  # no answer, or not one
                finish(Check(name, required, FAIL, result.value.detail))
            elif isinstance(result, Failure):
                detail = f"the checker failed: {peer_text(repr(result.value), DETAIL_LIMIT)}"
                finish(Check(name, required, FAIL, detail))
            else:
                finish(result)

        def stop() -> None:
            try:
                work.cancel()  # its sessions abort their connections; its result no longer matters
            except Exception:  # noqa: BLE001 - the row is written; a check that cannot stop is left to end
                pass

        def too_long() -> None:
            finish(Check(name, required, FAIL, f"the check did not finish within {limit:g} s"))
            stop()

        # Not addTimeout: the row is written when time is up even if cancelling the check went wrong.
        work = Deferred.fromCoroutine(step())
        work.addBoth(ended)
        timer = self.reactor.callLater(limit, too_long)
        try:
            return await outcome
        finally:
            if timer.active():
                timer.cancel()

    async def exchange(
        self, session: _Session, request: bytes, expected: _Frame, trailing_wait: float = 0.0
    ) -> tuple[Status, str, _Frame | None]:
        probe = await session.open()
        probe.write(request)
        got = await session.frame(probe)
        await session.only_answer(probe, trailing_wait)
        difference = _difference(got, expected)
        if difference is not None:
            return FAIL, difference, got
        return PASS, "answered as specified", got

    # -- connection behaviour

    async def keep_alive_check(self) -> Check:
        name, session = "keep-alive", self.session()
        try:
            probe = await session.open()
            probe.write(self.request("search-morpheus"))
            first = await session.frame(probe)
            if (difference := _difference(first, self.answer("search-morpheus"))) is not None:
                return Check(name, False, FAIL, f"first request: {difference}")
            probe.write(self.request("search-ring"))
            try:
                second = await session.frame(probe)
            except _NoFrame as e:
                if e.kind == "closed":
                    self.keep_alive = False
                    return Check(name, False, NOT_SUPPORTED, "the server closed the connection after one answer")
                raise
            if (difference := _difference(second, self.answer("search-ring"))) is not None:
                return Check(name, False, FAIL, f"second request: {difference}")
            self.keep_alive = True
            return Check(name, False, PASS, "a second request on the connection was answered")
        finally:
            session.end()

    async def pipelining(self) -> Check:
        name, session = "pipelining", self.session()
        names = ["search-morpheus", "search-ring", "search-miss", "binary-hello"]
        try:
            probe = await session.open()
            probe.write(b"".join(self.request(n) for n in names))
            answers: list[_Frame] = []
            for _ in names:
                try:
                    answers.append(await session.frame(probe))
                except _NoFrame as e:
                    if e.kind == "closed" and len(answers) == 1 and self.keep_alive is not True:
                        if _difference(answers[0], self.answer(names[0])) is None:
                            return Check(name, False, NOT_SUPPORTED, "answered the first request, then closed")
                    return Check(name, False, FAIL, f"after {len(answers)} of {len(names)} answers: {e.detail}")
            for number, (got, wanted) in enumerate(zip(answers, names, strict=True), start=1):
                if _difference(got, self.answer(wanted)) is not None:
                    others = [n for n in names if _difference(got, self.answer(n)) is None]
                    if others:
                        self.out_of_order = f"answer {number} is the answer to request {names.index(others[0]) + 1}"
                        return Check(name, False, FAIL, f"{self.out_of_order}: out of order")
                    return Check(name, False, FAIL, f"answer {number}: {_difference(got, self.answer(wanted))}")
                self.in_order = number
            return Check(name, False, PASS, f"{len(names)} requests in one write answered in order")
        finally:
            session.end()

    async def order(self) -> Check:
        """Required: answers on one connection come in the order of its requests (what pipelining showed)."""
        name = "order"
        if self.out_of_order is not None:
            return Check(name, True, FAIL, f"{self.out_of_order} sent with it in one write: out of order")
        if self.in_order > 1:
            return Check(name, True, PASS, f"{self.in_order} requests sent together were answered in their order")
        return Check(name, True, PASS, "no two requests sent together were answered: nothing to put out of order")

    async def half_close(self) -> Check:
        name, session = "half-close", self.session()
        try:
            probe = await session.open()
            # TLS (INegotiated) has no half-close of its own: its wrapper would shut the TCP stream under it.
            if INegotiated.providedBy(probe.transport) or not hasattr(probe.transport, "loseWriteConnection"):
                return Check(name, False, NOT_SUPPORTED, "not checked: this transport cannot half-close")
            probe.write(self.request("search-morpheus"))
            probe.transport.loseWriteConnection()
            try:
                got = await session.frame(probe)
            except _NoFrame as e:
                if e.kind == "closed":
                    return Check(name, False, NOT_SUPPORTED, "closed at the half-close without answering")
                raise
            if (difference := _difference(got, self.answer("search-morpheus"))) is not None:
                return Check(name, False, FAIL, difference)
            if not await session.closed(probe):
                return Check(name, False, NOT_SUPPORTED, f"answered, but did not close within {self.timeout:g} s")
            if probe.pending:
                return Check(name, False, FAIL, f"sent {probe.pending} more bytes after the answer")
            return Check(name, False, PASS, "answered what was sent before the half-close, then closed")
        finally:
            session.end()

    # -- vectors

    async def each(
        self,
        vectors: Iterable[dict[str, Any]],
        one: Callable[[_Session, dict[str, Any]], Awaitable[VectorResult]],
        until_failure: bool = False,
    ) -> list[VectorResult]:
        """``one(session, vector)`` for every vector, in their order, by ``CONCURRENCY`` workers, each
        vector in a session of its own; with ``until_failure``, none is started once one has failed."""
        queue = iter(enumerate(vectors))
        results: dict[int, VectorResult] = {}

        async def work() -> None:
            for index, vector in queue:  # the workers share the iterator
                if until_failure and any(r.status == FAIL for r in results.values()):
                    return
                session = self.session()
                try:
                    results[index] = await one(session, vector)
                except _NoFrame as e:
                    results[index] = VectorResult(vector["name"], FAIL, e.detail)
                except Exception as e:  # noqa: BLE001 - never a traceback: the vector's line says what went wrong
                    detail = f"the checker failed: {peer_text(repr(e), DETAIL_LIMIT)}"
                    results[index] = VectorResult(vector["name"], FAIL, detail)
                finally:
                    session.end()

        await gatherResults([Deferred.fromCoroutine(work()) for _ in range(CONCURRENCY)])
        return [results[index] for index in sorted(results)]

    @staticmethod
    def summary(name: str, required: bool, results: list[VectorResult], passed: str) -> Check:
        failed = [r for r in results if r.status == FAIL]
        unsupported = [r for r in results if r.status == NOT_SUPPORTED]
        if failed:
            detail = f"{len(failed)} of {len(results)} vectors failed; {failed[0].name}: {failed[0].detail}"
            return Check(name, required, FAIL, detail, tuple(results))
        if unsupported:
            detail = (
                f"{len(unsupported)} of {len(results)} not supported; {unsupported[0].name}: {unsupported[0].detail}"
            )
            return Check(name, required, NOT_SUPPORTED, detail, tuple(results))
        return Check(name, required, PASS, f"{len(results)} of {len(results)} vectors {passed}", tuple(results))

    async def answers(self) -> Check:
        async def one(session: _Session, vector: dict[str, Any]) -> VectorResult:
            expected = _frame_of(bytes.fromhex(vector["answer"]))
            request = bytes.fromhex(vector["request"])
            status, detail, got = await self.exchange(session, request, expected, TRAILING_WAIT)
            self.answered_any = self.answered_any or status == PASS
            if status == PASS and got is not None and vector["tutorial"] == "same":
                self.exact[vector["name"]] = got.raw == expected.raw
            return VectorResult(vector["name"], status, detail)

        return self.summary("answers", True, await self.each(self.exchanges, one), "answered as specified")

    async def tutorial_bytes(self) -> Check:
        name = "tutorial-bytes"
        differ = [vector for vector, exact in self.exact.items() if not exact]
        if not self.exact:
            return Check(name, False, NOT_SUPPORTED, "no answer to compare")
        if differ:
            return Check(
                name,
                False,
                NOT_SUPPORTED,
                f"{len(differ)} of {len(self.exact)} answers are laid out otherwise than the tutorial's "
                f"(allowed), e.g. {differ[0]}",
            )
        return Check(name, False, PASS, f"{len(self.exact)} answers byte for byte as the tutorial's server writes them")

    async def split_in_two(self) -> Check:
        # Three different searches in turn, so that no one canned answer fits them all.
        searches = SEARCHES
        request = self.request(searches[0])

        async def one(session: _Session, at: dict[str, Any]) -> VectorResult:
            whole, expected = self.request(at["search"]), self.answer(at["search"])
            cut = min(at["at"], len(whole) - 1)
            probe = await session.open()
            probe.write(whole[:cut])
            await session.sleep(SPLIT_PAUSE)
            if probe.buffer:
                return VectorResult(at["name"], FAIL, "sent bytes before the request was complete")
            probe.write(whole[cut:])
            got = await session.frame(probe)
            await session.only_answer(probe)
            difference = _difference(got, expected)
            return VectorResult(at["name"], FAIL if difference else PASS, difference or "answered as specified")

        points = [
            {"name": f"split at byte {at}", "at": at, "search": searches[at % len(searches)]}
            for at in range(1, len(request))
        ]
        results = await self.each(points, one, until_failure=True)
        failed = [r for r in results if r.status == FAIL]
        if failed:
            return Check(
                "split-in-two",
                True,
                FAIL,
                f"{len(failed)} of {len(results)} split points tried failed; {failed[0].name}: {failed[0].detail}",
                tuple(failed),
            )
        return Check(
            "split-in-two", True, PASS, f"a search answered when split at each of its {len(results)} byte boundaries"
        )

    async def byte_by_byte(self) -> Check:
        name, session = "byte-by-byte", self.session()
        request = self.request("search-ring")
        try:
            probe = await session.open()
            pause = min(SPLIT_PAUSE, self.timeout / (4 * len(request)))
            for i in range(len(request)):
                if probe.buffer:
                    return Check(name, True, FAIL, f"sent bytes when only {i} of the request's {len(request)} had come")
                probe.write(request[i : i + 1])
                await session.sleep(pause)
            got = await session.frame(probe)
            await session.only_answer(probe)
            if (difference := _difference(got, self.answer("search-ring"))) is not None:
                return Check(name, True, FAIL, difference)
            return Check(name, True, PASS, f"a search sent one byte at a time ({len(request)} writes) was answered")
        finally:
            session.end()

    async def fault(self, session: _Session, vector: dict[str, Any], required: bool) -> VectorResult:
        """A fault that closes: the error frame (optional) with the vector's code, then the close."""
        name, code = vector["name"], vector["code"]
        missing: Status = FAIL if required else NOT_SUPPORTED
        probe = await session.open()
        if self.keep_alive:
            # A sound search first, on the same connection: its answer shows the server reads this
            # connection, so that a close after it is the fault's, not a refusal of every connection.
            probe.write(self.request("search-ring") + bytes.fromhex(vector["frame"]))
            try:
                first = await session.frame(probe)
            except _NoFrame as e:
                return VectorResult(name, FAIL, f"the sound search sent before the fault: {e.detail}")
            if (difference := _difference(first, self.answer("search-ring"))) is not None:
                return VectorResult(name, FAIL, f"the sound search sent before the fault: {difference}")
        else:
            probe.write(bytes.fromhex(vector["frame"]))
        try:
            got = await session.frame(probe)
        except _NoFrame as e:
            if e.kind == "closed":
                self.silent.append(name)
                return VectorResult(name, PASS, "closed without an error frame")
            if e.kind == "timeout":
                return VectorResult(name, missing, f"neither refused nor closed within {self.timeout:g} s")
            raise
        if got.error_code is None:
            return VectorResult(name, missing, f"answered as if the frame were sound: {got.describe()}")
        if got.error_code != code:
            return VectorResult(name, FAIL, f"error code {peer_text(got.error_code, 40)}, expected {code}")
        if not await session.closed(probe):
            return VectorResult(name, FAIL, f"sent {code} but did not close within {self.timeout:g} s")
        if probe.pending:
            return VectorResult(name, FAIL, f"sent {probe.pending} more bytes after the error frame")
        self.refused.append(name)
        return VectorResult(name, PASS, f"error frame {code}, then closed")

    async def in_band(self, session: _Session, vector: dict[str, Any], required: bool) -> VectorResult:
        """A fault inside a sound frame: an error answer with the vector's code, and the connection serves on."""
        name, code = vector["name"], vector["code"]
        probe = await session.open()
        probe.write(bytes.fromhex(vector["frame"]))
        got = await session.frame(probe)
        if got.error_code is None:
            if required:
                return VectorResult(name, FAIL, f"answered as if the request were sound: {got.describe()}")
            return VectorResult(name, NOT_SUPPORTED, f"no such limit: answered {got.describe()}")
        if got.error_code != code:
            return VectorResult(name, FAIL, f"error code {peer_text(got.error_code, 40)}, expected {code}")
        probe.write(self.request("search-ring"))
        try:
            after = await session.frame(probe)
        except _NoFrame as e:
            if e.kind == "closed" and self.keep_alive is False:
                return VectorResult(name, PASS, f"answered {code} in-band, then closed as after every answer")
            if e.kind == "closed":
                return VectorResult(name, FAIL, f"answered {code}, then closed instead of serving on")
            raise
        if (difference := _difference(after, self.answer("search-ring"))) is not None:
            return VectorResult(name, FAIL, f"the request after it: {difference}")
        return VectorResult(name, PASS, f"answered {code} in-band, then served the next request")

    async def framing_faults(self) -> Check:
        faults = [v for v in self.faults if v["closes"] and v["required"]]
        results = await self.each(faults, lambda session, vector: self.fault(session, vector, True))
        if not self.answered_any:  # a server that closes every connection would seem to refuse every fault
            return Check(
                "framing-faults",
                True,
                FAIL,
                "the server answered no sound request (answers), so its closes show nothing",
            )
        return self.summary("framing-faults", True, results, "refused, then the connection closed")

    async def error_frames(self) -> Check:
        name = "error-frames"
        closing = [v["name"] for v in self.faults if v["closes"] and v["required"]]
        refused = [n for n in closing if n in self.refused]
        if len(refused) == len(closing):
            return Check(name, False, PASS, "every framing fault got an error frame with its code before the close")
        silent = [n for n in closing if n in self.silent]
        example = f", e.g. {silent[0]}" if silent else ""
        return Check(
            name,
            False,
            NOT_SUPPORTED,
            f"{len(refused)} of {len(closing)} framing faults got an error frame; {len(silent)} closed without one"
            + example,
        )

    async def in_band_errors(self) -> Check:
        faults = [v for v in self.faults if not v["closes"] and v["required"]]
        results = await self.each(faults, lambda session, vector: self.in_band(session, vector, True))
        return self.summary("in-band-errors", True, results, "answered with their code in-band")

    async def limits(self) -> Check:
        faults = [v for v in self.faults if not v["required"]]

        async def one(session: _Session, vector: dict[str, Any]) -> VectorResult:
            if vector["closes"]:
                return await self.fault(session, vector, False)
            return await self.in_band(session, vector, False)  # a silent close fails: it is a sound request

        return self.summary("limits", False, await self.each(faults, one), "refused with their code")

    async def fault_beside_good(self) -> Check:
        name, session = "fault-beside-good", self.session()
        request = self.request("search-miss")
        try:
            good = await session.open()
            bad = await session.open()
            good.write(request[:9])  # in the middle of its frame when the other connection breaks
            bad.write(b"\x00\x10byteorder=little")
            await session.closed(bad)
            if good.buffer:
                return Check(name, True, FAIL, "sent bytes before the request was complete")
            good.write(request[9:])
            got = await session.frame(good)
            await session.only_answer(good)
            if (difference := _difference(got, self.answer("search-miss"))) is not None:
                return Check(name, True, FAIL, difference)
            return Check(name, True, PASS, "a connection mid-request was answered after another sent a broken frame")
        finally:
            session.end()

    async def large_frame(self) -> Check:
        name, session = "large-frame", self.session()
        content = bytes(range(256)) * (LARGE_CONTENT // 256)
        expected = _frame_of(encode_frame(b"First 10 bytes of request: " + content[:10], BINARY_ANSWER_TYPE, "binary"))
        try:
            status, detail, _ = await self.exchange(
                session, encode_frame(content, "binary/custom-client-binary-type", "binary"), expected
            )
            if status == PASS:
                detail = f"a binary request of {LARGE_CONTENT} bytes was answered"
            return Check(name, True, status, detail)
        finally:
            session.end()

    async def idle(self) -> Check:
        name, session = "idle", self.session()
        request = self.request("search-morpheus")
        try:
            idle = await session.open()
            stalled = await session.open()
            stalled.write(request[:5])  # a frame begun and not finished
            await session.sleep(min(1.0, self.timeout / 4))
            status, detail, _ = await self.exchange(session, self.request("search-ring"), self.answer("search-ring"))
            if status == FAIL:
                return Check(name, True, FAIL, f"beside an idle and a stalled connection: {detail}")
            waiting: list[tuple[str, _Probe, bytes]] = [("idle", idle, request), ("stalled", stalled, request[5:])]
            if stalled.buffer and (cut := stalled.take_frame()) is not None and cut.error_code == "frame-timeout":
                waiting.pop()  # its server's --frame-timeout is shorter than the pause: allowed (5.4)
            for which, probe, data in waiting:
                probe.write(data)
                got = await session.frame(probe)
                await session.only_answer(probe)
                if (difference := _difference(got, self.answer("search-morpheus"))) is not None:
                    return Check(name, True, FAIL, f"the {which} connection: {difference}")
            return Check(
                name, True, PASS, "idle and stalled connections held no one up, and were served after their pause"
            )
        finally:
            session.end()

    # -- built-in actions

    async def action(self, name: str, good: Callable[[Any], bool], passed: str) -> Check:
        session = self.session()
        try:
            probe = await session.open()
            probe.write(encode_json({"action": name}))
            got = await session.frame(probe)
            result = got.document.get("result") if isinstance(got.document, dict) else None
            if got.document_error is None and got.header.content_type == JSON_CONTENT_TYPE and good(result):
                return Check(name, False, PASS, passed)
            return Check(name, False, NOT_SUPPORTED, f"answered {got.describe()}")
        finally:
            session.end()

    async def ping(self) -> Check:
        return await self.action("ping", lambda result: result == "pong", 'answered {"result": "pong"}')

    async def describe(self) -> Check:
        def good(result: Any) -> bool:
            return (
                isinstance(result, dict)
                and isinstance(result.get("name"), str)
                and isinstance(result.get("actions"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in result["actions"].items())
            )

        return await self.action("describe", good, "answered its name and actions")


async def run(reactor: Any, options: Options) -> Report:
    """Check the server at ``options.endpoint``; the report of every check.

    Fails (as a refused connection does, or with ``BadEndpoint``) only if no
    connection can be made at all; everything else the server does is in
    the report.
    """
    from sockapp.client import as_endpoint

    endpoint = as_endpoint(reactor, options.endpoint)
    session = _Session(reactor, endpoint, options.check_timeout)
    try:
        probe = await endpoint.connect(Factory.forProtocol(_Probe)).addTimeout(options.check_timeout, reactor)
    except (TimeoutError, defer.TimeoutError, defer.CancelledError, ConnectingCancelledError):  # the endpoint's own
        raise ConnectTimeout(f"no connection within {options.check_timeout:g} s") from None
    assert isinstance(probe, _Probe)
    session.probes.append(probe)
    try:  # a TLS handshake that fails (a certificate refused) ends the command here, in one line
        if handshake_unfinished(probe.transport):
            await session.until(probe, lambda: probe.handshake_done)
        if probe.tls_failure is not None:
            raise TLSFailure(probe.tls_failure)
        if handshake_unfinished(probe.transport) and not probe.handshake_done:
            raise TLSFailure(
                f"the TLS handshake did not finish within {options.check_timeout:g} s; does the server speak TLS?"
            )
    finally:
        session.end()
    checks = await _Checker(reactor, endpoint, options).run()
    shown = options.endpoint if isinstance(options.endpoint, str) else repr(options.endpoint)
    return Report(shown, tuple(checks))
