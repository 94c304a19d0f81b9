"""Text a peer controls, made safe to log and to quote in error messages.

A peer picks the bytes of content types, encodings, actions, values and
(behind a PROXY header) even its own address. Written raw, they can move a
terminal's cursor (``\\x1b[2K\\r``), forge log lines (``\\r``, U+2028),
make a log event impossible to encode (a lone surrogate), or fill the disk.
``peer_text`` escapes every character that is not printable and caps the
length, with a marker that says what was cut.
"""

from __future__ import annotations

from typing import Final

PEER_TEXT_LIMIT: Final = 200


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def peer_text(value: object, limit: int = PEER_TEXT_LIMIT) -> str:
    """``value`` as one printable line of at most ``limit`` characters (plus a cut marker).

    Printable characters, non-ASCII ones included, are kept; everything else
    (control characters, line and paragraph separators, format characters,
    lone surrogates, unassigned code points) is written as a Python escape.
    """
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escape(char) for char in text)
    if cut:
        length = len(value) if isinstance(value, str) else len(str(value))
        return f"{text}… [cut at {limit} of {length} characters]"
    return text
