"""The embedded key store: one SQLite file in the data dir, shared by the CLI and every gateway worker.

WAL mode lets the gateway read while `aiperimeter keys` writes. Every mutation appends to `key_changes`, which
gateways poll to evict revoked keys from their caches. Queries are parameterised, always.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import orjson

from aiperimeter.errors import BackendUnavailable, ConfigError
from aiperimeter.keys import KeyRecord

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
)

_COLUMNS = "id, name, secret_hash, scopes, models, created_at, expires_at, revoked_at"


def _row_to_record(row: tuple[object, ...]) -> KeyRecord:
    key_id, name, secret_hash, scopes, models, created_at, expires_at, revoked_at = row
    return KeyRecord(
        id=str(key_id),
        name=str(name),
        secret_hash=str(secret_hash),
        scopes=frozenset(orjson.loads(str(scopes))),
        models=frozenset(orjson.loads(str(models))) if models is not None else None,
        created_at=float(created_at),  # type: ignore[arg-type]
        expires_at=float(expires_at) if expires_at is not None else None,  # type: ignore[arg-type]
        revoked_at=float(revoked_at) if revoked_at is not None else None,  # type: ignore[arg-type]
    )


class SQLiteKeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
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
            self._db.execute(
                f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (
                    record.id,
                    record.name,
                    record.secret_hash,
                    orjson.dumps(sorted(record.scopes)).decode(),
                    orjson.dumps(sorted(record.models)).decode() if record.models is not None else None,
                    record.created_at,
                    record.expires_at,
                    record.revoked_at,
                ),
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
        rows = self._query(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,))  # noqa: S608
        return _row_to_record(rows[0]) if rows else None

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM keys WHERE secret_hash = ?", (secret_hash,))  # noqa: S608
        return _row_to_record(rows[0]) if rows else None

    async def list_all(self) -> list[KeyRecord]:
        rows = self._query(f"SELECT {_COLUMNS} FROM keys ORDER BY created_at, id")  # noqa: S608
        return [_row_to_record(row) for row in rows]

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (at, key_id)
            )
            if cursor.rowcount:
                self._change(key_id, "revoke", actor)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise BackendUnavailable("store_unavailable", "The key store is unavailable.") from exc
        return await self.get(key_id)

    async def has_active(self, now: float) -> bool:
        rows = self._query(
            "SELECT 1 FROM keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) LIMIT 1",
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

    async def close(self) -> None:
        self._db.close()
