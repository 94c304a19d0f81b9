"""deploy/haproxy.cfg's health check speaks the protocol: its ping frame is sockapp's own, answered pong."""

from __future__ import annotations

import re

from conftest import ROOT

from sockapp.framing import NEED_DATA, FrameDecoder, encode_json
from sockapp.search import PONG, SearchIndex

CONFIG = ROOT / "deploy" / "haproxy.cfg"


def check_frame() -> bytes:
    (hexstring,) = re.findall(r"^\s*tcp-check send-binary ([0-9a-f]+)\s*$", CONFIG.read_text(), re.MULTILINE)
    return bytes.fromhex(hexstring)


def test_the_check_sends_exactly_a_ping_frame():
    frame = check_frame()
    assert frame == encode_json({"action": "ping"})
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    message = decoder.next_message()
    assert message.document == {"action": "ping"}
    assert decoder.next_message() is NEED_DATA


def test_the_server_answers_the_check_with_what_it_expects():
    (expected,) = re.findall(r"^\s*tcp-check expect string (\S+)\s*$", CONFIG.read_text(), re.MULTILINE)
    decoder = FrameDecoder()
    decoder.receive_data(check_frame())
    answer = SearchIndex().respond(decoder.next_message())
    assert answer == PONG and expected.encode() in answer
    # The tutorial's server answers an unknown action with an error text, which must fail the check.
    assert expected.encode() not in encode_json({"result": "Error: invalid action 'ping'."})


def test_timeouts_outlast_the_servers_idle_timeout():
    from sockapp.lifecycle import DEFAULT_IDLE_TIMEOUT

    text = CONFIG.read_text()
    for side in ("client", "server"):
        (seconds,) = re.findall(rf"^\s*timeout {side} (\d+)s\s*$", text, re.MULTILINE)
        assert int(seconds) > DEFAULT_IDLE_TIMEOUT
