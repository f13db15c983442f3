"""The shared key store: PostgreSQL, for gateways on several hosts (or several replicas) behind one database.

Same schema, behaviour and change feed as the SQLite store. Opening a store is two steps with no I/O in the first:
`PostgresKeyStore(url)` checks the URL; `await store.open()` connects and migrates (several replicas opening
together migrate once, under an advisory lock). Any operation on a store not yet open opens it first, so a store
made outside an event loop still works; open it explicitly to fail at start rather than at the first request.

Fail closed: an unreachable database, a broken connection or a slow answer raises
`BackendUnavailable("store_unavailable")`, within `timeout` seconds whatever the network does. The pool replaces
broken connections by itself, so the store works again once the database is back, without reopening.

Every mutation and its `key_changes` row are one transaction, and mutations are serialised on `key_changes` so a
change's `seq` order is its commit order: a gateway polling `changes_since` can never skip a change that committed
late with a smaller seq. Queries are parameterised, always.

The pool belongs to the event loop that opened it: open one store per process (after any fork) and per loop, and
close it on shutdown.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from aiperimeter.errors import BackendUnavailable, ConfigError
from aiperimeter.keys import KeyRecord
from aiperimeter.state.sqlite import (
    ALERT_PRUNE_EVERY,
    COLUMN_COUNT,
    COLUMNS,
    PRUNE_EVERY,
    address_subject,
    alert_cutoff,
    alert_fields,
    record_to_row,
    row_to_record,
)

SCHEMES = ("postgresql://", "postgres://")

MIGRATIONS: tuple[str, ...] = (
    # 1: keys, their change feed and lifecycle events
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        models TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE key_changes (
        seq BIGSERIAL PRIMARY KEY,
        key_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )
    """,
    # 2: suspension, rotation with a grace period, per-key limits
    """
    ALTER TABLE keys ADD COLUMN suspended_at DOUBLE PRECISION;
    ALTER TABLE keys ADD COLUMN previous_hash TEXT;
    ALTER TABLE keys ADD COLUMN previous_until DOUBLE PRECISION;
    ALTER TABLE keys ADD COLUMN rpm BIGINT;
    ALTER TABLE keys ADD COLUMN tpm BIGINT;
    ALTER TABLE keys ADD COLUMN concurrency BIGINT;
    CREATE UNIQUE INDEX keys_previous_hash ON keys (previous_hash) WHERE previous_hash IS NOT NULL;
    CREATE INDEX key_changes_key ON key_changes (key_id, seq)
    """,
    # 3: the tool policy a key is held to
    "ALTER TABLE keys ADD COLUMN tool_policy TEXT",
    # 4: canary keys; alerts raised by the watch part; client addresses refused for a while
    """
    ALTER TABLE keys ADD COLUMN canary BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        key_id TEXT,
        doc JSONB NOT NULL
    );
    CREATE INDEX alerts_time ON alerts (time);
    CREATE TABLE blocks (
        address TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
)
LATEST = len(MIGRATIONS)

# pg_advisory_xact_lock(class, object): the class is ours ("AIPE"), the object the schema being migrated.
_LOCK_CLASS = 0x41495045

CONNECT_TIMEOUT = 3.0  # seconds to establish a connection (libpq connect_timeout)
STATEMENT_TIMEOUT = 5.0  # seconds the server may spend on one statement
TIMEOUT = 5.0  # seconds any one store operation may take, end to end, before it fails closed
OPEN_TIMEOUT = 15.0  # seconds to connect and migrate at open (waiting for another replica's migration included)
RECONNECT_TIMEOUT = 5.0  # the pool's reconnection back-off gives up (and starts afresh) after this long

_RETURNING = f" RETURNING {COLUMNS}"

_Conn = AsyncConnection[tuple[Any, ...]]
T = TypeVar("T")

_UNAVAILABLE = "The key store is unavailable."
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword=)[^&]*")


def is_postgres_url(value: str) -> bool:
    return value.lower().startswith(SCHEMES)


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***: safe to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hosts}"
    query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _passwords(url: str) -> set[str]:
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found |= {parts.password, unquote(parts.password)}
    except ValueError:
        pass
    found |= {match.group(0).split("=", 1)[1] for match in _PASSWORD_PARAM.finditer(url)}
    return {p for p in found if p}


def redact_text(text: str, url: str) -> str:
    """A message (a driver error, say) with any password of `url` blanked out."""
    for password in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def _unavailable() -> BackendUnavailable:
    return BackendUnavailable("store_unavailable", _UNAVAILABLE)


def parse_url(url: str) -> dict[str, Any]:
    """The connection parameters of a PostgreSQL URL; ConfigError (with the URL redacted) when it is not one."""
    if not is_postgres_url(url):
        raise ConfigError(
            f"{redact_url(url)!r} is not a PostgreSQL URL; write postgresql://user@host:5432/dbname "
            "(or postgres://...)",
            field="database",
        )
    try:
        params = conninfo_to_dict(url)
        port = urlsplit(url).port  # libpq would only complain at connect time
    except (psycopg.Error, ValueError) as exc:
        raise ConfigError(
            f"{redact_url(url)!r} is not a valid PostgreSQL URL: {redact_text(str(exc), url)}", field="database"
        ) from None
    if port == 0:
        raise ConfigError(f"{redact_url(url)!r} is not a valid PostgreSQL URL: port 0", field="database")
    return params


def _connect_kwargs(params: dict[str, Any], connect_timeout: float, timeout: float) -> dict[str, Any]:
    """Defaults for what the URL leaves unset: short timeouts, a recognisable name, autocommit for the pool."""
    kwargs: dict[str, Any] = {"autocommit": True}
    defaults = {
        "connect_timeout": max(1, round(connect_timeout)),
        "application_name": "aiperimeter",
        # Unacknowledged writes fail after this long (Linux): a black-holed server drops the connection.
        "tcp_user_timeout": int(timeout * 1000),
    }
    kwargs.update({name: value for name, value in defaults.items() if name not in params})
    return kwargs


async def _read_version(conn: _Conn) -> int:
    """The schema version of the store visible through the connection's search_path; 0 when there is none."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


def _too_new(version: int, where: str) -> ConfigError:
    return ConfigError(
        f"the key store has schema version {version}, newer than this aiperimeter understands ({LATEST}); "
        "upgrade aiperimeter",
        source=where,
    )


async def read_version(url: str, *, connect_timeout: float = CONNECT_TIMEOUT, within: float = TIMEOUT) -> int:
    """The database's schema version, without migrating anything (for `aiperimeter db status`)."""
    params = parse_url(url)

    async def read() -> int:
        kwargs = _connect_kwargs(params, connect_timeout, within)
        async with await psycopg.AsyncConnection.connect(url, **kwargs) as conn:
            return await _read_version(conn)

    try:
        return await asyncio.wait_for(read(), timeout=connect_timeout + within)
    except (psycopg.Error, TimeoutError, OSError) as exc:
        raise _unavailable() from exc


class PostgresKeyStore:
    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = CONNECT_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
        timeout: float = TIMEOUT,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        params = parse_url(url)
        self.url = redact_url(url)  # for messages only
        self.timeout = timeout
        # Waiting for a pooled connection: no longer than making one. With the database down, that is how long an
        # operation takes to fail; with every connection busy, the store is overloaded and fails closed too.
        self._wait = min(timeout, connect_timeout)
        self.open_timeout = open_timeout
        self._statement_ms = int(statement_timeout * 1000)
        self._pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            url,
            kwargs=_connect_kwargs(params, connect_timeout, timeout),
            min_size=min_size,
            max_size=max_size,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,  # a connection broken while idle is replaced, not used
            timeout=min(timeout, connect_timeout),
            reconnect_timeout=RECONNECT_TIMEOUT,
            name="aiperimeter-keys",
        )
        self._open_lock = asyncio.Lock()
        self._ready = False
        self._closed = False
        self._stray: set[asyncio.Task[Any]] = set()
        self.opened_version: int | None = None  # the schema version found at open, before migrating
        self._pruned = -math.inf  # monotonic time of the last deletion of expired blocks
        self._alerts_pruned = -math.inf  # monotonic time of the last deletion of old alerts

    def __repr__(self) -> str:
        return f"PostgresKeyStore({self.url!r})"

    def is_open(self) -> bool:
        return self._ready

    async def _configure(self, conn: _Conn) -> None:
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{self._statement_ms}ms",))

    # --- opening and migrating ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema to the latest version. Idempotent; safe to call concurrently.

        Raises ConfigError when the database is newer than this code or has no schema to create tables in, and
        BackendUnavailable when it cannot be reached in time."""
        if self._ready:
            return
        async with self._open_lock:
            if self.is_open():  # opened by whoever held the lock before us
                return
            if self._closed:
                raise _unavailable()
            try:
                await self._pool.open()
            except psycopg.Error as exc:
                raise _unavailable() from exc
            self.opened_version = await self._bounded(self._with_connection(self._migrate), self.open_timeout)
            self._ready = True

    async def _migrate(self, conn: _Conn) -> int:
        version = await _read_version(conn)
        if version > LATEST:
            raise _too_new(version, self.url)
        if version == LATEST:
            return version  # the common case: no lock, no DDL (a role without CREATE rights can open the store)
        async with conn.transaction():
            cur = await conn.execute("SELECT current_schema()")
            row = await cur.fetchone()
            schema = row[0] if row is not None else None
            if schema is None:
                raise ConfigError(
                    "no schema to create the key store in: the search_path names no existing schema; create it "
                    "(CREATE SCHEMA ...) or fix the URL's options=-csearch_path%3D...",
                    source=self.url,
                )
            # Replicas starting together queue here; the first migrates, the others then find it done. Waiting and
            # migrating may take longer than one statement normally may, within the open's own bound.
            limit = f"{int(self.open_timeout * 1000)}ms"
            await conn.execute("SELECT set_config('statement_timeout', %s, true)", (limit,))
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            found = await _read_version(conn)
            if found > LATEST:
                raise _too_new(found, self.url)
            for number, script in enumerate(MIGRATIONS[found:], start=found + 1):
                for statement in filter(str.strip, script.split(";")):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (number, time.time())
                )
        return version

    # --- running operations within bounds ----------------------------------------------------------------------

    async def _with_connection(self, op: Callable[[_Conn], Awaitable[T]]) -> T:
        try:
            async with self._pool.connection(timeout=self._wait) as conn:
                return await op(conn)
        except psycopg.Error as exc:
            raise _unavailable() from exc

    async def _bounded(self, work: Coroutine[Any, Any, T], seconds: float) -> T:
        """Await `work` for at most `seconds`. On time-out, return at once: the work is cancelled in the background,
        where the driver may spend a few more seconds trying to cancel the query on an unresponsive server."""
        task = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({task}, timeout=seconds)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            raise _unavailable() from TimeoutError(f"no answer from the database within {seconds:g} s")
        return task.result()

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        self._stray.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._stray.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it

    async def _run(self, op: Callable[[_Conn], Awaitable[T]]) -> T:
        await self.open()
        return await self._bounded(self._with_connection(op), self.timeout)

    async def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        async def query(conn: _Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._run(query)

    @staticmethod
    async def _serialise_changes(conn: _Conn) -> None:
        """Take the change feed's writer lock for the rest of the transaction (readers are not blocked)."""
        await conn.execute("LOCK TABLE key_changes IN EXCLUSIVE MODE")

    @staticmethod
    async def _change(conn: _Conn, key_id: str, kind: str, actor: str) -> None:
        await conn.execute(
            "INSERT INTO key_changes (key_id, kind, actor, at) VALUES (%s, %s, %s, %s)",
            (key_id, kind, actor, time.time()),
        )

    # --- the KeyStore protocol ---------------------------------------------------------------------------------

    async def add(self, record: KeyRecord, actor: str) -> None:
        async def insert(conn: _Conn) -> bool:
            try:
                async with conn.transaction():
                    await self._serialise_changes(conn)
                    cur = await conn.execute("SELECT 1 FROM keys WHERE previous_hash = %s", (record.secret_hash,))
                    if await cur.fetchone() is not None:
                        return False
                    await conn.execute(
                        f"INSERT INTO keys ({COLUMNS}) VALUES ({', '.join(['%s'] * COLUMN_COUNT)})",  # noqa: S608 - constant
                        record_to_row(record),
                    )
                    await self._change(conn, record.id, "create", actor)
            except psycopg.errors.UniqueViolation:
                return False
            return True

        if not await self._run(insert):
            raise ValueError(f"key {record.id} already exists")

    async def get(self, key_id: str) -> KeyRecord | None:
        rows = await self._rows(f"SELECT {COLUMNS} FROM keys WHERE id = %s", (key_id,))  # noqa: S608
        return row_to_record(rows[0]) if rows else None

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        rows = await self._rows(
            f"SELECT {COLUMNS} FROM keys WHERE secret_hash = %s OR previous_hash = %s",  # noqa: S608
            (secret_hash, secret_hash),
        )
        return row_to_record(rows[0]) if rows else None

    async def list_all(self) -> list[KeyRecord]:
        rows = await self._rows(f"SELECT {COLUMNS} FROM keys ORDER BY created_at, id")  # noqa: S608
        return [row_to_record(row) for row in rows]

    async def _update(
        self, key_id: str, kind: str, actor: str, sql: str, params: tuple[object, ...]
    ) -> tuple[KeyRecord | None, bool]:
        """One guarded UPDATE ... RETURNING and its change record, in one transaction: (the record, whether the
        update applied). The record is read in the same transaction when the guard did not match."""

        async def apply(conn: _Conn) -> tuple[KeyRecord | None, bool]:
            async with conn.transaction():
                await self._serialise_changes(conn)
                cur = await conn.execute(sql, params)
                row = await cur.fetchone()
                if row is not None:
                    await self._change(conn, key_id, kind, actor)
                    return row_to_record(row), True
                cur = await conn.execute(f"SELECT {COLUMNS} FROM keys WHERE id = %s", (key_id,))  # noqa: S608
                row = await cur.fetchone()
                return (row_to_record(row) if row is not None else None), False

        return await self._run(apply)

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL" + _RETURNING  # noqa: S608
        record, _ = await self._update(key_id, "revoke", actor, sql, (at, key_id))
        return record

    async def rotate(self, key_id: str, new_hash: str, grace_until: float, actor: str) -> KeyRecord | None:
        sql = (
            "UPDATE keys SET previous_hash = secret_hash, previous_until = %s, secret_hash = %s "  # noqa: S608
            "WHERE id = %s AND revoked_at IS NULL" + _RETURNING
        )

        async def apply(conn: _Conn) -> KeyRecord | bool | None:
            try:
                async with conn.transaction():
                    await self._serialise_changes(conn)
                    cur = await conn.execute(
                        "SELECT 1 FROM keys WHERE secret_hash = %s OR previous_hash = %s", (new_hash, new_hash)
                    )
                    if await cur.fetchone() is not None:
                        return False
                    cur = await conn.execute(sql, (grace_until, new_hash, key_id))
                    row = await cur.fetchone()
                    if row is None:
                        return None
                    await self._change(conn, key_id, "rotate", actor)
                    return row_to_record(row)
            except psycopg.errors.UniqueViolation:
                return False

        result = await self._run(apply)
        if result is False:
            raise ValueError("the new secret is already in use")
        return result if isinstance(result, KeyRecord) else None

    async def suspend(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET suspended_at = %s WHERE id = %s AND suspended_at IS NULL" + _RETURNING  # noqa: S608
        record, _ = await self._update(key_id, "suspend", actor, sql, (at, key_id))
        return record

    async def resume(self, key_id: str, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET suspended_at = NULL WHERE id = %s AND suspended_at IS NOT NULL" + _RETURNING  # noqa: S608
        record, _ = await self._update(key_id, "resume", actor, sql, (key_id,))
        return record

    async def events(self, key_id: str) -> list[tuple[str, str, float]]:
        rows = await self._rows("SELECT kind, actor, at FROM key_changes WHERE key_id = %s ORDER BY seq", (key_id,))
        return [(str(kind), str(actor), float(at)) for kind, actor, at in rows]

    async def has_active(self, now: float) -> bool:
        rows = await self._rows(
            "SELECT 1 FROM keys WHERE revoked_at IS NULL AND suspended_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > %s) LIMIT 1",
            (now,),
        )
        return bool(rows)

    async def changes_since(self, cursor: int) -> tuple[list[str], int]:
        if cursor < 0:
            rows = await self._rows("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            return [], int(rows[0][0])
        rows = await self._rows("SELECT seq, key_id FROM key_changes WHERE seq > %s ORDER BY seq", (cursor,))
        if not rows:
            return [], cursor
        return [str(row[1]) for row in rows], int(rows[-1][0])

    # --- watch: alerts and blocked addresses ---------------------------------------------------------------------

    async def add_alert(self, alert: dict[str, object]) -> bool:
        fields = alert_fields(alert)
        prune = time.monotonic() - self._alerts_pruned >= ALERT_PRUNE_EVERY

        async def write(conn: _Conn) -> bool:
            async with conn.transaction():
                if prune:
                    await conn.execute("DELETE FROM alerts WHERE time < %s", (alert_cutoff(fields[1]),))
                # Replicas raising the same alert race here: the primary key lets exactly one insert through.
                cur = await conn.execute(
                    "INSERT INTO alerts (id, time, kind, severity, key_id, doc) "
                    "VALUES (%s, %s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING RETURNING id",
                    fields,
                )
                return await cur.fetchone() is not None

        added = await self._run(write)
        if prune:
            self._alerts_pruned = time.monotonic()
        return added

    async def alerts(self, limit: int = 100, since: float | None = None) -> list[dict[str, object]]:
        rows = await self._rows(
            "SELECT doc::text FROM alerts WHERE time >= %s ORDER BY time DESC, id DESC LIMIT %s",
            (-math.inf if since is None else since, max(0, limit)),
        )
        return [orjson.loads(row[0]) for row in rows]

    async def set_alert_actions(self, alert_id: str, actions: list[str]) -> None:
        await self._rows(
            "UPDATE alerts SET doc = jsonb_set(doc, '{actions}', %s::jsonb) WHERE id = %s RETURNING id",
            (orjson.dumps([str(a) for a in actions]).decode(), alert_id),
        )

    async def block(self, address: str, until: float, reason: str, actor: str) -> None:
        # A later block extends an earlier one; an expired row is replaced whole.
        sql = (
            "INSERT INTO blocks (address, until, reason, actor, created_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (address) DO UPDATE SET "
            "reason = CASE WHEN excluded.until > blocks.until THEN excluded.reason ELSE blocks.reason END, "
            "actor = CASE WHEN excluded.until > blocks.until THEN excluded.actor ELSE blocks.actor END, "
            "created_at = CASE WHEN blocks.until <= excluded.created_at THEN excluded.created_at "
            "ELSE blocks.created_at END, "
            "until = GREATEST(blocks.until, excluded.until)"
        )

        async def write(conn: _Conn) -> None:
            async with conn.transaction():
                await self._serialise_changes(conn)
                await conn.execute(sql, (address, until, reason, actor, time.time()))
                await self._change(conn, address_subject(address), "block", actor)

        await self._run(write)

    async def unblock(self, address: str, actor: str) -> bool:
        async def write(conn: _Conn) -> bool:
            async with conn.transaction():
                await self._serialise_changes(conn)
                cur = await conn.execute("DELETE FROM blocks WHERE address = %s RETURNING until", (address,))
                row = await cur.fetchone()
                in_force = row is not None and float(row[0]) > time.time()
                if in_force:
                    await self._change(conn, address_subject(address), "unblock", actor)
                return in_force

        return await self._run(write)

    async def blocks(
        self, now: float, limit: int | None = None, addresses: Collection[str] | None = None
    ) -> list[tuple[str, float, str]]:
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self._pruned = time.monotonic()
            await self._rows("DELETE FROM blocks WHERE until <= %s RETURNING address", (now,))
        if addresses is not None:
            rows = await self._rows(
                "SELECT address, until, reason FROM blocks WHERE until > %s AND address = ANY(%s) ORDER BY address",
                (now, list(addresses)),
            )
        elif limit is None:
            rows = await self._rows(
                "SELECT address, until, reason FROM blocks WHERE until > %s ORDER BY address", (now,)
            )
        else:
            rows = await self._rows(
                "SELECT address, until, reason FROM blocks WHERE until > %s ORDER BY created_at DESC, address LIMIT %s",
                (now, max(0, limit)),
            )
        return [(str(a), float(u), str(r)) for a, u, r in rows]

    async def close(self) -> None:
        """Close the pool. Operations after this raise BackendUnavailable."""
        self._closed = True
        self._ready = False
        stray = list(self._stray)
        for task in stray:
            task.cancel()  # a second cancellation makes the driver drop a connection it was still cancelling
        if stray:
            await asyncio.gather(*stray, return_exceptions=True)
        await self._pool.close()
