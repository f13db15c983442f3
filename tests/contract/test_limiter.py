"""One suite, every limiter backend: the same limits in memory and in Redis, exact under concurrency."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis

from aiperimeter.errors import BackendUnavailable
from aiperimeter.state.limits import Decision, Limiter, Limits, MemoryLimiter, oversized
from aiperimeter.state.redis_limits import RedisLimiter


def rid() -> str:
    return uuid.uuid4().hex


async def together(calls: Iterable[Coroutine[object, object, Decision]]) -> list[Decision]:
    """Run acquires concurrently; if one fails, the others are cancelled (none outlives the test's cleanup)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(call) for call in calls]
    return [task.result() for task in tasks]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    kind: str
    make: Callable[[float], Limiter]  # lease -> a limiter sharing this test's state
    sleep: Callable[[float], Awaitable[None]]
    made: list[Limiter] = field(default_factory=list)

    def limiter(self, lease: float = 60.0) -> Limiter:
        limiter = self.make(lease)
        self.made.append(limiter)
        return limiter


async def delete_prefix(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match="{" + prefix + "}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds
            await asyncio.sleep(0)

        harness = Backend("memory", lambda lease: MemoryLimiter(lease=lease, clock=clock), advance)
        yield harness
        for limiter in harness.made:
            await limiter.close()
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex}"
    harness = Backend("redis", lambda lease: RedisLimiter(url, prefix=prefix, lease=lease), asyncio.sleep)
    try:
        yield harness
    finally:
        for limiter in harness.made:
            await limiter.close()
        await delete_prefix(url, prefix)


def tolerance(backend: Backend, value: float) -> float:
    """Redis runs on the real clock: a few milliseconds pass between calls, so levels drift a little."""
    return 0.0 if backend.kind == "memory" else value


async def test_all_or_nothing_across_subjects(backend: Backend) -> None:
    limiter = backend.limiter()
    glob = ("global", Limits(rpm=5, tpm=1_000))
    # requests: the key refuses, so the global bucket is not charged either
    key_a = ("a", Limits(rpm=1))
    assert (await limiter.acquire([key_a, glob], rid(), 0)).allowed
    refused = await limiter.acquire([key_a, glob], rid(), 0)
    assert (refused.allowed, refused.limit) == (False, "requests")
    # tokens: the key refuses 150 tokens, the global bucket keeps them
    refused = await limiter.acquire([("b", Limits(tpm=100)), glob], rid(), 150)
    assert (refused.allowed, refused.limit) == (False, "tokens")
    ok = await limiter.acquire([("c", Limits(rpm=10)), glob], rid(), 0)
    assert ok.allowed
    # two requests were taken from the global bucket, not four; its 1000 tokens are untouched
    assert ok.remaining_requests == 3
    assert ok.limit_tokens == 1_000 and ok.remaining_tokens == 1_000


async def test_all_or_nothing_concurrency(backend: Backend) -> None:
    limiter = backend.limiter()
    glob = ("global", Limits(concurrency=2))
    key = ("k", Limits(concurrency=1))
    assert (await limiter.acquire([key, glob], rid(), 0)).allowed
    refused = await limiter.acquire([key, glob], rid(), 0)
    assert (refused.allowed, refused.limit) == (False, "concurrency")
    assert (await limiter.acquire([("other", Limits(concurrency=5)), glob], rid(), 0)).allowed  # global slot 2
    last = await limiter.acquire([("third", Limits(concurrency=5)), glob], rid(), 0)
    assert (last.allowed, last.limit) == (False, "concurrency")


async def test_rpm_admits_exactly_n_of_5n_concurrent(backend: Backend) -> None:
    limiter = backend.limiter()
    n = 20
    subjects = [("k", Limits(rpm=n)), ("global", Limits(rpm=10_000))]
    decisions = await together(limiter.acquire(subjects, rid(), 0) for _ in range(5 * n))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == n
    assert {d.limit for d in decisions if not d.allowed} == {"requests"}
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)
    # tokens and concurrency are exact under the same pressure
    tokens = [("t", Limits(tpm=1_000))]
    decisions = await together(limiter.acquire(tokens, rid(), 100) for _ in range(50))
    assert sum(d.allowed for d in decisions) == 10
    slots = [("s", Limits(concurrency=5))]
    decisions = await together(limiter.acquire(slots, rid(), 0) for _ in range(50))
    assert sum(d.allowed for d in decisions) == 5


async def test_refill_over_time(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("k", Limits(rpm=600))]  # 10 per second
    drained = 0
    refused: Decision | None = None
    start = time.monotonic()
    for _ in range(1_000):
        decision = await limiter.acquire(subjects, rid(), 0)
        if not decision.allowed:
            refused = decision
            break
        drained += 1
    assert refused is not None and refused.limit == "requests"
    assert 0 < refused.retry_after <= 0.1 + 1e-9
    if backend.kind == "memory":
        assert drained == 600
    else:
        assert 600 <= drained <= 600 + 10 * (time.monotonic() - start) + 1  # the refill during the drain itself
    start = time.monotonic()
    await backend.sleep(0.35)
    admitted = 0
    for _ in range(50):
        if not (await limiter.acquire(subjects, rid(), 0)).allowed:
            break
        admitted += 1
    if backend.kind == "memory":
        assert admitted == 3
    else:
        assert 3 <= admitted <= 10 * (time.monotonic() - start) + 1


async def test_memory_refill_with_injected_clock() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    subjects = [("k", Limits(rpm=60, tpm=600))]  # 1 request and 10 tokens per second
    for _ in range(60):
        assert (await limiter.acquire(subjects, rid(), 0)).allowed
    refused = await limiter.acquire(subjects, rid(), 0)
    assert refused.retry_after == pytest.approx(1.0)
    clock.now += 0.5
    assert (await limiter.acquire(subjects, rid(), 0)).retry_after == pytest.approx(0.5)
    clock.now += 0.5
    ok = await limiter.acquire(subjects, rid(), 600)
    assert ok.allowed and ok.remaining_tokens == 0 and ok.reset_tokens == pytest.approx(60.0)
    clock.now += 30
    again = await limiter.acquire(subjects, rid(), 300)
    assert again.allowed and again.remaining_tokens == 0 and again.remaining_requests == 29


async def test_token_reservation_refund_and_debt(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("k", Limits(tpm=1_000))]  # 16.7 tokens per second
    slack = tolerance(backend, 5)
    first = rid()
    d = await limiter.acquire(subjects, first, 600)
    assert d.allowed and d.remaining_tokens == 400
    d = await limiter.acquire(subjects, rid(), 600)
    assert (d.allowed, d.limit) == (False, "tokens")
    assert d.retry_after == pytest.approx(200 * 60 / 1_000, abs=tolerance(backend, 0.3))
    await limiter.settle(subjects, first, 600, 100)  # 500 refunded
    second = rid()
    d = await limiter.acquire(subjects, second, 900)
    assert d.allowed and d.remaining_tokens is not None and d.remaining_tokens <= slack
    await limiter.settle(subjects, second, 900, 1_500)  # 600 more than reserved: debt
    d = await limiter.acquire(subjects, rid(), 0)
    assert (d.allowed, d.limit, d.remaining_tokens) == (False, "tokens", 0)
    assert d.retry_after == pytest.approx(600 * 60 / 1_000, abs=tolerance(backend, 0.3))
    if backend.kind == "memory":
        await backend.sleep(35.9)
        assert not (await limiter.acquire(subjects, rid(), 0)).allowed
        await backend.sleep(0.2)
        assert (await limiter.acquire(subjects, rid(), 0)).allowed


async def test_request_bigger_than_the_bucket(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("global", Limits(tpm=10_000)), ("k", Limits(tpm=100))]
    assert oversized(subjects, 101) == "k" and oversized(subjects, 100) is None
    d = await limiter.acquire(subjects, rid(), 101)
    assert (d.allowed, d.limit) == (False, "tokens")
    assert d.retry_after == 1.0  # the bucket is full: never less than a second
    assert (await limiter.acquire(subjects, rid(), 50)).allowed
    d = await limiter.acquire(subjects, rid(), 101)
    assert (d.allowed, d.limit) == (False, "tokens")
    assert d.retry_after == pytest.approx(50 * 60 / 100, abs=tolerance(backend, 0.2))  # the time until full


async def test_concurrency_slots(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("k", Limits(concurrency=3))]
    ids = [rid() for _ in range(3)]
    for request_id in ids:
        assert (await limiter.acquire(subjects, request_id, 0)).allowed
    d = await limiter.acquire(subjects, rid(), 0)
    assert (d.allowed, d.limit, d.retry_after) == (False, "concurrency", 1.0)
    await limiter.settle(subjects, ids[1], 0, 0)
    assert (await limiter.acquire(subjects, rid(), 0)).allowed
    assert not (await limiter.acquire(subjects, rid(), 0)).allowed


async def test_leases_expire_and_renew_keeps_them(backend: Backend) -> None:
    limiter = backend.limiter(lease=1.0)
    subjects = [("k", Limits(concurrency=1))]
    first, second = rid(), rid()
    assert (await limiter.acquire(subjects, first, 0)).allowed
    await backend.sleep(0.6)
    await limiter.renew(subjects, [first])  # now ends at 1.6
    await backend.sleep(0.6)
    assert not (await limiter.acquire(subjects, second, 0)).allowed  # 1.2: kept by the renewal
    await backend.sleep(0.8)
    assert (await limiter.acquire(subjects, second, 0)).allowed  # 2.0: the lease ended, as if its replica died
    await limiter.renew(subjects, [first])  # an ended lease is not brought back
    await limiter.settle(subjects, second, 0, 0)
    assert (await limiter.acquire(subjects, rid(), 0)).allowed


async def test_settle_is_idempotent(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("k", Limits(tpm=1_000, concurrency=1))]
    slack = tolerance(backend, 5)
    first = rid()
    assert (await limiter.acquire(subjects, first, 500)).remaining_tokens == 500
    await limiter.settle(subjects, first, 500, 100)
    await limiter.settle(subjects, first, 500, 100)  # refunded once: 900, not the capacity
    second = rid()
    d = await limiter.acquire(subjects, second, 0)
    assert d.allowed and d.remaining_tokens is not None and 900 <= d.remaining_tokens <= 900 + slack
    await limiter.settle(subjects, first, 500, 100)  # a late duplicate frees no one else's slot
    assert not (await limiter.acquire(subjects, rid(), 0)).allowed
    await limiter.settle(subjects, second, 0, 300)
    await limiter.settle(subjects, second, 0, 300)  # charged once
    await limiter.settle(subjects, "never-acquired", 0, 500)  # no ticket: no charge
    d = await limiter.acquire(subjects, rid(), 0)
    assert d.allowed and d.remaining_tokens is not None and 600 <= d.remaining_tokens <= 600 + 2 * slack


async def test_decision_headers(backend: Backend) -> None:
    limiter = backend.limiter()
    subjects = [("k", Limits(rpm=10, tpm=1_000)), ("global", Limits(rpm=100, tpm=500))]
    d = await limiter.acquire(subjects, rid(), 100)
    assert (d.allowed, d.limit, d.retry_after) == (True, None, 0.0)
    # the tightest subject of each kind: the key for requests (9 left of 10), the global one for tokens (400 of 500)
    assert (d.limit_requests, d.remaining_requests, d.reset_requests) == (10, 9, 6.0)
    assert (d.limit_tokens, d.remaining_tokens, d.reset_tokens) == (500, 400, 12.0)
    unlimited = await limiter.acquire([("c", Limits(concurrency=4))], rid(), 100)
    assert unlimited.allowed
    assert (unlimited.limit_requests, unlimited.remaining_requests, unlimited.reset_requests) == (None, None, None)
    assert (unlimited.limit_tokens, unlimited.remaining_tokens, unlimited.reset_tokens) == (None, None, None)
    single = [("one", Limits(rpm=1))]
    assert (await limiter.acquire(single, rid(), 0)).allowed
    refused = await limiter.acquire(single, rid(), 0)
    assert (refused.allowed, refused.limit, refused.limit_requests, refused.remaining_requests) == (
        False,
        "requests",
        1,
        0,
    )
    assert refused.retry_after == pytest.approx(60.0, abs=tolerance(backend, 0.2))
    assert refused.reset_requests == pytest.approx(60.0, abs=tolerance(backend, 0.2))


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)
    with pytest.raises(ValueError, match="concurrency"):
        Limits(concurrency=-1)


async def test_malformed_calls_are_refused(backend: Backend) -> None:
    limiter = backend.limiter()
    with pytest.raises(ValueError, match="once"):
        await limiter.acquire([("k", Limits(rpm=1)), ("k", Limits(rpm=2))], rid(), 0)
    with pytest.raises(ValueError, match="negative"):
        await limiter.acquire([("k", Limits(tpm=10))], rid(), -5)
    with pytest.raises(ValueError, match="negative"):
        await limiter.settle([("k", Limits(tpm=10))], rid(), 5, -100)


# Redis only ---------------------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    await delete_prefix(redis_url, prefix)


async def test_exact_from_three_connections(redis_url: str, redis_prefix: str) -> None:
    limiters = [RedisLimiter(redis_url, prefix=redis_prefix) for _ in range(3)]
    try:
        n = 20
        subjects = [("k", Limits(rpm=n, tpm=100_000, concurrency=1_000)), ("global", Limits(rpm=10_000))]
        decisions = await together(limiters[i % 3].acquire(subjects, rid(), 10) for i in range(5 * n))
        assert sum(d.allowed for d in decisions) == n
        slots = [("s", Limits(concurrency=7))]
        decisions = await together(limiters[i % 3].acquire(slots, rid(), 0) for i in range(60))
        assert sum(d.allowed for d in decisions) == 7
        tokens = [("t", Limits(tpm=600))]  # the 21st request would need 3 s of refill
        decisions = await together(limiters[i % 3].acquire(tokens, rid(), 30) for i in range(90))
        assert sum(d.allowed for d in decisions) == 20
    finally:
        for limiter in limiters:
            await limiter.close()


async def test_redis_keys_expire_when_idle(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisLimiter(redis_url, prefix=redis_prefix, lease=0.3)
    client = Redis.from_url(redis_url)
    try:
        subjects = [("k", Limits(rpm=60_000, tpm=600_000, concurrency=5))]  # refill 1000/s and 10000/s
        held, done = rid(), rid()
        assert (await limiter.acquire(subjects, held, 1_000)).allowed
        assert (await limiter.acquire(subjects, done, 1_000)).allowed
        await limiter.settle(subjects, done, 1_000, 10)
        keys = [key async for key in client.scan_iter(match="{" + redis_prefix + "}:*", count=1000)]
        assert len(keys) == 4  # two buckets, the leases, the held request's ticket
        for key in keys:
            ttl = await client.pttl(key)
            assert 0 < ttl <= 3_600_000, (key, ttl)
        remaining = keys
        deadline = time.monotonic() + 3.0
        while remaining and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            found = [key async for key in client.scan_iter(match="{" + redis_prefix + "}:*", count=1000)]
            remaining = [key for key in found if b":q:" not in key]
        assert remaining == []  # buckets and leases are gone; only the held request's ticket stays until its ttl
    finally:
        await limiter.close()
        await client.aclose()


async def test_redis_acquire_latency(redis_url: str, redis_prefix: str) -> None:
    limiter = RedisLimiter(redis_url, prefix=redis_prefix)
    try:
        subjects = [("k", Limits(rpm=1_000_000, tpm=100_000_000, concurrency=10_000)), ("global", Limits(rpm=10**7))]
        for _ in range(20):  # warm up: connection, script load
            request_id = rid()
            await limiter.acquire(subjects, request_id, 100)
            await limiter.settle(subjects, request_id, 100, 50)
        acquire_ms: list[float] = []
        settle_ms: list[float] = []
        for _ in range(500):
            request_id = rid()
            start = time.perf_counter()
            assert (await limiter.acquire(subjects, request_id, 100)).allowed
            middle = time.perf_counter()
            await limiter.settle(subjects, request_id, 100, 50)
            acquire_ms.append((middle - start) * 1000)
            settle_ms.append((time.perf_counter() - middle) * 1000)
        start = time.perf_counter()
        await together(limiter.acquire(subjects, rid(), 1) for _ in range(500))
        concurrent = time.perf_counter() - start
        p99 = statistics.quantiles(acquire_ms, n=100)[98]
        print(
            f"\nredis acquire: median {statistics.median(acquire_ms):.3f} ms, p99 {p99:.3f} ms; "
            f"settle median {statistics.median(settle_ms):.3f} ms; "
            f"500 concurrent acquires in {concurrent * 1000:.0f} ms ({500 / concurrent:.0f}/s)"
        )
        assert statistics.median(acquire_ms) < 20
    finally:
        await limiter.close()


# Outage: a Redis server of this test's own, killed and restarted on the same port --------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server process started by this test (and only ever stopped by it)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            try:
                writer.write(b"PING\r\n")
                if await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n":
                    return
            finally:
                writer.close()
                await writer.wait_closed()
        raise AssertionError("redis-server did not start")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)
        self.process = None

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)


@pytest.fixture
async def own_redis(redis_url: str, tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path)
    try:
        yield server
    finally:
        await server.kill()


async def expect_unavailable(call: Awaitable[object], code: str) -> float:
    start = time.perf_counter()
    with pytest.raises(BackendUnavailable) as raised:
        await call
    assert raised.value.code == code and raised.value.status == 503
    return time.perf_counter() - start


async def test_redis_outage_fails_closed_and_recovers(own_redis: OwnRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiperimeter.limits")
    await own_redis.start()
    limiter = RedisLimiter(own_redis.url, prefix=f"test-{uuid.uuid4().hex}")
    subjects = [("k", Limits(rpm=1_000, tpm=100_000, concurrency=10))]
    try:
        held = rid()
        assert (await limiter.acquire(subjects, held, 10)).allowed
        await own_redis.kill()
        times = [
            await expect_unavailable(limiter.acquire(subjects, rid(), 10), "limits_unavailable"),
            await expect_unavailable(limiter.settle(subjects, held, 10, 5), "limits_unavailable"),
            await expect_unavailable(limiter.renew(subjects, [held]), "limits_unavailable"),
            await expect_unavailable(limiter.acquire(subjects, rid(), 10), "limits_unavailable"),
        ]
        print(f"\nlimiter, Redis killed: BackendUnavailable after {', '.join(f'{t * 1000:.1f}' for t in times)} ms")
        assert max(times) < 2.0
        await own_redis.start()
        start = time.perf_counter()
        assert (await limiter.acquire(subjects, rid(), 10)).allowed  # the same limiter, at the first call
        print(f"limiter, Redis restarted: first acquire served in {(time.perf_counter() - start) * 1000:.1f} ms")
        warnings = [r for r in caplog.records if r.name == "aiperimeter.limits" and r.levelno == logging.WARNING]
        recovered = [r for r in caplog.records if r.name == "aiperimeter.limits" and "again" in r.getMessage()]
        assert (len(warnings), len(recovered)) == (1, 1)  # once per outage, not per call
    finally:
        await limiter.close()


async def test_redis_hang_times_out(own_redis: OwnRedis) -> None:
    await own_redis.start()
    limiter = RedisLimiter(own_redis.url, prefix=f"test-{uuid.uuid4().hex}", timeout=0.5)
    subjects = [("k", Limits(rpm=1_000))]
    try:
        assert (await limiter.acquire(subjects, rid(), 0)).allowed
        own_redis.signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            elapsed = await expect_unavailable(limiter.acquire(subjects, rid(), 0), "limits_unavailable")
        finally:
            own_redis.signal(signal.SIGCONT)
        print(f"\nlimiter, Redis hung: BackendUnavailable after {elapsed * 1000:.0f} ms (timeout 0.5 s)")
        assert 0.4 < elapsed < 2.0
        assert (await limiter.acquire(subjects, rid(), 0)).allowed
    finally:
        await limiter.close()
