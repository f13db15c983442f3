"""The watcher with its real parts: the audit file (or a Redis stream) as its feed, the SQLite or PostgreSQL store for
alerts and actions, and a webhook receiver on loopback that records what it is sent."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from aiperimeter.config import WatchSettings
from aiperimeter.keys import new_key
from aiperimeter.sensitive import Secret
from aiperimeter.state.postgres import PostgresKeyStore
from aiperimeter.state.sqlite import SQLiteKeyStore
from aiperimeter.watch.deliver import Delivery
from aiperimeter.watch.feed import READ_CHUNK, FileFeed, RedisFeed, StreamPublisher
from aiperimeter.watch.observation import Observation
from aiperimeter.watch.watcher import Actions, Watcher
from tests.support.traffic import DAY, MONDAY, burst, office, record

LEARNED = MONDAY + 21 * DAY
NIGHT = LEARNED + 3 * 3600  # Monday 03:00, three weeks in


class Receiver:
    """A webhook endpoint: records every JSON body; answers with the statuses it is told to, then 200."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = list(statuses)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook/T0SECRET-hook-path-credential"
        return self

    async def _hook(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = await Receiver().start()
    yield hook
    await hook.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteKeyStore]:
    keys = SQLiteKeyStore(tmp_path / "aiperimeter.db")
    yield keys
    await keys.close()


async def until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait for a condition that no event announces (state another task changes), bounded in time."""
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polled state, no event to await
            await asyncio.sleep(0.02)


def write(path: Path, observations: Iterable[Observation]) -> None:
    with path.open("ab") as handle:
        for obs in observations:
            handle.write(orjson.dumps(record(obs), option=orjson.OPT_APPEND_NEWLINE))


async def drain(watcher: Watcher) -> int:
    """Read the feed until it has nothing more; return the records read."""
    total = 0
    for _ in range(10_000):
        records = await watcher.feed.read()
        if not records:
            return total
        total += len(records)
        await watcher.process(records)
    raise AssertionError("the feed never ran dry")


def watcher_for(path: Path, store: Any, settings: WatchSettings, *, now: float, state: Path | None = None) -> Watcher:
    delivery = Delivery(settings.webhook_url, min_severity=settings.min_severity, timeout=2.0)
    return Watcher(
        FileFeed(path), store, settings, state_path=state, delivery=delivery, actions=Actions(store, settings),
        clock=lambda: now,
    )  # fmt: skip


# --- the file feed -----------------------------------------------------------------------------------------------


async def test_file_feed_follows_appends_partial_lines_rotation_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    feed = FileFeed(path)
    assert await feed.read() == []  # no file yet
    path.write_bytes(b'{"a": 1}\nnot json\n[1, 2]\n{"b": ')
    assert await feed.read() == [{"a": 1}]
    with path.open("ab") as handle:
        handle.write(b'2}\n{"c": 3}\n')
    assert await feed.read() == [{"b": 2}, {"c": 3}]
    assert await feed.read() == []
    rotated = tmp_path / "audit.jsonl.1"
    path.rename(rotated)
    path.write_bytes(b'{"d": 4}\n')
    assert await feed.read() == [{"d": 4}]
    with path.open("ab") as handle:
        handle.write(b'{"e": "' + b"x" * (2 << 20) + b'"}\n{"f": 6}\n')
    got: list[dict[str, Any]] = []
    for _ in range(4 * (2 << 20) // READ_CHUNK):
        got.extend(await feed.read())
    assert got == [{"f": 6}]  # the runaway line is dropped, the next one read


async def test_file_feed_resumes_from_a_saved_position_only_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    first = FileFeed(path)
    await first.read()
    saved = first.position()
    with path.open("ab") as handle:
        handle.write(b'{"c": 3}\n')
    again = FileFeed(path)
    assert again.seek(saved) and await again.read() == [{"c": 3}]
    path.unlink()
    path.write_bytes(b'{"z": 0}\n')
    assert not FileFeed(path).seek(saved) or os.stat(path).st_ino == saved["inode"]


# --- detection to delivery -----------------------------------------------------------------------------------------


async def test_three_am_burst_is_kept_delivered_once_and_never_leaks_the_webhook(
    tmp_path: Path, store: SQLiteKeyStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    audit = tmp_path / "audit.jsonl"
    write(audit, office(days=21))
    write(audit, burst(NIGHT, 200, 3.0))
    settings = WatchSettings(webhook_url=receiver.url)
    watcher = watcher_for(audit, store, settings, now=NIGHT + 600)
    watcher.start()
    try:
        await until(lambda: len(receiver.bodies) >= 2)
    finally:
        await watcher.stop()
    kept = await store.alerts(10)
    assert {a["kind"] for a in kept} >= {"idle_hour", "volume_spike"}
    posted = [(body["alert"]["kind"], body["alert"]["severity"]) for body in receiver.bodies]
    assert len(posted) == len(set(posted)), "an alert was posted twice"  # again only when grown more severe
    assert sorted(body["alert"]["id"] for body in receiver.bodies) == sorted(str(a["id"]) for a in kept)
    body = receiver.bodies[0]
    assert body["text"].count("\n") >= 3 and "usual:" in body["text"] and "seen:" in body["text"]
    assert body["alert"]["evidence"] and body["alert"]["baseline"]
    assert "T0SECRET" not in caplog.text and "hook-path-credential" not in caplog.text


async def test_two_replicas_reading_the_same_stream_deliver_each_alert_once(
    tmp_path: Path, schema_url: str, receiver: Receiver
) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, office(days=21))
    write(audit, burst(NIGHT, 200, 3.0))
    settings = WatchSettings(webhook_url=receiver.url)
    store_a, store_b = PostgresKeyStore(schema_url), PostgresKeyStore(schema_url)
    a = watcher_for(audit, store_a, settings, now=NIGHT + 600)
    b = watcher_for(audit, store_b, settings, now=NIGHT + 600)
    a.delivery.start()
    b.delivery.start()
    try:
        await asyncio.gather(drain(a), drain(b))
        await a.delivery.close()
        await b.delivery.close()
        ids = [body["alert"]["id"] for body in receiver.bodies]
        assert ids and len(ids) == len(set(ids))
        assert a.alerts == b.alerts == len(ids)  # both detected all; each was delivered by one of them
    finally:
        await store_a.close()
        await store_b.close()


async def test_actions_suspend_the_key_and_block_the_address(tmp_path: Path, store: SQLiteKeyStore) -> None:
    record_, _ = new_key("office app")
    await store.add(record_, "test")
    key = record_.id
    audit = tmp_path / "audit.jsonl"
    write(audit, office(key=key, days=21))
    write(audit, burst(NIGHT, 200, 3.0, key=key, client="198.51.100.23"))
    settings = WatchSettings(actions={"high": ("suspend_key", "block_address")})
    watcher = watcher_for(audit, store, settings, now=NIGHT + 600)
    await drain(watcher)
    suspended = await store.get(key)
    assert suspended is not None and suspended.status(NIGHT + 600) == "suspended"
    assert [b[0] for b in await store.blocks(NIGHT + 600)] == ["198.51.100.23"]
    acted = [a for a in await store.alerts(20) if a["actions"]]
    assert acted and any("suspended key" in action for action in acted[-1]["actions"])
    events = [kind for kind, actor, _ in await store.events(key) if actor.startswith("watch:")]
    assert events == ["suspend"]


async def test_an_ipv6_client_is_blocked_with_its_whole_slash_64(tmp_path: Path, store: SQLiteKeyStore) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, burst(LEARNED, 25, 1.0, key=None, client="2001:db8:7:8::1234", status=401, deny="invalid_key"))
    watcher = watcher_for(audit, store, WatchSettings(actions={"high": ("block_address",)}), now=LEARNED + 30)
    await drain(watcher)
    assert [b[0] for b in await store.blocks(LEARNED + 30)] == ["2001:db8:7:8::/64"]


async def test_exempt_networks_are_never_blocked(tmp_path: Path, store: SQLiteKeyStore) -> None:
    audit = tmp_path / "audit.jsonl"
    refused = burst(LEARNED, 30, 1.0, key=None, client="10.9.9.9", status=401, deny="invalid_key")
    write(audit, refused)
    settings = WatchSettings(
        actions={"high": ("block_address",)},
        brute_force={"exempt": ("10.0.0.0/8",)},  # type: ignore[arg-type]
    )
    watcher = watcher_for(audit, store, settings, now=LEARNED + 60)
    await drain(watcher)
    assert [a["kind"] for a in await store.alerts(5)] == ["denial_burst"]
    assert await store.blocks(LEARNED + 60) == []


async def test_an_exempt_network_is_matched_in_its_ipv4_mapped_spelling_too(
    tmp_path: Path, store: SQLiteKeyStore
) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, burst(LEARNED, 30, 1.0, key=None, client="::ffff:10.9.9.9", status=401, deny="invalid_key"))
    settings = WatchSettings(
        actions={"high": ("block_address",)},
        brute_force={"exempt": ("10.0.0.0/8",)},  # type: ignore[arg-type]
    )
    await drain(watcher_for(audit, store, settings, now=LEARNED + 60))
    assert [a["kind"] for a in await store.alerts(5)] == ["denial_burst"]
    assert await store.blocks(LEARNED + 60) == []


async def test_alerts_about_old_traffic_are_kept_but_not_acted_on_or_delivered(
    tmp_path: Path, store: SQLiteKeyStore, receiver: Receiver
) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, burst(LEARNED, 30, 1.0, key=None, client="203.0.113.9", status=401, deny="invalid_key"))
    settings = WatchSettings(webhook_url=receiver.url, actions={"high": ("block_address",)})
    watcher = watcher_for(audit, store, settings, now=LEARNED + 2 * 3600)  # started two hours later
    watcher.delivery.start()
    await drain(watcher)
    await watcher.delivery.close()
    assert [a["kind"] for a in await store.alerts(5)] == ["denial_burst"]
    assert receiver.bodies == [] and await store.blocks(LEARNED + 2 * 3600) == []


async def test_a_failing_webhook_is_retried_then_given_up_without_blocking_detection(
    tmp_path: Path, store: SQLiteKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    failing = await Receiver(statuses=[500, 503, 502]).start()
    try:
        audit = tmp_path / "audit.jsonl"
        write(audit, burst(LEARNED, 25, 1.0, key=None, client="203.0.113.10", status=401, deny="invalid_key"))
        watcher = watcher_for(audit, store, WatchSettings(webhook_url=failing.url), now=LEARNED + 30)
        watcher.delivery.start()
        await drain(watcher)
        await watcher.delivery.close(grace=10)
        assert len(failing.bodies) == 3 and watcher.delivery.failed == 1
        assert "could not post alert" in caplog.text and "T0SECRET" not in caplog.text
    finally:
        await failing.stop()


async def test_a_restarted_watcher_resumes_baselines_and_position(tmp_path: Path, store: SQLiteKeyStore) -> None:
    audit, state = tmp_path / "audit.jsonl", tmp_path / "watch" / "state.json"
    write(audit, office(days=21))
    first = watcher_for(audit, store, WatchSettings(), now=LEARNED, state=state)
    first.start()
    await until(lambda: first.feed.position()["offset"] >= audit.stat().st_size, 30)
    await first.stop()
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    write(audit, burst(NIGHT, 200, 3.0))
    second = watcher_for(audit, store, WatchSettings(), now=NIGHT + 60, state=state)
    second._restore()
    read = await drain(second)
    assert read == 200  # only what came after the snapshot
    assert {"idle_hour", "volume_spike"} <= {a["kind"] for a in await store.alerts(10)}


# --- the shared stream of a cluster --------------------------------------------------------------------------------


async def test_redis_stream_carries_audit_lines_from_every_process(redis_url: str) -> None:
    stream = f"aiperimeter:test:{os.getpid()}:{id(object())}"
    client = Redis.from_url(redis_url)
    try:
        publisher = StreamPublisher(client, stream=stream)
        lines = [orjson.dumps(record(obs)) + b"\n" for obs in burst(LEARNED, 50, 1.0)]
        publisher(lines[:20])
        publisher(lines[20:])
        feed = RedisFeed(client, stream=stream, block_ms=100)
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(got) < 50:
                got.extend(await feed.read())
        assert [r["request_id"] for r in got] == [f"b{LEARNED:.0f}-{i}" for i in range(50)]
        resumed = RedisFeed(client, stream=stream, block_ms=50)
        assert resumed.seek(feed.position()) and await resumed.read() == []
        assert publisher.dropped == 0
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_the_stream_publisher_drops_and_says_so_when_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    client = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        publisher = StreamPublisher(client, stream="aiperimeter:test:down")
        publisher([b'{"a": 1}\n'] * 3)
        await until(lambda: publisher.dropped >= 3, 10)
        assert "cannot append to the audit stream" in caplog.text
    finally:
        await client.aclose()


def test_webhook_url_and_metrics_token_are_secrets_in_settings() -> None:
    settings = WatchSettings(webhook_url="https://hooks.example.test/services/T0/B0/XYZ", metrics_token="x" * 24)
    assert isinstance(settings.webhook_url, Secret) and "XYZ" not in repr(settings)
    with pytest.raises(ValueError, match="http"):
        WatchSettings(webhook_url="ftp://example.test/hook")
    with pytest.raises(ValueError, match="16 characters"):
        WatchSettings(metrics_token="short")
