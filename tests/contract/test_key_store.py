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


# --- watch: canary keys, alerts, blocked addresses -----------------------------------------------------------------


def _alert(alert_id: str, at: float, kind: str = "canary", key: str | None = "abcdefghijkl") -> dict[str, object]:
    from aiperimeter.watch.alerts import Alert

    return Alert(
        id=alert_id,
        time=at,
        kind=kind,
        severity="critical",
        key=key,
        client="203.0.113.7",
        summary="a canary key was used",
        baseline="never used",
        observed="1 request",
        evidence=("r1", "r2"),
        details={"user_agent": "curl/8.0", "count": 1},
    ).to_dict()


async def test_canary_keys_round_trip(store: KeyStore) -> None:
    canary, _ = new_key("bait", canary=True)
    plain, _ = new_key("app")
    await store.add(canary, "t")
    await store.add(plain, "t")
    assert await store.get(canary.id) == canary and canary.canary
    assert await store.by_hash(canary.secret_hash) == canary
    assert [r.canary for r in await store.list_all() if r.id in (canary.id, plain.id)] == [True, False]
    # A rotation (and any other change) keeps a canary a canary.
    from aiperimeter.keys import new_secret

    rotated = await store.rotate(canary.id, new_secret(canary.id)[1], time.time() + 60, "t")
    assert rotated is not None and rotated.canary
    suspended = await store.suspend(canary.id, time.time(), "t")
    assert suspended is not None and suspended.canary


async def test_an_alert_is_kept_once(store: KeyStore) -> None:
    alert = _alert("a" * 24, 1_000.0)
    assert await store.add_alert(alert) is True
    assert await store.add_alert(alert) is False
    assert await store.add_alert({**alert, "summary": "a second telling"}) is False  # the id decides
    assert await store.alerts() == [alert]


async def test_alerts_newest_first_with_limit_and_since(store: KeyStore) -> None:
    for n, at in enumerate((300.0, 100.0, 200.0, 400.0)):
        assert await store.add_alert(_alert(f"id{n}", at, key=None if n == 1 else "abcdefghijkl"))
    assert [a["time"] for a in await store.alerts()] == [400.0, 300.0, 200.0, 100.0]
    assert [a["time"] for a in await store.alerts(limit=2)] == [400.0, 300.0]
    assert [a["time"] for a in await store.alerts(since=200.0)] == [400.0, 300.0, 200.0]
    assert [a["time"] for a in await store.alerts(limit=1, since=150.0)] == [400.0]
    assert await store.alerts(limit=0) == []
    assert (await store.alerts(since=150.0, limit=10))[-1]["id"] == "id2"
    assert [a["key"] for a in await store.alerts() if a["id"] == "id1"] == [None]


async def test_alert_actions_are_recorded_on_the_alert(store: KeyStore) -> None:
    alert = _alert("b" * 24, 5.0)
    await store.add_alert(alert)
    await store.set_alert_actions(alert["id"], ["suspend_key", "block_address"])  # type: ignore[arg-type]
    [kept] = await store.alerts()
    assert kept == {**alert, "actions": ["suspend_key", "block_address"]}
    await store.set_alert_actions("no-such-alert", ["suspend_key"])  # nothing to change, no error
    assert await store.alerts() == [kept]


async def test_alert_text_survives_every_store(store: KeyStore) -> None:
    alert = _alert("c" * 24, 7.5)
    alert["summary"] = "unicode é ✓, quotes \" ', a NUL \x00 and a backslash \\u0000"
    assert await store.add_alert(alert)
    [kept] = await store.alerts()
    assert kept["summary"] == "unicode é ✓, quotes \" ', a NUL \ufffd and a backslash \\u0000"
    assert kept["details"] == {"user_agent": "curl/8.0", "count": 1} and kept["evidence"] == ["r1", "r2"]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"id": ""}, id="empty-id"),
        pytest.param({"id": "x" * 129}, id="long-id"),
        pytest.param({"time": "yesterday"}, id="time-not-a-number"),
        pytest.param({"time": float("nan")}, id="time-nan"),
        pytest.param({"kind": None}, id="no-kind"),
        pytest.param({"key": 7}, id="key-not-text"),
    ],
)
async def test_a_malformed_alert_is_refused(store: KeyStore, broken: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="alert"):
        await store.add_alert({**_alert("d" * 24, 1.0), **broken})
    assert await store.alerts() == []


async def test_blocks_are_in_force_until_they_end(store: KeyStore) -> None:
    now = time.time()
    await store.block("203.0.113.7", now + 60, "brute force: 30 failed authentications", "brute-force")
    await store.block("2001:db8::1", now + 120, "alert abc", "watch")
    await store.block("198.51.100.1", now - 1, "long over", "t")
    assert await store.blocks(now) == [
        ("2001:db8::1", now + 120, "alert abc"),
        ("203.0.113.7", now + 60, "brute force: 30 failed authentications"),
    ]
    assert await store.blocks(now + 90) == [("2001:db8::1", now + 120, "alert abc")]
    assert await store.blocks(now + 500) == []


async def test_a_later_block_extends_an_earlier_one_never_shortens_it(store: KeyStore) -> None:
    now = time.time()
    await store.block("203.0.113.7", now + 100, "first", "brute-force")
    await store.block("203.0.113.7", now + 50, "shorter", "watch")
    assert await store.blocks(now) == [("203.0.113.7", now + 100, "first")]
    await store.block("203.0.113.7", now + 300, "longer", "cli:alice")
    assert await store.blocks(now) == [("203.0.113.7", now + 300, "longer")]


async def test_an_expired_block_is_replaced_by_a_new_one(store: KeyStore) -> None:
    now = time.time()
    await store.block("203.0.113.7", now - 10, "old", "t")
    assert await store.blocks(now) == []
    await store.block("203.0.113.7", now + 10, "new", "t")
    assert await store.blocks(now) == [("203.0.113.7", now + 10, "new")]


async def test_unblock(store: KeyStore) -> None:
    from aiperimeter.state.sqlite import address_subject

    now = time.time()
    await store.block("203.0.113.7", now + 100, "r", "brute-force")
    await store.block("198.51.100.1", now - 1, "over", "t")
    assert await store.unblock("203.0.113.7", "cli:alice") is True
    assert await store.unblock("203.0.113.7", "cli:alice") is False  # nothing left to lift
    assert await store.unblock("198.51.100.1", "cli:alice") is False  # it had ended by itself
    assert await store.unblock("192.0.2.99", "cli:alice") is False
    assert await store.blocks(now) == []
    # Blocks and unblocks are in the lifecycle log, under the address.
    events = await store.events(address_subject("203.0.113.7"))
    assert [(kind, actor) for kind, actor, _ in events] == [("block", "brute-force"), ("unblock", "cli:alice")]


def _an_hour_passes(store: KeyStore) -> None:
    """As if the store object last deleted old alerts an hour ago (its monotonic mark, moved back)."""
    store._alerts_pruned -= sqlite_store.ALERT_PRUNE_EVERY  # type: ignore[attr-defined]


async def test_alerts_older_than_ninety_days_are_deleted_at_most_hourly(store: KeyStore) -> None:
    day = 86400.0
    assert day * 90 == sqlite_store.ALERTS_KEPT
    now = time.time()
    assert await store.add_alert(_alert("old", now - 91 * day))  # the first of this store object: deletes first
    assert await store.add_alert(_alert("kept", now - 89 * day))
    assert {a["id"] for a in await store.alerts()} == {"old", "kept"}  # within the hour: nothing deleted
    _an_hour_passes(store)
    assert await store.add_alert(_alert("new", now))
    assert [a["id"] for a in await store.alerts()] == ["new", "kept"]
    assert await store.add_alert(_alert("old2", now - 100 * day))
    assert await store.add_alert(_alert("new2", now + 1))
    assert [a["id"] for a in await store.alerts()] == ["new2", "new", "kept", "old2"]  # once an hour at most
    _an_hour_passes(store)
    assert await store.add_alert(_alert("new2", now + 1)) is False  # a repeat, yet the hour is up: deletes
    assert [a["id"] for a in await store.alerts()] == ["new2", "new", "kept"]


async def test_alerts_of_a_replayed_past_are_measured_from_their_own_time(store: KeyStore) -> None:
    """Alerts on their traffic's own clock (a replay, a test) are old by the wall clock, not by each other."""
    past = 1_700_000_000.0
    assert await store.add_alert(_alert("a", past))
    _an_hour_passes(store)
    assert await store.add_alert(_alert("b", past + 3600))
    assert [a["id"] for a in await store.alerts()] == ["b", "a"]
    _an_hour_passes(store)
    assert await store.add_alert(_alert("c", past + 91 * 86400.0))
    assert [a["id"] for a in await store.alerts()] == ["c"]


async def test_blocks_with_a_limit_are_the_most_recently_made_or_only_those_asked_for(store: KeyStore) -> None:
    now = time.time()
    for n, address in enumerate(("203.0.113.1", "2001:db8:1:2::/64", "203.0.113.3", "198.51.100.4")):
        await store.block(address, now + 600 - n, f"r{n}", "t")
        await asyncio.sleep(0.002)  # made one after another
    await store.block("203.0.113.1", now + 900, "extended", "t")  # an extension is not a new block
    assert [a for a, _, _ in await store.blocks(now, limit=3)] == ["198.51.100.4", "203.0.113.3", "2001:db8:1:2::/64"]
    assert await store.blocks(now, limit=0) == []
    everything = await store.blocks(now)
    assert [a for a, _, _ in everything] == sorted(a for a, _, _ in everything)  # without a limit: by address
    assert ("203.0.113.1", now + 900, "extended") in everything and len(everything) == 4
    await store.block("192.0.2.9", now - 1, "over", "t")
    asked = ["203.0.113.3", "2001:db8:1:2::/64", "192.0.2.9", "192.0.2.99"]  # an ended block, and none at all
    assert await store.blocks(now, addresses=asked) == [
        ("2001:db8:1:2::/64", now + 599, "r1"),
        ("203.0.113.3", now + 598, "r2"),
    ]
    assert await store.blocks(now, addresses=[]) == []


@pytest.fixture(params=["sqlite", "postgres"])
async def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[KeyStore, KeyStore]]:
    """Two store objects on one database, as two workers or replicas have."""
    if request.param == "sqlite":
        pair: tuple[KeyStore, KeyStore] = (SQLiteKeyStore(tmp_path / "k.db"), SQLiteKeyStore(tmp_path / "k.db"))
        yield pair
        await asyncio.gather(*(s.close() for s in pair))
        return
    async with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        pair = (await open_store(tmp_path, url), await open_store(tmp_path, url))
        yield pair
        await asyncio.gather(*(s.close() for s in pair))


async def test_two_store_objects_racing_for_one_alert_keep_it_once(two_stores: tuple[KeyStore, KeyStore]) -> None:
    """As two replicas (or workers) that raised the same alert: exactly one is told it is new."""
    first, second = two_stores
    for n in range(20):
        alert = _alert(f"race{n:02d}", float(n))
        results = await asyncio.gather(first.add_alert(alert), second.add_alert(alert))
        assert sorted(results) == [False, True]
    assert len(await second.alerts()) == 20
    # A block made through one is in force through the other.
    await first.block("203.0.113.7", time.time() + 60, "r", "brute-force")
    assert [a for a, _, _ in await second.blocks(time.time())] == ["203.0.113.7"]


async def test_postgres_replicas_racing_for_many_alerts_keep_each_once(postgres_url: str) -> None:
    async with fresh_schema(postgres_url) as url:
        replicas = [await open_store(Path("unused"), url) for _ in range(2)]
        try:
            alerts = [_alert(f"burst{n:03d}", float(n)) for n in range(50)]
            results = await asyncio.gather(*(r.add_alert(a) for a in alerts for r in replicas))
            assert sum(results) == len(alerts)
            assert all(results[2 * i] != results[2 * i + 1] for i in range(len(alerts)))
            assert len(await replicas[1].alerts(limit=1000)) == len(alerts)
        finally:
            await asyncio.gather(*(r.close() for r in replicas))


async def test_sqlite_store_of_an_earlier_version_gains_canary_alerts_and_blocks(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(sqlite_store.MIGRATIONS[:3], start=1):
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {number:d}")
    db.execute(
        "INSERT INTO keys (id, name, secret_hash, scopes, created_at) VALUES ('abcdefghijkl', 'old', 'h', '[]', 1.0)"
    )
    db.close()
    store = SQLiteKeyStore(path)
    try:
        old = await store.get("abcdefghijkl")
        assert old is not None and old.canary is False
        assert await store.add_alert(_alert("e" * 24, 1.0))
        await store.block("203.0.113.7", time.time() + 5, "r", "t")
        assert len(await store.blocks(time.time())) == 1
    finally:
        await store.close()
