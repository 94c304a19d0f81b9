"""A key-value store on SQLite or PostgreSQL, through ``twisted.enterprise.adbapi``.

Serve it with ``twistd -n sockapp --app sockapp.apps.kv:app`` (the SQLite
file ``kv.sqlite3`` in the working directory), or name the database with
``--app-option database=PATH`` (another SQLite file) or
``--app-option database=postgresql://USER@HOST/DBNAME`` (PostgreSQL, which
several servers can share). With ``--app-option writers=alice,bob`` only
clients whose TLS certificate (an ``mtls:`` port) has one of those common
names may ``set`` and ``delete``; the others are answered ``forbidden``.
Every handler is async on a real database: adbapi runs the SQL in a thread
and hands back a Deferred. A ``set`` is answered only after its transaction
has committed, so an acknowledged write survives a crash or restart of the
server. A database that is down or failing gets each request the in-band
error ``unavailable``; the server serves on and recovers by itself when
the database is back.
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs

from sockapp.app import ActionError, App
from sockapp.apps.database import Database, open_database

DEFAULT_DATABASE: Final = "kv.sqlite3"
"""The database without ``--app-option database=``: an SQLite file in the working directory."""
MAX_KEYS: Final = 1000  # the most ``keys`` answers at once
"""The largest ``limit`` of a ``keys`` request: the most keys one answer lists."""
MAX_KEY_LENGTH: Final = 1024
"""The longest key, in characters; a longer one is ``bad-request``."""
MAX_KEY_BYTES: Final = 2048
"""The longest key in UTF-8 bytes (1024 characters of CJK are 3072): PostgreSQL's primary key index takes
rows of at most 2704 bytes, and keys are the same on both databases."""
MAX_KEYS_ANSWER_BYTES: Final = 256 * 1024
"""The most key text one ``keys`` answer holds (in UTF-8, as JSON strings): at most 64 answers wait for a
client that does not read, so 16 MiB, not the 128 MiB that 1000 keys of 2 KiB each would make."""
MAX_VALUE_DEPTH: Final = 256
"""The deepest nesting of arrays and objects in a stored value; a deeper one is ``bad-request``. Storing
and reading a value recurse once per level, so without a fixed limit whether a value some 900 deep could
be stored would depend on how deep the server's call stack happened to be."""


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
    """The value of a ``keys`` request, every field optional: ``{"prefix": P, "limit": N, "after": K}``.

    :ivar prefix: only keys that start with it (all keys by default).
    :ivar limit: at most this many keys, in key order (0 to `MAX_KEYS`; 100 by default).
    :ivar after: only keys after this one: the last key of the previous
        answer, to page through more keys than one answer holds.
    """

    prefix: str = ""
    limit: int = 100
    after: str = ""


def _key(key: object, database: Database) -> str:
    if not isinstance(key, str):
        raise ActionError("bad-request", "a key is a string")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ActionError("bad-request", f"a key is 1 to {MAX_KEY_LENGTH} characters")
    database.text(key, "the key")  # UTF-8 (and no NUL on PostgreSQL) first, so that the next line can encode it
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ActionError("bad-request", f"a key is at most {MAX_KEY_BYTES} bytes in UTF-8")
    return key


def _nesting_depth(value: object) -> int:
    """How deeply arrays and objects nest in ``value`` (0 for a scalar), without recursing."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _after_prefix(prefix: str) -> str | None:
    """The first string in code point order after every string that starts with ``prefix``; None if there
    is none (a prefix of U+10FFFF only). Keys with the prefix are then ``prefix <= key < this``."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # surrogates are never in a key
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def app(database: str = DEFAULT_DATABASE, writers: str = "") -> App:
    """The kv app on ``database``: an SQLite file (created, with its table, if missing) or a
    ``postgresql://`` URI (the table created if missing); ``writers``, if given, are the client
    certificate names (comma-separated) allowed to write."""
    allowed = frozenset(name.strip() for name in writers.split(",") if name.strip())

    def may_write(context: Any) -> None:
        """Per-action authorization: a write needs a client certificate named in ``writers``."""
        if not allowed:
            return
        certificate = context.client_certificate
        if certificate is None or certificate.common_name not in allowed:
            raise ActionError("forbidden", "writing needs a client certificate for " + ", ".join(sorted(allowed)))

    db = open_database(database)  # a ValueError (a one-line usage error) if it cannot work
    pool = db.pool
    kv = App("kv")
    kv.pool = pool  # type: ignore[attr-defined]  # for tests and tools that close it
    # The SQL is written once, for both databases.
    select_value = db.sql("SELECT value FROM kv WHERE key = ?")
    upsert = db.sql("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
    remove_key = db.sql("DELETE FROM kv WHERE key = ?")
    # Keys with a prefix are one range in key order (code point order on both): from the prefix, up to
    # _after_prefix(prefix), so a prefix that matches nothing reads nothing.
    select_keys = db.sql("SELECT key FROM kv WHERE key >= ? AND key > ? ORDER BY key LIMIT ?")
    select_keys_below = db.sql("SELECT key FROM kv WHERE key >= ? AND key > ? AND key < ? ORDER BY key LIMIT ?")

    @kv.action("get")
    async def get(value: Any, context: Any) -> Any:
        """The value stored under the key VALUE (error not-found if none)."""
        key = _key(value, db)
        rows = await db.run(lambda: pool.runQuery(select_value, (key,)), context.connection)
        if not rows:
            raise ActionError("not-found", "no such key")
        return json.loads(rows[0][0])

    @kv.action("set")
    async def set_(value: SetValue, context: Any) -> bool:
        """Store {"key": K, "value": V}; answered once the write has committed."""
        may_write(context)
        key = _key(value.key, db)
        if _nesting_depth(value.value) > MAX_VALUE_DEPTH:
            raise ActionError("bad-request", f"a value nests arrays and objects at most {MAX_VALUE_DEPTH} deep")
        text = json.dumps(value.value)  # ASCII: a lone surrogate or a NUL in a value is stored as its JSON escape
        await db.run(lambda: pool.runOperation(upsert, (key, text)), context.connection)
        return True

    @kv.action("delete")
    async def delete(value: Any, context: Any) -> bool:
        """Remove the key VALUE; true if it was there."""
        may_write(context)
        key = _key(value, db)

        def remove(transaction: Any) -> bool:
            transaction.execute(remove_key, (key,))
            return bool(transaction.rowcount)

        return bool(await db.run(lambda: pool.runInteraction(remove), context.connection))

    @kv.action("keys")
    async def keys(value: KeysValue | None, context: Any) -> list[str]:
        """Keys in order: {"prefix": P, "limit": N, "after": K} (all optional; at most 1000, 256 KiB)."""
        options = value or KeysValue()
        if not 0 <= options.limit <= MAX_KEYS:
            raise ActionError("bad-request", f"limit is 0 to {MAX_KEYS}")
        prefix = db.text(options.prefix, "the prefix")
        after = db.text(options.after, "after")
        below = _after_prefix(prefix)
        args: tuple[Any, ...]
        if below is None:
            query, args = select_keys, (prefix, after, options.limit)
        else:
            query, args = select_keys_below, (prefix, after, below, options.limit)
        rows = await db.run(lambda: pool.runQuery(query, args), context.connection)
        found: list[str] = []
        size = 0
        for (key,) in rows:
            if not key.startswith(prefix):
                continue
            size += len(json.dumps(key, ensure_ascii=False).encode("utf-8")) + 2
            if found and size > MAX_KEYS_ANSWER_BYTES:
                break  # the rest on the next request, with "after" the last key of this answer
            found.append(key)
        return found

    return kv
