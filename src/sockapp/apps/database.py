"""One ``twisted.enterprise.adbapi`` pool on SQLite or PostgreSQL, chosen by a single setting.

The kv app writes its SQL once, with ``?`` placeholders; `Database.sql`
turns them into the driver's own style. What the two databases do not share
is kept here: the schema's collation, how the schema is created by several
servers at once, and which driver errors mean "the database is not there"
(answered ``unavailable``, in-band) rather than "the request or the code is
wrong". PostgreSQL goes through psycopg 3, a DB-API 2.0 driver, which is all
adbapi asks of one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, Literal, TypeVar

from attrs import field, frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.python.failure import Failure

from sockapp.app import ActionError
from sockapp.wire.text import peer_text

POSTGRESQL_SCHEMES: Final = ("postgresql://", "postgres://")
"""A database setting that starts with one of these is a libpq connection URI; anything else is an SQLite file."""
CONNECT_TIMEOUT: Final = 5
"""Seconds to wait for PostgreSQL to accept a connection, unless the URI says ``connect_timeout``."""
POSTGRESQL_THREADS: Final = 4
"""Connections (and adbapi threads) to PostgreSQL per server: a server waits on at most this many queries at once."""
SCHEMA_LOCK: Final = 0x736F636B6B76  # "sockkv": serialises CREATE TABLE IF NOT EXISTS across servers
MAX_WAITING: Final = 1000
"""The most queries a server lets wait for the database (running or queued for adbapi's threads).

A hung database (a stopped process, a lost network with no reset) holds
every query: without a bound, a server that cancels the handlers at
``--action-timeout`` and takes more requests would queue work for adbapi's
threads without end. Beyond the bound a request is answered ``unavailable``
at once, and nothing is queued.
"""
SHUTDOWN_WAIT: Final = 5.0
"""Seconds a server that is stopping waits for queries still running in adbapi's threads (a hung database)."""
SSLMODES: Final = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
UNAVAILABLE: Final = "unavailable"
"""The error code of a request the database could not serve (down, unreachable, failing)."""

_T = TypeVar("_T")
log = Logger()


def is_postgresql(setting: str) -> bool:
    """Whether ``setting`` names a PostgreSQL database (a ``postgresql://`` URI) rather than an SQLite file."""
    return setting.startswith(POSTGRESQL_SCHEMES)


def _without_password(conninfo: str, psycopg: ModuleType) -> str:
    """The database as logs may show it, ``postgresql://USER@HOST:PORT/DBNAME``: never the password."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or params.get("hostaddr") or ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


class _QuietConnection(adbapi.Connection):
    """adbapi's connection wrapper, except that a connection found broken is dropped without a traceback.

    adbapi logs two tracebacks ("Rollback failed") for every transaction
    that a lost connection breaks; here the request's own error says what
    happened (once per outage, see `Database`), and the next transaction on
    that thread opens a new connection.
    """

    def rollback(self) -> None:
        connection: Any = self._connection  # set by adbapi's Connection before any transaction
        try:
            connection.rollback()
            broken = bool(getattr(connection, "closed", False))
        except Exception:  # noqa: BLE001 - any failure to roll back means the connection is unusable
            broken = True
        if broken:
            self._pool.disconnect(connection)


class DatabaseUnusable(Exception):
    """The database answers but cannot serve the kv app as it is (its encoding): said once an outage, in the log."""


class _DaemonThread(threading.Thread):
    """A pool thread that does not hold the process's exit (one stuck in a query to a hung database)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class _Pool(adbapi.ConnectionPool):
    """adbapi's pool, with `_QuietConnection` for its connections, connections opened before the latest
    failure replaced before use, and a stop that does not wait for ever on a hung database.

    After a database restart every pooled connection is stale, and each
    fails once when next used. Each failure the server sees moves
    ``epoch`` on; a thread whose connection is older opens a new one first,
    so one failed query costs one reconnection per thread rather than one
    failed request per thread.
    """

    connectionFactory = _QuietConnection
    epoch = 0  # set from the reactor thread, read in the pool's threads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.opened_in: dict[int, int] = {}  # thread id -> the epoch its connection was opened in
        adbapi.ConnectionPool.__init__(self, *args, **kwargs)

    def start(self) -> None:
        self.threadpool.threadFactory = _DaemonThread  # before its first thread, made by start()
        adbapi.ConnectionPool.start(self)

    def connect(self) -> Any:
        tid = self.threadID()
        connection = self.connections.get(tid)
        if connection is not None and self.opened_in.get(tid, 0) < self.epoch:
            self.disconnect(connection)
        if tid not in self.connections:
            self.opened_in[tid] = self.epoch
        return adbapi.ConnectionPool.connect(self)

    def finalClose(self) -> None:
        """adbapi's, except that the threads get `SHUTDOWN_WAIT` seconds to finish their queries, not for ever."""
        self.shutdownID = None
        stopping = threading.Thread(target=self.threadpool.stop, daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_WAIT)
        self.running = False
        if stopping.is_alive():  # threads stuck in queries: their connections are theirs, and die with the process
            log.warn("kv database: queries still running after {wait:g} s; stopping without them", wait=SHUTDOWN_WAIT)
            return
        for connection in self.connections.values():
            self._close(connection)
        self.connections.clear()


def _prepare_sqlite(connection: sqlite3.Connection) -> None:
    """Each SQLite connection: durable writes that readers do not block, and the schema."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    connection.commit()


def _prepare_postgresql(connection: Any) -> None:
    """Each PostgreSQL connection: the schema, created once even when several servers start together.

    ``CREATE TABLE IF NOT EXISTS`` run by two sessions at once can fail in
    the second with a unique violation on the catalog; an advisory lock for
    the transaction serialises them. ``COLLATE "C"`` orders keys by code
    point, as SQLite's BINARY does, so ``keys`` answers the same on both and
    a prefix is one contiguous range of the primary key's index.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_encoding")
            (encoding,) = cursor.fetchone()
            if encoding != "UTF8":  # keys and values are Unicode: psycopg cannot map them into another
                raise DatabaseUnusable(
                    f"its encoding is {encoding}, not UTF8: create it with CREATE DATABASE ... ENCODING 'UTF8'"
                )
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cursor.execute('CREATE TABLE IF NOT EXISTS kv (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL)')
        connection.commit()
    except BaseException:
        connection.close()  # adbapi would leave it open and unreferenced
        raise


@frozen
class Database:
    """An adbapi pool and what its database needs from the SQL that runs on it.

    :ivar kind: ``"sqlite"`` or ``"postgresql"``.
    :ivar pool: the adbapi pool; ``close()`` it when done.
    :ivar where: the database, as logs may show it (no password).
    :ivar unavailable: the driver's errors that mean the database could not
        serve the request, rather than that the request or the SQL is wrong.
    :ivar paramstyle: the driver's DB-API placeholder style.
    """

    kind: Literal["sqlite", "postgresql"]
    pool: _Pool
    where: str
    unavailable: tuple[type[BaseException], ...]
    paramstyle: str
    # Mutable inside the frozen value: queries waiting for the database, and requests failed since it went down.
    _counts: dict[str, int] = field(init=False, factory=lambda: {"failed": 0, "waiting": 0})
    # One lock per connection with queries in flight, so that a connection's requests reach the database in order.
    _in_order: dict[object, DeferredLock] = field(init=False, factory=dict)

    def sql(self, statement: str) -> str:
        """``statement`` (``?`` placeholders, no literal ``?`` or ``%``) in the driver's placeholder style."""
        return statement if self.paramstyle == "qmark" else statement.replace("?", "%s")

    def text(self, text: str, what: str) -> str:
        """``text`` if this database can store it as TEXT, else a ``bad-request`` saying why not."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ActionError("bad-request", f"{what} holds a lone surrogate, which has no UTF-8") from None
        if self.kind == "postgresql" and "\x00" in text:
            raise ActionError("bad-request", f"{what} holds the character U+0000, which PostgreSQL's text cannot")
        return text

    async def run(self, call: Callable[[], Deferred[_T]], connection: object = None) -> _T:
        """``call()`` (a pool method's Deferred), with the database's failures answered ``unavailable``.

        ``connection`` (the client's, `sockapp.app.Context.connection`)
        keeps the order of its requests: each runs once the one before it
        has, as SQLite's single thread does anyway, so a ``get`` pipelined
        after a ``set`` of the same key sees it, and the last of several
        pipelined ``set`` requests is the one that stays.

        A failure is tried once more on a fresh connection: after the
        database restarts, every pooled connection is stale and fails once,
        and that is not worth an error to the client. The kv app's
        statements are all safe to run twice. The outage is logged once when
        it starts and once when it ends, whatever the request rate.
        """
        if connection is None:
            return await self._run(call)
        lock = self._in_order.get(connection)
        if lock is None:
            lock = self._in_order[connection] = DeferredLock()
        await lock.acquire()
        try:
            return await self._run(call)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                del self._in_order[connection]

    async def _run(self, call: Callable[[], Deferred[_T]]) -> _T:
        for attempt in (1, 2):
            if self._counts["waiting"] >= MAX_WAITING:
                self._went_down(f"{MAX_WAITING} queries are waiting for it (is it hung?)")
                raise ActionError(UNAVAILABLE, f"the database is not keeping up: {MAX_WAITING} queries wait for it")
            try:
                result = await self._shielded(call())
            except self.unavailable as e:
                if _over_a_limit(e):
                    message = "the database cannot store this: it is over a limit of its own"
                    raise ActionError("bad-request", message) from None
                self.pool.epoch += 1  # every connection opened before now is suspect
                if attempt == 1:
                    continue
                self._went_down(" ".join(str(e).split()) or type(e).__name__)
                raise ActionError(UNAVAILABLE, "the database is unavailable; try again later") from None
            self._came_back()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _shielded(self, work: Deferred[_T]) -> Deferred[_T]:
        """``work``'s result, in a Deferred whose cancellation (``--action-timeout``) leaves ``work`` alone.

        A query in a thread cannot be stopped, so it is counted as waiting
        until its thread is done with it, not until its handler gave up.
        """
        self._counts["waiting"] += 1
        waiter: Deferred[_T] = Deferred()

        def done(result: _T | Failure) -> None:
            self._counts["waiting"] -= 1
            if waiter.called:  # cancelled: nobody waits for this result any more
                return
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

        work.addBoth(done)
        return waiter

    def _went_down(self, reason: str) -> None:
        self._counts["failed"] += 1
        if self._counts["failed"] == 1:
            log.warn("kv database {where} is unavailable: {reason}", where=self.where, reason=peer_text(reason, 300))

    def _came_back(self) -> None:
        failed, self._counts["failed"] = self._counts["failed"], 0
        if failed:
            log.info(
                "kv database {where} is available again ({failed} requests were answered unavailable)",
                where=self.where,
                failed=failed,
            )

    def close(self) -> None:
        self.pool.close()


def _over_a_limit(error: BaseException) -> bool:
    """Whether the database refused the request for one of its own limits (SQLSTATE class 54, such as an
    index row too large): the request's fault, not an outage, though psycopg calls it an OperationalError."""
    return str(getattr(error, "sqlstate", None) or "").startswith("54")


def open_database(setting: str) -> Database:
    """A pool on ``setting``: a ``postgresql://`` URI, or the path of an SQLite file (created if missing).

    Nothing is connected yet (adbapi connects in its threads when the
    reactor runs), so a database that is down at start-up is answered
    ``unavailable`` until it comes up. A setting that cannot work (a
    missing directory, a malformed URI, no driver) is a ``ValueError`` now.
    """
    if is_postgresql(setting):
        return _open_postgresql(setting)
    import os

    folder = os.path.dirname(os.path.abspath(setting))
    if not os.path.isdir(folder):
        raise ValueError(f"the database's directory {folder} does not exist")
    pool = _Pool(
        "sqlite3", setting, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=_prepare_sqlite, cp_noisy=False
    )
    return Database("sqlite", pool, setting, (sqlite3.OperationalError,), sqlite3.paramstyle)


def _userinfo_parts(uri: str) -> list[str]:
    """The user and password of ``scheme://user:password@host/...``, longest first, as written (not decoded)."""
    rest = uri.split("://", 1)[-1]
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    return sorted((part for part in (userinfo, password, user) if part), key=len, reverse=True)


def _check_values(params: dict[str, Any]) -> None:
    """The values libpq would only refuse when connecting, refused at start-up instead."""
    for port in str(params.get("port") or "5432").split(","):
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"the database's port {port!r} is not a TCP port (1 to 65535)")
    if "sslmode" in params and params["sslmode"] not in SSLMODES:
        raise ValueError(f"sslmode={params['sslmode']!r} is not one of {', '.join(sorted(SSLMODES))}")
    timeout = str(params.get("connect_timeout", "0"))
    if not timeout.lstrip("-").isdigit():
        raise ValueError(f"connect_timeout={timeout!r} is not a whole number of seconds")


def _open_postgresql(setting: str) -> Database:
    try:
        import psycopg
    except ImportError:
        raise ValueError(
            "a postgresql:// database needs the psycopg driver: pip install 'sockapp[postgresql]'"
        ) from None
    try:
        params = psycopg.conninfo.conninfo_to_dict(setting)
    except psycopg.Error as e:
        said = " ".join(str(e).split())
        for secret in _userinfo_parts(setting):  # libpq quotes the token it could not read: the password, say
            said = said.replace(secret, "***")
        raise ValueError(f"not a PostgreSQL connection URI: {said}") from None
    _check_values(params)
    extra: dict[str, Any] = {"application_name": "sockapp-kv"}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = CONNECT_TIMEOUT
    conninfo = psycopg.conninfo.make_conninfo(setting, **extra)
    pool = _Pool(
        "psycopg",
        conninfo,
        cp_min=1,
        cp_max=POSTGRESQL_THREADS,
        cp_openfun=_prepare_postgresql,
        cp_noisy=False,
    )
    unavailable = (psycopg.OperationalError, psycopg.InterfaceError, adbapi.ConnectionLost, DatabaseUnusable)
    return Database(
        "postgresql",
        pool,
        _without_password(conninfo, psycopg),
        unavailable,
        psycopg.paramstyle,
    )
