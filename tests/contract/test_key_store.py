"""One suite, every key store backend: the same behaviour everywhere."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiperimeter.keys import new_key
from aiperimeter.state.base import KeyStore
from aiperimeter.state.memory import MemoryKeyStore
from aiperimeter.state.sqlite import SQLiteKeyStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    backend: KeyStore = MemoryKeyStore() if request.param == "memory" else SQLiteKeyStore(tmp_path / "keys.db")
    yield backend
    await backend.close()


async def test_add_get_and_lookup_by_hash(store: KeyStore) -> None:
    record, _ = new_key("app", scopes=frozenset({"admin"}), models=frozenset({"m1", "m2"}), expires_at=time.time() + 60)
    await store.add(record, "tester")
    assert await store.get(record.id) == record
    assert await store.by_hash(record.secret_hash) == record
    assert await store.get("nosuchkeyxxx") is None
    assert await store.by_hash("0" * 64) is None


async def test_adding_a_key_twice_fails(store: KeyStore) -> None:
    record, _ = new_key("app")
    await store.add(record, "tester")
    with pytest.raises(ValueError, match="already exists"):
        await store.add(record, "tester")


async def test_list_in_creation_order(store: KeyStore) -> None:
    first, _ = new_key("first", now=100.0)
    second, _ = new_key("second", now=200.0)
    await store.add(second, "t")
    await store.add(first, "t")
    assert [r.name for r in await store.list_all()] == ["first", "second"]


async def test_revoke_is_recorded_once(store: KeyStore) -> None:
    record, _ = new_key("app")
    await store.add(record, "t")
    revoked = await store.revoke(record.id, 500.0, "t")
    assert revoked is not None and revoked.revoked_at == 500.0
    again = await store.revoke(record.id, 900.0, "t")
    assert again is not None and again.revoked_at == 500.0
    assert await store.revoke("nosuchkeyxxx", 1.0, "t") is None


async def test_has_active(store: KeyStore) -> None:
    now = time.time()
    assert not await store.has_active(now)
    expired, _ = new_key("old", expires_at=now - 1)
    await store.add(expired, "t")
    assert not await store.has_active(now)
    live, _ = new_key("live")
    await store.add(live, "t")
    assert await store.has_active(now)
    await store.revoke(live.id, now, "t")
    assert not await store.has_active(now)


async def test_change_feed(store: KeyStore) -> None:
    first, _ = new_key("a")
    await store.add(first, "t")
    changed, cursor = await store.changes_since(-1)
    assert changed == []
    second, _ = new_key("b")
    await store.add(second, "t")
    await store.revoke(first.id, time.time(), "t")
    changed, cursor2 = await store.changes_since(cursor)
    assert changed == [second.id, first.id] and cursor2 > cursor
    assert await store.changes_since(cursor2) == ([], cursor2)


async def test_sqlite_is_shared_between_connections(tmp_path: Path) -> None:
    writer, reader = SQLiteKeyStore(tmp_path / "k.db"), SQLiteKeyStore(tmp_path / "k.db")
    try:
        _, cursor = await reader.changes_since(-1)
        record, _ = new_key("shared")
        await writer.add(record, "t")
        assert await reader.by_hash(record.secret_hash) == record
        assert (await reader.changes_since(cursor))[0] == [record.id]
        assert oct((tmp_path / "k.db").stat().st_mode & 0o777) == "0o600"
    finally:
        await writer.close()
        await reader.close()
