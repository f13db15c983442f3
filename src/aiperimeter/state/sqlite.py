"""The embedded key store: one SQLite file in the data dir, shared by the CLI and every gateway worker.

WAL mode lets the gateway read while `aiperimeter keys` writes. Every mutation appends to `key_changes`, which
gateways poll to evict revoked keys from their caches. Queries are parameterised, always.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TypeVar

import orjson

from aiperimeter.errors import BackendUnavailable, ConfigError
from aiperimeter.keys import KeyRecord

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: keys, their change feed and lifecycle events
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        models TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE TABLE key_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # 2: suspension, rotation with a grace period, per-key limits
    """
    ALTER TABLE keys ADD COLUMN suspended_at REAL;
    ALTER TABLE keys ADD COLUMN previous_hash TEXT;
    ALTER TABLE keys ADD COLUMN previous_until REAL;
    ALTER TABLE keys ADD COLUMN rpm INTEGER;
    ALTER TABLE keys ADD COLUMN tpm INTEGER;
    ALTER TABLE keys ADD COLUMN concurrency INTEGER;
    CREATE UNIQUE INDEX keys_previous_hash ON keys (previous_hash);
    CREATE INDEX key_changes_key ON key_changes (key_id, seq)
    """,
    # 3: the tool policy a key is held to
    "ALTER TABLE keys ADD COLUMN tool_policy TEXT",
    # 4: canary keys; alerts raised by the watch part; client addresses refused for a while
    """
    ALTER TABLE keys ADD COLUMN canary INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE alerts (
        id TEXT PRIMARY KEY,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        key_id TEXT,
        doc TEXT NOT NULL
    );
    CREATE INDEX alerts_time ON alerts (time);
    CREATE TABLE blocks (
        address TEXT PRIMARY KEY,
        until REAL NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)

COLUMNS = (
    "id, name, secret_hash, scopes, models, created_at, expires_at, revoked_at, suspended_at, previous_hash, "
    "previous_until, rpm, tpm, concurrency, tool_policy, canary"
)
COLUMN_COUNT = COLUMNS.count(",") + 1
PRUNE_EVERY = 300.0  # seconds between deletions of expired blocks (reads skip them in the meantime)
ALERTS_KEPT = 90 * 86400.0  # seconds an alert is kept; older ones are deleted as new ones arrive
ALERT_PRUNE_EVERY = 3600.0  # seconds between those deletions, per store object


def alert_cutoff(at: float) -> float:
    """Alerts detected before this are deleted when an alert detected at `at` is kept. Measured from the earlier
    of now and `at`: a replayed past (alerts on their traffic's own clock) keeps its alerts, and a replica whose
    clock runs ahead cannot delete everyone's."""
    return min(time.time(), at) - ALERTS_KEPT


def _opt_float(value: object) -> float | None:
    return float(value) if value is not None else None  # type: ignore[arg-type]


def _opt_int(value: object) -> int | None:
    return int(value) if value is not None else None  # type: ignore[call-overload]


def row_to_record(row: tuple[object, ...] | list[object]) -> KeyRecord:
    """A record from a row of COLUMNS (shared with the PostgreSQL store)."""
    (key_id, name, secret_hash, scopes, models, created_at, expires_at, revoked_at, suspended_at, previous_hash,
     previous_until, rpm, tpm, concurrency, tool_policy, canary) = row  # fmt: skip
    return KeyRecord(
        id=str(key_id),
        name=str(name),
        secret_hash=str(secret_hash),
        scopes=frozenset(orjson.loads(str(scopes))),
        models=frozenset(orjson.loads(str(models))) if models is not None else None,
        created_at=float(created_at),  # type: ignore[arg-type]
        expires_at=_opt_float(expires_at),
        revoked_at=_opt_float(revoked_at),
        suspended_at=_opt_float(suspended_at),
        previous_hash=str(previous_hash) if previous_hash is not None else None,
        previous_until=_opt_float(previous_until),
        rpm=_opt_int(rpm),
        tpm=_opt_int(tpm),
        concurrency=_opt_int(concurrency),
        tool_policy=str(tool_policy) if tool_policy is not None else None,
        canary=bool(canary),
    )


def alert_fields(alert: Mapping[str, object]) -> tuple[str, float, str, str, str | None, str]:
    """(id, time, kind, severity, key id, JSON) of an alert document (Alert.to_dict()), shared by every store;
    ValueError when a field the store indexes is missing or malformed."""
    alert_id, kind, severity, key = alert.get("id"), alert.get("kind"), alert.get("severity"), alert.get("key")
    at = alert.get("time")
    if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 128:
        raise ValueError("an alert needs an id of 1 to 128 characters")
    if not isinstance(kind, str) or not isinstance(severity, str):
        raise ValueError("an alert needs a kind and a severity")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ValueError("an alert needs a time (epoch seconds)")
    if key is not None and not isinstance(key, str):
        raise ValueError("an alert's key is a key id or null")
    return alert_id, float(at), kind, severity, key, orjson.dumps(_without_nul(alert)).decode()


def _without_nul(value: object) -> object:
    """PostgreSQL's jsonb refuses NUL characters: they become U+FFFD, in every store alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def address_subject(address: str) -> str:
    """The change-feed subject of a client address: blocks and unblocks sit in the lifecycle log beside the keys'
    (`events(address_subject(a))`), under a name no key id can take."""
    return f"address:{address}"


def record_to_row(record: KeyRecord) -> tuple[object, ...]:
    return (
        record.id,
        record.name,
        record.secret_hash,
        orjson.dumps(sorted(record.scopes)).decode(),
        orjson.dumps(sorted(record.models)).decode() if record.models is not None else None,
        record.created_at,
        record.expires_at,
        record.revoked_at,
        record.suspended_at,
        record.previous_hash,
        record.previous_until,
        record.rpm,
        record.tpm,
        record.concurrency,
        record.tool_policy,
        record.canary,
    )


class SQLiteKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pruned = -math.inf  # monotonic time of the last deletion of expired blocks
        self._alerts_pruned = -math.inf  # monotonic time of the last deletion of old alerts
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not path.exists()
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
            if fresh:
                os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the key store: {exc}", source=str(path)) from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise ConfigError(
                f"the key store has schema version {version}, newer than this aiperimeter understands "
                f"({len(MIGRATIONS)}); upgrade aiperimeter",
                source=str(self.path),
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                if self._db.execute("PRAGMA user_version").fetchone()[0] >= number:
                    self._db.execute("COMMIT")
                    continue
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number:d}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise BackendUnavailable("store_unavailable", "The key store is unavailable.") from exc

    def _change(self, key_id: str, kind: str, actor: str) -> None:
        self._db.execute(
            "INSERT INTO key_changes (key_id, kind, actor, at) VALUES (?, ?, ?, ?)",
            (key_id, kind, actor, time.time()),
        )

    async def add(self, record: KeyRecord, actor: str) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM keys WHERE previous_hash = ?", (record.secret_hash,)).fetchone():
                raise sqlite3.IntegrityError("hash in use")
            self._db.execute(
                f"INSERT INTO keys ({COLUMNS}) VALUES ({', '.join('?' * COLUMN_COUNT)})",  # noqa: S608 - constant columns
                record_to_row(record),
            )
            self._change(record.id, "create", actor)
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise ValueError(f"key {record.id} already exists") from None
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise BackendUnavailable("store_unavailable", "The key store is unavailable.") from exc

    async def get(self, key_id: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {COLUMNS} FROM keys WHERE id = ?", (key_id,))  # noqa: S608
        return row_to_record(rows[0]) if rows else None

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        rows = self._query(
            f"SELECT {COLUMNS} FROM keys WHERE secret_hash = ? OR previous_hash = ?",  # noqa: S608
            (secret_hash, secret_hash),
        )
        return row_to_record(rows[0]) if rows else None

    async def list_all(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {COLUMNS} FROM keys ORDER BY created_at, id")  # noqa: S608
        return [row_to_record(row) for row in rows]

    def _update(self, key_id: str, kind: str, actor: str, sql: str, params: tuple[object, ...]) -> bool:
        """One guarded UPDATE and its change record, in one transaction; whether a row changed."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            changed = self._db.execute(sql, params).rowcount > 0
            if changed:
                self._change(key_id, kind, actor)
            self._db.execute("COMMIT")
            return changed
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            raise ValueError("the new secret is already in use") from None
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise BackendUnavailable("store_unavailable", "The key store is unavailable.") from exc

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        self._update(key_id, "revoke", actor, sql, (at, key_id))
        return await self.get(key_id)

    async def rotate(self, key_id: str, new_hash: str, grace_until: float, actor: str) -> KeyRecord | None:
        if self._query("SELECT 1 FROM keys WHERE secret_hash = ? OR previous_hash = ?", (new_hash, new_hash)):
            raise ValueError("the new secret is already in use")
        sql = (
            "UPDATE keys SET previous_hash = secret_hash, previous_until = ?, secret_hash = ? "
            "WHERE id = ? AND revoked_at IS NULL"
        )
        changed = self._update(key_id, "rotate", actor, sql, (grace_until, new_hash, key_id))
        return await self.get(key_id) if changed else None

    async def suspend(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET suspended_at = ? WHERE id = ? AND suspended_at IS NULL"
        self._update(key_id, "suspend", actor, sql, (at, key_id))
        return await self.get(key_id)

    async def resume(self, key_id: str, actor: str) -> KeyRecord | None:
        sql = "UPDATE keys SET suspended_at = NULL WHERE id = ? AND suspended_at IS NOT NULL"
        self._update(key_id, "resume", actor, sql, (key_id,))
        return await self.get(key_id)

    async def events(self, key_id: str) -> list[tuple[str, str, float]]:
        rows = self._query("SELECT kind, actor, at FROM key_changes WHERE key_id = ? ORDER BY seq", (key_id,))
        return [(str(kind), str(actor), float(at)) for kind, actor, at in rows]  # type: ignore[arg-type]

    async def has_active(self, now: float) -> bool:
        rows = self._query(
            "SELECT 1 FROM keys WHERE revoked_at IS NULL AND suspended_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > ?) LIMIT 1",
            (now,),
        )
        return bool(rows)

    async def changes_since(self, cursor: int) -> tuple[list[str], int]:
        if cursor < 0:
            rows = self._query("SELECT COALESCE(MAX(seq), 0) FROM key_changes")
            return [], int(rows[0][0])  # type: ignore[call-overload]
        rows = self._query("SELECT seq, key_id FROM key_changes WHERE seq > ? ORDER BY seq", (cursor,))
        if not rows:
            return [], cursor
        return [str(row[1]) for row in rows], int(rows[-1][0])  # type: ignore[call-overload]

    # --- watch: alerts and blocked addresses ---------------------------------------------------------------------

    def _write(self, work: Callable[[], T]) -> T:
        """`work` in one write transaction."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            result = work()
            self._db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise BackendUnavailable("store_unavailable", "The key store is unavailable.") from exc

    async def add_alert(self, alert: dict[str, object]) -> bool:
        fields = alert_fields(alert)
        sql = (
            "INSERT INTO alerts (id, time, kind, severity, key_id, doc) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING"
        )
        prune = time.monotonic() - self._alerts_pruned >= ALERT_PRUNE_EVERY

        def write() -> bool:
            if prune:
                self._db.execute("DELETE FROM alerts WHERE time < ?", (alert_cutoff(fields[1]),))
            return bool(self._db.execute(sql, fields).rowcount == 1)

        added = self._write(write)
        if prune:
            self._alerts_pruned = time.monotonic()
        return added

    async def alerts(self, limit: int = 100, since: float | None = None) -> list[dict[str, object]]:
        rows = self._query(
            "SELECT doc FROM alerts WHERE time >= ? ORDER BY time DESC, id DESC LIMIT ?",
            (-math.inf if since is None else since, max(0, limit)),
        )
        return [orjson.loads(str(row[0])) for row in rows]

    async def set_alert_actions(self, alert_id: str, actions: list[str]) -> None:
        sql = "UPDATE alerts SET doc = json_set(doc, '$.actions', json(?)) WHERE id = ?"
        self._write(lambda: self._db.execute(sql, (orjson.dumps([str(a) for a in actions]).decode(), alert_id)))

    async def block(self, address: str, until: float, reason: str, actor: str) -> None:
        now = time.time()
        # A later block extends an earlier one; an expired row is replaced whole.
        sql = (
            "INSERT INTO blocks (address, until, reason, actor, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (address) DO UPDATE SET "
            "reason = CASE WHEN excluded.until > blocks.until THEN excluded.reason ELSE blocks.reason END, "
            "actor = CASE WHEN excluded.until > blocks.until THEN excluded.actor ELSE blocks.actor END, "
            "created_at = CASE WHEN blocks.until <= excluded.created_at THEN excluded.created_at "
            "ELSE blocks.created_at END, "
            "until = max(blocks.until, excluded.until)"
        )

        def write() -> None:
            self._db.execute(sql, (address, until, reason, actor, now))
            self._change(address_subject(address), "block", actor)

        self._write(write)

    async def unblock(self, address: str, actor: str) -> bool:
        def write() -> bool:
            row = self._db.execute("SELECT until FROM blocks WHERE address = ?", (address,)).fetchone()
            self._db.execute("DELETE FROM blocks WHERE address = ?", (address,))
            in_force = row is not None and float(row[0]) > time.time()
            if in_force:
                self._change(address_subject(address), "unblock", actor)
            return in_force

        return self._write(write)

    async def blocks(
        self, now: float, limit: int | None = None, addresses: Collection[str] | None = None
    ) -> list[tuple[str, float, str]]:
        if time.monotonic() - self._pruned > PRUNE_EVERY:
            self._pruned = time.monotonic()
            if self._query("SELECT 1 FROM blocks WHERE until <= ? LIMIT 1", (now,)):
                with contextlib.suppress(BackendUnavailable):  # a busy writer: prune next time
                    self._write(lambda: self._db.execute("DELETE FROM blocks WHERE until <= ?", (now,)))
        if addresses is not None:
            rows = self._query(
                "SELECT address, until, reason FROM blocks WHERE until > ? "
                "AND address IN (SELECT value FROM json_each(?)) ORDER BY address",
                (now, orjson.dumps(list(addresses)).decode()),
            )
        elif limit is None:
            rows = self._query("SELECT address, until, reason FROM blocks WHERE until > ? ORDER BY address", (now,))
        else:
            rows = self._query(
                "SELECT address, until, reason FROM blocks WHERE until > ? ORDER BY created_at DESC, address LIMIT ?",
                (now, max(0, limit)),
            )
        return [(str(a), float(u), str(r)) for a, u, r in rows]  # type: ignore[arg-type]

    async def close(self) -> None:
        self._db.close()
