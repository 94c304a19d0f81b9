"""``twistd sockapp``: the search server."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from sockapp.framing import DEFAULT_MAX_CONTENT_LENGTH, DEFAULT_MAX_JSON_LENGTH
from sockapp.lifecycle import DEFAULT_FRAME_TIMEOUT
from sockapp.search import DataFileError, SearchIndex, load_answers
from sockapp.server import SearchFactory
from sockapp.tap._listen import ListenOptions, limits, listen_service, non_negative_int, non_negative_seconds


class Options(ListenOptions):
    tapname = "sockapp"
    synopsis = "[--port PORT] [--data FILE] [--max-content-length BYTES] [--max-json-length BYTES] [--verbose] [limits]"
    longdesc = (
        "Serve the socket tutorial's search protocol: framed JSON search requests "
        "and binary requests, answered byte for byte as the tutorial's server does, "
        "with connections kept open for further (pipelined) requests."
    )
    optParameters = [
        ["data", "d", None, "JSON file with an object of query -> answer, replacing the built-in answers."],
        [
            "max-content-length",
            None,
            DEFAULT_MAX_CONTENT_LENGTH,
            "Largest request content accepted, in bytes; a larger content-length is refused "
            "as soon as its header arrives.",
            non_negative_int,
        ],
        [
            "max-json-length",
            None,
            DEFAULT_MAX_JSON_LENGTH,
            "Largest text/json request content accepted, in bytes (parsed JSON takes many times its size "
            "in memory); refused as soon as its header arrives.",
            non_negative_int,
        ],
        [
            "frame-timeout",
            None,
            DEFAULT_FRAME_TIMEOUT,
            "Close a connection that started a frame and did not finish it within this many seconds; 0 never does.",
            non_negative_seconds,
        ],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        try:
            answers = load_answers(self["data"]) if self["data"] else None
        except DataFileError as e:
            raise usage.UsageError(str(e)) from None
        self["index"] = SearchIndex(answers) if answers is not None else SearchIndex()


def makeService(options: Options, reactor: Any = None) -> IService:
    factory = SearchFactory(
        index=options["index"],
        max_content_length=options["max-content-length"],
        max_json_length=options["max-json-length"],
        frame_timeout=options["frame-timeout"] or None,
        reactor=reactor,
        **limits(options),
    )
    return listen_service(options, factory, reactor)
