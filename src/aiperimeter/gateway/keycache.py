"""Verified keys cached per worker, bounded in time and evicted by the store's change feed.

A cached key lives at most `ttl` seconds, so even a lost change cannot keep a revoked key alive longer than that;
the follower polls the store's change feed every `poll` seconds and evicts changed keys at once.

When the store fails, a key verified within the last `stale` seconds keeps working (a database hiccup must not
refuse valid keys); any other key gets 503, never 401. Nothing is served stale beyond that window.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiperimeter.errors import BackendUnavailable
from aiperimeter.keys import KeyRecord
from aiperimeter.state.base import KeyStore

log = logging.getLogger("aiperimeter.gateway")


class KeyCache:
    def __init__(
        self, store: KeyStore, *, ttl: float, poll: float, stale: float = 60.0, max_entries: int = 100_000
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.poll = poll
        self.stale = stale
        self.max_entries = max_entries
        self._entries: dict[str, tuple[KeyRecord, float]] = {}  # hash -> (record, monotonic time verified)
        self.serving_stale = False
        self._cursor = -1
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None  # a lookup in the background while the store is down
        # Bumped by every eviction: a lookup that began before one must not put back what it read, which may be
        # the row as it was before the revocation that caused the eviction.
        self._evictions = 0
        self._stopped = False

    def cached(self, secret_hash: str) -> KeyRecord | None:
        entry = self._entries.get(secret_hash)
        if entry is not None and time.monotonic() - entry[1] < self.ttl:
            return entry[0]
        return None

    async def lookup(self, secret_hash: str) -> KeyRecord | None:
        record = self.cached(secret_hash)
        if record is not None:
            return record
        now = time.monotonic()
        entry = self._entries.get(secret_hash)
        if self.serving_stale and entry is not None and now - entry[1] < self.stale:
            # The store is known to be down: serve the verified key at once, and let one lookup in the background
            # find out whether the store is back, rather than make every request wait out the store's timeout.
            if (self._probe is None or self._probe.done()) and not self._stopped:
                self._probe = asyncio.create_task(self._recheck(secret_hash, now), name="key-store-probe")
            return entry[0]
        evictions = self._evictions
        try:
            record = await self.store.by_hash(secret_hash)
        except BackendUnavailable:
            entry = self._entries.get(secret_hash)
            if entry is not None and now - entry[1] < self.stale:
                if not self.serving_stale:
                    log.warning("key store unavailable: serving keys verified in the last %.0fs", self.stale)
                self.serving_stale = True
                return entry[0]
            raise
        self._verified(secret_hash, record, now, evictions)
        return record

    async def _recheck(self, secret_hash: str, now: float) -> None:
        evictions = self._evictions
        try:
            record = await self.store.by_hash(secret_hash)
        except BackendUnavailable:
            return  # still down: the next request past the TTL probes again
        except Exception:
            # Not the store being down: the stale entry is no longer trusted, so the next request asks the store
            # itself and fails as the foreground lookup fails.
            log.exception("key store probe failed")
            self._entries.pop(secret_hash, None)
            return
        self._verified(secret_hash, record, now, evictions)

    def _verified(self, secret_hash: str, record: KeyRecord | None, now: float, evictions: int) -> None:
        if self.serving_stale:
            log.info("key store available again")
            self.serving_stale = False
        if evictions != self._evictions:
            self._entries.pop(secret_hash, None)  # read before an eviction: the next request reads afresh
        elif record is not None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[secret_hash] = (record, now)
        else:
            self._entries.pop(secret_hash, None)

    def clear(self) -> None:
        self._evictions += 1
        self._entries.clear()

    def evict(self, key_ids: set[str]) -> None:
        self._evictions += 1
        for secret_hash in [h for h, (r, _) in self._entries.items() if r.id in key_ids]:
            del self._entries[secret_hash]

    async def start(self) -> None:
        _, self._cursor = await self.store.changes_since(-1)
        self._task = asyncio.create_task(self._follow(), name="key-change-follower")

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll)
            try:
                changed, self._cursor = await self.store.changes_since(self._cursor)
            except Exception:
                # Cached keys still expire by TTL; unknown keys get 503 from the store itself.
                if not failing:
                    log.warning("cannot read key changes from the store; cached keys expire within %.0fs", self.ttl)
                failing = True
                continue
            if failing:
                log.info("key change feed is readable again")
                failing = False
            if changed:
                self.evict(set(changed))
