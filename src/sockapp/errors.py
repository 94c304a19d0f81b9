"""Typed errors, after h11: a peer's violation is not our own misuse.

A ``RemoteProtocolError`` carries a stable ``code`` that goes on the wire in
the error frame (``{"error": {"code": ..., "message": ...}}``), so peers and
scripts can tell failures apart without parsing prose. The codes are part of
the protocol's public surface: the README lists them; never rename one.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Wire codes for a peer's protocol violations.

    Each is the ``code`` of a `RemoteProtocolError` and of the error frame
    answering it. A broken frame closes the connection (the stream cannot be
    resynchronised); a sound frame with unreadable content is answered and the
    connection serves on.
    """

    EMPTY_HEADER = "empty-header"
    """A header length of 0. Closes the connection."""
    HEADER_NOT_UTF8 = "header-not-utf8"
    """Header bytes that are not UTF-8. Closes the connection."""
    HEADER_NOT_JSON = "header-not-json"
    """A header that is not JSON. Closes the connection."""
    HEADER_NOT_OBJECT = "header-not-object"
    """A header that is JSON but not an object. Closes the connection."""
    HEADER_MISSING_KEY = "header-missing-key"
    """A header without one of the four required keys. Closes the connection."""
    HEADER_TOO_COMPLEX = "header-too-complex"
    """A header with more than 16 ``[`` and ``{`` in it. Closes the connection."""
    BAD_HEADER_FIELD = "bad-header-field"
    """A ``byteorder``, ``content-type`` or ``content-encoding`` that is not a string. Closes the connection."""
    BAD_CONTENT_LENGTH = "bad-content-length"
    """A ``content-length`` that is not a non-negative integer. Closes the connection."""
    CONTENT_TOO_LARGE = "content-too-large"
    """A ``content-length`` over the receiver's limit, refused before the content is read. Closes the connection."""
    UNKNOWN_ENCODING = "unknown-encoding"
    """``text/json`` content in an encoding sockapp does not accept. Answered; the connection serves on."""
    CONTENT_NOT_DECODABLE = "content-not-decodable"
    """``text/json`` content that is not valid in its declared encoding. Answered; the connection serves on."""
    CONTENT_NOT_JSON = "content-not-json"
    """``text/json`` content that is not JSON. Answered; the connection serves on."""
    REQUEST_NOT_OBJECT = "request-not-object"
    """A ``text/json`` request that is JSON but not an object. Answered; the connection serves on."""
    CONTENT_TOO_COMPLEX = "content-too-complex"
    """Large ``text/json`` content dense with arrays and objects. Answered; the connection serves on."""
    BAD_REQUEST = "bad-request"
    """A request without a string ``action``, or a value the action cannot take. Answered; the connection serves on."""
    FRAME_TIMEOUT = "frame-timeout"
    """A frame begun and not finished within the frame timeout. Closes the connection."""
    UNEXPECTED_RESPONSE = "unexpected-response"
    """The client's own: a server sent an answer to no request, or a ``text/json`` answer without a result."""


class SockappError(Exception):
    """Base class of every error sockapp raises on purpose."""


class RemoteProtocolError(SockappError):
    """The peer sent something the protocol does not allow.

    The connection cannot be trusted past this point: the server answers
    with an error frame naming ``code`` and closes that connection.

    :ivar code: what was wrong, as it goes on the wire.
    :ivar message: the same for people, naming the offending value.
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

    :ivar code: the answer's wire code: one of `ErrorCode`, one of the
        server's own (``unknown-action``, ``internal-error``, ``timeout``...)
        or an app's `sockapp.app.ActionError` code.
    :ivar message: the answer's text, for people.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
