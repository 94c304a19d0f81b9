"""The kv app: a key-value store on SQLite through adbapi, served for real."""

from __future__ import annotations

import json
import signal
import sqlite3
from typing import Any

import pytest
import pytest_twisted
from conftest import run_sockapp, tool
from twisted.internet import reactor

from sockapp.apps import kv
from sockapp.client import connect
from sockapp.errors import ServerError
from sockapp.server import AppFactory

TIMEOUT = 30


def within(deferred):
    return deferred.addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_get_set_delete_and_keys(listen, tmp_path):
    app: Any = kv.app(str(tmp_path / "kv.sqlite3"))  # with the pool kv.app hangs on it, for closing
    try:
        endpoint = await listen(AppFactory(app))
        client = await within(connect(reactor, endpoint))
        for key in ("b", "a", "ab", "c"):
            assert await within(client.call("set", {"key": key, "value": {"k": key}})) is True
        assert await within(client.call("get", "ab")) == {"k": "ab"}
        assert await within(client.call("keys")) == ["a", "ab", "b", "c"]
        assert await within(client.call("keys", {"prefix": "a"})) == ["a", "ab"]
        assert await within(client.call("keys", {"limit": 2})) == ["a", "ab"]
        assert await within(client.call("delete", "a")) is True
        assert await within(client.call("delete", "a")) is False
        with pytest.raises(ServerError) as missing:
            await within(client.call("get", "a"))
        assert missing.value.code == "not-found"
        for bad in ({"key": 5, "value": 1}, {"value": 1}, {"key": "", "value": 1}):
            with pytest.raises(ServerError) as caught:
                await within(client.call("set", bad))
            assert caught.value.code == "bad-request"
        for odd in (("set", {"key": "a\ud800", "value": 1}), ("get", "a\udfff"), ("keys", {"prefix": "\ud800"})):
            with pytest.raises(ServerError) as caught:
                await within(client.call(*odd))
            assert caught.value.code == "bad-request"  # not an internal error with a traceback
        assert await within(client.call("set", {"key": "s", "value": "half \udfff"})) is True
        assert await within(client.call("get", "s")) == "half \udfff"
        with pytest.raises(ServerError) as too_many:
            await within(client.call("keys", {"limit": kv.MAX_KEYS + 1}))
        assert too_many.value.code == "bad-request"
        await within(client.close())
    finally:
        app.pool.close()


def stop(server) -> None:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(TIMEOUT)


KV = ("sockapp", "--app", "sockapp.apps.kv:app", "--port", "tcp:0:interface=127.0.0.1")


def start_kv(server_processes, database: str):
    server = server_processes([tool("twistd"), "-n", "--pidfile=", *KV, "--app-option", f"database={database}"])
    return server, int(server.wait_for_log(r"AppFactory starting on (\d+)").group(1))


def test_writes_survive_a_restart(server_processes, tmp_path):
    database = str(tmp_path / "kv.sqlite3")
    server, port = start_kv(server_processes, database)
    stored = run_sockapp(port, "call", "set", '{"key": "greeting", "value": {"text": "hi \U0001f436"}}')
    assert (stored.returncode, stored.stdout) == (0, "true\n"), stored.stderr
    stop(server)
    _, port = start_kv(server_processes, database)
    read = run_sockapp(port, "call", "get", "greeting")
    assert json.loads(read.stdout) == {"text": "hi \U0001f436"}


def test_concurrent_sets_from_50_connections_lose_nothing(server_processes, tmp_path):
    database = str(tmp_path / "kv.sqlite3")
    server, port = start_kv(server_processes, database)
    record = tmp_path / "acknowledged.jsonl"
    bench = run_sockapp(
        port,
        "bench",
        "--action",
        "set",
        "--value",
        '{"key": "k{n}", "value": "v{n}"}',
        "-c",
        "50",
        "-n",
        "2000",
        "--acknowledged",
        str(record),
        "--json",
    )
    summary = json.loads(bench.stdout)
    assert summary["requests"] == 2000 and summary["errors"] == 0, summary
    stop(server)  # every acknowledged set has committed: count them in the file itself
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT key, value FROM kv").fetchall()
    assert len(rows) == 2000
    assert all(json.loads(value) == "v" + key[1:] for key, value in rows)
    # What the bench recorded as acknowledged is exactly what the file holds.
    acknowledged = [json.loads(line) for line in record.read_text().splitlines()]
    assert {(a["value"]["key"], a["value"]["value"]) for a in acknowledged} == {
        (key, json.loads(value)) for key, value in rows
    }
    assert len(acknowledged) == 2000 and all(a["action"] == "set" and a["result"] is True for a in acknowledged)


def test_a_database_in_a_missing_directory_is_a_one_line_usage_error(tmp_path):
    from twisted.python import usage

    from sockapp.tap import search

    options = search.Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(
            ["--app", "sockapp.apps.kv:app", "--app-option", f"database={tmp_path}/missing/kv.sqlite3"]
        )
    assert "does not exist" in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def kv_clients(tmp_path, tls_files):
    """A client CA and two clients of it, alice and bob: (CA file, {name: (certificate, key)})."""
    from conftest import _pem_key, issue_certificate, make_ca
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = make_ca("kv clients")
    (tmp_path / "ca.pem").write_bytes(ca[1].public_bytes(Encoding.PEM))
    files = {}
    for name in ("alice", "bob"):
        key, cert = issue_certificate(ca, name, [x509.DNSName(f"{name}.example")])
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(_pem_key(key))
        files[name] = (tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
    return tmp_path / "ca.pem", files


@pytest_twisted.ensureDeferred
async def test_only_writers_may_set_and_delete_and_the_others_are_answered_forbidden(
    tmp_path, tls_files, kv_clients, listen
):
    """The README's per-action authorization: --app-option writers=alice on an mtls: port."""
    from twisted.internet.endpoints import serverFromString

    ca, people = kv_clients
    app: Any = kv.app(str(tmp_path / "kv.sqlite3"), writers="alice")
    port = await serverFromString(
        reactor, f"mtls:0:interface=127.0.0.1:privateKey={tls_files['key']}:certKey={tls_files['cert']}:caCerts={ca}"
    ).listen(AppFactory(app))
    clients = []
    try:
        for name in ("alice", "bob"):
            certificate, key = people[name]
            endpoint = (
                f"tls:127.0.0.1:{port.getHost().port}:trustRoots={tls_files['trust']}"
                f":certificate={certificate}:privateKey={key}"
            )
            clients.append(await within(connect(reactor, endpoint)))
        alice, bob = clients
        plain = await within(connect(reactor, await listen(AppFactory(app))))  # no certificate at all
        clients.append(plain)
        assert await within(alice.call("set", {"key": "k", "value": 1})) is True
        for who, call in (
            (bob, ("set", {"key": "k", "value": 2})),
            (bob, ("delete", "k")),
            (plain, ("set", {"key": "k", "value": 3})),
        ):
            with pytest.raises(ServerError) as refused:
                await within(who.call(*call))
            assert (refused.value.code, refused.value.message) == (
                "forbidden",
                "writing needs a client certificate for alice",
            )
        assert await within(bob.call("get", "k")) == 1  # bob's connection serves on; reading is for everyone
        assert await within(alice.call("delete", "k")) is True
    finally:
        for client in clients:
            await within(client.close())
        await port.stopListening()
        app.pool.close()


def test_the_end_of_a_prefixs_range_is_the_first_string_after_every_key_that_starts_with_it():
    assert kv._after_prefix("ab") == "ac"
    assert kv._after_prefix("a\U0010ffff") == "b"  # nothing comes after U+10FFFF: the range ends after "a"
    assert kv._after_prefix("\ud7ff") == "\ue000"  # surrogates are never in a key: skipped
    assert kv._after_prefix("\U0010ffff\U0010ffff") is None
    assert kv._after_prefix("") is None
    for prefix in ("ab", "a\U0010ffff", "\ud7ff", "z"):
        end = kv._after_prefix(prefix)
        assert end is not None and prefix < end and not end.startswith(prefix)
        assert all(prefix + tail < end for tail in ("", "\U0010ffff" * 3, "zzz"))


@pytest_twisted.ensureDeferred
async def test_keys_are_limited_in_utf8_bytes_and_answers_in_size_and_after_pages_through_the_rest(listen, tmp_path):
    app: Any = kv.app(str(tmp_path / "kv.sqlite3"))
    try:
        client = await within(connect(reactor, await listen(AppFactory(app))))
        cjk = "\u4e2d"  # 3 bytes in UTF-8
        longest = cjk * (kv.MAX_KEY_BYTES // 3)
        assert await within(client.call("set", {"key": longest, "value": 1})) is True
        with pytest.raises(ServerError) as too_long:  # 683 characters: under 1024, but 2049 bytes
            await within(client.call("set", {"key": longest + cjk, "value": 1}))
        assert too_long.value.code == "bad-request" and "2048 bytes" in too_long.value.message
        # 300 keys of 2 KiB: 600 KiB of keys, more than one answer holds.
        stored = sorted(f"k{n:03d}" + cjk * 681 for n in range(300))
        for key in stored:
            assert await within(client.call("set", {"key": key, "value": None})) is True
        pages: list[list[str]] = []
        after = ""
        while True:
            page = await within(client.call("keys", {"prefix": "k", "limit": 1000, "after": after}))
            if not page:
                break
            assert sum(len(key.encode()) + 4 for key in page) <= kv.MAX_KEYS_ANSWER_BYTES
            pages.append(page)
            after = page[-1]
        assert [key for page in pages for key in page] == stored
        assert len(pages) == 3
        await within(client.close())
    finally:
        app.pool.close()


@pytest_twisted.ensureDeferred
async def test_a_prefix_reads_only_its_own_range_from_the_database(listen, tmp_path):
    app: Any = kv.app(str(tmp_path / "kv.sqlite3"))
    read: list[tuple] = []
    run_query = app.pool.runQuery

    def counted(query: str, args: tuple) -> Any:
        def note(rows: list) -> list:
            read.append((args, len(rows)))
            return rows

        return run_query(query, args).addCallback(note)

    try:
        client = await within(connect(reactor, await listen(AppFactory(app))))
        for n in range(50):
            assert await within(client.call("set", {"key": f"b{n:02d}", "value": n})) is True
        app.pool.runQuery = counted
        assert await within(client.call("keys", {"prefix": "a", "limit": 1000})) == []
        assert await within(client.call("keys", {"prefix": "b0", "limit": 1000})) == [f"b0{n}" for n in range(10)]
        assert [rows for _, rows in read] == [0, 10]  # not the 50 keys after "a", nor the 40 after "b09"
        await within(client.close())
    finally:
        app.pool.close()


def nested(depth: int) -> Any:
    """Arrays nested ``depth`` deep, each with a string beside it: not too dense for the wire."""
    value: Any = ["x"]
    for _ in range(depth - 1):
        value = [value, "padding"]
    return value


@pytest_twisted.ensureDeferred
async def test_a_value_is_stored_up_to_the_nesting_limit_and_a_deeper_one_is_a_bad_request(listen, tmp_path):
    app: Any = kv.app(str(tmp_path / "kv.sqlite3"))
    try:
        client = await within(connect(reactor, await listen(AppFactory(app))))
        deepest = nested(kv.MAX_VALUE_DEPTH)
        assert await within(client.call("set", {"key": "deep", "value": {"k": deepest[0]}})) is True
        assert await within(client.call("get", "deep")) == {"k": deepest[0]}
        for too_deep in (nested(kv.MAX_VALUE_DEPTH + 1), {"k": deepest}, [1, {"a": [deepest]}]):
            with pytest.raises(ServerError) as caught:
                await within(client.call("set", {"key": "deeper", "value": too_deep}))
            assert caught.value.code == "bad-request"
            assert str(kv.MAX_VALUE_DEPTH) in caught.value.message
        await within(client.close())
    finally:
        app.pool.close()


def test_a_value_nested_too_deeply_to_store_is_a_bad_request(server_processes, tmp_path):
    from conftest import send_and_read_all

    from sockapp.wire.framing import FrameDecoder, Message

    _, port = start_kv(server_processes, str(tmp_path / "kv.sqlite3"))
    depth = 970  # the wire's parser takes it (one bracket per 7 characters is not too dense), near Python's own limit
    text = '{"action": "set", "value": {"key": "deep", "value": ' + "[" * depth + "]" * depth + "}}" + " " * (7 * depth)
    content = text.encode()
    header = json.dumps(
        {"byteorder": "big", "content-type": "text/json", "content-encoding": "utf-8", "content-length": len(content)}
    ).encode()
    data = send_and_read_all(("127.0.0.1", port), len(header).to_bytes(2, "big") + header + content)
    decoder = FrameDecoder(side="client")
    decoder.receive_data(data)
    answer = decoder.next_message()
    assert isinstance(answer, Message)
    assert answer.document["error"]["code"] == "bad-request", answer.document


def test_nan_and_infinity_are_not_stored_and_the_connection_serves_on(server_processes, tmp_path):
    """Python's json reads NaN, Infinity and 1e400 (as infinity); stored, they would come back in
    answers that are not JSON text. They are refused in-band, and the next request is answered."""
    from conftest import send_and_read_all, split_frames

    _, port = start_kv(server_processes, str(tmp_path / "kv.sqlite3"))

    def frame(text: str) -> bytes:
        content = text.encode()
        header = json.dumps(
            {
                "byteorder": "big",
                "content-type": "text/json",
                "content-encoding": "utf-8",
                "content-length": len(content),
            }
        ).encode()
        return len(header).to_bytes(2, "big") + header + content

    requests = [
        frame('{"action": "set", "value": {"key": "n", "value": NaN}}'),
        frame('{"action": "set", "value": {"key": "n", "value": [1e400]}}'),
        frame('{"action": "set", "value": {"key": "n", "value": -Infinity}}'),
        frame('{"action": "get", "value": "n"}'),
    ]
    answers = [
        json.loads(content) for _, content in split_frames(send_and_read_all(("127.0.0.1", port), b"".join(requests)))
    ]
    assert [answer["error"]["code"] for answer in answers] == ["content-not-json"] * 3 + ["not-found"]
