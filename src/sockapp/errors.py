"""Typed errors, after h11: a peer's violation is not our own misuse.

A ``RemoteProtocolError`` carries a stable ``code`` that goes on the wire in
the error frame (``{"error": {"code": ..., "message": ...}}``), so peers and
scripts can tell failures apart without parsing prose. The codes are part of
the protocol's public surface: the README lists them; never rename one.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Wire codes for a peer's protocol violations."""

    EMPTY_HEADER = "empty-header"
    HEADER_NOT_UTF8 = "header-not-utf8"
    HEADER_NOT_JSON = "header-not-json"
    HEADER_NOT_OBJECT = "header-not-object"
    HEADER_MISSING_KEY = "header-missing-key"
    HEADER_TOO_COMPLEX = "header-too-complex"
    BAD_HEADER_FIELD = "bad-header-field"
    BAD_CONTENT_LENGTH = "bad-content-length"
    CONTENT_TOO_LARGE = "content-too-large"
    UNKNOWN_ENCODING = "unknown-encoding"
    CONTENT_NOT_DECODABLE = "content-not-decodable"
    CONTENT_NOT_JSON = "content-not-json"
    REQUEST_NOT_OBJECT = "request-not-object"
    CONTENT_TOO_COMPLEX = "content-too-complex"
    BAD_REQUEST = "bad-request"
    FRAME_TIMEOUT = "frame-timeout"
    UNEXPECTED_RESPONSE = "unexpected-response"


class SockappError(Exception):
    """Base class of every error sockapp raises on purpose."""


class RemoteProtocolError(SockappError):
    """The peer sent something the protocol does not allow.

    The connection cannot be trusted past this point: the server answers
    with an error frame naming ``code`` and closes that connection.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.value!r}, {self.message!r})"


class LocalProtocolError(SockappError):
    """Our own code asked for something the protocol cannot express.

    For example a header longer than the 2-byte length prefix allows. This
    is a bug or a bad argument on our side, never the peer's fault.
    """


class BadEndpoint(SockappError, ValueError):
    """A client endpoint description that Twisted cannot parse."""


class ConnectionClosed(SockappError):
    """The peer closed the connection before a complete answer arrived."""


class TLSFailure(ConnectionClosed):
    """The TLS handshake failed, e.g. the server's certificate was refused."""


class ConnectTimeout(SockappError, TimeoutError):
    """No connection could be made within the connect timeout."""


class RequestTimeout(SockappError, TimeoutError):
    """No answer arrived within the request timeout."""


class ServerError(SockappError):
    """The server answered a request with an error frame.

    ``code`` is the wire code (see ``ErrorCode``) and ``message`` its text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
