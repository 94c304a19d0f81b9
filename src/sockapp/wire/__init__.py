"""The wire format, sans-IO: bytes in, messages out, and messages to bytes.

Nothing here imports Twisted or touches a socket (as in h11): ``framing``
is the codec (the 2-byte prefix, the JSON header, the content, and the
limits checked as soon as a length is known), ``text`` makes what a peer
sent safe to quote. The Twisted side adapts it in ``sockapp.net``.
"""

from sockapp.wire.framing import (
    JSON_CONTENT_TYPE,
    NEED_DATA,
    FrameDecoder,
    Header,
    Message,
    encode_frame,
    encode_json,
    parse_header,
    parse_json_content,
)
from sockapp.wire.text import peer_text

__all__ = [
    "JSON_CONTENT_TYPE",
    "NEED_DATA",
    "FrameDecoder",
    "Header",
    "Message",
    "encode_frame",
    "encode_json",
    "parse_header",
    "parse_json_content",
    "peer_text",
]
