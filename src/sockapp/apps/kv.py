"""A key-value store on SQLite, through ``twisted.enterprise.adbapi``.

Serve it with ``twistd -n sockapp --app sockapp.apps.kv:app`` (the database
``kv.sqlite3`` in the working directory) or name the file with
``--app-option database=PATH``. With ``--app-option writers=alice,bob``
only clients whose TLS certificate (an ``mtls:`` port) has one of those
common names may ``set`` and ``delete``; the others are answered
``forbidden``. Every handler is async on a real database:
adbapi runs the SQL in a thread and hands back a Deferred. A ``set`` is
answered only after its transaction has committed, so an acknowledged write
survives a crash or restart.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

import attrs
from twisted.enterprise import adbapi

from sockapp.app import ActionError, App

DEFAULT_DATABASE: Final = "kv.sqlite3"
"""The database file without ``--app-option database=``, in the working directory."""
MAX_KEYS: Final = 1000  # the most ``keys`` answers at once
"""The largest ``limit`` of a ``keys`` request: the most keys one answer lists."""
MAX_KEY_LENGTH: Final = 1024
"""The longest key, in characters; a longer one is ``bad-request``."""


@attrs.frozen
class SetValue:
    """The value of a ``set`` request: ``{"key": K, "value": V}``.

    :ivar key: the key to store under (1 to `MAX_KEY_LENGTH` characters).
    :ivar value: any JSON value, stored as JSON.
    """

    key: str
    value: Any


@attrs.frozen
class KeysValue:
    """The value of a ``keys`` request, every field optional: ``{"prefix": P, "limit": N}``.

    :ivar prefix: only keys that start with it (all keys by default).
    :ivar limit: at most this many keys, in key order (0 to `MAX_KEYS`; 100 by default).
    """

    prefix: str = ""
    limit: int = 100


def _prepare(connection: sqlite3.Connection) -> None:
    """Each pool connection: durable writes that readers do not block, and the schema."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    connection.commit()


def _text(text: str, what: str) -> str:
    """``text`` if SQLite can store it: a lone surrogate (valid in JSON) has no UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ActionError("bad-request", f"{what} holds a lone surrogate, which has no UTF-8") from None
    return text


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise ActionError("bad-request", "a key is a string")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ActionError("bad-request", f"a key is 1 to {MAX_KEY_LENGTH} characters")
    return _text(key, "the key")


def app(database: str = DEFAULT_DATABASE, writers: str = "") -> App:
    """The kv app on the SQLite file ``database`` (created, with its table, if missing);
    ``writers``, if given, are the client certificate names (comma-separated) allowed to write."""
    import json
    import os

    allowed = frozenset(name.strip() for name in writers.split(",") if name.strip())

    def may_write(context: Any) -> None:
        """Per-action authorization: a write needs a client certificate named in ``writers``."""
        if not allowed:
            return
        certificate = context.client_certificate
        if certificate is None or certificate.common_name not in allowed:
            raise ActionError("forbidden", "writing needs a client certificate for " + ", ".join(sorted(allowed)))

    folder = os.path.dirname(os.path.abspath(database))
    if not os.path.isdir(folder):
        # Found now, as a one-line usage error, not as an internal-error on every request.
        raise ValueError(f"the database's directory {folder} does not exist")

    pool = adbapi.ConnectionPool(
        "sqlite3", database, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=_prepare, cp_noisy=False
    )
    kv = App("kv")
    kv.pool = pool  # type: ignore[attr-defined]  # for tests and tools that close it

    @kv.action("get")
    async def get(value: Any) -> Any:
        """The value stored under the key VALUE (error not-found if none)."""
        rows = await pool.runQuery("SELECT value FROM kv WHERE key = ?", (_key(value),))
        if not rows:
            raise ActionError("not-found", "no such key")
        return json.loads(rows[0][0])

    @kv.action("set")
    async def set_(value: SetValue, context: Any) -> bool:
        """Store {"key": K, "value": V}; answered once the write has committed."""
        may_write(context)
        text = json.dumps(value.value)  # ASCII: a lone surrogate in a value is stored as its JSON escape
        await pool.runOperation(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_key(value.key), text),
        )
        return True

    @kv.action("delete")
    async def delete(value: Any, context: Any) -> bool:
        """Remove the key VALUE; true if it was there."""
        may_write(context)

        def remove(transaction: Any) -> bool:
            transaction.execute("DELETE FROM kv WHERE key = ?", (_key(value),))
            return bool(transaction.rowcount)

        return bool(await pool.runInteraction(remove))

    @kv.action("keys")
    async def keys(value: KeysValue | None) -> list[str]:
        """Keys in order: {"prefix": P, "limit": N} (both optional; at most 1000)."""
        options = value or KeysValue()
        if not 0 <= options.limit <= MAX_KEYS:
            raise ActionError("bad-request", f"limit is 0 to {MAX_KEYS}")
        # Keys with a prefix are contiguous in key order, from the prefix itself on.
        rows = await pool.runQuery(
            "SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?",
            (_text(options.prefix, "the prefix"), options.limit),
        )
        return [key for (key,) in rows if key.startswith(options.prefix)]

    return kv
