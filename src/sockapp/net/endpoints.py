"""Endpoint strings as sockapp reads them: Twisted's syntax and endpoints, with
sockapp's own checks on the TLS and PROXY-protocol ones.

- ``haproxy:...`` server ports check their PROXY headers (``sockapp.net.proxy``).
- ``ssl:...`` server ports check their files at start-up, one line per
  problem, and refuse TLS below 1.2 (``sockapp.net.tls.ssl_server_endpoint``).
- ``tls:...`` client endpoints take a ``trustRoots=`` bundle file or a
  directory with keys in it too, and say why a handshake was refused
  (``sockapp.net.tls.tls_client_endpoint``).

Everything else is Twisted's ``serverFromString`` / ``clientFromString``,
plugins (such as ``mtls:``) included.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint


def endpoint_arguments(description: str) -> tuple[list[str], dict[str, str]]:
    """The positional and keyword arguments of an endpoint string, as Twisted splits them:
    ``:`` separates, the first ``=`` of an argument makes it a keyword, ``\\`` escapes.
    A ``\\`` that ends the string escapes nothing: ``ValueError`` (Twisted's parser
    raises ``RuntimeError`` there, a traceback from twistd)."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    parts = [""]  # the current argument: [value], or [name, value]

    def add() -> None:
        if len(parts) == 1:
            args.append(parts[0])
        else:
            kwargs[parts[0]] = parts[1]

    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("it ends with a lone \\ (write \\\\ for a backslash)")
            parts[-1] += escaped
        elif character == ":":
            add()
            parts = [""]
        elif character == "=" and len(parts) == 1:
            parts.append("")
        else:
            parts[-1] += character
    add()
    return args, kwargs


def _prefix(description: str) -> str:
    """The endpoint type, read as Twisted reads it (``s\\sl:`` is ``ssl:``), so no spelling
    of ``ssl:`` or ``tls:`` gets Twisted's unchecked endpoint; ``ValueError`` if unparsable."""
    args, _ = endpoint_arguments(description)
    return args[0].lower() if args else ""


def _after_prefix(description: str) -> str:
    """``description`` without its endpoint type and the ``:`` after it."""
    escaped = False
    for index, character in enumerate(description):
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            return description[index + 1 :]
    return ""


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The server endpoint ``description`` names; ``ValueError`` (one line) if it cannot be made."""
    from twisted.internet.endpoints import serverFromString

    from sockapp.net.proxy import CheckedProxyEndpoint

    prefix = _prefix(description)
    if prefix == "haproxy":
        return CheckedProxyEndpoint(server_endpoint(reactor, _after_prefix(description)))
    if prefix == "ssl":
        from sockapp.net.tls import ssl_server_endpoint

        args, kwargs = endpoint_arguments(description)
        return _called(ssl_server_endpoint, "ssl:", reactor, *args[1:], **kwargs)  # type: ignore[no-any-return]
    return serverFromString(reactor, description)  # type: ignore[no-any-return]


def client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """The client endpoint ``description`` names; ``ValueError`` (one line) if it cannot be made."""
    from twisted.internet.endpoints import clientFromString

    if _prefix(description) == "tls":
        from sockapp.net.tls import tls_client_endpoint

        args, kwargs = endpoint_arguments(description)
        return _called(tls_client_endpoint, "tls:", reactor, *args[1:], **kwargs)  # type: ignore[no-any-return]
    return clientFromString(reactor, description)  # type: ignore[no-any-return]


def _called(make: Any, scheme: str, reactor: Any, *args: str, **kwargs: str) -> Any:
    """``make(reactor, *args, **kwargs)``, a wrong number of arguments said as a ``ValueError``."""
    try:
        return make(reactor, *args, **kwargs)
    except TypeError as e:
        text = str(e).split("() ", 1)[-1]  # "ssl_server_endpoint() got an unexpected ..." -> "got an unexpected ..."
        raise ValueError(f"{scheme} {text}") from None
