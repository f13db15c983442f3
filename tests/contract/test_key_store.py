"""One suite, every key store backend: the same behaviour everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from aiperimeter.errors import BackendUnavailable, ConfigError
from aiperimeter.keys import new_key
from aiperimeter.state import postgres
from aiperimeter.state import sqlite as sqlite_store
from aiperimeter.state.base import KeyStore, open_key_store, open_store
from aiperimeter.state.memory import MemoryKeyStore
from aiperimeter.state.postgres import PostgresKeyStore
from aiperimeter.state.sqlite import SQLiteKeyStore
from tests.support.proxy import Proxy


def in_schema(url: str, schema: str) -> str:
    """The URL with its search_path set to `schema` (libpq's options parameter)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextlib.asynccontextmanager
async def fresh_schema(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty schema for one test (the URL pointing at it); dropped, with everything in it, afterwards."""
    name = f"aip_test_{secrets.token_hex(6)}"
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield in_schema(postgres_url, name)
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        backend: KeyStore = MemoryKeyStore()
    elif request.param == "sqlite":
        backend = SQLiteKeyStore(tmp_path / "keys.db")
    else:
        async with fresh_schema(request.getfixturevalue("postgres_url")) as url:
            backend = await open_store(tmp_path, url)
            yield backend
            await backend.close()
        return
    yield backend
    await backend.close()


async def test_add_get_and_lookup_by_hash(store: KeyStore) -> None:
    record, _ = new_key(
        "app",
        scopes=frozenset({"admin"}),
        models=frozenset({"m1", "m2"}),
        expires_at=time.time() + 60,
        tool_policy="analytics",
    )
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


# --- PostgreSQL only ----------------------------------------------------------------------------------------------


async def _schema_versions(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        return [row[0] for row in await cur.fetchall()]


def test_postgres_migrations_mirror_sqlite() -> None:
    assert len(postgres.MIGRATIONS) == len(sqlite_store.MIGRATIONS) == postgres.LATEST


async def test_postgres_replicas_opening_together_migrate_once(postgres_url: str) -> None:
    async with fresh_schema(postgres_url) as url:
        stores = [PostgresKeyStore(url) for _ in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in stores))  # each would fail if it applied a migration twice
            assert await _schema_versions(url) == list(range(1, postgres.LATEST + 1))
            record, _ = new_key("shared")
            await stores[0].add(record, "t")
            assert all([await s.by_hash(record.secret_hash) == record for s in stores])
            # Opening an up-to-date store applies nothing.
            again = PostgresKeyStore(url)
            await again.open()
            assert again.opened_version == postgres.LATEST
            await again.close()
            assert await _schema_versions(url) == list(range(1, postgres.LATEST + 1))
        finally:
            await asyncio.gather(*(s.close() for s in stores))


async def test_postgres_change_feed_follows_concurrent_writers(postgres_url: str) -> None:
    async with fresh_schema(postgres_url) as url:
        stores = [await open_store(Path("unused"), url) for _ in range(3)]
        try:
            _, cursor = await stores[0].changes_since(-1)
            records = [new_key(f"k{i}")[0] for i in range(30)]
            await asyncio.gather(*(stores[i % 3].add(r, "t") for i, r in enumerate(records)))
            changed, end = await stores[1].changes_since(cursor)
            assert sorted(changed) == sorted(r.id for r in records) and end > cursor
        finally:
            await asyncio.gather(*(s.close() for s in stores))


async def test_postgres_newer_schema_is_refused(postgres_url: str) -> None:
    async with fresh_schema(postgres_url) as url:
        first = PostgresKeyStore(url)
        await first.open()
        await first.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (99, time.time()))
        newer = PostgresKeyStore(url)
        try:
            with pytest.raises(ConfigError, match=r"schema version 99, newer .* upgrade aiperimeter"):
                await newer.open()
            with pytest.raises(ConfigError, match="upgrade aiperimeter"):
                await newer.list_all()  # a store that could not open never serves
        finally:
            await newer.close()
        with pytest.raises(ConfigError, match="upgrade aiperimeter"):
            await open_store(Path("unused"), url)


async def test_postgres_missing_schema_is_a_config_error(postgres_url: str) -> None:
    store = PostgresKeyStore(in_schema(postgres_url, f"aip_test_missing_{secrets.token_hex(4)}"))
    try:
        with pytest.raises(ConfigError, match="no schema"):
            await store.open()
    finally:
        await store.close()


async def test_postgres_sessions_have_short_timeouts(postgres_url: str) -> None:
    async with fresh_schema(postgres_url) as url:
        store = PostgresKeyStore(url)
        try:

            async def settings(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> list[object]:
                cur = await conn.execute(
                    "SELECT current_setting('statement_timeout'), current_setting('application_name')"
                )
                row = await cur.fetchone()
                assert row is not None
                return [*row, conn.info.get_parameters().get("connect_timeout")]

            assert await store._run(settings) == ["5s", "aiperimeter", "3"]
        finally:
            await store.close()


def test_choosing_a_backend_from_a_location(tmp_path: Path) -> None:
    assert isinstance(open_key_store(tmp_path), SQLiteKeyStore)
    assert isinstance(open_key_store(tmp_path, "postgresql://u@127.0.0.1:5432/db"), PostgresKeyStore)
    assert isinstance(open_key_store(tmp_path, "postgres://u@127.0.0.1/db"), PostgresKeyStore)  # no I/O yet
    for bad in ("mysql://u:hunter2pw@h/db", "sqlite:///x.db", "/var/lib/keys.db"):
        with pytest.raises(ConfigError, match="PostgreSQL URL") as caught:
            open_key_store(tmp_path, bad)
        assert "hunter2pw" not in str(caught.value)
    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as caught:
        open_key_store(tmp_path, "postgresql://u:hunter2pw@h:notaport/db")
    assert "hunter2pw" not in str(caught.value)


def test_urls_are_redacted() -> None:
    assert postgres.redact_url("postgresql://app:p%40ss@db:5432/k?sslmode=require") == (
        "postgresql://app:***@db:5432/k?sslmode=require"
    )
    assert postgres.redact_url("postgresql://db/k?user=app&password=pw1&x=1") == (
        "postgresql://db/k?user=app&password=***&x=1"
    )
    assert postgres.redact_url("postgresql://app@db/k") == "postgresql://app@db/k"
    assert postgres.redact_text("auth failed for p@ss", "postgresql://app:p%40ss@db/k") == "auth failed for ***"
    assert "topsecret" not in repr(PostgresKeyStore("postgresql://app:topsecret@127.0.0.1/k"))


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[Proxy]:
    target = urlsplit(postgres_url)
    relay = Proxy(target.hostname or "127.0.0.1", target.port or 5432)
    await relay.start()
    yield relay
    relay.flowing.set()
    if relay.server is not None:
        relay.server.close()
    for writer in list(relay.links):
        writer.transport.abort()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


async def _until_back(store: PostgresKeyStore, key_id: str, within: float) -> float:
    """Retry until the store answers again; how long that took."""
    start = time.monotonic()
    while True:
        try:
            assert (await store.get(key_id)) is not None
            return time.monotonic() - start
        except BackendUnavailable:
            if time.monotonic() - start > within:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_postgres_outage_fails_closed_fast_and_recovers(postgres_url: str, proxy: Proxy) -> None:
    async with fresh_schema(postgres_url) as direct:
        store = late = PostgresKeyStore(_via(direct, proxy.port))
        try:
            await store.open()
            record, _ = new_key("app")
            await store.add(record, "t")

            await proxy.cut()
            for operation in (store.by_hash(record.secret_hash), store.changes_since(0)):
                start = time.monotonic()
                with pytest.raises(BackendUnavailable) as caught:
                    await operation
                assert time.monotonic() - start < 6.0
                assert caught.value.code == "store_unavailable" and caught.value.status == 503

            late = PostgresKeyStore(_via(direct, proxy.port))  # a replica starting during the outage
            start = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await late.open()
            assert time.monotonic() - start < 6.0

            await proxy.restore()
            await _until_back(store, record.id, within=15.0)  # the same store: the pool reconnected by itself
            assert await store.by_hash(record.secret_hash) == record
            await _until_back(late, record.id, within=15.0)  # and the late one opens on its next operation
        finally:
            await store.close()
            await late.close()


@pytest.mark.slow
async def test_postgres_unresponsive_network_fails_closed_within_the_bound(postgres_url: str, proxy: Proxy) -> None:
    async with fresh_schema(postgres_url) as direct:
        store = PostgresKeyStore(_via(direct, proxy.port))
        try:
            await store.open()
            record, _ = new_key("app")
            await store.add(record, "t")

            proxy.flowing.clear()  # connections stay open, nothing answers: no error from the network, ever
            start = time.monotonic()
            with pytest.raises(BackendUnavailable):
                await store.get(record.id)
            assert time.monotonic() - start < 6.0

            proxy.flowing.set()
            await _until_back(store, record.id, within=15.0)
        finally:
            await store.close()
