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
