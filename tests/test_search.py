"""Search answers and data files, with no I/O."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import split_frames

from sockapp.apps.search import TUTORIAL_ANSWERS, DataFileError, SearchIndex, load_answers
from sockapp.errors import ErrorCode
from sockapp.wire.framing import Header, Message


def json_message(document: object) -> Message:
    content = json.dumps(document).encode()
    return Message(Header("text/json", "utf-8", len(content)), content, document)


def binary_message(content: bytes, content_type: str = "binary/custom-client-binary-type") -> Message:
    return Message(Header(content_type, "binary", len(content)), content)


def answer_of(frame: bytes) -> tuple[dict, bytes]:
    ((header, content),) = split_frames(frame)
    return header, content


@pytest.mark.parametrize(
    "query, answer",
    [
        ("morpheus", "Follow the white rabbit. \U0001f430"),
        ("ring", "In the caves beneath the Misty Mountains. \U0001f48d"),
        ("\U0001f436", "\U0001f43e Playing ball! \U0001f3d0"),
        ("nobody", "No match for 'nobody'."),
        ("", "No match for ''."),
    ],
)
def test_search_answers(query, answer):
    header, content = answer_of(SearchIndex().respond(json_message({"action": "search", "value": query})))
    assert header == {
        "byteorder": sys.byteorder,
        "content-type": "text/json",
        "content-encoding": "utf-8",
        "content-length": len(content),
    }
    assert list(header) == ["byteorder", "content-type", "content-encoding", "content-length"]
    assert json.loads(content) == {"result": answer}
    assert content == json.dumps({"result": answer}, ensure_ascii=False).encode()


def test_unknown_action_is_answered_not_refused():
    _, content = answer_of(SearchIndex().respond(json_message({"action": "find", "value": "x"})))
    assert json.loads(content) == {"result": "Error: invalid action 'find'."}


@pytest.mark.parametrize("content_type", ["binary/custom-client-binary-type", "application/json", "TEXT/JSON"])
def test_anything_not_text_json_is_a_binary_request(content_type):
    header, content = answer_of(SearchIndex().respond(binary_message(b"binaryhello world", content_type)))
    assert header["content-type"] == "binary/custom-server-binary-type"
    assert header["content-encoding"] == "binary"
    assert content == b"First 10 bytes of request: binaryhell"


def test_empty_binary_request_is_answered():
    _, content = answer_of(SearchIndex().respond(binary_message(b"")))
    assert content == b"First 10 bytes of request: "


@pytest.mark.parametrize(
    "document, code",
    [
        ([1, 2], ErrorCode.REQUEST_NOT_OBJECT),
        ("search", ErrorCode.REQUEST_NOT_OBJECT),
        ({"action": "search", "value": ["x"]}, ErrorCode.BAD_REQUEST),
        ({"action": "search", "value": {"q": "x"}}, ErrorCode.BAD_REQUEST),
    ],
)
def test_requests_the_tutorials_server_crashes_on_get_an_error_answer(document, code):
    _, content = answer_of(SearchIndex().respond(json_message(document)))
    assert json.loads(content)["error"]["code"] == code


@pytest.mark.parametrize(
    "document, result",
    [
        ({}, "Error: invalid action 'None'."),
        ({"action": 5, "value": "x"}, "Error: invalid action '5'."),
        ({"action": [1, {"a": None}]}, "Error: invalid action '[1, {'a': None}]'."),
        ({"action": "search"}, "No match for 'None'."),
        ({"action": "search", "value": 7}, "No match for '7'."),
        ({"action": "search", "value": 1.5}, "No match for '1.5'."),
        ({"action": "search", "value": True}, "No match for 'True'."),
    ],
)
def test_requests_the_tutorials_server_answers_get_its_answer(document, result):
    """As libserver.py: the action and the value are formatted with Python's str()."""
    _, content = answer_of(SearchIndex().respond(json_message(document)))
    assert json.loads(content) == {"result": result}


def test_custom_answers_replace_the_tutorials():
    index = SearchIndex({"neo": "The One."})
    assert index.answer("neo") == "The One."
    assert index.answer("morpheus") == "No match for 'morpheus'."
    assert dict(SearchIndex().answers) == dict(TUTORIAL_ANSWERS)


def test_index_is_immutable():
    source = {"a": "b"}
    index = SearchIndex(source)
    source["a"] = "changed"
    assert index.answer("a") == "b"
    with pytest.raises(TypeError):
        index.answers["x"] = "y"  # type: ignore[index]


def test_load_answers(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"neo": "The One. \u2728"}), "utf-8")
    assert dict(load_answers(str(path))) == {"neo": "The One. \u2728"}


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "cannot read data file"),
        (b"{nope", "is not valid JSON"),
        (b"\xff\xfe", "is not UTF-8"),
        (b"[1, 2]", "must hold a JSON object"),
        (b'{"a": 1}', "must be a string"),
    ],
)
def test_load_answers_errors_are_one_line(tmp_path, content, fragment):
    path = tmp_path / "answers.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataFileError) as caught:
        load_answers(str(path))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_ping_is_answered_pong():
    header, content = answer_of(SearchIndex().respond(json_message({"action": "ping"})))
    assert header["content-type"] == "text/json" and json.loads(content) == {"result": "pong"}


@pytest.mark.parametrize(
    "content, shown",
    [
        (b'{"neo": "The One.", "neo": "Someone else."}', "'neo'"),
        (b'{"\\ud800": "a", "\\ud800": "b"}', "'\\ud800'"),
        (b'{"line\\nbreak\\u001b[2J": "a", "line\\nbreak\\u001b[2J": "b"}', "'line\\nbreak\\x1b[2J'"),
    ],
)
def test_duplicate_queries_are_refused_naming_the_query(tmp_path, content, shown):
    path = tmp_path / "answers.json"
    path.write_bytes(content)
    with pytest.raises(DataFileError) as caught:
        load_answers(str(path))
    message = str(caught.value)
    assert f"duplicate query {shown}" in message
    assert message.isprintable()  # one line, and printable whatever the query holds
    message.encode("utf-8")


def test_a_lone_surrogate_in_a_query_or_an_answer_is_served(tmp_path):
    """Valid JSON, so accepted; answers carry it as the JSON escape, which reads back the same."""
    path = tmp_path / "answers.json"
    path.write_bytes(b'{"\\ud800": "half a pair", "neo": "\\udc00 other half"}')
    index = SearchIndex(load_answers(str(path)))
    for query, answer in [("\ud800", "half a pair"), ("neo", "\udc00 other half")]:
        header, content = answer_of(index.respond(json_message({"action": "search", "value": query})))
        assert header["content-length"] == len(content)
        assert json.loads(content) == {"result": answer}
    _, content = answer_of(index.respond(json_message({"action": "search", "value": "\udfff"})))
    assert json.loads(content) == {"result": "No match for '\udfff'."}


def test_a_path_that_is_not_printable_is_escaped_in_errors(tmp_path):
    path = tmp_path / "clear\x1b[2J-\udcff.json"  # \udcff: the byte 0xff of a name not in UTF-8
    with pytest.raises(DataFileError) as caught:
        load_answers(str(path))
    message = str(caught.value)
    assert "clear\\x1b[2J-\\udcff.json" in message and message.isprintable()
