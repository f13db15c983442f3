"""An in-process key store: for tests and for embedding; nothing survives the process."""

from __future__ import annotations

from dataclasses import replace

from aiperimeter.keys import KeyRecord


class MemoryKeyStore:
    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._changes: list[str] = []

    async def add(self, record: KeyRecord, actor: str) -> None:
        if record.id in self._by_id or any(r.secret_hash == record.secret_hash for r in self._by_id.values()):
            raise ValueError(f"key {record.id} already exists")
        self._by_id[record.id] = record
        self._changes.append(record.id)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        return next((r for r in self._by_id.values() if r.secret_hash == secret_hash), None)

    async def list_all(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: (r.created_at, r.id))

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = replace(record, revoked_at=at)
            self._by_id[key_id] = record
            self._changes.append(key_id)
        return record

    async def has_active(self, now: float) -> bool:
        return any(r.status(now) == "active" for r in self._by_id.values())

    async def changes_since(self, cursor: int) -> tuple[list[str], int]:
        end = len(self._changes)
        if cursor < 0:
            return [], end
        return self._changes[cursor:end], end

    async def close(self) -> None:
        return None
