"""Twisted's side of the wire, shared by servers and clients.

``protocol`` is ``FramedProtocol``, the thin ``Protocol`` over the sans-IO
codec of ``sockapp.wire``; ``endpoints`` reads endpoint strings with
sockapp's checks on ``ssl:``, ``tls:`` and ``haproxy:``; ``tls`` builds the
TLS options (``mtls:`` included) and names why a handshake failed;
``proxy`` checks the PROXY headers of ``haproxy:`` ports.
"""
