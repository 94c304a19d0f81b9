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
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, Literal, TypeVar

from attrs import field, frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
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


class _Pool(adbapi.ConnectionPool):
    """adbapi's pool, with `_QuietConnection` for its connections."""

    connectionFactory = _QuietConnection


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
    """

    kind: Literal["sqlite", "postgresql"]
    pool: adbapi.ConnectionPool
    where: str
    unavailable: tuple[type[BaseException], ...]
    paramstyle: str
    # Mutable inside the frozen value: queries waiting for the database, and requests failed since it went down.
    _counts: dict[str, int] = field(init=False, factory=lambda: {"failed": 0, "waiting": 0})

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

    async def run(self, call: Callable[[], Deferred[_T]]) -> _T:
        """``call()`` (a pool method's Deferred), with the database's failures answered ``unavailable``.

        A failure is tried once more on a fresh connection: after the
        database restarts, every pooled connection is stale and fails once,
        and that is not worth an error to the client. The kv app's
        statements are all safe to run twice. The outage is logged once when
        it starts and once when it ends, whatever the request rate.
        """
        for attempt in (1, 2):
            if self._counts["waiting"] >= MAX_WAITING:
                raise ActionError(UNAVAILABLE, f"the database is not keeping up: {MAX_WAITING} queries wait for it")
            try:
                result = await self._shielded(call())
            except self.unavailable as e:
                if attempt == 1:
                    continue
                self._went_down(e)
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

    def _went_down(self, error: BaseException) -> None:
        self._counts["failed"] += 1
        if self._counts["failed"] == 1:
            reason = peer_text(" ".join(str(error).split()) or type(error).__name__, 300)
            log.warn("kv database {where} is unavailable: {reason}", where=self.where, reason=reason)

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
        raise ValueError(f"not a PostgreSQL connection URI: {' '.join(str(e).split())}") from None
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
    unavailable = (psycopg.OperationalError, psycopg.InterfaceError, adbapi.ConnectionLost)
    return Database(
        "postgresql",
        pool,
        _without_password(conninfo, psycopg),
        unavailable,
        psycopg.paramstyle,
    )
