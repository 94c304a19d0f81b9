"""Bounded attacks on one server at a time, on loopback, each measured from /proc.

    make attack                                 # or:
    .venv/bin/python soak/attack.py [--only punycode,json,...] [--json]

Each attack starts its own ``twistd -n sockapp`` on 127.0.0.1 (a port the
kernel picks), does what a hostile peer could, and prints what it cost the
server: CPU seconds (utime + stime), resident memory (VmRSS, peak VmHWM),
open file descriptors, and, where it matters, the p99 round trip of a probe
client that asks a search every 10 ms on its own connection alongside. The
last lines check the limits sockapp promises (README, "Limits and failure
behaviour"); the exit status is 1 if any is broken.

Attacks (every one bounded in time and bytes):

- ``punycode``: a 1 MB frame in the punycode encoding, whose decoder is
  quadratic in pure Python. Limits: 0.1 CPU-s per MB sent, probe p99 < 50 ms.
- ``json-cpu``: one 1 MB text/json request of arrays nested 200 deep (the
  costliest JSON to parse), then one of floats (the costliest allowed).
  Limit: 0.1 CPU-s per MB sent each, probe p99 < 50 ms for the first.
- ``json-memory``: 16 connections each send a text/json frame at
  --max-json-length of arrays nested 200 deep (48x its size once parsed), a
  text/json frame at --max-content-length, and a binary frame at
  --max-content-length, reading nothing. Limit: peak RSS within the
  README's budget.
- ``closed``: 6 rounds of 4 connections that send 63 MiB of a 64 MiB frame and
  close. Limit: RSS back within 32 MiB of the start within 5 s, no gc forced.
- ``encodings``: 10,000 connections, each naming a different unknown encoding
  of 1,000 characters. Limit: RSS afterwards within 32 MiB of the start.
- ``logs``: lone surrogates, control characters and 60 KB names, with
  --verbose, in the text and the JSON log format. Limits: no traceback, no
  line over 2,000 bytes, no raw control character in either log.
- ``refused``: on tcp:, ssl: and haproxy: ports with --max-connections 1
  --idle-timeout 2, one silent peer holds the slot and 50 more are refused.
  Limit: the refused ones are gone within the close grace period (2 s), the
  silent one within the idle timeout and the grace period.
- ``small``: 16 MB of pipelined requests of about 110 bytes on one connection,
  whose 1,024 distinct headers defeat the parsed-header cache and whose
  answers are built per request (a lone surrogate or an unknown action, a
  search miss, a binary request). Limit: 0.1 CPU-s per MB sent each.
- ``metrics``: 2.7 MB of pipelined GET /metrics never read, and a POST that
  tries to send 1 GiB. Limit: RSS grows by under 32 MiB. Also measured, as
  figures: the CPU of 1,000 scrapes, each on its own connection, beside
  1,000 one-request connections to the main port.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sockapp.testing import ServerProcess, tool, twistd_argv

HERE = Path(__file__).resolve().parent
MIB = 2**20
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLOSE_GRACE = 2.0


# -- frames, built by hand -----------------------------------------------------------


def frame(content: bytes, content_type: str = "text/json", encoding: str = "utf-8") -> bytes:
    header = json.dumps(
        {
            "byteorder": "little",
            "content-type": content_type,
            "content-encoding": encoding,
            "content-length": len(content),
        }
    ).encode("ascii")  # ASCII: a lone surrogate in a field goes as a JSON escape
    return len(header).to_bytes(2, "big") + header + content


def search(value: str) -> bytes:
    return frame(json.dumps({"action": "search", "value": value}).encode("ascii"))


def nested_json(length: int) -> bytes:
    unit = b"[" * 200 + b"]" * 200
    head, tail = b'{"action": "search", "value": [', b"]}"
    return frame(head + b",".join([unit] * ((length - len(head) - len(tail)) // (len(unit) + 1))) + tail)


def punycode_frame(length: int) -> bytes:
    """ASCII, '-', one delta that makes a 4-byte character, then one insertion per byte."""
    start = ("x" * 1000 + "\U0001f436" * 2).encode("punycode")
    return frame(start + b"a" * (length - len(start)), encoding="punycode")


# -- the server, measured ------------------------------------------------------------


class Server(ServerProcess):
    """``twistd -n sockapp ARGS``, started until its search port listens, measured from /proc."""

    def __init__(self, *args: str, folder: Path) -> None:
        super().__init__(twistd_argv("sockapp", *args), folder)
        # Only the search port: with --metrics the MetricsSite logs its own "starting on".
        self.wait_until_listening(r"SearchFactory (?:\(\w+\) )?starting on (\d+)")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        return self.status("VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def has_option(option: str) -> bool:
    """Whether this twistd's sockapp takes ``option`` (an older one, measured for comparison, may not)."""
    usage = subprocess.run([tool("twistd"), "sockapp", "--help"], capture_output=True, text=True, timeout=60).stdout
    return option in usage


class Probe(threading.Thread):
    """A search every 10 ms on its own connection; round trips in seconds (a 5 s timeout counts as 5 s)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.times: list[float] = []
        self.stopping = False

    def run(self) -> None:
        request = search("morpheus")
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        while not self.stopping:
            started = time.monotonic()
            try:
                sock.sendall(request)
                got = b""
                while len(got) < 2 or len(got) < 2 + int.from_bytes(got[:2], "big") + answer_length(got):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
            except (OSError, ConnectionError):
                self.times.append(5.0)
                sock.close()
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                continue
            self.times.append(time.monotonic() - started)
            time.sleep(0.01)
        sock.close()

    def p99(self) -> float:
        if not self.times:
            return float("nan")
        ordered = sorted(self.times)
        return ordered[max(0, int(len(ordered) * 0.99 + 0.5) - 1)]


def answer_length(got: bytes) -> int:
    length = int.from_bytes(got[:2], "big")
    if len(got) < 2 + length:
        return 1 << 30
    return json.loads(got[2 : 2 + length])["content-length"]


def send_all(peers: list[list], seconds: float) -> None:
    """Send each peer's bytes without reading until all are sent, closed by the server, or time is up.

    Each peer is [socket, bytes, sent so far, closed by the server]."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(not entry[3] and entry[2] < len(entry[1]) for entry in peers):
        for entry in peers:
            sock, data, sent, closed = entry
            if not closed and sent < len(data):
                try:
                    entry[2] += sock.send(data[sent : sent + MIB])
                except BlockingIOError:
                    pass
                except OSError:
                    entry[3] = True
        time.sleep(0.001)


def open_peers(port: int, payloads: list[bytes]) -> list[list]:
    peers = []
    for payload in payloads:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        peers.append([sock, payload, 0, False])
    return peers


# -- the attacks -------------------------------------------------------------------


def attack_punycode(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        return one_request(server, punycode_frame(1_000_000))
    finally:
        server.stop()


def one_request(server: Server, payload: bytes) -> dict:
    """Send one request beside a probe; what it cost the server, and the probe's p99 meanwhile."""
    probe = Probe(server.port)
    probe.start()
    time.sleep(0.5)
    cpu = server.cpu()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(payload)
        sock.settimeout(60)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            answer = b"(no answer in 60 s)"
    time.sleep(0.5)
    used = server.cpu() - cpu
    probe.stopping = True
    probe.join(10)
    return {
        "sent_mb": round(len(payload) / 1e6, 3),
        "cpu_s": round(used, 3),
        "cpu_s_per_mb": round(used / (len(payload) / 1e6), 3),
        "probe_p99_ms": round(probe.p99() * 1000, 2),
        "probe_max_ms": round(max(probe.times, default=0) * 1000, 2),
        "answer": answer[answer.find(b"}", 2) + 1 :][:100].decode(errors="replace"),
    }


def attack_json_cpu(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        floats = frame(b'{"action": "search", "value": [' + b"0.1," * 250_000 + b"0.1]}")
        return {"nested": one_request(server, nested_json(1_000_000)), "floats": one_request(server, floats)}
    finally:
        server.stop()


def attack_json_memory(folder: Path) -> dict:
    max_content, max_json, connections = 16 * MIB, MIB, 16
    limits = ["--max-content-length", str(max_content)]
    if has_option("--max-json-length"):
        limits += ["--max-json-length", str(max_json)]
    else:  # a server from before that option: JSON has the binary limit (for before/after figures)
        max_json = max_content
    server = Server("--port", "tcp:0:interface=127.0.0.1", *limits, folder=folder)
    try:
        before = server.rss()
        payloads = [nested_json(max_json), nested_json(max_content), frame(b"\xab" * max_content, "binary/x")]
        peers = open_peers(server.port, [p for _ in range(connections) for p in payloads])
        send_all(peers, 120)
        time.sleep(1)
        sent = sum(entry[2] for entry in peers)
        peak = server.status("VmHWM")
        for sock, *_ in peers:
            sock.close()
        budget = len(peers) * (max(max_content, 50 * max_json) + 128 * 1024)
        return {
            "connections": len(peers),
            "sent_mb": round(sent / 1e6, 1),
            "rss_mib": round(before / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "growth_mib": round((peak - before) / MIB, 1),
            "budget_mib": round(budget / MIB, 1),
        }
    finally:
        server.stop()


def attack_closed(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        start = server.rss()
        partial = frame(b"\xab" * (64 * MIB), "binary/x")[: 63 * MIB]
        after_rounds = []
        for _ in range(6):
            peers = open_peers(server.port, [partial] * 4)
            send_all(peers, 60)
            time.sleep(0.3)
            for sock, *_ in peers:
                sock.close()
            time.sleep(0.3)
            after_rounds.append(round(server.rss() / MIB, 1))
        settled_at = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if server.rss() - start <= 32 * MIB:
                settled_at = round(5 - (deadline - time.monotonic()), 2)
                break
            time.sleep(0.1)
        return {
            "start_mib": round(start / MIB, 1),
            "peak_mib": round(server.status("VmHWM") / MIB, 1),
            "after_each_round_mib": after_rounds,
            "end_mib": round(server.rss() / MIB, 1),
            "back_within_32_mib_after_s": settled_at,
        }
    finally:
        server.stop()


def attack_encodings(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        start = server.rss()
        sent = 0
        for batch in range(100):
            peers = []
            for number in range(100):
                name = f"enc-{batch}-{number}-" + "x" * 1000
                data = frame(b"{}", encoding=name)
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)  # answered in-band (the frame is sound): EOF ends it
                sent += len(data)
                peers.append(sock)
            for sock in peers:
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
                sock.close()
        time.sleep(3)
        return {
            "connections": 10_000,
            "sent_mb": round(sent / 1e6, 1),
            "start_mib": round(start / MIB, 1),
            "end_mib": round(server.rss() / MIB, 1),
            "lasting_growth_mib": round((server.rss() - start) / MIB, 1),
        }
    finally:
        server.stop()


CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def attack_logs(folder: Path) -> dict:
    results = {}
    for log_format in ("text", "json"):
        server = Server(
            "--port", "tcp:0:interface=127.0.0.1", "--verbose", "--log-format", log_format, folder=folder
        )  # fmt: skip
        try:
            nasty = [
                search("\ud800"),
                frame(json.dumps({"action": "\udc00\x1b[2K\r", "value": "x"}).encode("ascii")),
                frame(b"{}", encoding="\ud800"),
                frame(b"{}", encoding="\x1b[2K\rFAKE 127.0.0.1: all good\u2028\u0085"),
                frame(b"x", content_type="binary/HIDDEN\udc00\r\x1b[2J"),
                frame(b"{}", encoding="y" * 60_000),
            ] * 300
            for data in nasty:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    try:
                        while sock.recv(65536):
                            pass
                    except OSError:
                        pass
            time.sleep(1)
        finally:
            server.stop()
        log = server.log_bytes()
        lines = log.splitlines()
        results[log_format] = {
            "requests": len(nasty),
            "log_bytes": len(log),
            "tracebacks": log.count(b"Traceback"),
            "longest_line": max(map(len, lines)) if lines else 0,
            "raw_control_characters": len(CONTROL.findall(log)),
        }
    return results


def make_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def attack_refused(folder: Path) -> dict:
    key, cert = make_certificate(folder)
    ports = {
        "tcp": "tcp:0:interface=127.0.0.1",
        "ssl": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "haproxy": "haproxy:tcp:0:interface=127.0.0.1",
    }
    results = {}
    for kind, description in ports.items():
        server = Server("--port", description, "--max-connections", "1", "--idle-timeout", "2", folder=folder)
        try:
            fds_at_start = server.fds()
            holder = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if kind == "ssl":
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                holder = context.wrap_socket(holder)
            elif kind == "haproxy":
                holder.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5634\r\n")
            time.sleep(0.3)
            refused = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(50)]
            time.sleep(CLOSE_GRACE + 1)
            fds_after_grace = server.fds()
            time.sleep(3)  # the holder: idle at 2 s after it connected, aborted by 2 + grace
            fds_after_idle = server.fds()
            for sock in [holder, *refused]:
                sock.close()
            log = server.log_bytes()
        finally:
            server.stop()
        results[kind] = {
            "fds_at_start": fds_at_start,
            "fds_3s_after_50_refusals": fds_after_grace,
            "fds_after_idle_and_grace": fds_after_idle,
            "tracebacks": log.count(b"Traceback"),
        }
    return results


def distinct_headers(content: bytes, content_type: str = "text/json") -> bytes:
    """1,024 frames of ``content`` whose headers all differ (in ``byteorder``, which the server ignores)."""
    names = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef"]
    encoding = "utf-8" if content_type == "text/json" else "binary"
    return b"".join(
        frame_with(content, {"byteorder": name, "content-type": content_type, "content-encoding": encoding})
        for name in names
    )


def frame_with(content: bytes, fields: dict) -> bytes:
    header = json.dumps({**fields, "content-length": len(content)}, separators=(",", ":")).encode()
    return len(header).to_bytes(2, "big") + header + content


def pipelined(server: Server, payload: bytes, total: int = 16_000_000) -> dict:
    """Send ``payload`` repeated to ``total`` bytes on one connection, reading every answer."""
    data = payload * max(1, total // len(payload))
    received = [0]
    cpu = server.cpu()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:

        def read() -> None:
            while chunk := sock.recv(MIB):
                received[0] += len(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reader.join(120)
    time.sleep(0.3)
    used = server.cpu() - cpu
    return {
        "sent_mb": round(len(data) / 1e6, 1),
        "received_mb": round(received[0] / 1e6, 1),
        "cpu_s": round(used, 3),
        "cpu_s_per_mb": round(used / (len(data) / 1e6), 3),
    }


def attack_small(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        return {
            "surrogate-action": pipelined(server, distinct_headers(b'{"action":"\\ud800"}')),
            "invalid-action": pipelined(server, distinct_headers(b'{"action":""}')),
            "search-miss": pipelined(server, distinct_headers(b'{"action":"search","value":"\\udfff"}')),
            "binary": pipelined(server, distinct_headers(b"", content_type="x")),
        }
    finally:
        server.stop()


def cpu_per_connection(server: Server, port: int, request: bytes, count: int = 1000) -> float:
    """Server CPU milliseconds per connection that sends ``request`` and reads the answer to the end."""
    cpu = server.cpu()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    time.sleep(0.3)
    return round((server.cpu() - cpu) / count * 1000, 3)


def attack_metrics(folder: Path) -> dict:
    server = Server("--port", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1", folder=folder)
    try:
        metrics_port = int(re.search(rb"MetricsSite starting on (\d+)", server.log_bytes()).group(1))
        start, cpu = server.rss(), server.cpu()
        gets = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 80_000  # 2.7 MB
        post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * (256 * MIB)
        peers = open_peers(metrics_port, [gets] * 4 + [post])
        send_all(peers, 20)
        time.sleep(1)
        sent = sum(entry[2] for entry in peers)
        peak = server.status("VmHWM")
        for sock, *_ in peers:
            sock.close()
        used = round(server.cpu() - cpu, 2)
        time.sleep(CLOSE_GRACE)
        return {
            "sent_mb": round(sent / 1e6, 1),
            "cpu_s": used,
            "rss_start_mib": round(start / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "growth_mib": round((peak - start) / MIB, 1),
            "cpu_ms_per_scrape": cpu_per_connection(server, metrics_port, b"GET /metrics HTTP/1.0\r\n\r\n"),
            "cpu_ms_per_main_port_connection": cpu_per_connection(server, server.port, search("morpheus")),
        }
    finally:
        server.stop()


ATTACKS = {
    "punycode": attack_punycode,
    "json-cpu": attack_json_cpu,
    "json-memory": attack_json_memory,
    "closed": attack_closed,
    "encodings": attack_encodings,
    "logs": attack_logs,
    "refused": attack_refused,
    "small": attack_small,
    "metrics": attack_metrics,
}


def verdicts(results: dict) -> list[tuple[str, bool]]:
    checks = []
    if "punycode" in results:
        r = results["punycode"]
        checks.append(("punycode: at most 0.1 CPU-s per MB sent", r["cpu_s_per_mb"] <= 0.1))
        checks.append(("punycode: probe p99 under 50 ms", r["probe_p99_ms"] < 50))
    if "json-cpu" in results:
        for shape, r in results["json-cpu"].items():
            checks.append((f"json-cpu ({shape}): at most 0.1 CPU-s per MB sent", r["cpu_s_per_mb"] <= 0.1))
        checks.append(("json-cpu (nested): probe p99 under 50 ms", results["json-cpu"]["nested"]["probe_p99_ms"] < 50))
    if "json-memory" in results:
        r = results["json-memory"]
        checks.append(("json-memory: peak RSS growth within the README's budget", r["growth_mib"] <= r["budget_mib"]))
    if "closed" in results:
        checks.append(
            ("closed: RSS back within 32 MiB within 5 s", results["closed"]["back_within_32_mib_after_s"] is not None)
        )
    if "encodings" in results:
        checks.append(("encodings: no lasting growth over 32 MiB", results["encodings"]["lasting_growth_mib"] <= 32))
    if "logs" in results:
        for log_format, r in results["logs"].items():
            checks.append((f"logs ({log_format}): no traceback", r["tracebacks"] == 0))
            checks.append((f"logs ({log_format}): no line over 2000 bytes", r["longest_line"] <= 2000))
            checks.append((f"logs ({log_format}): no raw control character", r["raw_control_characters"] == 0))
    if "refused" in results:
        for kind, r in results["refused"].items():
            checks.append(
                (
                    f"refused ({kind}): gone within the grace period",
                    r["fds_3s_after_50_refusals"] <= r["fds_at_start"] + 2,
                )
            )
            checks.append(
                (
                    f"refused ({kind}): the silent one gone after idle + grace",
                    r["fds_after_idle_and_grace"] <= r["fds_at_start"] + 1,
                )
            )
            checks.append((f"refused ({kind}): no traceback", r["tracebacks"] == 0))
    if "small" in results:
        for kind, r in results["small"].items():
            checks.append((f"small ({kind}): at most 0.1 CPU-s per MB sent", r["cpu_s_per_mb"] <= 0.1))
    if "metrics" in results:
        checks.append(("metrics: RSS growth under 32 MiB", results["metrics"]["growth_mib"] < 32))
    return checks  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated attacks: " + ", ".join(ATTACKS))
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()
    # Stopped by a supervisor (timeout(1) sends SIGTERM): unwind, so each attack stops its server.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    names = args.only.split(",") if args.only else list(ATTACKS)
    unknown = [name for name in names if name not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="sockapp-attack-") as folder:
        for name in names:
            started = time.monotonic()
            results[name] = ATTACKS[name](Path(folder))
            if not args.json:
                print(f"{name:10s} ({time.monotonic() - started:.0f} s): {json.dumps(results[name])}", flush=True)
    checks = verdicts(results)
    if args.json:
        print(json.dumps({"results": results, "checks": dict(checks)}))
    else:
        for what, ok in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
