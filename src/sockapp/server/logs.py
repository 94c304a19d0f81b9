"""``--log-format json``: one JSON object per log event, on one line, for log shippers.

Each line has ``time`` (ISO 8601, UTC), ``level``, ``namespace`` (the
logger, e.g. ``sockapp.server.AppProtocol``), ``message`` (the event as
text), the event's own fields (``peer``, ``code``, ...) and, for an error
with a traceback, ``traceback``. Twisted's ``jsonFileLogObserver`` writes
every internal key (``log_format``, ``log_level`` as a class, ``log_source``
...) in RFC 7464 record separators; this is the flat shape shippers expect.

Two ways in: ``twistd --logger sockapp.server.logs.json_observer ...`` (twistd's
own switch, for any service), or ``--log-format json`` on sockapp's
services, which installs the observer on the twistd application.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any, Final

from twisted.application.service import MultiService
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsText

# Keys of legacy (twisted.python.log) events that the message already carries.
_LEGACY_KEYS: Final = frozenset({"message", "format", "system", "isError", "time", "why", "failure", "printed"})
_OWN_KEYS: Final = frozenset({"time", "level", "namespace", "message", "system", "traceback"})
# The longest line an event without a traceback gives. Peer text is capped in characters
# (sockapp.wire.text), but as ASCII JSON one character can take 12 bytes, and a field appears
# in the message too: long strings are cut further until the line fits.
MAX_JSON_LINE: Final = 2000
"""The longest line, in bytes, of an event without a traceback: longer strings in it are cut."""
_FIXED_KEYS: Final = frozenset({"time", "level", "namespace"})


def event_as_json(event: LogEvent) -> str:
    """One event as one line of JSON (with the newline)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(timespec="microseconds"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": eventAsText(event, includeTraceback=False, includeTimestamp=False, includeSystem=False),
    }
    system = event.get("log_system", event.get("system"))
    if system and system != "-":
        record["system"] = system
    legacy = "isError" in event  # from twisted.python.log, whose keys are in the message already
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        record[f"field_{key}" if key in _OWN_KEYS else key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    # ASCII only: a line separator (U+2028, U+0085) or a lone surrogate from a peer
    # can neither split the line for a shipper nor make the line unwritable.
    line = json.dumps(record, ensure_ascii=True, default=str)
    if len(line) >= MAX_JSON_LINE and failure is None:
        line = _shortened(record)
    return line + "\n"


def _shortened(record: dict[str, Any]) -> str:
    """``record`` as JSON of under ``MAX_JSON_LINE`` bytes: its long strings cut, shorter each round."""
    limit = 256
    while True:
        for key, value in record.items():
            if key not in _FIXED_KEYS:
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                if len(text) > limit:
                    record[key] = f"{text[:limit]}… [cut at {limit} of {len(text)} characters]"
        line = json.dumps(record, ensure_ascii=True, default=str)
        if len(line) < MAX_JSON_LINE or limit <= 8:
            return line
        limit //= 2


def json_lines_observer(out: IO[str]) -> ILogObserver:
    """An observer writing ``event_as_json`` lines to ``out``."""
    return FileLogObserver(out, event_as_json)


def json_observer() -> ILogObserver:
    """For ``twistd --logger sockapp.server.logs.json_observer``: JSON lines on standard output."""
    return json_lines_observer(sys.stdout)


class JSONLogging(MultiService):
    """Holds a server's services and makes twistd log as JSON lines.

    twistd builds the service (``makeService``) before it starts logging, and
    then logs to the ``ILogObserver`` of the application, if it has one: this
    service sets it on the application it is added to (a ``.tac`` file's
    too).

    :ivar observer: the log observer set on the application; by default
        `json_observer`, JSON lines on standard output.
    """

    def __init__(self, observer: ILogObserver | None = None) -> None:
        MultiService.__init__(self)
        self.observer = observer if observer is not None else json_observer()

    def setServiceParent(self, parent: Any) -> None:
        """Add this service to ``parent`` and, if it is twistd's application, make ``observer`` its log observer."""
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self.observer)
        MultiService.setServiceParent(self, parent)
