"""Options every sockapp server shares: where to listen, how much to log."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IProtocolFactory
from twisted.python import usage

from sockapp.net.endpoints import server_endpoint
from sockapp.server.lifecycle import DEFAULT_IDLE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT
from sockapp.server.listening import ListeningService

DEFAULT_PORT = "5634"


def endpoint_description(port: str) -> str:
    """A bare port number means TCP on 127.0.0.1, as in the tutorial;
    anything else is taken as a Twisted server endpoint description."""
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise usage.UsageError(f"--port {port}: a TCP port is at most 65535")
        return f"tcp:{number}:interface=127.0.0.1"
    return port


def non_negative_int(text: str) -> int:
    """usage.Options coercer for sizes and counts."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


non_negative_int.coerceDoc = "Must be a non-negative integer."  # type: ignore[attr-defined]


def non_negative_seconds(text: str) -> float:
    """usage.Options coercer for timeouts; 0 turns the timeout off."""
    value = float(text)
    if not value >= 0:
        raise ValueError(f"{text} is not 0 or more seconds")
    return value


non_negative_seconds.coerceDoc = "In seconds."  # type: ignore[attr-defined]


LOG_FORMATS = ("text", "json")


def log_format(text: str) -> str:
    """usage.Options coercer for --log-format."""
    if text not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text


log_format.coerceDoc = "One of: text, json."  # type: ignore[attr-defined]


class ListenOptions(usage.Options):
    """Where to listen and the limits every server shares, validated when parsed."""

    tapname: str  # the twistd subcommand: each server's options set it
    optParameters = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "Where to listen: a port number (TCP on 127.0.0.1) or a Twisted endpoint "
            "description, e.g. tcp:5634:interface=0.0.0.0, tcp6:5634:interface=\\:\\:1, "
            "unix:/tmp/sockapp.sock, ssl:5634:privateKey=key.pem:certKey=cert.pem.",
        ],
        [
            "max-connections",
            None,
            0,
            "Refuse connections beyond this many open at once (closed at once, logged); 0 means no limit.",
            non_negative_int,
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Close a connection after this many seconds without a byte from the peer; 0 never does.",
            non_negative_seconds,
        ],
        [
            "workers",
            None,
            1,
            "Serve the port from this many processes (tcp:, tcp6: or unix: ports); a worker that dies is "
            "started again. --max-connections then applies to each worker.",
            non_negative_int,
        ],
        ["listen-fd", None, None, "Used by --workers: adopt this inherited listening socket.", non_negative_int],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics (HTTP) on this endpoint: a port number (127.0.0.1) or an "
            "endpoint description, e.g. tcp:9100:interface=0.0.0.0. Off by default.",
        ],
        [
            "shutdown-timeout",
            None,
            DEFAULT_SHUTDOWN_TIMEOUT,
            "On SIGTERM/SIGINT, give open connections this long to finish before they are cut.",
            non_negative_seconds,
        ],
    ]
    optFlags = [["verbose", "v", "Log every connection and request, not only errors, refusals and timeouts."]]
    optParameters += [
        [
            "log-format",
            None,
            "text",
            "text: twistd's usual lines; json: one JSON object per event on standard output "
            "(for log shippers; run with -n).",
            log_format,
        ],
    ]

    _failed = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """After a bad command line, twistd prints this above the one-line
        error: a pointer to ``--help`` rather than the whole option list."""
        if self._failed:
            return f"Run 'twistd {self.tapname} --help' for every option."
        return super().getUsage(width)

    def postOptions(self) -> None:
        description = endpoint_description(self["port"])
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1 and description.split(":", 1)[0] not in ("tcp", "tcp6", "unix"):
            # A worker adopts the bare socket: a TLS port would be served in the clear.
            raise usage.UsageError(f"--workers needs a tcp:, tcp6: or unix: port, not {description}")
        self["endpoint"] = _checked_endpoint("--port", self["port"])
        self["metrics-endpoint"] = None
        if self["metrics"] is not None:
            if self["workers"] > 1:
                raise usage.UsageError("--metrics counts one process: it cannot be used with --workers")
            self["metrics-endpoint"] = _checked_endpoint("--metrics", self["metrics"])

    def worker_args(self) -> list[str]:
        """These options as a worker's command line: all but where and how many."""
        args: list[str] = []
        for option in self.longOpt:
            name = option.rstrip("=")
            # Workers log text; the parent passes their lines on in its own format.
            if name in ("port", "workers", "listen-fd", "log-format") or name not in self.opts:
                continue
            value = self.opts[name]
            if option.endswith("="):
                if isinstance(value, list):  # a repeatable option
                    args.extend(f"--{name}={item}" for item in value)
                elif value is not None:
                    args.append(f"--{name}={value}")
            elif value:
                args.append(f"--{name}")
        return args


def _checked_endpoint(option: str, value: str) -> str:
    """The server endpoint description ``value`` stands for, or a usage error naming ``option``."""
    description = endpoint_description(value)
    try:
        server_endpoint(_reactor(), description)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as e:
        raise usage.UsageError(f"{option} {value}: not a usable endpoint description ({e})") from None
    return description


def limits(options: ListenOptions) -> dict[str, Any]:
    """The ``ServerFactory`` keyword arguments the options ask for."""
    metrics = None
    if options["metrics-endpoint"] is not None:
        from sockapp.server.metrics import ServerMetrics  # only servers that export metrics load prometheus_client

        metrics = ServerMetrics()
    return {
        "idle_timeout": options["idle-timeout"] or None,
        "max_connections": options["max-connections"] or None,
        "verbose": options["verbose"],
        "metrics": metrics,
    }


def listen_service(options: ListenOptions, factory: IProtocolFactory, reactor: Any = None) -> IService:
    """The service ``options`` ask for: listen on ``options['endpoint']``, or run
    ``--workers`` processes on it, or (in a worker) serve an inherited socket;
    with ``--metrics`` also the metrics page, with ``--log-format json`` logging as JSON."""
    service = _serving(options, factory, reactor if reactor is not None else _reactor())
    if options["log-format"] != "json":
        return service
    from sockapp.server.logs import JSONLogging

    logging = JSONLogging()
    service.setServiceParent(logging)
    return logging


def _serving(options: ListenOptions, factory: IProtocolFactory, reactor: Any) -> IService:
    if options["listen-fd"] is not None:
        from sockapp.server.workers import AdoptedPortService

        return AdoptedPortService(reactor, options["listen-fd"], factory, options["shutdown-timeout"])
    if options["workers"] > 1:
        from sockapp.server.workers import WorkerPool

        return WorkerPool(
            reactor,
            options["endpoint"],
            options.tapname,
            options.worker_args(),
            options["workers"],
            options["shutdown-timeout"],
        )
    endpoint = server_endpoint(reactor, options["endpoint"])
    service = ListeningService(endpoint, factory, options["endpoint"], options["shutdown-timeout"])
    metrics = getattr(factory, "metrics", None)
    if options["metrics-endpoint"] is None or metrics is None:
        return service
    from sockapp.server.metrics import MetricsSite

    both = MultiService()
    service.setServiceParent(both)
    description = options["metrics-endpoint"]
    site = MetricsSite(metrics.registry, verbose=options["verbose"])
    ListeningService(server_endpoint(reactor, description), site, f"{description} (--metrics)").setServiceParent(both)
    return both


def _reactor() -> Any:
    """The global reactor: sockapp's (``sockapp.net.reactor``) unless one is installed already,
    by ``twistd --reactor`` or whoever runs these services."""
    from sockapp.net.reactor import install_unless_chosen

    install_unless_chosen()
    from twisted.internet import reactor

    return reactor
