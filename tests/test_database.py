"""sockapp.apps.database: one setting, SQLite or PostgreSQL; the database's failures answered ``unavailable``.

None of this needs a PostgreSQL server (``make integration`` runs the kv app
on a real one, stopped and restarted: tests/test_integration_kv.py).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage

from sockapp.app import ActionError
from sockapp.apps import database, kv
from sockapp.client import connect
from sockapp.errors import ServerError
from sockapp.server import AppFactory
from sockapp.tap import search

TIMEOUT = 30


def within(deferred):
    return deferred.addTimeout(TIMEOUT, reactor)


@pytest.fixture
def log_events():
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    yield events
    globalLogPublisher.removeObserver(cast(ILogObserver, events.append))


@pytest.fixture
def db(tmp_path):
    """An SQLite database in this test's folder, closed after the test."""
    opened = database.open_database(str(tmp_path / "kv.sqlite3"))
    yield opened
    opened.close()


def test_a_postgresql_uri_names_postgresql_and_anything_else_an_sqlite_file():
    assert database.is_postgresql("postgresql://kv@db.internal/kv")
    assert database.is_postgresql("postgres://kv@db.internal:5433/kv")
    for sqlite_file in ("kv.sqlite3", "/var/lib/kv/kv.sqlite3", "postgresql.sqlite3", "./postgresql:/x"):
        assert not database.is_postgresql(sqlite_file)


def test_the_sql_is_written_once_with_question_marks_and_given_to_each_driver_in_its_style(tmp_path):
    sqlite_db = database.open_database(str(tmp_path / "kv.sqlite3"))
    postgresql_db = database.open_database("postgresql://kv@127.0.0.1:1/kv")
    try:
        statement = "SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?"
        assert sqlite_db.sql(statement) == statement
        assert postgresql_db.sql(statement) == "SELECT key FROM kv WHERE key >= %s ORDER BY key LIMIT %s"
    finally:
        sqlite_db.close()
        postgresql_db.close()


def test_the_database_in_logs_never_shows_the_password():
    db = database.open_database("postgresql://kv:s3cret@db.internal:5433/kvstore?sslmode=require")
    try:
        assert db.where == "postgresql://kv@db.internal:5433/kvstore"
        assert "s3cret" not in db.where
    finally:
        db.close()


def test_a_connection_timeout_is_added_unless_the_uri_has_one():
    for uri, expected in (
        ("postgresql://kv@127.0.0.1:1/kv", str(database.CONNECT_TIMEOUT)),
        ("postgresql://kv@127.0.0.1:1/kv?connect_timeout=17", "17"),
    ):
        db = database.open_database(uri)
        try:
            import psycopg

            (conninfo,) = db.pool.connargs
            assert psycopg.conninfo.conninfo_to_dict(conninfo)["connect_timeout"] == expected
        finally:
            db.close()


@pytest.mark.parametrize(
    "setting, said",
    [
        ("postgresql://kv@127.0.0.1:1/kv?nosuchoption=1", "not a PostgreSQL connection URI: "),
        ("postgresql://kv@[::1/kv", "not a PostgreSQL connection URI: "),
    ],
)
def test_a_malformed_uri_is_a_one_line_usage_error(setting, said):
    options = search.Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(["--app", "sockapp.apps.kv:app", "--app-option", f"database={setting}"])
    message = str(caught.value)
    assert said in message and "\n" not in message, message


def test_without_psycopg_a_postgresql_uri_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(ValueError, match=r"needs the psycopg driver: pip install 'sockapp\[postgresql\]'"):
        database.open_database("postgresql://kv@127.0.0.1:1/kv")
    # SQLite needs nothing more.
    assert not database.is_postgresql("kv.sqlite3")


def test_postgresql_text_cannot_hold_nul_so_a_key_with_one_is_a_bad_request_there_only(tmp_path):
    postgresql_db = database.open_database("postgresql://kv@127.0.0.1:1/kv")
    sqlite_db = database.open_database(str(tmp_path / "kv.sqlite3"))
    try:
        with pytest.raises(ActionError) as caught:
            postgresql_db.text("a\x00b", "the key")
        assert caught.value.code == "bad-request" and "U+0000" in caught.value.message
        assert sqlite_db.text("a\x00b", "the key") == "a\x00b"
        for db in (postgresql_db, sqlite_db):
            with pytest.raises(ActionError) as surrogate:
                db.text("a\ud800", "the key")
            assert surrogate.value.code == "bad-request"
    finally:
        postgresql_db.close()
        sqlite_db.close()


@pytest_twisted.ensureDeferred
async def test_a_failure_is_tried_once_more_before_it_is_answered_unavailable(db, log_events):
    calls: list[int] = []

    def stale_then_fine() -> Deferred[Any]:
        # A pooled connection left over from before a database restart fails once.
        calls.append(1)
        return fail(sqlite3.OperationalError("server closed the connection")) if len(calls) == 1 else succeed(7)

    assert await db.run(stale_then_fine) == 7
    assert len(calls) == 2
    assert not [e for e in log_events if e.get("log_namespace") == database.__name__]

    def always_down() -> Deferred[Any]:
        calls.append(1)
        return fail(sqlite3.OperationalError("unable to open database file"))

    calls.clear()
    with pytest.raises(ActionError) as caught:
        await db.run(always_down)
    assert (caught.value.code, len(calls)) == ("unavailable", 2)

    def a_bug() -> Deferred[Any]:
        return fail(sqlite3.IntegrityError("NOT NULL constraint failed"))

    with pytest.raises(sqlite3.IntegrityError):  # not the database's state: an internal-error, not retried
        await db.run(a_bug)


@pytest_twisted.ensureDeferred
async def test_an_unusable_database_is_answered_unavailable_in_band_and_the_server_recovers_by_itself(
    listen, tmp_path, log_events
):
    path = tmp_path / "kv.sqlite3"
    path.mkdir()  # SQLite cannot open a directory: the database is there but unusable
    app: Any = kv.app(str(path))
    try:
        endpoint = await listen(AppFactory(app))
        client = await within(connect(reactor, endpoint))
        for request in (("set", {"key": "k", "value": 1}), ("get", "k"), ("keys", None), ("delete", "k")):
            with pytest.raises(ServerError) as caught:
                await within(client.call(*request))
            assert caught.value.code == "unavailable"
        # The connection serves on, and what needs no database is answered.
        assert await within(client.call("ping")) == "pong"
        with pytest.raises(ServerError) as bad:
            await within(client.call("get", 5))
        assert bad.value.code == "bad-request"

        os.rmdir(path)  # the database comes back: no restart, no reconnect by the client
        assert await within(client.call("set", {"key": "k", "value": 1})) is True
        assert await within(client.call("get", "k")) == 1
        await within(client.close())
    finally:
        app.pool.close()
    said = [formatEvent(e) for e in log_events if e.get("log_namespace") == database.__name__]
    assert len(said) == 2, said  # one line when the outage began, one when it ended: not one per request
    assert "is unavailable: unable to open database file" in said[0]
    assert said[1].endswith("is available again (4 requests were answered unavailable)")
    assert not [e for e in log_events if "log_failure" in e]  # no traceback


@pytest_twisted.ensureDeferred
async def test_queries_waiting_for_a_hung_database_are_bounded_even_when_their_handlers_give_up(db, monkeypatch):
    monkeypatch.setattr(database, "MAX_WAITING", 3)
    hung: list[Deferred[Any]] = []  # queries a hung database never finishes

    def query() -> Deferred[Any]:
        hung.append(Deferred())
        return hung[-1]

    def refused_at_once() -> ActionError:
        """The next request is answered at once (no waiting on the hung database), and nothing is queued."""
        outcome: list[Any] = []
        Deferred.fromCoroutine(db.run(query)).addBoth(outcome.append)
        assert len(outcome) == 1, "the request waits for the hung database"
        assert len(hung) == 3
        return outcome[0].value

    waiting = [Deferred.fromCoroutine(db.run(query)) for _ in range(3)]
    refused = refused_at_once()
    assert refused.code == "unavailable" and "not keeping up" in refused.message
    # --action-timeout cancels the handlers; their queries still hold adbapi's threads.
    for handler in waiting:
        handler.cancel()
        handler.addErrback(lambda _: None)
    assert refused_at_once().code == "unavailable"
    # The database answers them (to nobody now): room again.
    for work in hung:
        work.callback([])
    assert await db.run(lambda: succeed("served")) == "served"


@pytest_twisted.ensureDeferred
async def test_a_connections_queries_run_one_after_another_and_other_connections_do_not_wait(db):
    started: list[str] = []
    work: dict[str, Deferred[Any]] = {}

    def query(name: str) -> Callable[[], Deferred[Any]]:
        def start() -> Deferred[Any]:
            started.append(name)
            work[name] = Deferred()
            return work[name]

        return start

    one, other = object(), object()
    first = Deferred.fromCoroutine(db.run(query("first"), one))
    second = Deferred.fromCoroutine(db.run(query("second"), one))  # pipelined behind "first" on one connection
    elsewhere = Deferred.fromCoroutine(db.run(query("elsewhere"), other))
    assert started == ["first", "elsewhere"]  # "second" waits for "first" to be done in the database
    work["first"].callback(1)
    assert await first == 1 and started == ["first", "elsewhere", "second"]
    work["second"].callback(2)
    work["elsewhere"].callback(3)
    assert (await second, await elsewhere) == (2, 3)
    assert not db._in_order  # nothing kept once a connection has nothing in flight


@pytest_twisted.ensureDeferred
async def test_a_hung_database_is_logged_once_when_requests_are_turned_away_and_once_when_it_is_back(
    db, monkeypatch, log_events
):
    monkeypatch.setattr(database, "MAX_WAITING", 2)
    hung: list[Deferred[Any]] = [Deferred(), Deferred()]

    def waits_on(d: Deferred[Any]) -> Callable[[], Deferred[Any]]:
        return lambda: d

    waiting = [Deferred.fromCoroutine(db.run(waits_on(d))) for d in hung]
    for _ in range(50):
        with pytest.raises(ActionError):
            await db.run(lambda: succeed(None))
    for d in hung:
        d.callback(None)
    await waiting[0]
    await waiting[1]
    assert await db.run(lambda: succeed("ok")) == "ok"
    said = [formatEvent(e) for e in log_events if e.get("log_namespace") == database.__name__]
    assert len(said) == 2, said
    assert said[0].endswith("is unavailable: 2 queries are waiting for it (is it hung?)")
    assert said[1].endswith("is available again (50 requests were answered unavailable)")


class OverALimit(sqlite3.OperationalError):
    sqlstate = "54000"  # program_limit_exceeded, as psycopg gives for an index row too large


@pytest_twisted.ensureDeferred
async def test_a_request_over_a_limit_of_the_database_is_a_bad_request_not_an_outage(db, log_events):
    calls: list[int] = []

    def too_large() -> Deferred[Any]:
        calls.append(1)
        return fail(OverALimit("index row size 3088 exceeds btree version 4 maximum 2704"))

    with pytest.raises(ActionError) as caught:
        await db.run(too_large)
    assert caught.value.code == "bad-request" and len(calls) == 1  # not tried again
    assert db.pool.epoch == 0  # no connection is suspected
    assert not [e for e in log_events if e.get("log_namespace") == database.__name__]


def test_after_a_failure_each_thread_opens_a_new_connection_before_its_next_query(db):
    pool = db.pool  # pool.connect() is called in the pool's threads; this thread will do as one
    first = pool.connect()
    assert pool.connect() is first
    pool.epoch += 1  # what Database.run does when a query fails for the database's sake
    second = pool.connect()
    assert second is not first
    with pytest.raises(sqlite3.ProgrammingError):  # the old one was closed
        first.execute("SELECT 1")
    assert pool.connect() is second
    pool.disconnect(second)


def test_stopping_waits_a_bounded_time_for_a_query_stuck_in_a_hung_database(tmp_path, monkeypatch, log_events):
    import threading

    monkeypatch.setattr(database, "SHUTDOWN_WAIT", 0.2)
    db = database.open_database(str(tmp_path / "kv.sqlite3"))
    pool = db.pool
    pool.start()
    stuck = threading.Event()
    pool.threadpool.callInThread(stuck.wait)  # a query the database never answers
    try:
        pool.close()  # returns: the stuck thread is a daemon, left to die with the process
        assert all(thread.daemon for thread in pool.threadpool.threads)
    finally:
        stuck.set()
    said = [formatEvent(e) for e in log_events if e.get("log_namespace") == database.__name__]
    assert said == ["kv database: queries still running after 0.2 s; stopping without them"]


@pytest.mark.parametrize(
    "setting, said",
    [
        ("postgresql://kv@127.0.0.1:notaport/kv", "the database's port 'notaport' is not a TCP port"),
        ("postgresql://kv@127.0.0.1:0/kv", "the database's port '0' is not a TCP port"),
        ("postgresql://kv@127.0.0.1/kv?sslmode=bogus", "sslmode='bogus' is not one of allow, disable, prefer"),
        ("postgresql://kv@127.0.0.1/kv?connect_timeout=soon", "connect_timeout='soon' is not a whole number"),
    ],
)
def test_a_value_libpq_would_refuse_only_when_connecting_is_refused_at_start_up(setting, said):
    with pytest.raises(ValueError) as caught:
        database.open_database(setting)
    assert said in str(caught.value)


def test_a_password_libpq_cannot_read_is_not_repeated_in_the_error():
    with pytest.raises(ValueError) as caught:
        database.open_database("postgresql://alice:S3cr%ZZetPW@127.0.0.1:5432/kv")
    assert "S3cr" not in str(caught.value) and "***" in str(caught.value), str(caught.value)
