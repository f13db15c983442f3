"""The protocol every key store implements, and the choice of backend from a location."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from aiperimeter.errors import ConfigError
from aiperimeter.keys import KeyRecord


class KeyStore(Protocol):
    """Keys and their lifecycle. Every mutation is also recorded as a change, so gateways can follow it."""

    async def add(self, record: KeyRecord, actor: str) -> None: ...

    async def get(self, key_id: str) -> KeyRecord | None: ...

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        """The key whose current or previous (rotated) secret has this hash."""
        ...

    async def list_all(self) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        """Mark a key revoked; return the updated record, or None when no such key exists."""
        ...

    async def rotate(self, key_id: str, new_hash: str, grace_until: float, actor: str) -> KeyRecord | None:
        """Make `new_hash` the key's secret; the current one stays valid until `grace_until`. A rotation during
        another's grace ends that grace: only the secret just replaced keeps working. None if no such live key."""
        ...

    async def suspend(self, key_id: str, at: float, actor: str) -> KeyRecord | None: ...

    async def resume(self, key_id: str, actor: str) -> KeyRecord | None: ...

    async def events(self, key_id: str) -> list[tuple[str, str, float]]:
        """The key's lifecycle: (kind, actor, at), oldest first."""
        ...

    async def has_active(self, now: float) -> bool: ...

    async def changes_since(self, cursor: int) -> tuple[list[str], int]:
        """Ids of keys changed after `cursor`, and the new cursor. A cursor of -1 asks only for the current one."""
        ...

    # --- watch: alerts and blocked client addresses, shared by every replica that shares the store ---

    async def add_alert(self, alert: dict[str, object]) -> bool:
        """Keep an alert (Alert.to_dict()) unless one with its id is kept already; True when it was new, so that
        replicas raising the same alert deliver it once. Alerts older than ALERTS_KEPT (sqlite.py) are deleted
        here, at most once per ALERT_PRUNE_EVERY per store object."""
        ...

    async def alerts(self, limit: int = 100, since: float | None = None) -> list[dict[str, object]]:
        """The newest alerts first (at most `limit`), optionally only those detected at or after `since`."""
        ...

    async def set_alert_actions(self, alert_id: str, actions: list[str]) -> None: ...

    async def block(self, address: str, until: float, reason: str, actor: str) -> None:
        """Refuse requests from `address` until `until` (a later block extends an earlier one)."""
        ...

    async def unblock(self, address: str, actor: str) -> bool: ...

    async def blocks(
        self, now: float, limit: int | None = None, addresses: Collection[str] | None = None
    ) -> list[tuple[str, float, str]]:
        """The blocks in force: (address, until, reason), by address; with `limit`, at most that many, the most
        recently made first; with `addresses`, only the blocks of those. An address may also be a network
        (`2001:db8:1:2::/64`)."""
        ...

    async def close(self) -> None: ...


DB_FILE = "aiperimeter.db"


def open_key_store(data_dir: Path, database: str | None = None) -> KeyStore:
    """SQLite in the data dir by default; PostgreSQL when `database` is a postgresql:// (or postgres://) URL.

    No I/O for PostgreSQL here: its pool connects and migrates on first use. Prefer `open_store` in async code, which
    does that at once and so fails at start-up rather than at the first request."""
    if not database:
        from aiperimeter.state.sqlite import SQLiteKeyStore

        return SQLiteKeyStore(data_dir / DB_FILE)
    from aiperimeter.state.postgres import PostgresKeyStore, is_postgres_url, redact_url

    if not is_postgres_url(database):
        raise ConfigError(
            f"{redact_url(database)!r} is not a database this aiperimeter can use; give a PostgreSQL URL "
            "(postgresql://user@host:5432/dbname or postgres://...), or none for SQLite in the data dir",
            field="database",
        )
    return PostgresKeyStore(database)


async def open_store(data_dir: Path, database: str | None = None) -> KeyStore:
    """`open_key_store`, then connect and migrate now (PostgreSQL): ConfigError or BackendUnavailable at once."""
    store = open_key_store(data_dir, database)
    from aiperimeter.state.postgres import PostgresKeyStore

    if isinstance(store, PostgresKeyStore):
        try:
            await store.open()
        except BaseException:
            await store.close()
            raise
    return store
