"""The worker's key cache: a store outage serves recently verified keys at once and refuses the rest; a lookup that
raced an eviction (a revocation heard on the bus) never puts back the row it read before it."""

from __future__ import annotations

import asyncio
import time

import pytest

from aiperimeter.errors import BackendUnavailable
from aiperimeter.gateway.keycache import KeyCache
from aiperimeter.keys import KeyRecord, new_key
from aiperimeter.state.memory import MemoryKeyStore


class Outage(MemoryKeyStore):
    """The in-memory store behind a switch: `down` makes every lookup fail as a dead database does; `gate`, when
    set, holds lookups until it opens (a slow store)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.gate: asyncio.Event | None = None
        self.lookups = 0

    async def by_hash(self, secret_hash: str) -> KeyRecord | None:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise BackendUnavailable("store_unavailable", "down")
        return await super().by_hash(secret_hash)


async def stored(store: Outage, name: str) -> KeyRecord:
    record, _ = new_key(name)
    await store.add(record, "test")
    return record


async def test_an_outage_serves_verified_keys_at_once_and_refuses_unknown_ones() -> None:
    store = Outage()
    known, unseen = await stored(store, "known"), await stored(store, "unseen")
    cache = KeyCache(store, ttl=0.0, poll=60.0, stale=30.0)
    assert await cache.lookup(known.secret_hash) == known
    store.down = True
    assert await cache.lookup(known.secret_hash) == known  # the first failure: served stale
    assert cache.serving_stale
    store.gate = asyncio.Event()  # from now on the store hangs: a request must not wait for it
    before = store.lookups
    for _ in range(50):
        assert await asyncio.wait_for(cache.lookup(known.secret_hash), 1.0) == known
    assert store.lookups - before == 1  # one probe in the background, not one wait per request
    with pytest.raises(BackendUnavailable):
        store.gate.set()
        await cache.lookup(unseen.secret_hash)  # never verified: 503, never a guess
    store.down = False
    await asyncio.sleep(0)  # the probe now completes against the store that is back
    deadline = time.monotonic() + 2
    while cache.serving_stale and time.monotonic() < deadline:
        await cache.lookup(known.secret_hash)
        await asyncio.sleep(0.01)
    assert not cache.serving_stale
    await cache.stop()


async def test_a_lookup_that_raced_an_eviction_does_not_cache_what_it_read() -> None:
    store = Outage()
    record = await stored(store, "raced")
    cache = KeyCache(store, ttl=60.0, poll=60.0)
    store.gate = asyncio.Event()
    lookup = asyncio.create_task(cache.lookup(record.secret_hash))
    await asyncio.sleep(0)  # the lookup now waits on the store, holding the row as it was
    await store.revoke(record.id, time.time(), "test")
    cache.evict({record.id})  # what the bus delivers for the revocation
    store.gate.set()
    await lookup
    assert cache.cached(record.secret_hash) is None  # the pre-revocation row was not put back
    fresh = await cache.lookup(record.secret_hash)
    assert fresh is not None and fresh.revoked_at is not None
    await cache.stop()


async def test_a_probe_that_meets_an_unexpected_error_stops_serving_the_stale_entry() -> None:
    store = Outage()
    record = await stored(store, "odd")
    cache = KeyCache(store, ttl=0.0, poll=60.0, stale=30.0)
    await cache.lookup(record.secret_hash)
    store.down = True
    await cache.lookup(record.secret_hash)  # now serving stale

    async def broken(secret_hash: str) -> KeyRecord | None:
        raise RuntimeError("a bug, not an outage")

    store.by_hash = broken  # type: ignore[method-assign]
    assert await cache.lookup(record.secret_hash) == record  # served while the probe runs
    await asyncio.sleep(0.01)
    with pytest.raises(RuntimeError):
        await cache.lookup(record.secret_hash)  # the entry is gone: the store's own error, not a stale answer
    await cache.stop()
