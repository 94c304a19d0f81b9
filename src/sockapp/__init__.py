"""sockapp: the socket tutorial's servers as a Twisted application, and a framed-JSON toolkit.

Where to start: `sockapp.app` (your own service: `App`, `ActionError`,
`Reply`, `Context`), `sockapp.client` (`connect` and `Client`),
`sockapp.wire` (the sans-IO codec of the frame format), `sockapp.errors`
(what can go wrong, and the wire codes). `sockapp.server` serves an app
(`AppFactory`); `sockapp.apps.kv` is an app that ships with sockapp;
`sockapp.net.endpoints`, `sockapp.net.tls` and `sockapp.server.logs` are
the endpoint strings, the TLS checks and the JSON log format behind the
command line.
"""

__version__ = "0.1.0"
"""sockapp's version, as in its package metadata."""
