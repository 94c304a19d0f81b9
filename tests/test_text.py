"""peer_text: what a peer sent, safe to put in a log line or an error message."""

from __future__ import annotations

import pytest

from sockapp.wire.text import PEER_TEXT_LIMIT, peer_text


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("text/json", "text/json"),
        ("caf\u00e9 \U0001f436", "caf\u00e9 \U0001f436"),  # printable non-ASCII is kept
        ("a\rb", "a\\x0db"),
        ("\x1b[2K\rFAKE", "\\x1b[2K\\x0dFAKE"),
        ("line\u2028sep\u0085nel\x0bvt\x0cff", "line\\u2028sep\\x85nel\\x0bvt\\x0cff"),
        ("\ud800", "\\ud800"),  # a lone surrogate: unencodable, so escaped
        ("\u202eevil", "\\u202eevil"),  # a format character (right-to-left override)
    ],
)
def test_unprintable_characters_are_escaped(raw, shown):
    assert peer_text(raw) == shown
    assert peer_text(raw).isprintable()
    peer_text(raw).encode("utf-8")  # never fails


def test_long_text_is_cut_with_a_marker_saying_how_long_it_was():
    shown = peer_text("x" * 65_000)
    assert shown == "x" * PEER_TEXT_LIMIT + f"\u2026 [cut at {PEER_TEXT_LIMIT} of 65000 characters]"
    assert len(peer_text("\x00" * 65_000)) < 4 * PEER_TEXT_LIMIT + 50  # escapes cost at most 4 per character


def test_non_strings_are_shown_as_text():
    assert peer_text(12) == "12"
