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


async def test_rotation_keeps_the_previous_secret_for_the_grace_only(store: KeyStore) -> None:
    from aiperimeter.keys import new_secret

    record, _ = new_key("app")
    await store.add(record, "t")
    _, new_hash = new_secret(record.id)
    rotated = await store.rotate(record.id, new_hash, 1_000.0, "alice")
    assert rotated is not None
    assert (rotated.secret_hash, rotated.previous_hash, rotated.previous_until) == (
        new_hash,
        record.secret_hash,
        1_000.0,
    )
    assert await store.by_hash(new_hash) == rotated
    assert await store.by_hash(record.secret_hash) == rotated  # the old secret still finds the key...
    assert rotated.accepts(record.secret_hash, 999.0) and not rotated.accepts(record.secret_hash, 1_000.0)  # ...until
    assert rotated.accepts(new_hash, 10**10)
    # A second rotation ends the first one's grace: only the secret it replaces keeps working.
    _, third = new_secret(record.id)
    again = await store.rotate(record.id, third, 2_000.0, "bob")
    assert again is not None and again.previous_hash == new_hash
    assert await store.by_hash(record.secret_hash) is None
    with pytest.raises(ValueError, match="in use"):
        await store.rotate(record.id, third, 3_000.0, "bob")
    assert await store.rotate("nosuchkeyxxx", "f" * 64, 1.0, "t") is None
    await store.revoke(record.id, 5.0, "t")
    _, fourth = new_secret(record.id)
    assert await store.rotate(record.id, fourth, 9.0, "t") is None  # a revoked key stays revoked


async def test_suspend_and_resume(store: KeyStore) -> None:
    record, _ = new_key("app")
    await store.add(record, "t")
    suspended = await store.suspend(record.id, 10.0, "alice")
    assert suspended is not None and suspended.status(20.0) == "suspended"
    assert not await store.has_active(20.0)
    assert (await store.suspend(record.id, 30.0, "alice")).suspended_at == 10.0  # type: ignore[union-attr]
    resumed = await store.resume(record.id, "bob")
    assert resumed is not None and resumed.status(20.0) == "active"
    assert await store.suspend("nosuchkeyxxx", 1.0, "t") is None
    assert await store.resume("nosuchkeyxxx", "t") is None


async def test_lifecycle_events_name_who_did_what(store: KeyStore) -> None:
    from aiperimeter.keys import new_secret

    record, _ = new_key("app", rpm=60, tpm=10_000, concurrency=4)
    await store.add(record, "alice")
    stored = await store.get(record.id)
    assert stored is not None and (stored.rpm, stored.tpm, stored.concurrency) == (60, 10_000, 4)
    await store.rotate(record.id, new_secret(record.id)[1], time.time() + 60, "bob")
    await store.suspend(record.id, time.time(), "carol")
    await store.resume(record.id, "carol")
    await store.revoke(record.id, time.time(), "dave")
    events = await store.events(record.id)
    assert [(kind, actor) for kind, actor, _ in events] == [
        ("create", "alice"),
        ("rotate", "bob"),
        ("suspend", "carol"),
        ("resume", "carol"),
        ("revoke", "dave"),
    ]
    assert all(at > 0 for _, _, at in events)
