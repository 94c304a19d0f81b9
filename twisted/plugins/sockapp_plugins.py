"""twistd plugins for sockapp: ``twistd sockapp`` and ``twistd echo``.

Only two ServiceMaker calls: the tap modules are imported when a plugin is
used, so scanning the plugin directory stays cheap.
"""

from twisted.application.service import ServiceMaker

sockapp = ServiceMaker(
    "sockapp",
    "sockapp.tap.search",
    "The tutorial's search server: framed JSON requests over any endpoint.",
    "sockapp",
)

echo = ServiceMaker(
    "sockapp echo",
    "sockapp.tap.echo",
    "An echo server with backpressure, over any endpoint.",
    "echo",
)
