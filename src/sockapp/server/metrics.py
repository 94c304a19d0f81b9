"""Prometheus metrics of one server process (``--metrics``), and the page serving them.

The server counts in plain integers on the hot path; ``ServerMetrics`` is a
``prometheus_client`` custom collector that turns them into metric families
when scraped. Measured with the C load generator (``app-keep``, 50
connections), the library's own ``Counter``/``Histogram`` objects, which
take a lock on every update, cost the server 38% of its requests per
second; plain counters read at scrape time cost 7% (``app-pipe``: 27% and
9%). Scrapes run in the reactor thread, like the counting, so nothing
needs a lock.

Each server has its own registry (not the library's global one), so several
servers in one process (tests) never collide. Label values come from the
app's registered actions and error codes, never from what a peer sent: a
client cannot create series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from sockapp.app import BINARY, OK, OTHER, App
from sockapp.errors import ErrorCode
from sockapp.net.protocol import describe_address
from sockapp.net.tls import HANDSHAKE_FAILURES
from sockapp.wire.text import peer_text

# From a cached answer on loopback (tens of microseconds) to a 64 MiB frame (tenths of a second).
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    float("inf"),
)
# What a request that reaches no action may be answered, in-band.
IN_BAND_CODES: Final = (
    "unknown-action",
    ErrorCode.BAD_REQUEST.value,
    ErrorCode.REQUEST_NOT_OBJECT.value,
    ErrorCode.UNKNOWN_ENCODING.value,
    ErrorCode.CONTENT_NOT_DECODABLE.value,
    ErrorCode.CONTENT_NOT_JSON.value,
    ErrorCode.CONTENT_TOO_COMPLEX.value,
)
# Codes only a client raises never appear in a server's error frames.
SERVER_ERROR_CODES: Final = tuple(code for code in ErrorCode if code is not ErrorCode.UNEXPECTED_RESPONSE)


class ServerMetrics:
    """The ``sockapp_`` metrics of one server: one cheap method per event, families when scraped."""

    def __init__(self, registry: CollectorRegistry | None = None, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.connections_open = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        self.tls_handshake_failures = dict.fromkeys(HANDSHAKE_FAILURES, 0)
        self.requests: dict[tuple[str, str], int] = {}
        self.error_frames: dict[ErrorCode, int] = dict.fromkeys(SERVER_ERROR_CODES, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        self._latency_buckets = [0] * len(LATENCY_BUCKETS)  # per bucket, not yet cumulative
        self._latency_sum = 0.0
        self.registry.register(self)
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def connection_opened(self) -> None:
        self.connections_accepted += 1
        self.connections_open += 1

    def connection_closed(self) -> None:
        self.connections_open -= 1

    def connection_refused(self) -> None:
        self.connections_refused += 1

    def tls_handshake_failed(self, why: str) -> None:
        self.tls_handshake_failures[why] += 1

    def received(self, length: int) -> None:
        self.bytes_received += length

    def sent(self, length: int) -> None:
        self.bytes_sent += length

    def serving(self, app: App) -> None:
        """Start ``app``'s usual series at 0: each action answered ``ok``, and the faults
        any request may meet. Others (an action's own error codes) appear when first counted."""
        for action in app.actions:
            self.requests.setdefault((action, OK), 0)
        if app.answers_binary:
            self.requests.setdefault((BINARY, OK), 0)
        for code in IN_BAND_CODES:
            self.requests.setdefault((OTHER, code), 0)

    def answered(self, action: str, outcome: str) -> None:
        key = (action, outcome)
        try:
            self.requests[key] += 1
        except KeyError:
            self.requests[key] = 1

    def error_frame(self, code: ErrorCode) -> None:
        self.error_frames[code] += 1

    def latency(self, seconds: float, requests: int = 1) -> None:
        """``requests`` answered ``seconds`` after the read that completed them began."""
        if requests:
            self._latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += requests
            self._latency_sum += seconds * requests

    def collect(self) -> Iterator[Metric]:
        """The metric families, as ``prometheus_client`` asks a custom collector for them."""
        yield GaugeMetricFamily("sockapp_connections_open", "Connections open now.", value=self.connections_open)
        yield CounterMetricFamily("sockapp_connections", "Connections accepted.", value=self.connections_accepted)
        yield CounterMetricFamily(
            "sockapp_connections_refused",
            "Connections refused because --max-connections were open.",
            value=self.connections_refused,
        )
        failures = CounterMetricFamily(
            "sockapp_tls_handshake_failures",
            "TLS handshakes that failed, by why (an mtls: port refusing a client, say).",
            labels=["reason"],
        )
        for why, count in self.tls_handshake_failures.items():
            failures.add_metric([why], count)
        yield failures
        requests = CounterMetricFamily(
            "sockapp_requests", "Requests answered, by action and outcome.", labels=["action", "outcome"]
        )
        for (action, outcome), count in self.requests.items():
            requests.add_metric([action, outcome], count)
        yield requests
        errors = CounterMetricFamily("sockapp_error_frames", "Error frames sent, by error code.", labels=["code"])
        for code, count in self.error_frames.items():
            errors.add_metric([code.value], count)
        yield errors
        yield CounterMetricFamily("sockapp_received_bytes", "Bytes read from clients.", value=self.bytes_received)
        yield CounterMetricFamily("sockapp_sent_bytes", "Bytes written to clients.", value=self.bytes_sent)
        cumulative = accumulate(self._latency_buckets)
        yield HistogramMetricFamily(
            "sockapp_request_duration_seconds",
            "From the read that completed a request to its answer being handed to the socket.",
            buckets=[(floatToGoString(bound), count) for bound, count in zip(LATENCY_BUCKETS, cumulative, strict=True)],
            sum_value=self._latency_sum,
        )


class MetricsPage(Resource):
    """``/metrics``: the registry in the format the scraper asks for; only GET (and HEAD)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        Resource.__init__(self)
        self.registry = registry

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader("allow", "GET, HEAD")
            # Twisted's IResource.render returns object (bytes or NOT_DONE_YET); an error page renders bytes.
            return pages.errorPage(405, "Method Not Allowed", "Only GET.").render(request)  # type: ignore[return-value]
        return Resource.render(self, request)  # type: ignore[no-any-return]

    def render_HEAD(self, request: Request) -> bytes:
        """The headers of GET, without rendering the registry (Twisted would log the body it drops)."""
        if request.postpath:
            request.setResponseCode(404)
            return b""
        request.setHeader("content-type", choose_encoder(request.getHeader("accept") or "")[1])
        return b""

    def render_GET(self, request: Request) -> bytes:
        if request.postpath:  # /metrics/anything
            return pages.notFound().render(request)  # type: ignore[no-any-return]
        accept = request.getHeader("accept") or ""
        encoder, content_type = choose_encoder(accept)
        request.setHeader("content-type", content_type)
        return encoder(self.registry)


class _Root(Resource):
    """Only ``/metrics`` is here; anything else is a plain 404."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return pages.notFound()


class _NoBody:
    """Where a refused request body goes: nowhere."""

    def dataReceived(self, data: bytes) -> None:
        pass

    def noMoreData(self) -> None:
        pass


class MetricsChannel(HTTPChannel):
    """One request per connection, no request bodies.

    A scraper sends one bodiless GET; anything else is a peer to bound. A
    request with a body (a Content-Length or chunked) is answered 413 before
    any of the body is read, and the connection closed. Every answer closes
    its connection, so a client that pipelines GETs and never reads gets one
    page, not one page per GET in the server's memory. A close that cannot
    finish (the client reads nothing) is aborted after ``abortTimeout``.
    """

    abortTimeout = 2
    _lifetime: Any = None
    transport: Any  # connected: a TCP, TLS or UNIX transport (see StreamTransport), not just ITransport | None

    def connectionMade(self) -> None:
        HTTPChannel.connectionMade(self)
        # The idle timeout restarts with every byte; a peer trickling a header a byte at a time
        # would hold its slot for ever. One request a connection: it gets this long in all.
        self._lifetime = self.callLater(self.factory.idle_timeout, self.transport.abortConnection)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def allHeadersReceived(self) -> None:
        if self.length != 0:  # a Content-Length over 0, or chunked (None)
            self._transferDecoder = _NoBody()
            self.requests[-1].channel = None  # the request is never processed
            self.transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.loseConnection()
            self.setTimeout(None)
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
            return
        HTTPChannel.allHeadersReceived(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._lifetime is not None and self._lifetime.active():
            self._lifetime.cancel()
        self._lifetime = None
        HTTPChannel.connectionLost(self, reason)
        self.factory.channel_closed()


_access = Logger(namespace="sockapp.server.metrics.access")


class MetricsSite(Site):
    """The metrics web site.

    A scrape every few seconds would fill the log, so requests are logged
    only with ``--verbose``. At most ``max_connections`` are open at once
    (more are closed at once), and one idle for ``idle_timeout`` seconds is
    closed: the endpoint is for a scraper, not a crowd.
    """

    noisy = False
    # Twisted types Site.protocol as its HTTP/2-negotiating channel factory; an HTTPChannel class is what it calls.
    protocol = MetricsChannel  # type: ignore[assignment]
    max_connections = 16
    idle_timeout = 10.0

    def __init__(self, registry: CollectorRegistry, verbose: bool = False, reactor: Any = None) -> None:
        root = _Root()
        root.putChild(b"metrics", MetricsPage(registry))
        Site.__init__(self, root, timeout=self.idle_timeout, reactor=reactor)
        self.verbose = verbose
        self.open = 0
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        if self.open >= self.max_connections:
            from sockapp.net.protocol import CLOSE_GRACE
            from sockapp.server.lifecycle import Refused

            self.refused += 1
            return Refused(self.reactor, CLOSE_GRACE)
        self.open += 1
        return Site.buildProtocol(self, addr)

    def channel_closed(self) -> None:
        self.open -= 1

    def log(self, request: Any) -> None:
        """With ``--verbose``, one line a request, its client's words escaped and cut."""
        if self.verbose:
            _access.info(
                "{peer} {method} {uri} {code} {length}",
                peer=describe_address(request.getClientAddress()),
                method=peer_text(request.method.decode("latin-1"), 16),
                uri=peer_text(request.uri.decode("latin-1"), 200),
                code=request.code,
                length=request.sentLength,
            )
