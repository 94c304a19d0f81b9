"""twistd entry points: one module per service, each ``Options`` + ``makeService``.

``sockapp.tap.search`` is ``twistd sockapp``, ``sockapp.tap.echo`` is
``twistd echo``; the ``.tac`` files build the same services with
``options_from_environment``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from twisted.python import usage


def options_from_environment(
    options: usage.Options, environ: Mapping[str, str] = os.environ, variable: str = "SOCKAPP_ARGS"
) -> usage.Options:
    """Parse ``$SOCKAPP_ARGS`` into ``options`` as twistd would parse a command line.

    A bad value exits with one line naming the variable, not a traceback.
    """
    try:
        options.parseOptions(shlex.split(environ.get(variable, "")))
    except (usage.UsageError, ValueError) as e:
        raise SystemExit(f"{variable}: {e}") from None
    return options
