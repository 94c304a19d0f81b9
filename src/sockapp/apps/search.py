"""The tutorial's search, as the first application on ``sockapp.app``.

Wherever the tutorial's ``libserver.py`` answers a well-framed request,
``SearchApp`` answers with the same bytes: a search (hit or "No match", for
a value of any JSON scalar type), any other action ("Error: invalid
action ..."), and binary requests. Where the tutorial's server crashes (a
value that is an array or object, a request that is not an object), it
answers in-band with an error code instead.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Final

from attrs import field, frozen

from sockapp.app import ActionError, App, Reply
from sockapp.errors import ErrorCode
from sockapp.wire.framing import JSON_CONTENT_TYPE, Message, encode_json
from sockapp.wire.text import peer_text

TUTORIAL_ANSWERS: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        "morpheus": "Follow the white rabbit. \U0001f430",
        "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
        "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
    }
)

BINARY_RESPONSE_TYPE: Final = "binary/custom-server-binary-type"
BINARY_RESPONSE_ENCODING: Final = "binary"
BINARY_RESPONSE_PREFIX: Final = b"First 10 bytes of request: "
# Beyond the tutorial: a health check for load balancers ({"action": "ping"}), as every app has.
PONG: Final = encode_json({"result": "pong"})


class DataFileError(Exception):
    """A ``--data`` file could not be used; the message is one line for the user."""


def _read_only(answers: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(answers))


@frozen
class SearchIndex:
    """The search's data: a fixed query -> answer mapping."""

    answers: Mapping[str, str] = field(default=TUTORIAL_ANSWERS, converter=_read_only)
    _replies: Mapping[str, Reply] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # The answer of every stored query, encoded once: a hit costs a lookup.
        replies = {
            query: Reply(
                json.dumps({"result": answer}, ensure_ascii=False).encode("utf-8", "backslashreplace"),
                JSON_CONTENT_TYPE,
                "utf-8",
            )
            for query, answer in self.answers.items()
            if answer
        }
        object.__setattr__(self, "_replies", replies)  # a dict: the fastest lookup, and private

    def answer(self, query: Any) -> str:
        """The tutorial's answer text for ``query`` (an empty answer counts as no match)."""
        return self.answers.get(query) or f"No match for '{query}'."

    def search(self, query: Any) -> Reply | str:
        """A search's result: a stored answer, encoded once, or the tutorial's "No match"."""
        if type(query) is str:
            reply = self._replies.get(query)
            if reply is not None:
                return reply
        elif isinstance(query, (list, dict)):  # the tutorial's server crashes on these
            raise ActionError(
                ErrorCode.BAD_REQUEST.value, "a search value must be a string (or a number, boolean or null)"
            )
        return self.answer(query)

    def respond(self, message: Message) -> bytes:
        """The answer frame to one request, as the search app gives it."""
        answer = SearchApp(self).dispatch(message, _no_context)
        assert not hasattr(answer, "addCallback"), "the search app answers at once"
        return answer.frame  # type: ignore[union-attr]


def _no_context(message: Message) -> Any:
    raise AssertionError("the search app's handlers take no context")


class SearchApp(App):
    """The tutorial's search server as an ``App`` (``twistd sockapp`` without ``--app``)."""

    def __init__(self, index: SearchIndex | None = None) -> None:
        super().__init__("search")
        self.index = index if index is not None else SearchIndex()
        # The index's own method, not a wrapper: one call less for every search.
        self.action("search", description="Look VALUE up: its answer, or \"No match for 'VALUE'.\".")(self.index.search)
        self.binary(self._binary_request)

    @staticmethod
    def _binary_request(content: bytes) -> Reply:
        """Any content type but text/json: answered with the first 10 bytes of the content."""
        return Reply(BINARY_RESPONSE_PREFIX + content[:10], BINARY_RESPONSE_TYPE, BINARY_RESPONSE_ENCODING)

    def unknown_action(self, request: dict[str, Any]) -> str:
        """As the tutorial: any other action, or none, is answered in the result."""
        return f"Error: invalid action '{request.get('action')}'."


class _DuplicateQuery(ValueError):
    def __init__(self, query: str) -> None:
        super().__init__(query)
        self.query = query


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads``' object hook: a repeated key is an error, not "the last one wins"."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateQuery(key)
            seen.add(key)
    return document


PATH_LIMIT: Final = 4096  # Linux's PATH_MAX


def _quoted(query: str) -> str:
    """``query`` for a one-line message: ``repr`` escapes what is not printable (a lone surrogate
    too), ``peer_text`` caps the length."""
    return peer_text(repr(query))


def load_answers(path: str) -> Mapping[str, str]:
    """Read a JSON object of query -> answer strings from ``path``.

    A lone surrogate (``"\\ud800"``: valid JSON, not encodable as UTF-8) is
    accepted in a query or an answer: answers carry it as the JSON escape,
    which a client reads back as the same string. A query given twice is
    refused (JSON leaves duplicates undefined; Python would keep the last).
    Raises ``DataFileError`` with a one-line reason on any problem.
    """
    shown = peer_text(path, limit=PATH_LIMIT)  # a path not in UTF-8 holds lone surrogates too
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataFileError(f"cannot read data file {shown}: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except UnicodeDecodeError as e:
        raise DataFileError(f"data file {shown} is not UTF-8: {e.reason} at byte {e.start}") from None
    except _DuplicateQuery as e:
        raise DataFileError(f"data file {shown}: duplicate query {_quoted(e.query)}") from None
    except (ValueError, RecursionError) as e:
        raise DataFileError(f"data file {shown} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataFileError(f"data file {shown} must hold a JSON object of query -> answer")
    for query, answer in data.items():
        if not isinstance(answer, str):
            raise DataFileError(f"data file {shown}: the answer for {_quoted(query)} must be a string")
    return types.MappingProxyType(data)
