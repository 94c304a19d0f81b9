"""deploy/haproxy.cfg's health check speaks the protocol: its ping frame is sockapp's own, answered pong."""

from __future__ import annotations

import re

from conftest import ROOT

from sockapp.apps.search import PONG, SearchIndex
from sockapp.wire.framing import NEED_DATA, FrameDecoder, Message, encode_json

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
    assert isinstance(message, Message) and message.document == {"action": "ping"}
    assert decoder.next_message() is NEED_DATA


def test_the_server_answers_the_check_with_what_it_expects():
    (expected,) = re.findall(r"^\s*tcp-check expect string (\S+)\s*$", CONFIG.read_text(), re.MULTILINE)
    decoder = FrameDecoder()
    decoder.receive_data(check_frame())
    request = decoder.next_message()
    assert isinstance(request, Message)
    answer = SearchIndex().respond(request)
    assert answer == PONG and expected.encode() in answer
    # The tutorial's server answers an unknown action with an error text, which must fail the check.
    assert expected.encode() not in encode_json({"result": "Error: invalid action 'ping'."})


def test_timeouts_outlast_the_servers_idle_timeout():
    from sockapp.server.lifecycle import DEFAULT_IDLE_TIMEOUT

    text = CONFIG.read_text()
    for side in ("client", "server"):
        (seconds,) = re.findall(rf"^\s*timeout {side} (\d+)s\s*$", text, re.MULTILINE)
        assert int(seconds) > DEFAULT_IDLE_TIMEOUT


def check_timing() -> dict[str, float]:
    """The health-check settings of deploy/haproxy.cfg, times in seconds (HAProxy's ms/s units)."""
    text = CONFIG.read_text()

    def seconds(value: str) -> float:
        match = re.fullmatch(r"(\d+)(ms|s)", value)
        assert match is not None, value
        number, unit = match.groups()
        return int(number) / (1000 if unit == "ms" else 1)

    (server,) = re.findall(r"^\s*default-server (.*)$", text, re.MULTILINE)
    words = dict(re.findall(r"\b(inter|fastinter|fall)\s+(\S+)", server))
    timeouts = dict(re.findall(r"^\s*timeout (check|connect) (\S+)\s*$", text, re.MULTILINE))
    inter = seconds(words["inter"])
    return {
        "inter": inter,
        "fastinter": seconds(words["fastinter"]) if "fastinter" in words else inter,
        "fall": int(words["fall"]),
        "check": seconds(timeouts["check"]),
        "connect": seconds(timeouts["connect"]),
    }


def test_a_hung_server_is_marked_down_within_seconds_like_a_dead_one():
    # A dead server's check fails at once (connection refused); a hung one (stopped, swapping,
    # deadlocked) still accepts, so each check fails only when it times out: after `timeout check`,
    # but under load HAProxy 2.6 was seen to wait up to min(timeout connect, interval) instead
    # (make integration). The next check starts `inter` after the last one ended, `fastinter`
    # once a check has failed; `fall` failures in a row mark it DOWN. The worst case:
    t = check_timing()

    def hung_check(interval: float) -> float:
        return max(t["check"], min(t["connect"], interval))

    dead = t["inter"] + (t["fall"] - 1) * t["fastinter"]
    hung = t["inter"] + hung_check(t["inter"]) + (t["fall"] - 1) * (t["fastinter"] + hung_check(t["fastinter"]))
    # deploy/README.md promises either out within about 4 s (measured in make integration).
    assert hung <= 4, f"a hung server is out only after up to {hung:g} s, a dead one {dead:g} s: {t}"
