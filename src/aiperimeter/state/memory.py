"""An in-process key store: for tests and for embedding; nothing survives the process."""

from __future__ import annotations

import math
import time
from collections.abc import Collection
from dataclasses import replace

import orjson

from aiperimeter.keys import KeyRecord
from aiperimeter.state.sqlite import ALERT_PRUNE_EVERY, address_subject, alert_cutoff, alert_fields


class MemoryKeyStore:
    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}
        self._changes: list[str] = []
        self._events: list[tuple[str, str, str, float]] = []  # (key id, kind, actor, at)
        self._alerts: dict[str, tuple[float, str]] = {}  # id -> (time, JSON): stored as the databases store them
        self._blocks: dict[str, tuple[float, str, float]] = {}  # address -> (until, reason, made at)
        self._alerts_pruned = -math.inf  # monotonic time of the last deletion of old alerts

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

    async def add_alert(self, alert: dict[str, object]) -> bool:
        alert_id, at, _, _, _, doc = alert_fields(alert)
        if time.monotonic() - self._alerts_pruned >= ALERT_PRUNE_EVERY:
            self._alerts_pruned = time.monotonic()
            cutoff = alert_cutoff(at)
            self._alerts = {i: kept for i, kept in self._alerts.items() if kept[0] >= cutoff}
        if alert_id in self._alerts:
            return False
        self._alerts[alert_id] = (at, doc)
        return True

    async def alerts(self, limit: int = 100, since: float | None = None) -> list[dict[str, object]]:
        newest = sorted(
            ((at, alert_id, doc) for alert_id, (at, doc) in self._alerts.items() if since is None or at >= since),
            reverse=True,
        )
        return [orjson.loads(doc) for _, _, doc in newest[: max(0, limit)]]

    async def set_alert_actions(self, alert_id: str, actions: list[str]) -> None:
        if alert_id in self._alerts:
            at, doc = self._alerts[alert_id]
            self._alerts[alert_id] = (
                at,
                orjson.dumps({**orjson.loads(doc), "actions": [str(a) for a in actions]}).decode(),
            )

    async def block(self, address: str, until: float, reason: str, actor: str) -> None:
        now = time.time()
        current = self._blocks.get(address)
        if current is None or until > current[0]:
            # As the databases: an extension keeps when the block was made; a block after one that ended is new.
            made = current[2] if current is not None and current[0] > now else now
            self._blocks[address] = (until, reason, made)
        self._change(address_subject(address), "block", actor)

    async def unblock(self, address: str, actor: str) -> bool:
        current = self._blocks.pop(address, None)
        in_force = current is not None and current[0] > time.time()
        if in_force:
            self._change(address_subject(address), "unblock", actor)
        return in_force

    async def blocks(
        self, now: float, limit: int | None = None, addresses: Collection[str] | None = None
    ) -> list[tuple[str, float, str]]:
        for address in [a for a, (until, _, _) in self._blocks.items() if until <= now]:
            del self._blocks[address]
        if addresses is not None:
            return sorted((a, self._blocks[a][0], self._blocks[a][1]) for a in set(addresses) if a in self._blocks)
        if limit is None:
            return sorted((address, until, reason) for address, (until, reason, _) in self._blocks.items())
        newest = sorted(self._blocks.items(), key=lambda item: (-item[1][2], item[0]))[: max(0, limit)]
        return [(address, until, reason) for address, (until, reason, _) in newest]

    async def close(self) -> None:
        return None
