"""The search application: its data and its answers, with no I/O.

``SearchIndex.respond`` maps a request ``Message`` to the response frame's
bytes exactly as the tutorial's ``libserver.py`` builds them, so a server
built on it is byte-for-byte the tutorial's server on the wire.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Final

from attrs import field, frozen

from sockapp.errors import ErrorCode, RemoteProtocolError
from sockapp.framing import Message, encode_frame, encode_json, encode_result
from sockapp.text import peer_text

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
# Beyond the tutorial: a health check for load balancers ({"action": "ping"}).
PONG: Final = encode_json({"result": "pong"})

# What an answered request was (SearchIndex.handle): an action and an outcome,
# from these fixed sets whatever the peer sent, so they can label metrics.
SEARCH: Final = "search"
PING: Final = "ping"
BINARY: Final = "binary"
OTHER: Final = "other"  # a text/json request whose action the server does not know
HIT: Final = "hit"
MISS: Final = "miss"
OK: Final = "ok"
INVALID_ACTION: Final = "invalid-action"
OUTCOMES: Final = ((SEARCH, HIT), (SEARCH, MISS), (PING, OK), (BINARY, OK), (OTHER, INVALID_ACTION))


class DataFileError(Exception):
    """A ``--data`` file could not be used; the message is one line for the user."""


def _read_only(answers: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(answers))


@frozen
class SearchIndex:
    """Answers search requests from a fixed query -> answer mapping."""

    answers: Mapping[str, str] = field(default=TUTORIAL_ANSWERS, converter=_read_only)
    _frames: Mapping[str, bytes] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # The answer frame of every stored query, encoded once: a hit costs a lookup.
        frames = {query: encode_json({"result": answer}) for query, answer in self.answers.items() if answer}
        object.__setattr__(self, "_frames", types.MappingProxyType(frames))

    def answer(self, query: str) -> str:
        """The tutorial's answer text for ``query`` (an empty answer counts as no match)."""
        return self.answers.get(query) or f"No match for '{query}'."

    def respond(self, message: Message) -> bytes:
        """The response frame for one request (see ``handle``)."""
        return self.handle(message)[0]

    def handle(self, message: Message) -> tuple[bytes, str, str]:
        """The response frame for one request, with its action and outcome (from ``OUTCOMES``).

        A ``text/json`` request must be an object with a string ``action``
        (and a string ``value`` for ``search``); anything else raises
        ``RemoteProtocolError``. ``ping`` is answered ``{"result": "pong"}``.
        Every other content type is a binary request, answered with the
        first 10 bytes of its content.
        """
        if not message.is_json:
            frame = encode_frame(
                BINARY_RESPONSE_PREFIX + message.content[:10], BINARY_RESPONSE_TYPE, BINARY_RESPONSE_ENCODING
            )
            return frame, BINARY, OK
        request = message.document
        if not isinstance(request, dict):
            raise RemoteProtocolError(ErrorCode.REQUEST_NOT_OBJECT, "a text/json request must be a JSON object")
        action = request.get("action")
        if not isinstance(action, str):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "request needs an 'action' that is a string")
        if action == "ping":
            return PONG, PING, OK
        if action != "search":
            return encode_result(f"Error: invalid action '{action}'."), OTHER, INVALID_ACTION
        query = request.get("value")
        if not isinstance(query, str):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "a search request needs a 'value' that is a string")
        stored = self._frames.get(query)
        if stored is not None:
            return stored, SEARCH, HIT
        return encode_result(self.answer(query)), SEARCH, MISS


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
