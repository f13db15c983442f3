"""An in-process key store: for tests and for embedding; nothing survives the process."""

from __future__ import annotations

import time
from dataclasses import replace

from aiperimeter.keys import KeyRecord


class MemoryKeyStore:
    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._changes: list[str] = []
        self._events: list[tuple[str, str, str, float]] = []  # (key id, kind, actor, at)

    def _change(self, key_id: str, kind: str, actor: str) -> None:
        self._changes.append(key_id)
        self._events.append((key_id, kind, actor, time.time()))

    def _hashes(self) -> set[str]:
        return {h for r in self._by_id.values() for h in (r.secret_hash, r.previous_hash) if h is not None}

    async def add(self, record: KeyRecord, actor: str) -> None:
        if record.id in self._by_id or record.secret_hash in self._hashes():
            raise ValueError(f"key {record.id} already exists")
        self._by_id[record.id] = record
        self._change(record.id, "create", actor)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        return next((r for r in self._by_id.values() if secret_hash in (r.secret_hash, r.previous_hash)), None)

    async def list_all(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: (r.created_at, r.id))

    async def revoke(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is None:
            return None
        if record.revoked_at is None:
            self._by_id[key_id] = record = replace(record, revoked_at=at)
            self._change(key_id, "revoke", actor)
        return record

    async def rotate(self, key_id: str, new_hash: str, grace_until: float, actor: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is None or record.revoked_at is not None:
            return None
        if new_hash in self._hashes():
            raise ValueError("the new secret is already in use")
        self._by_id[key_id] = record = replace(
            record, secret_hash=new_hash, previous_hash=record.secret_hash, previous_until=grace_until
        )
        self._change(key_id, "rotate", actor)
        return record

    async def suspend(self, key_id: str, at: float, actor: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is None:
            return None
        if record.suspended_at is None:
            self._by_id[key_id] = record = replace(record, suspended_at=at)
            self._change(key_id, "suspend", actor)
        return record

    async def resume(self, key_id: str, actor: str) -> KeyRecord | None:
        record = self._by_id.get(key_id)
        if record is None:
            return None
        if record.suspended_at is not None:
            self._by_id[key_id] = record = replace(record, suspended_at=None)
            self._change(key_id, "resume", actor)
        return record

    async def events(self, key_id: str) -> list[tuple[str, str, float]]:
        return [(kind, actor, at) for kid, kind, actor, at in self._events if kid == key_id]

    async def has_active(self, now: float) -> bool:
        return any(r.status(now) == "active" for r in self._by_id.values())

    async def changes_since(self, cursor: int) -> tuple[list[str], int]:
        end = len(self._changes)
        if cursor < 0:
            return [], end
        return self._changes[cursor:end], end

    async def close(self) -> None:
        return None
