"""``twistd sockapp``: the server of an ``App`` (``--app``), by default the tutorial's search."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from sockapp.app import App
from sockapp.apps.search import DataFileError, SearchApp, SearchIndex, load_answers
from sockapp.server import DEFAULT_ACTION_TIMEOUT, DEFAULT_MAX_PENDING, AppFactory, SearchFactory
from sockapp.server.lifecycle import DEFAULT_FRAME_TIMEOUT
from sockapp.tap._listen import ListenOptions, limits, listen_service, non_negative_int, non_negative_seconds
from sockapp.wire.framing import DEFAULT_MAX_CONTENT_LENGTH, DEFAULT_MAX_JSON_LENGTH


class Options(ListenOptions):
    tapname = "sockapp"
    synopsis = "[--port PORT] [--app MODULE:NAME | --data FILE] [--max-content-length BYTES] [--verbose] [limits]"
    longdesc = (
        "Serve an application of framed JSON actions (--app), by default the socket "
        "tutorial's search: framed JSON search requests and binary requests, answered "
        "byte for byte as the tutorial's server does, with connections kept open for "
        "further (pipelined) requests."
    )
    optParameters = [
        [
            "app",
            "a",
            None,
            "Serve this application instead of the tutorial's search: MODULE:NAME, where NAME in MODULE "
            "(importable from the working directory or installed) is a sockapp.app.App or a callable returning one.",
        ],
        ["data", "d", None, "The search app's answers: a JSON file with an object of query -> answer."],
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
        [
            "max-pending",
            None,
            DEFAULT_MAX_PENDING,
            "Stop reading from a connection while it has this many requests unanswered.",
            non_negative_int,
        ],
        [
            "action-timeout",
            None,
            DEFAULT_ACTION_TIMEOUT,
            "Answer 'timeout' (and cancel the handler) for a request not answered within this many seconds; "
            "0 never does.",
            non_negative_seconds,
        ],
    ]

    def opt_app_option(self, setting: str) -> None:
        """NAME=VALUE for the --app callable: called as NAME(NAME=VALUE, ...). Repeatable."""
        name, sep, _ = setting.partition("=")
        if not sep or not name.isidentifier():
            raise usage.UsageError(f"--app-option {setting}: expected NAME=VALUE, e.g. database=kv.sqlite3")
        self.opts.setdefault("app-option", []).append(setting)

    def postOptions(self) -> None:
        super().postOptions()
        if self["max-pending"] < 1:
            raise usage.UsageError("--max-pending must be at least 1")
        if self["app"] is not None:
            if self["data"]:
                raise usage.UsageError("--data is for the search app; an --app keeps its own data")
            settings = dict(setting.split("=", 1) for setting in self.opts.get("app-option", []))
            self["application"] = load_app(self["app"], settings)
            return
        if self.opts.get("app-option"):
            raise usage.UsageError("--app-option is for an --app callable")
        try:
            answers = load_answers(self["data"]) if self["data"] else None
        except DataFileError as e:
            raise usage.UsageError(str(e)) from None
        self["index"] = SearchIndex(answers) if answers is not None else SearchIndex()
        self["application"] = SearchApp(self["index"])


def load_app(spec: str, settings: dict[str, str] | None = None) -> App:
    """The ``App`` that ``MODULE:NAME`` names (called with ``settings`` as keywords if
    it is a callable), or a one-line ``UsageError`` saying why not."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise usage.UsageError(f"--app {spec}: expected MODULE:NAME, e.g. myservice:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the working directory's modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise usage.UsageError(f"--app {spec}: cannot import {module_name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed to run: say how, in one line
        raise usage.UsageError(f"--app {spec}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    try:
        found = getattr(module, name)
    except AttributeError:
        raise usage.UsageError(f"--app {spec}: {module_name} has no {name}") from None
    if isinstance(found, App) and settings:
        raise usage.UsageError(f"--app {spec}: {name} is an App, not a callable, so it takes no --app-option")
    if not isinstance(found, App) and callable(found):
        try:
            found = found(**(settings or {}))
        except TypeError as e:
            raise usage.UsageError(f"--app {spec}: {name}() does not take these --app-option settings: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise usage.UsageError(f"--app {spec}: calling {name}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(found, App):
        raise usage.UsageError(f"--app {spec}: {name} is not a sockapp.app.App (nor a callable returning one)")
    return found


def makeService(options: Options, reactor: Any = None) -> IService:
    # The default is SearchFactory (an AppFactory of the search app): its name in the logs, as ever.
    factory_class = SearchFactory if options["app"] is None else AppFactory
    factory = factory_class(
        options["application"],
        max_content_length=options["max-content-length"],
        max_json_length=options["max-json-length"],
        frame_timeout=options["frame-timeout"] or None,
        max_pending=options["max-pending"],
        action_timeout=options["action-timeout"] or None,
        reactor=reactor,
        **limits(options),
    )
    return listen_service(options, factory, reactor)
