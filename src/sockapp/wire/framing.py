"""The wire format as a sans-IO codec: bytes in, messages out, never a socket.

A frame is a 2-byte big-endian header length, a UTF-8 JSON header object
with ``byteorder``, ``content-type``, ``content-encoding`` and
``content-length``, then ``content-length`` bytes of content. A
``text/json`` content is JSON text in its declared ``content-encoding``.

``encode_frame`` turns header fields and content into bytes; ``FrameDecoder``
takes bytes as they arrive and hands out complete ``Message`` objects, or
``NEED_DATA``. Limits are checked as soon as the numbers are known, before
anything is buffered for them.
"""

from __future__ import annotations

import codecs
import functools
import json
import json.decoder
import json.encoder
import re
import sys
from collections.abc import Callable
from typing import Any, Final, Literal

from attrs import field, frozen, validators

from sockapp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sockapp.wire.text import peer_text

PREFIX_LENGTH: Final = 2
"""Bytes of the big-endian header length that starts every frame."""
MAX_HEADER_LENGTH: Final = 0xFFFF
"""The longest header the 2-byte prefix can announce, in bytes."""
DEFAULT_MAX_CONTENT_LENGTH: Final = 64 * 1024 * 1024
"""The default limit on any frame's ``content-length`` (``--max-content-length``): 64 MiB."""
# text/json content is parsed into Python objects, up to ~40 times its size in memory
# (README, "Limits"), so it has a limit of its own, far below the binary one.
DEFAULT_MAX_JSON_LENGTH: Final = 1024 * 1024
"""The default limit on a server's ``text/json`` content (``--max-json-length``): 1 MiB."""
REQUIRED_KEYS: Final = ("byteorder", "content-length", "content-type", "content-encoding")
"""The header keys every frame must have; a header without one is ``header-missing-key``."""
JSON_CONTENT_TYPE: Final = "text/json"
"""The ``content-type`` of JSON content: parsed into `Message.document`, answered as JSON."""
Side = Literal["server", "client"]
"""Whose limits a decoder applies: its errors say "this server's limit" or "this client's limit"."""
SIDES: Final = ("server", "client")
"""The values of `Side`, for checking one at run time."""


class _NeedData:
    """Sentinel type: the decoder needs more bytes before the next message."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __bool__(self) -> bool:
        return False


NEED_DATA: Final = _NeedData()
"""What `FrameDecoder.next_message` returns while no complete message is buffered.

It is false, so ``while message := decoder.next_message():`` reads every
complete message and stops."""


def _non_negative_int(instance: object, attribute: Any, value: int) -> None:
    if type(value) is not int or value < 0:
        raise LocalProtocolError(f"{attribute.name} must be a non-negative int, not {value!r}")


@frozen
class Header:
    """The JSON header of a frame, with the four fields the format requires.

    :ivar content_type: ``content-type``: `JSON_CONTENT_TYPE` for JSON, anything
        else for content handed over as bytes.
    :ivar content_encoding: ``content-encoding``: the text encoding of ``text/json``
        content (``utf-8`` usually); for other content, whatever the sender says.
    :ivar content_length: ``content-length``: how many bytes of content follow.
    :ivar byteorder: ``byteorder``: the sender's, as the tutorial sends it; not
        used (the length prefix is always big-endian).
    """

    content_type: str = field(validator=validators.instance_of(str))
    content_encoding: str = field(validator=validators.instance_of(str))
    content_length: int = field(validator=_non_negative_int)
    byteorder: str = field(default=sys.byteorder, validator=validators.instance_of(str))

    def to_json_bytes(self) -> bytes:
        """The header as the tutorial writes it: same key order, UTF-8, no ASCII escaping."""
        prefix = _header_prefix(self.content_type, self.content_encoding, self.byteorder)
        return prefix + str(self.content_length).encode("ascii") + b"}"

    def as_dict(self) -> dict[str, object]:
        """The header's fields under their wire names, in wire order."""
        return {
            "byteorder": self.byteorder,
            "content-type": self.content_type,
            "content-encoding": self.content_encoding,
            "content-length": self.content_length,
        }


@frozen
class Message:
    """One complete frame: its header, its raw content, and for ``text/json``
    content the parsed JSON ``document`` (``None`` for any other type, or
    when the content could not be parsed: then ``error`` says why).

    :ivar header: the frame's header.
    :ivar content: the frame's content, exactly as received.
    :ivar document: the parsed JSON of ``text/json`` content; ``None`` otherwise.
    :ivar error: for a sound frame whose ``text/json`` content could not be
        read (unknown encoding, not decodable, not JSON, too complex), the
        fault, for the server to answer in-band; ``None`` otherwise.
    """

    header: Header
    content: bytes = field(validator=validators.instance_of(bytes))
    document: Any = field(default=None, eq=False)
    # A sound frame whose text/json content could not be read (unknown encoding, not
    # decodable, not JSON, too complex): the fault, for the server to answer in-band.
    error: RemoteProtocolError | None = field(default=None, eq=False)

    @property
    def is_json(self) -> bool:
        """Whether the content is ``text/json`` (and so `document` is its JSON)."""
        return self.header.content_type == JSON_CONTENT_TYPE


@functools.lru_cache(maxsize=256)
def _header_prefix(content_type: str, content_encoding: str, byteorder: str) -> bytes:
    """A header's bytes up to its length value, exactly as ``json.dumps`` of the
    tutorial's header dict writes them; computed once per set of fields."""
    for name, value in (
        ("content_type", content_type),
        ("content_encoding", content_encoding),
        ("byteorder", byteorder),
    ):
        if type(value) is not str:
            raise LocalProtocolError(f"{name} must be a str, not {type(value).__name__}")
    dumps = functools.partial(json.dumps, ensure_ascii=False)
    return (
        f'{{"byteorder": {dumps(byteorder)}, "content-type": {dumps(content_type)}, '
        f'"content-encoding": {dumps(content_encoding)}, "content-length": '
    ).encode()


def encode_frame(
    content: bytes,
    content_type: str,
    content_encoding: str,
    byteorder: str = sys.byteorder,
) -> bytes:
    """Frame ``content`` under a header built from the given fields."""
    if type(content) is not bytes and not isinstance(content, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"content must be bytes, not {type(content).__name__}")
    try:
        prefix = _header_prefix(content_type, content_encoding, byteorder)
    except TypeError:  # unhashable field: not a str
        raise LocalProtocolError("header fields must be strings") from None
    header = prefix + b"%d}" % len(content)
    if len(header) > MAX_HEADER_LENGTH:
        raise LocalProtocolError(f"header is {len(header)} bytes; the 2-byte prefix allows at most {MAX_HEADER_LENGTH}")
    return len(header).to_bytes(PREFIX_LENGTH, "big") + header + (content if type(content) is bytes else bytes(content))


# json.dumps builds a new encoder on every call with these arguments: built once here,
# encoding a small answer costs a third less.
# allow_nan=False: what is sent is JSON text (RFC 8259), never NaN or Infinity.
_dumps_unicode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
_dumps_ascii = json.JSONEncoder(allow_nan=False).encode
_quote = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept, exactly as json.dumps
_UTF8_JSON_PREFIX: Final = _header_prefix(JSON_CONTENT_TYPE, "utf-8", sys.byteorder)


def encode_json(document: object, content_encoding: str = "utf-8") -> bytes:
    """A ``text/json`` frame carrying ``document``, encoded as the tutorial does.

    A string holding a lone surrogate (valid JSON, ``"\\ud800"``, but not
    encodable as UTF-8) has it written as a JSON escape instead (in other
    encodings, every character they cannot encode). A JSON parser reads
    back the same document either way.
    """
    return _json_frame(_dumps_unicode(document), document, content_encoding)


def encode_result(value: object) -> bytes:
    """The UTF-8 ``text/json`` frame of ``{"result": value}``: ``encode_json`` of
    that document, byte for byte, built faster when ``value`` is a string (the
    tutorial's every answer)."""
    if type(value) is str:
        return _json_frame('{"result": ' + _quote(value) + "}", {"result": value}, "utf-8")
    document = {"result": value}
    return _json_frame(_dumps_unicode(document), document, "utf-8")


def _json_frame(text: str, document: object, content_encoding: str) -> bytes:
    """Frame ``text``, the JSON of ``document`` with non-ASCII kept, in ``content_encoding``."""
    try:
        content = text.encode(content_encoding)
    except UnicodeEncodeError:
        if codecs.lookup(content_encoding).name == "utf-8":
            # Only lone surrogates fail in UTF-8, and only inside strings (json.dumps writes
            # ASCII elsewhere), where their backslash escape (\ud800) is the JSON escape.
            content = text.encode(content_encoding, "backslashreplace")
        else:
            content = _dumps_ascii(document).encode(content_encoding)
    if content_encoding == "utf-8":  # the usual answer: its header's start is known
        header = _UTF8_JSON_PREFIX + b"%d}" % len(content)
        return len(header).to_bytes(PREFIX_LENGTH, "big") + header + content
    return encode_frame(content, JSON_CONTENT_TYPE, content_encoding)


# A header is one object of four strings and numbers (and whatever else a peer adds):
# more arrays and objects than this in it are a peer making the server work.
MAX_HEADER_CONTAINERS: Final = 16
"""At most this many ``[`` and ``{`` in a header, or it is ``header-too-complex``."""

_PARSED_HEADERS: dict[bytes, Header] = {}
_PARSED_HEADERS_LIMIT = 512
_CACHED_HEADER_LENGTH = 256  # a usual header is about 100 bytes; longer ones are parsed each time


def parse_header(
    raw: bytes, max_content_length: int, max_json_length: int | None = None, side: Side = "server"
) -> Header:
    """Validate a header's bytes; raise ``RemoteProtocolError`` naming the fault.

    Peers send the same header bytes again and again (same request shape,
    same length), so valid short headers are remembered: a few hundred of at
    most 256 bytes, so the cache holds well under 1 MiB whatever peers send.
    ``max_json_length`` (if given) limits ``text/json`` content, whose
    parsed form is many times its size. ``side`` is who applies the limits,
    named in the error: a server's words go to its peer in an error frame.
    """
    header = _PARSED_HEADERS.get(raw)
    if header is None:
        header = _parse_header(raw)
        if len(raw) <= _CACHED_HEADER_LENGTH:
            if len(_PARSED_HEADERS) >= _PARSED_HEADERS_LIMIT:
                _PARSED_HEADERS.clear()
            _PARSED_HEADERS[raw] = header
    if header.content_length > max_content_length:
        raise RemoteProtocolError(
            ErrorCode.CONTENT_TOO_LARGE,
            f"content-length {peer_text(header.content_length, 24)} is over this {side}'s limit of "
            f"{max_content_length} bytes",
        )
    if (
        max_json_length is not None
        and header.content_length > max_json_length
        and header.content_type == JSON_CONTENT_TYPE
    ):
        raise RemoteProtocolError(
            ErrorCode.CONTENT_TOO_LARGE,
            f"text/json content-length {peer_text(header.content_length, 24)} is over this {side}'s limit of "
            f"{max_json_length} bytes for JSON (--max-json-length)",
        )
    return header


def _parse_header(raw: bytes) -> Header:
    if raw.count(b"[") + raw.count(b"{") > MAX_HEADER_CONTAINERS:
        raise RemoteProtocolError(
            ErrorCode.HEADER_TOO_COMPLEX, f"a header may hold at most {MAX_HEADER_CONTAINERS} '[' and '{{'"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RemoteProtocolError(
            ErrorCode.HEADER_NOT_UTF8, f"header is not UTF-8: {e.reason} at byte {e.start}"
        ) from None
    try:
        fields = _loads(text)
    except (ValueError, RecursionError) as e:
        raise RemoteProtocolError(ErrorCode.HEADER_NOT_JSON, f"header is not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise RemoteProtocolError(
            ErrorCode.HEADER_NOT_OBJECT, f"header must be a JSON object, not {_json_type(fields)}"
        )
    for key in REQUIRED_KEYS:
        if key not in fields:
            raise RemoteProtocolError(ErrorCode.HEADER_MISSING_KEY, f"missing required header '{key}'")
    length = fields["content-length"]
    if type(length) is not int or length < 0:
        raise RemoteProtocolError(
            ErrorCode.BAD_CONTENT_LENGTH,
            f"content-length must be a non-negative integer, not {peer_text(json.dumps(length), 64)}",
        )
    for key in ("byteorder", "content-type", "content-encoding"):
        if not isinstance(fields[key], str):
            raise RemoteProtocolError(
                ErrorCode.BAD_HEADER_FIELD, f"header '{key}' must be a string, not {_json_type(fields[key])}"
            )
    # Every field was checked above: build the Header without running its validators again.
    header = _new_header(Header)
    _set_field(header, "content_type", fields["content-type"])
    _set_field(header, "content_encoding", fields["content-encoding"])
    _set_field(header, "content_length", length)
    _set_field(header, "byteorder", fields["byteorder"])
    return header


_new_header = object.__new__
_set_field = object.__setattr__


def _refuse_constant(name: str) -> Any:
    """``json``'s hook for NaN, Infinity and -Infinity, which Python reads and RFC 8259 does not."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent as a float; one beyond a double's range is
    refused (Python would read it as infinity, and answer with Infinity)."""
    value = float(text)
    if value - value != 0.0:  # inf - inf is nan
        raise ValueError(f"{peer_text(text, 32)} is beyond the range of a double")
    return value


# The stdlib's own scanner and whitespace pattern, which typeshed leaves undeclared; the pattern
# matches the empty string, so match() never returns None.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder(  # type: ignore[attr-defined]
    parse_float=_finite_float, parse_constant=_refuse_constant
).scan_once
_skip_space: Callable[[str, int], re.Match[str]] = json.decoder.WHITESPACE.match  # type: ignore[attr-defined]
_SPACE: Final = frozenset(" \t\n\r")


def _loads(text: str) -> Any:
    """``json.loads(text)`` (same results, same errors) with fewer calls per
    document: what ``JSONDecoder.decode`` does, inlined. Small documents parse
    twice as fast. Unlike ``json.loads``, numbers JSON has no value for (NaN,
    Infinity, 1e400) are errors."""
    end = _skip_space(text, 0).end() if text[:1] in _SPACE else 0
    try:
        document, end = _scan_json(text, end)
    except StopIteration:  # no value where one must start: json.loads says why, at once
        return json.loads(text)
    if end != len(text):
        end = _skip_space(text, end).end()
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return document


loads = _loads
"""A JSON text as Python values, as the wire reads it (``ValueError`` if it is not JSON): for the
command line, which takes what the wire would."""


# Text encodings a peer may declare for text/json content: every one decodes in
# linear time in C. Others (punycode and idna are quadratic in pure Python; the
# CJK codecs and utf-7 are stateful) are refused with unknown-encoding, and a
# declared name is never given to codecs.lookup, which remembers every name it
# has failed to find.
TEXT_ENCODINGS: Final = (
    "utf_8",
    "utf_8_sig",
    "utf_16",
    "utf_16_le",
    "utf_16_be",
    "utf_32",
    "utf_32_le",
    "utf_32_be",
    "ascii",
    "latin_1",  # then single-byte charmap codecs in wide use
    *(f"iso8859_{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)),
    *(f"cp{n}" for n in (437, 850, 852, 866, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)),
    "koi8_r",
    "koi8_u",
    "mac_roman",
)
"""The codecs ``text/json`` content may be declared in, under any of Python's names for them.

Others are ``unknown-encoding``."""
MAX_ENCODING_NAME: Final = 64
"""The longest ``content-encoding`` name that is looked up; a longer one is ``unknown-encoding``."""


def _encoding_names() -> dict[str, str]:
    """Every spelling Python accepts for an allowed encoding, normalized, mapped to its codec name."""
    from encodings.aliases import aliases

    names = {codec: codec for codec in TEXT_ENCODINGS}
    names.update({alias: codec for alias, codec in aliases.items() if codec in names})
    for codec in TEXT_ENCODINGS:  # each must exist in this Python
        codecs.lookup(codec)
    return names


_ENCODING_NAMES: Final = _encoding_names()


_ENCODING_NAME_CHARACTERS: Final = re.compile(r"[A-Za-z0-9._: -]+")


_KNOWN_SPELLINGS: dict[str, str] = {}  # exact declared names already found: the usual ones cost a lookup
_KNOWN_SPELLINGS_LIMIT: Final = 256


def _text_codec(encoding: str) -> str | None:
    """The codec for a declared text encoding, or None if it is not one sockapp accepts.

    Only names of ASCII letters, digits, ``.``, ``_``, ``:``, ``-`` and spaces
    are looked up, so a name that is accepted is also safe to quote."""
    codec = _KNOWN_SPELLINGS.get(encoding)
    if codec is not None:
        return codec
    if len(encoding) > MAX_ENCODING_NAME or not _ENCODING_NAME_CHARACTERS.fullmatch(encoding):
        return None
    # Python's own normalization (encodings.normalize_encoding), then its alias table.
    normalized = "_".join(encoding.replace("-", " ").replace("_", " ").replace(":", " ").split()).lower()
    codec = _ENCODING_NAMES.get(normalized) or _ENCODING_NAMES.get(normalized.replace(".", "_"))
    if codec is not None and len(_KNOWN_SPELLINGS) < _KNOWN_SPELLINGS_LIMIT:
        _KNOWN_SPELLINGS[encoding] = codec  # only accepted names, a bounded number: no peer can grow it
    return codec


# Parsing costs CPU per array or object (a deeply nested array of 2 bytes a level,
# the worst, costs 0.13 CPU-s per MiB). JSON with more than a few arrays and objects
# must average at least this many characters for each one opened, which keeps parsing
# any request under 0.1 CPU-s per MB, small ones pipelined included.
FREE_CONTAINERS: Final = 32  # counted anywhere, inside strings too: counting is what must be cheap
"""``text/json`` content with at most this many ``[`` and ``{`` is never ``content-too-complex``."""
CHARACTERS_PER_CONTAINER: Final = 6
"""Past `FREE_CONTAINERS`, content must have at least this many characters per ``[`` or ``{``."""


def parse_json_content(content: bytes, encoding: str, limit_complexity: bool = True) -> Any:
    """Decode ``text/json`` content with its declared encoding and parse it.

    ``limit_complexity``: refuse large content dense with arrays and objects
    (``content-too-complex``), as a server does; a client trusts its server."""
    codec = _text_codec(encoding)
    if codec is None:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_ENCODING,
            f"content-encoding '{peer_text(encoding, 64)}' is not one this server accepts "
            "(UTF-8, -16 or -32, ASCII, Latin-1 or a single-byte charmap such as cp1252)",
        )
    try:
        text = content.decode(codec)
    except UnicodeDecodeError as e:
        raise RemoteProtocolError(
            ErrorCode.CONTENT_NOT_DECODABLE, f"content is not valid {codec}: {e.reason} at byte {e.start}"
        ) from None
    except (ValueError, TypeError) as e:  # UnicodeError of odd codecs is a ValueError
        raise RemoteProtocolError(
            ErrorCode.CONTENT_NOT_DECODABLE, f"content is not valid {codec}: {peer_text(e, 100)}"
        ) from None
    # 64 characters hold at most 32 nested arrays, some 10 us to parse: not worth counting.
    if limit_complexity and len(text) > 2 * FREE_CONTAINERS:
        containers = text.count("[") + text.count("{")
        if containers > FREE_CONTAINERS and containers * CHARACTERS_PER_CONTAINER > len(text):
            raise RemoteProtocolError(
                ErrorCode.CONTENT_TOO_COMPLEX,
                f"{containers} '[' and '{{' in {len(text)} characters: JSON with more than {FREE_CONTAINERS} "
                f"may have at most one in {CHARACTERS_PER_CONTAINER} characters",
            )
    try:
        return _loads(text)
    except (ValueError, RecursionError) as e:
        raise RemoteProtocolError(ErrorCode.CONTENT_NOT_JSON, f"content is not JSON: {e}") from None


def _json_type(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


class FrameDecoder:
    """Incremental decoder: ``receive_data`` bytes, then ``next_message`` until
    it returns ``NEED_DATA``.

    Buffer work is linear in the bytes received. Header bytes go into one
    ``bytearray`` whose consumed prefix is dropped in place (CPython moves the
    start, copying only when half of it is dead). Content that is not
    complete on arrival is kept as the list of received chunks and joined
    once, so a 64 MiB frame in 64 KiB pieces is copied once, not per piece.

    A broken frame (its header, or its content-length) raises
    ``RemoteProtocolError``; the stream cannot be resynchronised after it, so
    the decoder keeps raising it and ignores further data. A sound frame
    whose ``text/json`` content cannot be read is handed out with the fault
    in ``Message.error``: the frames after it are unaffected.

    ``max_json_length`` (a server's) limits ``text/json`` content below
    ``max_content_length`` and refuses large JSON dense with arrays and
    objects (``content-too-complex``); without it (a client's) neither applies.
    ``side`` names whose limits they are in the errors ("over this client's
    limit"); it does not change what is accepted.

    :ivar max_content_length: the largest ``content-length`` accepted.
    :ivar max_json_length: the largest ``text/json`` ``content-length``
        accepted, or ``None`` (a client's) for no limit below ``max_content_length``.
    :ivar side: `Side` whose limits these are, for the errors' words.
    """

    def __init__(
        self,
        max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
        max_json_length: int | None = None,
        side: Side = "server",
    ) -> None:
        for name, value in (("max_content_length", max_content_length), ("max_json_length", max_json_length)):
            if value is not None and (type(value) is not int or value < 0):
                raise LocalProtocolError(f"{name} must be a non-negative int, not {value!r}")
        if side not in SIDES:
            raise LocalProtocolError(f"side must be 'server' or 'client', not {side!r}")
        self.max_content_length = max_content_length
        self.max_json_length = max_json_length
        self.side = side
        self._buffer = bytearray()
        self._header: Header | None = None
        self._chunks: list[bytes] | None = None
        self._chunks_length = 0
        self._error: tuple[ErrorCode, str] | None = None  # the fault, not the exception (see next_message)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as part of a message."""
        return len(self._buffer) + self._chunks_length

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._header is not None or self.buffered > 0

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; call ``next_message`` to collect messages."""
        if self._error is not None:
            return
        if self._chunks is not None:
            chunk = bytes(data)
            self._chunks.append(chunk)
            self._chunks_length += len(chunk)
        else:
            self._buffer += data

    def next_message(self) -> Message | _NeedData:
        """The next complete message, or ``NEED_DATA``; raises on a broken frame."""
        if self._error is not None:
            raise RemoteProtocolError(*self._error)
        try:
            return self._next_message()
        except RemoteProtocolError as e:
            # Not the exception itself: its traceback holds this decoder (and the protocol and
            # the content) in a reference cycle that only the cycle collector would free.
            self._error = (e.code, e.message)
            self._buffer = bytearray()
            self._chunks = None
            self._chunks_length = 0
            raise

    def _next_message(self) -> Message | _NeedData:
        header = self._header
        if header is None:
            buffer = self._buffer
            if len(buffer) < PREFIX_LENGTH:
                return NEED_DATA
            header_length = (buffer[0] << 8) | buffer[1]
            if header_length == 0:
                raise RemoteProtocolError(ErrorCode.EMPTY_HEADER, "header length is 0; a header is required")
            end = PREFIX_LENGTH + header_length
            if len(buffer) < end:
                return NEED_DATA
            header = parse_header(
                bytes(buffer[PREFIX_LENGTH:end]), self.max_content_length, self.max_json_length, self.side
            )
            del buffer[:end]
            self._header = header
        content = self._take(header.content_length)
        if content is None:
            return NEED_DATA
        self._header = None
        if header.content_type != JSON_CONTENT_TYPE:
            return Message(header=header, content=content)
        try:
            document = parse_json_content(content, header.content_encoding, self.max_json_length is not None)
        except RemoteProtocolError as e:
            # The frame itself is sound, so the stream goes on; a fresh exception, not the
            # raised one, whose traceback would hold this decoder.
            return Message(header=header, content=content, error=RemoteProtocolError(e.code, e.message))
        # The decoder's own fields are known good: skip the validators, as _parse_header does.
        message = _new_header(Message)
        _set_field(message, "header", header)
        _set_field(message, "content", content)
        _set_field(message, "document", document)
        _set_field(message, "error", None)
        return message

    def _take(self, length: int) -> bytes | None:
        """Remove and return ``length`` bytes, or None (switching to chunk collection) if not there yet."""
        chunks = self._chunks
        if chunks is None:
            buffer = self._buffer
            if len(buffer) >= length:
                with memoryview(buffer) as view:
                    content = bytes(view[:length])
                del buffer[:length]
                return content
            self._chunks = [bytes(buffer)] if buffer else []
            self._chunks_length = len(buffer)
            self._buffer = bytearray()
            return None
        if self._chunks_length < length:
            return None
        last = chunks[-1]
        surplus = self._chunks_length - length
        if surplus:
            chunks[-1] = last[: len(last) - surplus]
            self._buffer = bytearray(last[len(last) - surplus :])
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = None
        self._chunks_length = 0
        return content
