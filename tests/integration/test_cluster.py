"""Three gateway replicas on loopback sharing PostgreSQL (keys) and Redis (limits, revocation events).

What other gateways got wrong, shown not to happen here: limits multiplied by the number of replicas, token limits
overshot by parallel streams, revoked keys alive on other replicas, valid keys refused or audit records lost when
Redis dies. Redis outages use a redis-server this test starts on its own port; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from aiperimeter.keys import KeyRecord, new_key
from aiperimeter.state.bus import RedisBus
from aiperimeter.state.postgres import PostgresKeyStore
from tests.support.gateway import GatewayProcess, free_port, start_gateway
from tests.support.http import Response, request
from tests.support.leaks import LEAKS
from tests.support.proxy import ThreadedProxy
from tests.support.upstream import FakeUpstream

REPLICAS = 3


def add_key(database: str, name: str = "cluster", **kwargs: object) -> tuple[KeyRecord, str]:
    record, secret = new_key(name, **kwargs)  # type: ignore[arg-type]
    LEAKS.secrets.add(secret)

    async def add() -> None:
        store = PostgresKeyStore(database)
        try:
            await store.add(record, "test")
        finally:
            await store.close()

    asyncio.run(add())
    return record, secret


@contextlib.contextmanager
def cluster(
    tmp_path: Path, upstream: FakeUpstream, database: str, redis: str, settings: dict[str, object] | None = None
) -> Iterator[list[GatewayProcess]]:
    config = tmp_path / "cluster.yaml"
    # Each cluster its own audit stream, as two clusters sharing one Redis must have.
    base: dict[str, object] = {
        "limits": {"replicas": REPLICAS},
        "watch": {"stream": f"aiperimeter:test:{tmp_path.name}"},
    }
    config.write_text(orjson.dumps({**base, **(settings or {})}).decode())
    replicas: list[GatewayProcess] = []
    try:
        for n in range(REPLICAS):
            data_dir = tmp_path / f"replica{n}"
            replicas.append(
                start_gateway(
                    data_dir, upstream.url, "openai", "--database", database, "--redis", redis, "--config", str(config)
                )
            )
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def spread(replicas: list[GatewayProcess], key: str, count: int, body: dict[str, object]) -> list[Response]:
    """`count` requests at once, round-robin over the replicas (as a load balancer would)."""
    with ThreadPoolExecutor(min(count, 48)) as pool:
        return list(
            pool.map(
                lambda i: request(replicas[i % len(replicas)].port, "POST", "/v1/chat/completions", key=key, body=body),
                range(count),
            )
        )


def test_an_rpm_limit_holds_across_replicas_with_zero_overshoot(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str, redis_url: str
) -> None:
    _, key = add_key(schema_url, rpm=12)
    with cluster(tmp_path, upstream, schema_url, redis_url) as replicas:
        responses = spread(replicas, key, 60, {"model": "m", "messages": []})
    statuses = [r.status for r in responses]
    assert statuses.count(200) == 12  # exactly the limit, not 3 x 12
    assert statuses.count(429) == 48
    assert len(upstream.calls()) == 12


def test_parallel_streams_cannot_overshoot_a_token_limit_by_more_than_one_estimate(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str, redis_url: str
) -> None:
    """tpm 2000; each stream asks for max_tokens 300 (reserves ~300) and really uses 290. Thirty streams at once
    over three replicas: what is admitted can use at most the limit plus one reservation."""
    estimate, used = 300, 290
    release = threading.Event()

    async def stream(req: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(req)
        await response.write(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 15)
        usage = {"prompt_tokens": 10, "completion_tokens": used - 10}
        await response.write(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.script("/v1/chat/completions", stream)
    _, key = add_key(schema_url, tpm=2000)
    body = {"model": "m", "messages": [], "stream": True, "max_tokens": estimate}
    with cluster(tmp_path, upstream, schema_url, redis_url) as replicas:
        timer = threading.Timer(3.0, release.set)
        timer.start()
        try:
            responses = spread(replicas, key, 30, body)
        finally:
            release.set()
            timer.cancel()
    admitted = sum(r.status == 200 for r in responses)
    assert {r.code for r in responses if r.status != 200} == {"rate_limit_tokens"}
    assert admitted * used <= 2000 + estimate
    assert admitted >= 2000 // (estimate + 50)  # and the limit is not needlessly strict


def test_a_canary_used_on_one_replica_is_alerted_once_by_the_cluster(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str, redis_url: str
) -> None:
    """Every replica's watcher reads the shared stream and detects the same use; the store keeps the alert once,
    so exactly one replica posts it."""
    add_key(schema_url, "real")
    bait, secret = add_key(schema_url, "bait", canary=True)
    hook = FakeUpstream().start()
    stream = f"aiperimeter:test:{tmp_path.name}"
    settings = {"watch": {"stream": stream, "webhook_url": f"http://127.0.0.1:{hook.port}/hook/cluster-secret"}}
    try:
        with cluster(tmp_path, upstream, schema_url, redis_url, settings) as replicas:
            used = request(replicas[1].port, "GET", "/v1/models", key=secret)
            assert used.status == 401 and used.code == "invalid_key"
            deadline = time.monotonic() + 20
            while not hook.seen and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2.0)  # time enough for a second replica to post a duplicate, were there one
            posts = [orjson.loads(seen.body)["alert"] for seen in hook.seen]
            assert [(a["kind"], a["key"]) for a in posts] == [("canary", bait.id)]
            (record,) = [r for r in replicas[1].audit() if r.get("canary")]
            assert posts[0]["evidence"] == [record["request_id"]]

            async def kept() -> list[dict[str, object]]:
                store = PostgresKeyStore(schema_url)
                try:
                    return await store.alerts(10)
                finally:
                    await store.close()

            assert [a["kind"] for a in asyncio.run(kept())] == ["canary"]
    finally:
        hook.stop()
        asyncio.run(_drop_stream(redis_url, stream))
    assert upstream.calls() == []


async def _drop_stream(url: str, stream: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.delete(stream)
    finally:
        await client.aclose()


def test_revocation_reaches_every_replica_through_redis(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str, redis_url: str
) -> None:
    """The change feed is slowed to its slowest (1 s), so only the pushed event can explain a fast refusal."""
    record, key = add_key(schema_url)
    settings = {"revocation_poll": 1.0, "key_cache_ttl": 60}
    with cluster(tmp_path, upstream, schema_url, redis_url, settings) as replicas:
        for replica in replicas:  # every replica has the key verified and cached
            assert request(replica.port, "GET", "/v1/models", key=key).status == 200

        async def revoke() -> float:
            store, bus = PostgresKeyStore(schema_url), RedisBus(redis_url)
            try:
                await store.revoke(record.id, time.time(), "test")
                await bus.publish(record.id)
                return time.monotonic()
            finally:
                await store.close()
                await bus.close()

        def first_refusal(replica: GatewayProcess) -> float:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                response = request(replica.port, "GET", "/v1/models", key=key)
                if response.status == 401:
                    assert response.code == "key_revoked"
                    return time.monotonic()
            raise AssertionError("the revoked key still works after 5 s")

        with ThreadPoolExecutor(REPLICAS) as pool:
            watchers = [pool.submit(first_refusal, replica) for replica in replicas]
            time.sleep(0.2)
            revoked = asyncio.run(revoke())
            delays = [max(0.0, w.result(10) - revoked) for w in watchers]
    print(f"revocation to first 401, per replica: {', '.join(f'{d * 1000:.0f} ms' for d in delays)}")
    assert max(delays) < 0.3


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A redis-server of this test's own, on a free port, that the test may stop and start."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed for the outage test: apt install redis-server")
    port = free_port()
    yield binary, port


def start_redis(binary: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def test_redis_dies_under_load_and_comes_back(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str, own_redis: tuple[str, int]
) -> None:
    binary, port = own_redis
    redis = start_redis(binary, port)
    _, key = add_key(schema_url, rpm=100_000)
    results: list[int] = []
    stop = threading.Event()
    try:
        with cluster(tmp_path, upstream, schema_url, f"redis://127.0.0.1:{port}/0") as replicas:

            def load(replica: GatewayProcess) -> None:
                deadline = time.monotonic() + 30
                while not stop.is_set() and time.monotonic() < deadline:
                    results.append(request(replica.port, "GET", "/v1/models", key=key).status)

            with ThreadPoolExecutor(REPLICAS) as pool:
                workers = [pool.submit(load, replica) for replica in replicas]
                time.sleep(1.5)
                redis.kill()  # this test's own Redis
                redis.wait(5)
                down_from = len(results)
                time.sleep(2.5)
                down_to = len(results)
                redis = start_redis(binary, port)
                time.sleep(2.5)
                stop.set()
                for worker in workers:
                    worker.result(30)
            # A valid key kept working throughout: no 401, no 503, and requests flowed while Redis was down.
            assert set(results) == {200}, sorted(set(results))
            assert down_to - down_from > 10
            logs = "".join(line for replica in replicas for line in replica.output)
            assert "shared limiter unavailable" in logs
            assert "shared limiter available again" in logs
        audit = [
            orjson.loads(line)
            for replica in replicas
            for line in (replica.data_dir / "audit.jsonl").read_bytes().splitlines()
        ]
        assert len(audit) == len(results)  # not one audit record lost
    finally:
        stop.set()
        redis.kill()
        redis.wait(5)


def test_a_database_outage_keeps_verified_keys_and_refuses_unknown_ones_with_503(
    upstream: FakeUpstream, tmp_path: Path, schema_url: str
) -> None:
    """PostgreSQL behind a relay this test cuts: a key verified shortly before keeps working (bounded window),
    a key never seen gets 503, never 401; when the database returns, everything works again by itself."""
    from urllib.parse import urlsplit

    _, known = add_key(schema_url, "known")
    _, unseen = add_key(schema_url, "unseen")
    target = urlsplit(schema_url)
    with ThreadedProxy(target.hostname or "127.0.0.1", target.port or 5432) as relay:
        via = target._replace(netloc=f"{target.username}@127.0.0.1:{relay.port}").geturl()
        config = tmp_path / "gateway.yaml"
        config.write_text(orjson.dumps({"key_cache_ttl": 0.5, "key_stale_window": 30}).decode())
        gateway = start_gateway(tmp_path / "gw", upstream.url, "openai", "--database", via, "--config", str(config))
        try:
            assert request(gateway.port, "GET", "/v1/models", key=known).status == 200
            relay.cut()
            time.sleep(1.0)  # past the cache TTL: the next lookup must go to the (dead) store
            assert request(gateway.port, "GET", "/v1/models", key=known).status == 200
            refused = request(gateway.port, "GET", "/v1/models", key=unseen, timeout=20)
            assert (refused.status, refused.code) == (503, "store_unavailable")
            relay.restore()
            deadline = time.monotonic() + 20
            while request(gateway.port, "GET", "/v1/models", key=unseen, timeout=20).status != 200:
                assert time.monotonic() < deadline, "the gateway did not recover with the database"
                time.sleep(0.2)
        finally:
            gateway.stop()
    logs = "".join(gateway.output)
    assert "key store unavailable: serving keys verified" in logs
