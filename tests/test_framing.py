"""The sans-IO codec: encoder bytes, incremental decoding, validation, limits."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from conftest import binary_request, json_request, raw_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from sockapp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sockapp.wire.framing import (
    DEFAULT_MAX_CONTENT_LENGTH,
    NEED_DATA,
    FrameDecoder,
    Header,
    Message,
    encode_frame,
    encode_json,
    parse_header,
    parse_json_content,
)

HEADER = {"byteorder": "little", "content-type": "binary/x", "content-encoding": "binary", "content-length": 0}


def next_message(decoder: FrameDecoder) -> Message:
    """The next complete message, which the test expects to be there."""
    message = decoder.next_message()
    assert isinstance(message, Message)
    return message


def decode_all(data: bytes, *, pieces: int | None = None, max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH):
    """Feed ``data`` whole (pieces=None) or in pieces of that size; collect messages."""
    decoder = FrameDecoder(max_content_length)
    messages = []
    step = pieces or max(len(data), 1)
    for start in range(0, max(len(data), 1), step):
        decoder.receive_data(data[start : start + step])
        while isinstance(message := decoder.next_message(), Message):
            messages.append(message)
    return messages, decoder


def decode_error(data: bytes, *, pieces: int | None = None, **kwargs) -> tuple[RemoteProtocolError, list[Message]]:
    messages: list[Message] = []
    decoder = FrameDecoder(**kwargs)
    step = pieces or max(len(data), 1)
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        try:
            while isinstance(message := decoder.next_message(), Message):
                messages.append(message)
        except RemoteProtocolError as e:
            return e, messages
    raise AssertionError(f"no error; decoded {messages!r}")


# -- encoder -----------------------------------------------------------------


def test_encode_json_matches_the_tutorials_layout():
    frame = encode_json({"result": "Follow the white rabbit. \U0001f430"})
    content = '{"result": "Follow the white rabbit. \U0001f430"}'.encode()
    header = (
        f'{{"byteorder": "{sys.byteorder}", "content-type": "text/json", "content-encoding": "utf-8", '
        f'"content-length": {len(content)}}}'
    ).encode()
    assert frame == len(header).to_bytes(2, "big") + header + content


def test_encode_frame_keeps_binary_content_verbatim():
    content = bytes(range(256))
    frame = encode_frame(content, "binary/custom-server-binary-type", "binary")
    ((message,), _) = decode_all(frame)
    assert message.content == content
    assert message.header == Header("binary/custom-server-binary-type", "binary", 256, sys.byteorder)
    assert message.document is None


def test_encode_refuses_a_header_over_the_two_byte_limit():
    with pytest.raises(LocalProtocolError, match="at most 65535"):
        encode_frame(b"", "x" * 70000, "binary")


def test_encode_refuses_content_that_is_not_bytes():
    with pytest.raises(LocalProtocolError):
        encode_frame("text", "binary/x", "binary")  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [-1, 1.5, True, "3"])
def test_header_validates_content_length_at_construction(length):
    with pytest.raises(LocalProtocolError):
        Header("binary/x", "binary", length)


def test_header_is_frozen():
    header = Header("binary/x", "binary", 3)
    with pytest.raises(AttributeError):
        header.content_length = 4  # type: ignore[misc]


# -- decoder: good input -----------------------------------------------------

GOOD_STREAM = (
    json_request({"action": "search", "value": "morpheus"})
    + binary_request(b"binaryhello")
    + json_request({"action": "search", "value": "\U0001f436"})
    + binary_request(b"")
    + json_request({"action": "search", "value": "caf\u00e9"}, encoding="utf-16")
)


@pytest.mark.parametrize("pieces", [None, 1, 2, 7, 64])
def test_decoder_yields_every_frame_in_order_whole_or_in_pieces(pieces):
    messages, decoder = decode_all(GOOD_STREAM, pieces=pieces)
    assert [m.document for m in messages] == [
        {"action": "search", "value": "morpheus"},
        None,
        {"action": "search", "value": "\U0001f436"},
        None,
        {"action": "search", "value": "caf\u00e9"},
    ]
    assert [m.content for m in messages][1] == b"binaryhello"
    assert messages[3].content == b""
    assert messages[4].header.content_encoding == "utf-16"
    assert decoder.buffered == 0
    assert not decoder.in_frame


def test_decoder_needs_data_until_the_last_byte():
    frame = binary_request(b"abc")
    decoder = FrameDecoder()
    for byte in frame[:-1]:
        decoder.receive_data(bytes([byte]))
        assert decoder.next_message() is NEED_DATA
    decoder.receive_data(frame[-1:])
    message = decoder.next_message()
    assert isinstance(message, Message) and message.content == b"abc"
    assert decoder.next_message() is NEED_DATA


def test_decoder_ignores_extra_header_keys():
    header = dict(HEADER, **{"content-length": 2, "x-trace": "abc"})
    ((message,), _) = decode_all(raw_frame(header, b"hi"))
    assert message.content == b"hi"


def test_large_frame_in_64k_pieces_arrives_whole():
    content = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    frame = binary_request(content) + binary_request(b"next")
    messages, decoder = decode_all(frame, pieces=64 * 1024)
    assert [len(m.content) for m in messages] == [len(content), 4]
    assert messages[0].content == content
    assert decoder.buffered == 0


def test_decoder_holds_incomplete_content_as_received_chunks_not_one_growing_buffer():
    # The linear-time design: once a frame's content is incomplete, pieces are
    # kept as they arrived (no copy) and joined once when the frame completes.
    decoder = FrameDecoder()
    pieces = [bytes([i]) * 1000 for i in range(50)]
    decoder.receive_data(binary_request(b"".join(pieces))[: -50 * 1000])
    assert decoder.next_message() is NEED_DATA
    for piece in pieces[:-1]:
        decoder.receive_data(piece)
        assert decoder.next_message() is NEED_DATA
    assert decoder._chunks is not None and len(decoder._chunks) == len(pieces) - 1
    assert all(a is b for a, b in zip(decoder._chunks, pieces[:-1], strict=True))
    decoder.receive_data(pieces[-1])
    assert next_message(decoder).content == b"".join(pieces)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_split_of_a_valid_stream_decodes_to_the_same_messages(data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(GOOD_STREAM)), max_size=40)))
    decoder = FrameDecoder()
    messages = []
    previous = 0
    for cut in [*cuts, len(GOOD_STREAM)]:
        decoder.receive_data(GOOD_STREAM[previous:cut])
        previous = cut
        while isinstance(message := decoder.next_message(), Message):
            messages.append(message)
    expected, _ = decode_all(GOOD_STREAM)
    assert messages == expected
    assert [m.document for m in messages] == [m.document for m in expected]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300).map(lambda b: ("binary", b)),
            st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4).map(lambda d: ("json", d)),
        ),
        max_size=8,
    ),
    st.integers(1, 50),
)
def test_encoded_messages_round_trip_through_the_decoder(items, piece):
    stream = b"".join(
        encode_frame(value, "binary/x", "binary") if kind == "binary" else encode_json(value) for kind, value in items
    )
    messages, _ = decode_all(stream, pieces=piece)
    assert [m.document if m.is_json else m.content for m in messages] == [value for _, value in items]


# -- decoder: bad input ------------------------------------------------------


def header_frame(header: dict, content: bytes = b"") -> bytes:
    return raw_frame(header, content)


BAD_FRAMES = {
    "empty header": (b"\x00\x00", ErrorCode.EMPTY_HEADER),
    "header not utf-8": (raw_frame(None, header_bytes=b'{"a": "\xff"}'), ErrorCode.HEADER_NOT_UTF8),
    "header not json": (raw_frame(None, header_bytes=b"{nope"), ErrorCode.HEADER_NOT_JSON),
    "header deeply nested": (raw_frame(None, header_bytes=b"[" * 60000), ErrorCode.HEADER_TOO_COMPLEX),
    "header is a list": (raw_frame([1, 2]), ErrorCode.HEADER_NOT_OBJECT),
    "header is a string": (raw_frame("x"), ErrorCode.HEADER_NOT_OBJECT),
    **{
        f"missing {key}": (raw_frame({k: v for k, v in HEADER.items() if k != key}), ErrorCode.HEADER_MISSING_KEY)
        for key in HEADER
    },
    **{
        f"content-length {value!r}": (
            raw_frame(dict(HEADER, **{"content-length": value})),
            ErrorCode.BAD_CONTENT_LENGTH,
        )
        for value in (-1, 1.5, 2.0, "4", True, None, [1])
    },
    "content-type not a string": (raw_frame(dict(HEADER, **{"content-type": 5})), ErrorCode.BAD_HEADER_FIELD),
    "too large": (
        raw_frame(dict(HEADER, **{"content-length": DEFAULT_MAX_CONTENT_LENGTH + 1})),
        ErrorCode.CONTENT_TOO_LARGE,
    ),
}


@pytest.mark.parametrize("pieces", [None, 1])
@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frames_raise_typed_errors(name, pieces):
    data, code = BAD_FRAMES[name]
    error, messages = decode_error(data, pieces=pieces)
    assert error.code is code
    assert error.message
    assert messages == []


# A sound frame whose content cannot be read: handed out with the fault, and the frames after
# it are decoded as usual.
CONTENT_FAULTS = {
    "json content not utf-8": (
        raw_frame(
            dict(HEADER, **{"content-type": "text/json", "content-encoding": "utf-8", "content-length": 3}), b'"\xff"'
        ),
        ErrorCode.CONTENT_NOT_DECODABLE,
    ),
    "unknown encoding": (
        raw_frame(
            dict(HEADER, **{"content-type": "text/json", "content-encoding": "klingon", "content-length": 2}), b"{}"
        ),
        ErrorCode.UNKNOWN_ENCODING,
    ),
    "bytes-to-bytes codec": (
        raw_frame(
            dict(HEADER, **{"content-type": "text/json", "content-encoding": "base64", "content-length": 4}), b"e30="
        ),
        ErrorCode.UNKNOWN_ENCODING,
    ),
    "json content not json": (
        raw_frame(
            dict(HEADER, **{"content-type": "text/json", "content-encoding": "utf-8", "content-length": 5}), b"hello"
        ),
        ErrorCode.CONTENT_NOT_JSON,
    ),
}


@pytest.mark.parametrize("pieces", [None, 1])
@pytest.mark.parametrize("name", list(CONTENT_FAULTS))
def test_unreadable_content_is_a_message_with_its_fault_and_the_stream_goes_on(name, pieces):
    data, code = CONTENT_FAULTS[name]
    messages, decoder = decode_all(data + binary_request(b"next"), pieces=pieces)
    assert [m.error.code if m.error else None for m in messages] == [code, None]
    assert messages[0].error.message and messages[0].document is None
    assert messages[1].content == b"next"
    assert messages[0].error.__traceback__ is None  # holds nothing of the decoder


def test_good_frames_before_a_bad_one_are_delivered_first():
    data = binary_request(b"one") + binary_request(b"two") + b"\x00\x00"
    error, messages = decode_error(data)
    assert [m.content for m in messages] == [b"one", b"two"]
    assert error.code is ErrorCode.EMPTY_HEADER


def test_content_too_large_is_refused_before_any_content_arrives():
    header = dict(HEADER, **{"content-length": 1001})
    decoder = FrameDecoder(max_content_length=1000)
    decoder.receive_data(raw_frame(header))  # the header alone, no content
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code is ErrorCode.CONTENT_TOO_LARGE
    assert "1000" in caught.value.message


def test_content_at_the_limit_is_accepted():
    messages, _ = decode_all(binary_request(b"x" * 1000), max_content_length=1000)
    assert len(messages[0].content) == 1000


def test_a_broken_decoder_stays_broken_and_drops_input():
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    decoder.receive_data(binary_request(b"later"))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()
    assert decoder.buffered == 0


def test_decoder_rejects_a_bad_limit():
    with pytest.raises(LocalProtocolError):
        FrameDecoder(max_content_length=-1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 40))
def test_random_bytes_give_messages_or_a_typed_error_never_anything_else(data, piece):
    decoder = FrameDecoder(max_content_length=10_000)
    for start in range(0, len(data), piece):
        decoder.receive_data(data[start : start + piece])
        try:
            while isinstance(message := decoder.next_message(), Message):
                assert isinstance(message, Message)
        except RemoteProtocolError as e:
            assert isinstance(e.code, ErrorCode)
            return


def test_error_messages_quote_the_bad_value():
    error, _ = decode_error(raw_frame(dict(HEADER, **{"content-length": "4"})))
    assert json.dumps("4") in error.message


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=30), st.text(max_size=30), st.sampled_from(["little", "big", 'we"ird\\']), st.binary(max_size=50)
)
def test_encoded_header_is_exactly_json_dumps_of_the_tutorials_dict(content_type, content_encoding, byteorder, content):
    frame = encode_frame(content, content_type, content_encoding, byteorder)
    expected = json.dumps(
        {
            "byteorder": byteorder,
            "content-type": content_type,
            "content-encoding": content_encoding,
            "content-length": len(content),
        },
        ensure_ascii=False,
    ).encode("utf-8")
    assert frame == len(expected).to_bytes(2, "big") + expected + content


def test_repeated_headers_are_parsed_once_and_limits_still_apply():
    frame = binary_request(b"x" * 50)
    first, _ = decode_all(frame)
    second, _ = decode_all(frame)
    assert first[0].header is second[0].header  # the same immutable Header, from the cache
    error, _ = decode_error(frame, max_content_length=49)  # a remembered header is still held to the limit
    assert error.code is ErrorCode.CONTENT_TOO_LARGE


@pytest.mark.parametrize("field", ["content_type", "content_encoding", "byteorder"])
def test_encode_refuses_header_fields_that_are_not_strings(field):
    kwargs: dict[str, Any] = {"content_type": "binary/x", "content_encoding": "binary", "byteorder": "little", field: 5}
    with pytest.raises(LocalProtocolError):
        encode_frame(b"", **kwargs)
    kwargs[field] = ["unhashable"]
    with pytest.raises(LocalProtocolError):
        encode_frame(b"", **kwargs)


def test_the_parsed_header_cache_stays_bounded_however_many_distinct_headers_arrive():
    """Every distinct content type is a new header: a peer must not grow the cache without end."""
    from sockapp.wire import framing

    framing._PARSED_HEADERS.clear()
    for number in range(3 * framing._PARSED_HEADERS_LIMIT):
        header = {
            "byteorder": "little",
            "content-type": f"binary/kind-{number}",
            "content-encoding": "binary",
            "content-length": 0,
        }
        decoder = FrameDecoder()
        decoder.receive_data(raw_frame(header))
        assert next_message(decoder).header.content_type == f"binary/kind-{number}"
        assert len(framing._PARSED_HEADERS) <= framing._PARSED_HEADERS_LIMIT


# -- declared text encodings: an allowlist, never codecs.lookup -----------------


@pytest.mark.parametrize(
    "name", ["utf-8", "UTF8", "utf_16", "UTF-16-LE", "utf-32", "ascii", "latin-1", "cp1252", "koi8-r"]
)
def test_the_usual_text_encodings_are_accepted_under_their_usual_names(name):
    text = {"action": "search", "value": "r\u00e9ng" if name != "koi8-r" else "\u043a\u043e\u0442"}
    content = json.dumps(text, ensure_ascii=(name == "ascii")).encode(name)
    assert parse_json_content(content, name) == text


@pytest.mark.parametrize("name", ["punycode", "idna", "utf-7", "rot13", "base64", "hex", "shift_jis", "x" * 65])
def test_other_encodings_are_unknown(name):
    """punycode and idna decode in quadratic time; the others are not single-byte or not text."""
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_content(b"{}", name)
    assert caught.value.code is ErrorCode.UNKNOWN_ENCODING


def test_a_declared_encoding_name_never_reaches_codecs_lookup(monkeypatch):
    """Python remembers every name codecs.lookup failed to find: a peer naming new ones grows memory."""
    import codecs

    def refuse(name):
        raise AssertionError(f"codecs.lookup({name!r}) called with a peer's name")

    monkeypatch.setattr(codecs, "lookup", refuse)
    for number in range(100):
        with pytest.raises(RemoteProtocolError):
            parse_json_content(b"{}", f"no-such-encoding-{number}")
    assert parse_json_content(b"{}", "UTF-8") == {}


def test_an_unknown_encoding_error_quotes_the_name_escaped_and_cut():
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_content(b"{}", "\x1b[2K\r" + "x" * 60)
    assert "\\x1b[2K\\x0d" in caught.value.message and "\r" not in caught.value.message
    assert len(caught.value.message) < 300


# -- text/json has its own, smaller limit -----------------------------------------


def test_text_json_over_max_json_length_is_refused_at_the_header():
    decoder = FrameDecoder(max_content_length=1000, max_json_length=100)
    decoder.receive_data(json_request({"value": "x" * 200})[:130])  # the header and a little content
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code is ErrorCode.CONTENT_TOO_LARGE
    assert "--max-json-length" in caught.value.message


def test_binary_content_keeps_the_larger_limit():
    decoder = FrameDecoder(max_content_length=1000, max_json_length=100)
    decoder.receive_data(binary_request(b"x" * 1000))
    assert next_message(decoder).content == b"x" * 1000


def test_long_headers_are_not_cached():
    """A cached header holds its strings (4 bytes a character with one emoji): only short ones are kept."""
    from sockapp.wire import framing

    framing._PARSED_HEADERS.clear()
    long_type = "binary/" + "x" * 1000 + "\U0001f436"
    header = {"byteorder": "big", "content-type": long_type, "content-encoding": "binary", "content-length": 0}
    decoder = FrameDecoder()
    decoder.receive_data(raw_frame(header))
    assert next_message(decoder).header.content_type == long_type
    assert framing._PARSED_HEADERS == {}
    decoder.receive_data(binary_request(b""))
    decoder.next_message()
    assert len(framing._PARSED_HEADERS) == 1


def test_a_lone_surrogate_is_encoded_as_a_json_escape():
    frame = encode_json({"result": "No match for '\ud800' \U0001f436."})
    frame.decode("utf-8")  # valid UTF-8
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    assert next_message(decoder).document == {"result": "No match for '\ud800' \U0001f436."}


def test_json_dense_with_arrays_and_objects_is_too_complex():
    """Nested arrays at 2 bytes a level cost 0.13 CPU-s per MiB to parse: refused before parsing."""
    from sockapp.wire.framing import CHARACTERS_PER_CONTAINER, FREE_CONTAINERS

    for nested in (b"[" * 200 + b"]" * 200, b"[" + b",".join([b"[" * 200 + b"]" * 200] * 200) + b"]"):
        with pytest.raises(RemoteProtocolError) as caught:
            parse_json_content(nested, "utf-8")
        assert caught.value.code is ErrorCode.CONTENT_TOO_COMPLEX
        assert parse_json_content(nested, "utf-8", limit_complexity=False)  # a client's decoder parses it
    # A few arrays and objects are always allowed; many, if sparse enough.
    assert parse_json_content(b"{}", "utf-8") == {}
    few = b"[" * FREE_CONTAINERS + b"]" * FREE_CONTAINERS
    assert isinstance(parse_json_content(few, "utf-8"), list)
    pairs = b"[" + b",".join([b"[1,20]"] * 10_000) + b"]"
    assert pairs.count(b"[") * CHARACTERS_PER_CONTAINER <= len(pairs)
    assert len(parse_json_content(pairs, "utf-8")) == 10_000


def test_a_header_with_many_arrays_or_objects_is_refused():
    from sockapp.wire.framing import MAX_HEADER_CONTAINERS

    header = {"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": 0}
    decoder = FrameDecoder()
    decoder.receive_data(
        raw_frame({**header, "extra": [[[]]]}) + raw_frame({**header, "p": [[]] * MAX_HEADER_CONTAINERS})
    )
    assert next_message(decoder).content == b""
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code is ErrorCode.HEADER_TOO_COMPLEX


@pytest.mark.parametrize("name", ["\nutf-8\u2028\u0085", "utf\x7f8", "\ud800utf-8", "utf-8\x00"])
def test_an_allowed_name_wrapped_in_other_characters_is_unknown(name):
    """Only names of letters, digits, '.', '_', '-' and spaces are looked up, so no message quotes
    a name with control characters in it."""
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_content(b"\xff", name)
    assert caught.value.code is ErrorCode.UNKNOWN_ENCODING
    assert caught.value.message.isprintable()


def test_a_huge_content_length_is_quoted_cut():
    decoder = FrameDecoder(max_content_length=10)
    header = {"byteorder": "big", "content-type": "x", "content-encoding": "binary", "content-length": 10**4000}
    decoder.receive_data(raw_frame(header))
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code is ErrorCode.CONTENT_TOO_LARGE
    assert len(caught.value.message) < 200


def test_brackets_in_a_short_string_are_not_complex():
    assert parse_json_content(json.dumps({"action": "search", "value": "[x]" * 20}).encode(), "utf-8")["value"]


@pytest.mark.parametrize("name", ["ISO_8859-1:1987", "windows.1252", "us.ascii", "utf8.ucs2"])
def test_iana_and_dotted_spellings_python_accepts_are_accepted(name):
    import codecs

    assert parse_json_content(b'{"a": 1}', name) == {"a": 1}
    codecs.lookup(name)  # and Python accepts them too


def test_a_lone_surrogate_in_another_encoding_is_escaped_too():
    frame = encode_json({"result": "\ud800 \U0001f436"}, "latin-1")
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    assert next_message(decoder).document == {"result": "\ud800 \U0001f436"}


@pytest.mark.parametrize(
    "value",
    [
        "pong",
        "No match for 'caf\u00e9' \U0001f436.",
        "\ud800",
        'quote " back \\ slash \n\x00',
        7,
        None,
        [1, "\udfff"],
        {},
    ],
)
def test_encode_result_is_encode_json_of_a_result_byte_for_byte(value):
    from sockapp.wire.framing import encode_result

    assert encode_result(value) == encode_json({"result": value})


@pytest.mark.parametrize(
    "text",
    ["{}", " {} ", "\n[1, 2]\t", "", "  ", " x", '{"a": }', "[1] 2", "[1]  x", "\ufeff{}", "]", '"\\ud800"', "[1.5e3]"],
)
def test_json_content_parses_and_fails_exactly_as_json_loads(text):
    """The parser's shortcut past json.loads gives the same documents and the same messages."""
    try:
        expected = ("ok", json.loads(text))
    except ValueError as e:
        expected = ("error", f"content is not JSON: {e}")
    try:
        got = ("ok", parse_json_content(text.encode(), "utf-8"))
    except RemoteProtocolError as e:
        assert e.code is ErrorCode.CONTENT_NOT_JSON
        got = ("error", e.message)
    assert got == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("NaN", "NaN"),
        ('{"value": Infinity}', "Infinity"),
        ("[1, -Infinity]", "-Infinity"),
        ("1e400", "1e400"),
        ("[-1.5e309]", "-1.5e309"),
        ("[" + "9" * 400 + ".0]", "9999"),
    ],
)
def test_json_content_with_a_number_json_has_no_value_for_is_refused(text, named):
    """RFC 8259 has no NaN or Infinity, and a number beyond a double's range would be read as one;
    Python's json module accepts both, and would then answer with them."""
    with pytest.raises(RemoteProtocolError) as caught:
        parse_json_content(text.encode(), "utf-8")
    assert caught.value.code is ErrorCode.CONTENT_NOT_JSON
    assert named in caught.value.message and len(caught.value.message) < 200


def test_a_header_with_nan_is_not_json():
    with pytest.raises(RemoteProtocolError) as caught:
        parse_header(
            b'{"byteorder": "little", "content-type": "text/json", "content-encoding": "utf-8", '
            b'"content-length": 2, "x": NaN}',
            1 << 20,
        )
    assert caught.value.code is ErrorCode.HEADER_NOT_JSON


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, -float("inf")]])
def test_an_answer_or_request_carrying_a_non_finite_number_is_refused_locally(value):
    """What we send is JSON text: a NaN handed to the encoder is a local misuse, not a frame."""
    from sockapp.wire.framing import encode_result

    with pytest.raises(ValueError, match="JSON"):
        encode_result(value)
    with pytest.raises(ValueError, match="JSON"):
        encode_json({"action": "x", "value": value})
