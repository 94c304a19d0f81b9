"""The kv app on PostgreSQL for real: a database that stops and comes back, and three kv servers on one
database behind deploy/haproxy.cfg with one of them killed under a load of sets, after which every
acknowledged set is read back.

Run by ``make integration`` (which installs Debian's postgresql and haproxy
when they are missing); each test session starts a private PostgreSQL
cluster on 127.0.0.1 (tests/pg_cluster.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import ROOT, tool
from test_integration_haproxy import haproxy_stats, kill_then_finish, start_haproxy, stop_if_running, wait_until
from test_smoke import scrape

from sockapp.wire.framing import FrameDecoder, Message, encode_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KV = ("sockapp", "--app", "sockapp.apps.kv:app")
BACKENDS = 3
KILLED = 2  # sockapp2 in deploy/haproxy.cfg
BENCH_SECONDS = 10
KILL_AT = 3.0  # seconds into the load
SETS = ("sockapp_requests_total", (("action", "set"), ("outcome", "ok")))


def start_kv(start, database: str, *extra: str):
    server = start(
        [tool("twistd"), "-n", "--pidfile=", *KV, "--app-option", f"database={database}",
         "--port", "tcp:0:interface=127.0.0.1:backlog=1024", *extra]
    )  # fmt: skip
    server.port = int(server.wait_for_log(r"AppFactory starting on (\d+)").group(1))
    return server


class Connection:
    """One connection to a kv server: requests written, answers read in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.decoder = FrameDecoder(side="client")

    def send(self, action: str, value=None) -> None:
        self.sock.sendall(encode_json({"action": action, "value": value}))

    def answer(self) -> dict:
        while not isinstance(message := self.decoder.next_message(), Message):
            data = self.sock.recv(65536)
            assert data, "the connection closed before the answer"
            self.decoder.receive_data(data)
        return message.document

    def call(self, action: str, value=None) -> dict:
        self.send(action, value)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


def test_a_database_that_stops_is_answered_unavailable_and_the_server_recovers_by_itself(postgres, server_processes):
    database = postgres.create_database()
    server = start_kv(server_processes, database)
    connection = Connection(server.port)
    try:
        assert connection.call("set", {"key": "before", "value": {"n": 1}}) == {"result": True}

        postgres.stop()  # fast shutdown: the server's database sessions are cut, as in a restart or failover
        try:
            down = [connection.call("set", {"key": "during", "value": 2}), connection.call("get", "before")]
            # The other actions go on, on the same connection, and nothing is waiting on the database.
            assert connection.call("ping") == {"result": "pong"}
            assert connection.call("get", 5)["error"]["code"] == "bad-request"
        finally:
            postgres.start()
        assert [answer.get("error", {}).get("code") for answer in down] == ["unavailable", "unavailable"]

        # Back without a restart of the server: the first request after the database returns is served.
        assert connection.call("set", {"key": "after", "value": 3}) == {"result": True}
        assert connection.call("get", "before") == {"result": {"n": 1}}
        assert connection.call("get", "after") == {"result": 3}
        assert connection.call("get", "during")["error"]["code"] == "not-found"  # never acknowledged, never stored
        # The rest of the actions, on the same SQL as SQLite: keys in code point order, a prefix is a range.
        odd = ["b", "a", "ab", "Z", "\u00e9", "a\u00e9", "\U0001f600", "\uffff"]
        assert all(connection.call("set", {"key": key, "value": key}) == {"result": True} for key in odd)
        everything = sorted(["before", "after", *odd])
        assert connection.call("keys", {"limit": 1000}) == {"result": everything}
        assert connection.call("keys", {"prefix": "a", "limit": 4}) == {"result": ["a", "ab", "after", "a\u00e9"]}
        assert connection.call("keys", {"prefix": "a\u00e9"}) == {"result": ["a\u00e9"]}
        assert connection.call("set", {"key": "nul\u0000", "value": 1})["error"]["code"] == "bad-request"
        assert [connection.call("delete", key) for key in odd] == [{"result": True}] * len(odd)
        assert connection.call("delete", "a") == {"result": False}
    finally:
        connection.close()
    log = server.log()
    assert log.count("is unavailable:") == 1 and log.count("is available again (2 requests") == 1, log
    assert "Traceback" not in log, log
    assert postgres.sql("SELECT count(*) FROM kv", dbname(database)) == "2"


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_requests_pipelined_on_one_connection_reach_postgresql_in_their_order(postgres, server_processes):
    server = start_kv(server_processes, postgres.create_database())
    connection = Connection(server.port)
    try:
        for trial in range(20):
            key = f"k{trial}"
            connection.sock.sendall(
                b"".join(encode_json({"action": "set", "value": {"key": key, "value": n}}) for n in range(1, 17))
                + encode_json({"action": "get", "value": key})
            )
            answers = [connection.answer() for _ in range(17)]
            assert answers == [{"result": True}] * 16 + [{"result": 16}], (trial, answers)
            connection.sock.sendall(
                encode_json({"action": "delete", "value": key}) + encode_json({"action": "get", "value": key})
            )
            assert connection.answer() == {"result": True}
            assert connection.answer()["error"]["code"] == "not-found"
    finally:
        connection.close()


def test_after_a_database_restart_the_first_requests_are_served(postgres, server_processes):
    database = postgres.create_database()
    server = start_kv(server_processes, database)
    # Every pooled connection in use once: four clients pipelining at the same time.
    clients = [Connection(server.port) for _ in range(4)]
    try:
        for client in clients:
            client.sock.sendall(b"".join(encode_json({"action": "get", "value": f"k{n}"}) for n in range(32)))
        for client in clients:
            assert all(client.answer()["error"]["code"] == "not-found" for _ in range(32))
        postgres.stop()
        postgres.start()
        answers = [clients[0].call("set", {"key": f"after-{n}", "value": n}) for n in range(8)]
        assert answers == [{"result": True}] * 8
    finally:
        for client in clients:
            client.close()
    assert "is unavailable" not in server.log()


def test_a_database_not_in_utf8_is_said_so_and_answered_unavailable(postgres, server_processes):
    name = "kv_latin1_" + str(os.getpid())
    postgres.sql(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    server = start_kv(server_processes, postgres.url(name))
    connection = Connection(server.port)
    try:
        assert connection.call("set", {"key": "\u4e2d", "value": 1})["error"]["code"] == "unavailable"
        assert connection.call("keys")["error"]["code"] == "unavailable"
        assert connection.call("ping") == {"result": "pong"}
    finally:
        connection.close()
    log = server.log()
    assert "its encoding is LATIN1, not UTF8" in log and "Traceback" not in log, log


def test_a_key_of_the_longest_size_is_stored_on_postgresql(postgres, server_processes):
    server = start_kv(server_processes, postgres.create_database())
    connection = Connection(server.port)
    try:
        # 682 different CJK characters: 2046 bytes that do not compress, under PostgreSQL's 2704-byte index rows.
        longest = "".join(chr(0x4E00 + n) for n in range(682))
        assert connection.call("set", {"key": longest, "value": 1}) == {"result": True}
        assert connection.call("get", longest) == {"result": 1}
        assert connection.call("set", {"key": longest + "\u4e00", "value": 1})["error"]["code"] == "bad-request"
    finally:
        connection.close()
    assert "is unavailable" not in server.log()


def test_a_server_stops_on_sigterm_while_the_database_hangs(postgres, server_processes):
    server = start_kv(server_processes, postgres.create_database(), "--shutdown-timeout", "1")
    connection = Connection(server.port)
    try:
        assert connection.call("set", {"key": "k", "value": 1}) == {"result": True}
        postgres.pause()
        try:
            connection.send("set", {"key": "k", "value": 2})  # stuck in the hung database
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(60)  # without a bound on the wait for its queries, it waits as long as the hang
        finally:
            postgres.resume()
    finally:
        connection.close()
    assert "queries still running after 5 s; stopping without them" in server.log()


def read_back(port: int, acknowledged: list[dict], batch: int = 500) -> tuple[int, list]:
    """``get`` every acknowledged key from the server on ``port``, pipelined; (verified, mismatches)."""
    connection = Connection(port)
    verified, wrong = 0, []
    try:
        for start in range(0, len(acknowledged), batch):
            chunk = acknowledged[start : start + batch]
            connection.sock.sendall(b"".join(encode_json({"action": "get", "value": a["value"]["key"]}) for a in chunk))
            for sent in chunk:
                answer = connection.answer()
                if answer == {"result": sent["value"]["value"]}:
                    verified += 1
                else:
                    wrong.append((sent["value"], answer))
    finally:
        connection.close()
    return verified, wrong


def test_three_kv_servers_on_postgresql_behind_haproxy_lose_no_acknowledged_set(
    postgres, server_processes, haproxy_binary, tmp_path
):
    database = postgres.create_database()
    servers = [start_kv(server_processes, database, "--metrics", "tcp:0:interface=127.0.0.1") for _ in range(BACKENDS)]
    metrics = [int(server.wait_for_log(r"MetricsSite starting on (\d+)").group(1)) for server in servers]
    haproxy, front, stats_socket = start_haproxy(
        server_processes, haproxy_binary, ROOT / "deploy" / "haproxy.cfg", servers, tmp_path
    )
    record = tmp_path / "acknowledged.jsonl"
    bench = subprocess.Popen(
        [tool("sockapp"), "bench", "--connect", f"tcp:host=127.0.0.1:port={front}",
         "--action", "set", "--value", '{"key": "key-{n}", "value": "value-{n}"}',
         "--connections", "30", "--duration", str(BENCH_SECONDS), "--request-timeout", "20",
         "--acknowledged", str(record), "--no-answer-check", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started = time.monotonic()
    try:
        # At 3 s, once every backend has committed sets of its own, the second one dies.
        wait_until(
            lambda: (
                bench.poll() is not None
                or (time.monotonic() - started >= KILL_AT and all(scrape(port)[SETS] > 0 for port in metrics))
            ),
            "every backend acknowledging sets",
        )
        assert bench.poll() is None, "sockapp bench ended before the kill"
        killed = servers[KILLED - 1]
        sets_before_kill = scrape(metrics[KILLED - 1])[SETS]
        killed_at = time.monotonic() - started
        out, err = kill_then_finish(bench, killed, timeout=BENCH_SECONDS + 90)
    finally:
        stop_if_running(bench)
    assert bench.returncode == 0, f"sockapp bench failed:\n{out}\n{err}"
    summary = json.loads(out)
    acknowledged = [json.loads(line) for line in record.read_text().splitlines()]

    survivor = servers[0]
    verified, wrong = read_back(survivor.port, acknowledged)
    rows = int(postgres.sql("SELECT count(*) FROM kv", dbname(database)))
    live = [n for n in range(BACKENDS) if n != KILLED - 1]
    report = {
        "requests": summary["sent"],
        "acknowledged": len(acknowledged),
        "retried": summary["retries"],
        "failed": summary["errors"],
        "keys_verified": verified,
        "rows_in_postgresql": rows,
        "killed_at_s": round(killed_at, 2),
        "sets_per_backend": {
            **{f"sockapp{n + 1}": scrape(metrics[n])[SETS] for n in live},
            f"sockapp{KILLED}": f"{sets_before_kill:.0f} before it was killed",
        },
        "throughput_per_s": summary["throughput_per_s"],
    }
    print("\nkv on PostgreSQL behind HAProxy:", json.dumps(report, indent=2))

    # The pass condition: every acknowledged set is there, with the value sent.
    assert wrong == [], wrong[:5]
    assert verified == len(acknowledged) == summary["requests"] > 0
    # Unique keys: a row for each acknowledged set, and at most one more per request that was in flight.
    assert len(acknowledged) <= rows <= summary["sent"]
    assert summary["errors"] == 0, summary
    assert summary["retries"] > 0, "the killed backend had sets in flight: some must have been sent again"
    assert haproxy_stats(stats_socket)[f"sockapp{KILLED}"]["status"].startswith("DOWN")
    assert haproxy.proc.poll() is None
