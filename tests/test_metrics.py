"""--metrics: counters of the servers over StringTransport, the /metrics page over HTTP, the options."""

from __future__ import annotations

from typing import cast

import pytest
import pytest_twisted
from conftest import binary_request, json_request, metric_samples, raw_frame
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import ILogObserver, LogEvent
from twisted.python import usage
from twisted.web.client import Agent, readBody

from sockapp.errors import ErrorCode
from sockapp.server import SearchFactory
from sockapp.server.echo import EchoFactory
from sockapp.server.lifecycle import Refused, ServerFactory
from sockapp.server.metrics import MetricsSite, ServerMetrics
from sockapp.tap import echo, search


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels}"
    return found


def open_connection(factory):
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def feed_bytewise(protocol, data: bytes) -> None:
    for i in range(len(data)):
        protocol.dataReceived(data[i : i + 1])


def test_every_series_exists_at_zero_from_the_start():
    metrics = ServerMetrics(process=False)
    SearchFactory(metrics=metrics, reactor=Clock())
    for action in ("search", "ping", "describe", "binary"):
        assert value(metrics, "sockapp_requests_total", action=action, outcome="ok") == 0
    for code in ("unknown-action", "bad-request", "request-not-object", "unknown-encoding", "content-not-json"):
        assert value(metrics, "sockapp_requests_total", action="other", outcome=code) == 0
    for code in ErrorCode:
        if code is not ErrorCode.UNEXPECTED_RESPONSE:  # a client's error, never in a server's frames
            assert value(metrics, "sockapp_error_frames_total", code=code.value) == 0
    assert value(metrics, "sockapp_connections_open") == 0
    assert value(metrics, "sockapp_request_duration_seconds_count") == 0


def test_requests_are_counted_by_action_and_outcome():
    metrics = ServerMetrics(process=False)
    protocol, transport = open_connection(SearchFactory(metrics=metrics, reactor=Clock()))
    stream = b"".join(
        [
            json_request({"action": "search", "value": "morpheus"}),
            json_request({"action": "search", "value": "ring"}),
            json_request({"action": "search", "value": "nobody"}),
            json_request({"action": "ping"}),
            json_request({"action": "dance", "value": "x"}),
            binary_request(b"0123456789abc"),
            json_request({"action": "search", "value": ["x"]}),
            json_request([1]),
        ]
    )
    feed_bytewise(protocol, stream)
    counts = {
        key: count
        for key in metrics.requests
        if (count := value(metrics, "sockapp_requests_total", action=key[0], outcome=key[1]))
    }
    assert counts == {
        ("search", "ok"): 3,
        ("ping", "ok"): 1,
        ("binary", "ok"): 1,
        ("other", "unknown-action"): 1,  # the tutorial's "Error: invalid action 'dance'."
        ("search", "bad-request"): 1,
        ("other", "request-not-object"): 1,
    }
    assert value(metrics, "sockapp_received_bytes_total") == len(stream)
    assert value(metrics, "sockapp_sent_bytes_total") == len(transport.value())
    assert value(metrics, "sockapp_request_duration_seconds_count") == 8
    assert value(metrics, "sockapp_request_duration_seconds_bucket", le="+Inf") == 8


def test_latency_buckets_are_cumulative_and_inclusive():
    metrics = ServerMetrics(process=False)
    metrics.latency(0.001)  # exactly on a bound: counted in that bucket (le means <=)
    metrics.latency(0.003, requests=2)  # two requests answered by one read
    metrics.latency(10.0)
    metrics.latency(0.5, requests=0)  # a read that answered nothing
    bucket = {
        le: value(metrics, "sockapp_request_duration_seconds_bucket", le=le)
        for le in ("0.0005", "0.001", "0.0025", "0.005", "2.5", "+Inf")
    }
    assert bucket == {"0.0005": 0, "0.001": 1, "0.0025": 1, "0.005": 3, "2.5": 3, "+Inf": 4}
    assert value(metrics, "sockapp_request_duration_seconds_count") == 4
    assert value(metrics, "sockapp_request_duration_seconds_sum") == pytest.approx(0.001 + 0.006 + 10.0)


def test_error_frames_are_counted_by_code_and_their_bytes_sent():
    metrics = ServerMetrics(process=False)
    factory = SearchFactory(metrics=metrics, reactor=Clock(), max_content_length=10)
    protocol, transport = open_connection(factory)
    header = {"byteorder": "little", "content-type": "binary", "content-encoding": "binary", "content-length": 11}
    protocol.dataReceived(raw_frame(header, b"x" * 11))
    assert value(metrics, "sockapp_error_frames_total", code="content-too-large") == 1
    assert value(metrics, "sockapp_sent_bytes_total") == len(transport.value()) > 0
    other, _ = open_connection(SearchFactory(metrics=metrics, reactor=Clock()))
    other.dataReceived(b"\x00\x00")
    assert value(metrics, "sockapp_error_frames_total", code="empty-header") == 1
    assert value(metrics, "sockapp_requests_total", action="search", outcome="ok") == 0


def test_connections_open_total_and_refused():
    metrics = ServerMetrics(process=False)
    factory = SearchFactory(metrics=metrics, reactor=Clock(), max_connections=2)
    first, _ = open_connection(factory)
    open_connection(factory)
    assert isinstance(factory.buildProtocol(None), Refused)  # the third is refused
    assert (value(metrics, "sockapp_connections_open"), value(metrics, "sockapp_connections_total")) == (2, 2)
    assert value(metrics, "sockapp_connections_refused_total") == 1
    first.connectionLost(None)
    first.connectionLost(None)  # told twice, counted once
    assert value(metrics, "sockapp_connections_open") == 1
    assert value(metrics, "sockapp_connections_total") == 2


def test_echo_counts_bytes_both_ways():
    metrics = ServerMetrics(process=False)
    protocol, transport = open_connection(EchoFactory(metrics=metrics, reactor=Clock()))
    feed_bytewise(protocol, b"hello, universe")
    assert value(metrics, "sockapp_received_bytes_total") == 15 == value(metrics, "sockapp_sent_bytes_total")
    assert transport.value() == b"hello, universe"
    assert value(metrics, "sockapp_connections_open") == 1


def test_without_metrics_nothing_is_counted_and_answers_are_the_same():
    with_metrics, t1 = open_connection(SearchFactory(metrics=ServerMetrics(process=False), reactor=Clock()))
    without, t2 = open_connection(SearchFactory(reactor=Clock()))
    request = json_request({"action": "search", "value": "ring"}) + binary_request(b"abc")
    with_metrics.dataReceived(request)
    without.dataReceived(request)
    assert t1.value() == t2.value()


def test_process_metrics_are_included_by_default():
    metrics = ServerMetrics()
    names = {family.name for family in metrics.registry.collect()}
    assert "process_resident_memory_bytes" in names or "process_cpu_seconds" in names  # Linux only
    assert "python_info" in names


@pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_metrics_page_over_http():
    metrics = ServerMetrics(process=False)
    factory = SearchFactory(metrics=metrics)
    protocol, _ = open_connection(factory)
    protocol.dataReceived(json_request({"action": "ping"}))
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(MetricsSite(metrics.registry))
    try:
        base = f"http://127.0.0.1:{port.getHost().port}".encode()
        response = await Agent(reactor).request(b"GET", base + b"/metrics").addTimeout(30, reactor)
        body = (await readBody(response)).decode()
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        samples = metric_samples(body)
        assert samples[("sockapp_requests_total", (("action", "ping"), ("outcome", "ok")))] == 1
        assert samples[("sockapp_connections_open", ())] == 1
        missing = await Agent(reactor).request(b"GET", base + b"/").addTimeout(30, reactor)
        await readBody(missing)
        assert missing.code == 404
    finally:
        await port.stopListening()
        protocol.connectionLost(None)


def parse(module, *argv):
    options = module.Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize("module", [search, echo])
def test_metrics_option_serves_the_factory_registry(module):
    memory = MemoryReactor()
    options = parse(module, "--port", "6000", "--metrics", "9100")
    assert options["metrics-endpoint"] == "tcp:9100:interface=127.0.0.1"
    service = module.makeService(options, memory)
    service.privilegedStartService()
    service.startService()
    servers = {port: factory for port, factory, _backlog, _interface in memory.tcpServers}
    assert set(servers) == {6000, 9100}
    assert isinstance(servers[9100], MetricsSite)
    assert isinstance(servers[6000], ServerFactory) and servers[6000].metrics is not None


def test_metrics_are_off_by_default():
    memory = MemoryReactor()
    service = search.makeService(parse(search, "--port", "6000"), memory)
    service.startService()
    ((_port, factory, _backlog, _interface),) = memory.tcpServers
    assert isinstance(factory, ServerFactory) and factory.metrics is None


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--metrics", "nonsense:1"], "--metrics nonsense:1: not a usable endpoint description"),
        (["--metrics", "9100", "--workers", "2"], "cannot be used with --workers"),
    ],
)
def test_bad_metrics_option_is_a_usage_error(argv, fragment):
    with pytest.raises(usage.UsageError, match=fragment):
        parse(search, *argv)


def test_the_readme_lists_every_metric():
    import re

    from conftest import ROOT

    readme = set(re.findall(r"`(sockapp_[a-z_]+)", (ROOT / "README.md").read_text("utf-8")))
    metrics = ServerMetrics(process=False)
    SearchFactory(metrics=metrics, reactor=Clock())
    exported = {
        sample.name
        for family in metrics.registry.collect()
        for sample in family.samples
        if not sample.name.endswith(("_created", "_bucket", "_count", "_sum"))
    }
    exported |= {family.name for family in metrics.registry.collect() if family.type == "histogram"}
    assert exported == readme


# -- the metrics endpoint is for a scraper, and bounded against anyone else ------------

from twisted.internet.address import IPv4Address  # noqa: E402

CLIENT = IPv4Address("TCP", "127.0.0.1", 50000)


def metrics_connection(site):
    channel = site.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    channel.makeConnection(transport)
    return channel, transport


def test_pipelined_gets_get_one_page_and_the_close():
    site = MetricsSite(ServerMetrics(process=False).registry, reactor=Clock())
    channel, transport = metrics_connection(site)
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 500)
    assert transport.value().count(b"HTTP/1.1 200") == 1
    assert b"connection: close" in transport.value().lower()
    assert transport.disconnecting


def test_a_request_body_is_refused_before_it_is_read():
    site = MetricsSite(ServerMetrics(process=False).registry, reactor=Clock())
    for head in (
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n",
        b"POST /anything HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    ):
        channel, transport = metrics_connection(site)
        channel.dataReceived(head + b"x" * 65536)
        assert transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:40]
        assert transport.disconnecting
        assert channel.requests[0].content is None or channel.requests[0].content.tell() == 0  # nothing stored


def test_only_get_of_metrics_is_served():
    site = MetricsSite(ServerMetrics(process=False).registry, reactor=Clock())
    for request, status in (
        (b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"GET /metrics/x HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    ):
        channel, transport = metrics_connection(site)
        channel.dataReceived(request)
        assert transport.value().split(b" ")[1] == status, request


def test_metrics_connections_are_limited_and_idle_ones_closed():
    clock = Clock()
    site = MetricsSite(ServerMetrics(process=False).registry, reactor=clock)
    held = [metrics_connection(site) for _ in range(site.max_connections)]
    extra, extra_transport = metrics_connection(site)
    assert extra_transport.disconnecting and site.refused == 1  # closed at once
    clock.advance(site.idle_timeout)
    assert all(transport.disconnecting for _, transport in held)  # idle: closed
    for channel, _ in held[:3]:
        channel.connectionLost(None)
    assert site.open == site.max_connections - 3
    again, again_transport = metrics_connection(site)
    assert not again_transport.disconnecting  # room again


def test_a_peer_trickling_a_request_loses_its_slot_after_the_idle_timeout_in_all():
    clock = Clock()
    site = MetricsSite(ServerMetrics(process=False).registry, reactor=clock)
    channel, transport = metrics_connection(site)
    for byte in b"GET /metrics HTTP/1.1\r\n":  # a byte every 8 s: the idle timer never fires
        channel.dataReceived(bytes([byte]))
        clock.advance(site.idle_timeout * 0.8 / len(b"GET /metrics HTTP/1.1\r\n"))
    clock.advance(site.idle_timeout * 0.2 + 0.01)
    assert transport.disconnected  # aborted: the connection's whole time is up


def test_head_is_answered_without_a_body_or_a_log_line():
    from twisted.logger import globalLogPublisher

    site = MetricsSite(ServerMetrics(process=False).registry, reactor=Clock())
    channel, transport = metrics_connection(site)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        channel.dataReceived(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
    assert events == []


def test_verbose_access_lines_are_escaped_and_cut():
    from twisted.logger import formatEvent, globalLogPublisher

    site = MetricsSite(ServerMetrics(process=False).registry, verbose=True, reactor=Clock())
    channel, transport = metrics_connection(site)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        channel.dataReceived(b"GET /metrics?" + b"x%1b" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    (line,) = [formatEvent(e) for e in events if e.get("log_namespace") == "sockapp.server.metrics.access"]
    assert len(line) < 400 and line.isprintable() and " GET /metrics?x%1b" in line


def test_an_apps_requests_are_labelled_with_its_action_names_and_error_codes():
    from sockapp.app import ActionError, App
    from sockapp.server import AppFactory

    app = App("labels")

    @app.action("add")
    def add(value):
        if value is None:
            raise ActionError("need-numbers", "give two numbers")
        return value["a"] + value["b"]

    metrics = ServerMetrics(process=False)
    protocol, _ = open_connection(AppFactory(app, metrics=metrics, reactor=Clock()))
    assert value(metrics, "sockapp_requests_total", action="add", outcome="ok") == 0  # there from the start
    feed_bytewise(
        protocol,
        json_request({"action": "add", "value": {"a": 1, "b": 2}})
        + json_request({"action": "add"})
        + json_request({"action": "add", "value": [1]})  # a TypeError in the handler
        + json_request({"action": "\u00e9t\u00e9"}),  # no such action: labelled other, never by the peer's word
    )
    assert value(metrics, "sockapp_requests_total", action="add", outcome="ok") == 1
    assert value(metrics, "sockapp_requests_total", action="add", outcome="need-numbers") == 1
    assert value(metrics, "sockapp_requests_total", action="add", outcome="internal-error") == 1
    assert value(metrics, "sockapp_requests_total", action="other", outcome="unknown-action") == 1
    assert {action for action, _ in metrics.requests} <= {"add", "ping", "describe", "other"}
