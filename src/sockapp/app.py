"""Your own service on sockapp: declare actions, and the server answers them.

::

    app = App("myservice")

    @app.action("add")
    def add(value):
        \"\"\"Add two numbers.\"\"\"
        return value["a"] + value["b"]

``twistd -n sockapp --app myservice:app`` serves it. A handler gets the
request's ``value`` (and a ``Context``, if it has a parameter named
``context``); it may return a result, a ``Deferred`` or be ``async def``.
A result is answered ``{"result": result}``; ``bytes`` or a ``Reply`` set
the answer's content exactly; ``ActionError`` is answered in-band as
``{"error": {"code", "message"}}`` and the connection serves on.

``App.dispatch`` is sans-IO: a request ``Message`` in, an answer frame out
(at once, or from a ``Deferred``). Order, timeouts and backpressure are the
connection's (``sockapp.server``).
"""

from __future__ import annotations

import inspect
import re
import time
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, TypeVar, final

import attrs
from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.errors import ErrorCode
from sockapp.wire.framing import JSON_CONTENT_TYPE, Header, Message, encode_frame, encode_json, encode_result
from sockapp.wire.text import peer_text

__all__ = ["App", "ActionError", "Context", "Reply", "Answer", "Pending", "BUILT_IN_ACTIONS", "error_answer"]

BUILT_IN_ACTIONS: Final = ("ping", "describe")
"""The actions every app answers by itself; `App.action` refuses these names."""
BINARY: Final = "binary"  # the metrics label of a request that is not text/json
"""The action name that labels a request that is not ``text/json`` (in metrics and `Answer`)."""
OTHER: Final = "other"  # the metrics label of an action the app does not have
"""The action name that labels a request for an action the app does not have."""
OK: Final = "ok"
"""The outcome of an answer that is not an error (in metrics and `Answer`)."""

_CODE: Final = re.compile(r"[a-z][a-z0-9-]{0,63}")

Handler = TypeVar("Handler", bound=Callable[..., Any])
"""A handler function: `App.action` and `App.binary` return it unchanged."""


class ActionError(Exception):
    """Raise in a handler to answer the request with an error the client can act on.

    ``code`` is stable and machine-readable (lowercase letters, digits and
    ``-``, at most 64 characters: it also labels metrics); ``message`` is for
    people. The connection stays open for the requests after it.

    :ivar code: the answer's error code, e.g. ``not-found``.
    :ivar message: the answer's error message.
    """

    def __init__(self, code: str, message: str) -> None:
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise ValueError(
                f"an error code is a lowercase letter, then letters, digits or '-', at most 64: not {code!r}"
            )
        if not isinstance(message, str):
            raise TypeError(f"an error message is a str, not {type(message).__name__}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@frozen
class Reply:
    """An answer whose content and header fields the handler sets exactly
    (a ``bytes`` result is ``Reply(content)``). Its frame is built once, so a
    ``Reply`` kept and returned again costs nothing to encode.

    :ivar content: the answer's content, as sent.
    :ivar content_type: the answer's ``content-type``.
    :ivar content_encoding: the answer's ``content-encoding``.
    :ivar frame: the whole answer frame, built when the ``Reply`` is made.
    """

    content: bytes
    content_type: str = "application/octet-stream"
    content_encoding: str = "binary"
    frame: bytes = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Checked and framed here in one step, not by attrs validators first: a handler may
        # build a Reply for every request (the search's binary answers do).
        if type(self.content) is not bytes:
            raise TypeError(f"a Reply's content is bytes, not {type(self.content).__name__}")
        object.__setattr__(self, "frame", encode_frame(self.content, self.content_type, self.content_encoding))


@frozen
class Context:
    """What a handler may know about the request besides its value.

    A handler gets one if it has a parameter named ``context``.

    :ivar peer: the client's address (an ``IAddress``); on a ``haproxy:``
        port, the real client's, from the PROXY header.
    :ivar header: the request frame's header.
    :ivar request: the whole request document (``None`` for a binary request).
    :ivar reactor: the server's reactor, for timers and calls a handler makes.
    :ivar client_certificate: the client's TLS certificate
        (a `sockapp.net.tls.ClientCertificate`) when it presented one on an
        ``mtls:`` port; ``None`` otherwise.
    :ivar connection: the same object for every request of one connection,
        and another for each other connection: a key for what a handler
        keeps per connection (the kv app keeps each connection's requests in
        order with it). Keep nothing under it beyond the request, or drop it
        when done: the server does not tell handlers when a connection ends.
    """

    peer: Any  # the client's address (an IAddress): behind a PROXY header, the real client's
    header: Header
    request: Any  # the whole request document (None for a binary request)
    reactor: Any
    client_certificate: Any = None  # the client's TLS certificate, when it presented one
    connection: object = None  # the same for every request of one connection


@final  # the server tells them apart by type(answer) is Answer
class Answer(NamedTuple):
    """What ``App.dispatch`` gives: the answer's frame, and the action and outcome
    (``ok`` or an error code) that label it in metrics. (A tuple: one is made per
    request, and a tuple costs a fifth of a frozen attrs instance.)

    :ivar frame: the answer frame, ready to write.
    :ivar action: the action's name, or `BINARY` or `OTHER`.
    :ivar outcome: `OK`, or the error code answered.
    :ivar reason: an error answer's message, for the log (empty otherwise).
    """

    frame: bytes
    action: str
    outcome: str
    reason: str = ""  # an error answer's message, for the log


@final  # the server tells them apart by type(answer) is Answer
class Pending(NamedTuple):
    """What ``App.dispatch`` gives for a handler still running: the Deferred of its
    ``Answer``, and the action's name (for a timeout's answer and the metrics).

    :ivar deferred: fires with the `Answer` once the handler is done.
    :ivar action: the action's name.
    """

    deferred: Deferred[Answer]
    action: str


_new_answer = tuple.__new__  # _new_answer(Answer, (frame, action, outcome, reason)): no __new__ in Python


@frozen
class Action:
    """One registered action: its handler and how to call it.

    :ivar name: the action's name, as requests give it.
    :ivar handler: the function that answers it.
    :ivar summary: its one line in ``describe``.
    :ivar takes_value: whether the handler has a parameter for the request's value.
    :ivar wants_context: whether the handler has a ``context`` parameter.
    :ivar value_type: an attrs class the value is structured into (from the
        handler's annotation), or ``None`` to pass the JSON value as it is.
    :ivar value_optional: the annotation was ``value_type | None``: a request
        without a value passes ``None``.
    """

    name: str
    handler: Callable[..., Any]
    summary: str
    takes_value: bool
    wants_context: bool
    value_type: type | None = None  # an attrs class the value is structured into
    value_optional: bool = False  # the annotation was ``value_type | None``: no value passes None


def error_frame(code: str, message: str) -> bytes:
    """The in-band error answer: the same shape as the error frame that ends a connection."""
    return encode_json({"error": {"code": code, "message": message}})


def error_answer(action: str, code: str, message: str) -> Answer:
    """The ``Answer`` of an in-band error."""
    return Answer(error_frame(code, message), action, code, message)


def _summary(handler: Callable[..., Any]) -> str:
    doc = inspect.getdoc(handler) or ""
    return doc.strip().split("\n", 1)[0].strip()


def _inspect_handler(name: str, handler: Callable[..., Any]) -> Action:
    if not callable(handler):
        raise TypeError(f"the handler of {name!r} must be callable, not {type(handler).__name__}")
    parameters = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    wants_context = any(p.name == "context" for p in parameters)
    values = [p for p in parameters if p.name != "context"]
    required = [p.name for p in values[1:] if p.default is inspect.Parameter.empty]
    if required:  # found now, at import, rather than as an internal-error on every request
        raise TypeError(
            f"the handler of {name!r} takes the value and 'context' only; it also requires {', '.join(required)}"
        )
    value_type = None
    if values:
        annotation = values[0].annotation
        if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
            try:
                annotation = typing.get_type_hints(handler).get(values[0].name)
            except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not a type to check
                annotation = None
        optional = False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1 and len(typing.get_args(annotation)) == 2:  # X | None
                annotation, optional = members[0], True
        if isinstance(annotation, type) and attrs.has(annotation):
            value_type = annotation
    return Action(
        name=name,
        handler=handler,
        summary=_summary(handler),
        takes_value=bool(values),
        wants_context=wants_context,
        value_type=value_type,
        value_optional=value_type is not None and optional,
    )


class App:
    """A framed-JSON service: a name and its actions.

    Every app also answers ``ping`` (``{"result": "pong"}``) and ``describe``
    (its name and each action's one-line summary, from its docstring).

    :ivar name: the app's name, as ``describe`` gives it and logs and metrics name it.
    :cvar log: where a handler's failure is logged, with its traceback.
    :cvar MAX_TRACEBACKS_PER_MINUTE: at most this many handler tracebacks are
        logged a minute; the rest are counted, and the next one logged says how many.
    """

    log = Logger()
    # At most this many handler tracebacks are logged a minute; the rest are counted.
    MAX_TRACEBACKS_PER_MINUTE: Final = 10

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an app's name is a non-empty str, not {name!r}")
        self.name = name
        self._actions: dict[str, Action] = {}
        self._binary: Action | None = None
        self._tracebacks: list[float] = []
        self._untold = 0
        self._actions["ping"] = Action("ping", _ping, "Answer pong: a health check.", False, False)
        self._actions["describe"] = Action("describe", self._described, "This service's actions.", False, False)

    # -- declaring -----------------------------------------------------------------

    def action(self, name: str, description: str | None = None) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``name``.

        ``describe`` lists it with ``description``, by default the first line
        of the handler's docstring."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"an action's name is a non-empty str, not {name!r}")
        if name in BUILT_IN_ACTIONS:
            raise ValueError(f"{name!r} is built into every app; choose another name")
        if name in self._actions:
            raise ValueError(f"action {name!r} is already registered in app {self.name!r}")

        def register(handler: Handler) -> Handler:
            action = _inspect_handler(name, handler)
            if description is not None:
                action = attrs.evolve(action, summary=description)
            self._actions[name] = action
            return handler

        return register

    def binary(self, handler: Handler) -> Handler:
        """Register the decorated function for requests that are not ``text/json``:
        it gets the content (and the ``context``) and answers as an action does."""
        if self._binary is not None:
            raise ValueError(f"app {self.name!r} already has a binary handler")
        self._binary = _inspect_handler(BINARY, handler)
        return handler

    @property
    def answers_binary(self) -> bool:
        """Whether requests that are not ``text/json`` have a handler (``binary``)."""
        return self._binary is not None

    @property
    def actions(self) -> Mapping[str, str]:
        """Each action's name and one-line summary, built-ins first."""
        return {name: action.summary for name, action in self._actions.items()}

    def describe(self) -> dict[str, Any]:
        """What ``describe`` answers: ``{"name": ..., "actions": {name: summary}}``."""
        return {"name": self.name, "actions": dict(self.actions)}

    def _described(self) -> dict[str, Any]:
        return self.describe()

    def unknown_action(self, request: dict[str, Any]) -> Any:
        """Answer a request whose ``action`` is missing, not a string, or not registered.

        The default is an error; an app that answers such requests some other
        way (the tutorial's search does) overrides this and returns a result.
        """
        action = request.get("action")
        if "action" not in request or not isinstance(action, str):
            raise ActionError(ErrorCode.BAD_REQUEST.value, "a request needs an 'action' that is a string")
        names = ", ".join(peer_text(name, 64) for name in self._actions)
        raise ActionError("unknown-action", f"no action '{peer_text(action, 64)}' here; the actions are: {names}")

    # -- answering -----------------------------------------------------------------

    def dispatch(self, message: Message, context: Callable[[Message], Context]) -> Answer | Pending:
        """The answer to one request, now (``Answer``) or later (``Pending``); never raises.

        ``context(message)`` is called only for a handler that asks for one.
        A ``Pending`` answer's Deferred fails only with ``CancelledError``
        (when the connection cancels it); every other failure becomes an
        error answer.
        """
        if message.error is None and message.header.content_type == JSON_CONTENT_TYPE:
            request = message.document
            if type(request) is dict:
                name = request.get("action")
                action = self._actions.get(name) if type(name) is str else None
                if action is None:
                    return self._unknown(request)
                return self._run(action, request.get("value"), message, context)
        if message.error is not None:
            return error_answer(OTHER, message.error.code.value, message.error.message)
        if not message.is_json:
            if self._binary is None:
                return error_answer(
                    BINARY,
                    "unsupported-content-type",
                    f"this service answers text/json requests only, not '{peer_text(message.header.content_type, 64)}'",
                )
            return self._run(self._binary, message.content, message, context)
        return error_answer(OTHER, ErrorCode.REQUEST_NOT_OBJECT.value, "a text/json request must be a JSON object")

    def _unknown(self, request: dict[str, Any]) -> Answer:
        try:
            result = self.unknown_action(request)
        except ActionError as e:
            return error_answer(OTHER, e.code, e.message)
        except Exception:  # noqa: BLE001 - a bug in the app: the peer gets internal-error
            return self._internal_error(Failure(), OTHER)
        return self._finish(result, OTHER, "unknown-action")

    def _run(
        self, action: Action, value: Any, message: Message, context: Callable[[Message], Context]
    ) -> Answer | Pending:
        name = action.name
        handler = action.handler
        try:
            if action.value_type is not None and not (value is None and action.value_optional):
                value = _structure(value, action.value_type)
            if action.wants_context:
                if action.takes_value:
                    result = handler(value, context=context(message))
                else:
                    result = handler(context=context(message))
            elif action.takes_value:
                result = handler(value)
            else:
                result = handler()
        except ActionError as e:
            return error_answer(name, e.code, e.message)
        except Exception:  # noqa: BLE001 - a bug in the handler: the peer gets internal-error
            return self._internal_error(Failure(), name)
        kind = type(result)
        if kind is Reply:  # the cheapest answer: its frame is made
            return _new_answer(Answer, (result.frame, name, OK, ""))
        if kind is str:
            return _new_answer(Answer, (encode_result(result), name, OK, ""))
        if isinstance(result, Deferred):
            return Pending(
                result.addCallbacks(self._finish, self._failed, callbackArgs=(name,), errbackArgs=(name,)), name
            )
        if kind is types.CoroutineType:
            deferred: Deferred[Any] = Deferred.fromCoroutine(result)
            return Pending(
                deferred.addCallbacks(self._finish, self._failed, callbackArgs=(name,), errbackArgs=(name,)), name
            )
        return self._finish(result, name)

    def _finish(self, result: Any, name: str, outcome: str = OK) -> Answer:
        try:
            if type(result) is Reply:
                return Answer(result.frame, name, outcome)
            if type(result) is bytes:
                return Answer(encode_frame(result, "application/octet-stream", "binary"), name, outcome)
            return Answer(encode_result(result), name, outcome)
        except Exception:  # noqa: BLE001 - a result that cannot be encoded (a set, say) is the app's bug
            return self._internal_error(Failure(), name)

    def _failed(self, failure: Failure, name: str) -> Answer | Failure:
        from twisted.internet.defer import CancelledError

        if failure.check(CancelledError):
            return failure  # the connection cancelled it, and decides what (if anything) to answer
        error = failure.value
        if isinstance(error, ActionError):
            return error_answer(name, error.code, error.message)
        return self._internal_error(failure, name)

    def _internal_error(self, failure: Failure, name: str) -> Answer:
        now = time.monotonic()
        self._tracebacks = [t for t in self._tracebacks if now - t < 60]
        if len(self._tracebacks) < self.MAX_TRACEBACKS_PER_MINUTE:
            self._tracebacks.append(now)
            untold, self._untold = self._untold, 0
            self.log.failure(
                "action {action} of {app} failed ({untold} more failures not shown)",
                failure,
                action=peer_text(name, 64),
                app=self.name,
                untold=untold,
            )
        else:
            self._untold += 1
        return error_answer(name, "internal-error", f"action '{peer_text(name, 64)}' failed; the server logged why")


def _ping() -> Reply:
    return PONG


PONG: Final = Reply(b'{"result": "pong"}', "text/json", "utf-8")
"""The answer to ``ping``, framed once."""


# -- typed values -----------------------------------------------------------------


def _make_converter() -> Any:
    """A cattrs converter that structures JSON values into attrs classes strictly: a
    string is not an int, a number is not a string, and unknown keys are refused."""
    import cattrs

    converter = cattrs.Converter(forbid_extra_keys=True)

    def exactly(kind: type, accept: tuple[type, ...]) -> Callable[[Any, Any], Any]:
        def structure(value: Any, _: Any) -> Any:
            if type(value) not in accept:
                raise TypeError(f"expected {kind.__name__}, not {_json_name(value)}")
            return kind(value)

        return structure

    converter.register_structure_hook(str, exactly(str, (str,)))
    converter.register_structure_hook(int, exactly(int, (int,)))
    converter.register_structure_hook(float, exactly(float, (int, float)))
    converter.register_structure_hook(bool, exactly(bool, (bool,)))
    return converter


def _json_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


_converter: Any = None


def _structure(value: Any, value_type: type) -> Any:
    """``value`` as a ``value_type``, or ``ActionError("bad-request")`` naming what does not fit."""
    global _converter
    if _converter is None:
        _converter = _make_converter()
    import cattrs

    try:
        return _converter.structure(value, value_type)
    except Exception as e:  # noqa: BLE001 - cattrs raises many kinds; each becomes bad-request
        if isinstance(e, (cattrs.BaseValidationError,)):
            reasons = cattrs.transform_error(e, path="value")
        else:
            reasons = [f"{e} @ value"]
        raise ActionError(ErrorCode.BAD_REQUEST.value, peer_text("; ".join(reasons), 300)) from None
