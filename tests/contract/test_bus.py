"""One suite, every revocation bus: an id published once reaches every subscriber at once."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from aiperimeter.state.bus import MemoryBus, RedisBus, RevocationBus
from tests.contract.test_limiter import OwnRedis, expect_unavailable, own_redis

__all__ = ["own_redis"]  # the fixture, imported for the outage test


@dataclass
class Buses:
    kind: str
    make: Callable[[], RevocationBus]  # a bus on this test's channel (another replica's, for Redis)
    made: list[RevocationBus] = field(default_factory=list)

    def bus(self) -> RevocationBus:
        bus = self.make()
        self.made.append(bus)
        return bus


@pytest.fixture(params=["memory", "redis"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    if request.param == "memory":
        shared = MemoryBus()
        harness = Buses("memory", lambda: shared)
    else:
        url: str = request.getfixturevalue("redis_url")
        channel = f"test:{uuid.uuid4().hex}"
        harness = Buses("redis", lambda: RedisBus(url, channel))
    try:
        yield harness
    finally:
        for bus in harness.made:
            await bus.close()


class Subscriber:
    """Runs `bus.run` in a task and records what it hears."""

    def __init__(self, bus: RevocationBus) -> None:
        self.received: list[str] = []
        self.subscriptions = 0
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(bus.run(self._on_key, self._on_subscribed))

    def _on_key(self, key_id: str) -> None:
        self.received.append(key_id)
        self.changed.set()

    def _on_subscribed(self) -> None:
        self.subscriptions += 1
        self.changed.set()

    async def until(self, condition: Callable[[], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_delivers_to_every_subscriber_quickly(buses: Buses) -> None:
    subscribers = [Subscriber(buses.bus()), Subscriber(buses.bus())]
    publisher = buses.bus()
    try:
        for sub in subscribers:
            await sub.until(lambda sub=sub: sub.subscriptions == 1, 5)  # type: ignore[misc]
        timings: list[float] = []
        for n in range(20):
            key_id = f"key{n:03d}"
            start = time.perf_counter()
            await publisher.publish(key_id)
            for sub in subscribers:
                await sub.until(lambda sub=sub, key_id=key_id: key_id in sub.received, 2)  # type: ignore[misc]
            timings.append(time.perf_counter() - start)
        print(
            f"\n{buses.kind} bus, publish to both subscribers: median {statistics.median(timings) * 1000:.2f} ms, "
            f"max {max(timings) * 1000:.2f} ms"
        )
        assert max(timings) < 0.5
        expected = [f"key{n:03d}" for n in range(20)]
        assert [sub.received for sub in subscribers] == [expected, expected]  # each once, in order
    finally:
        for sub in subscribers:
            await sub.stop()


async def test_a_failing_handler_does_not_stop_the_subscription(buses: Buses) -> None:
    bus = buses.bus()
    seen: list[str] = []
    subscribed, good = asyncio.Event(), asyncio.Event()

    def on_key(key_id: str) -> None:
        seen.append(key_id)
        if key_id == "bad":
            raise RuntimeError("handler bug")
        good.set()

    task = asyncio.create_task(bus.run(on_key, subscribed.set))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        publisher = buses.bus()
        await publisher.publish("bad")
        await publisher.publish("good")
        await asyncio.wait_for(good.wait(), 2)
        assert seen == ["bad", "good"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_close_ends_run(buses: Buses) -> None:
    bus = buses.bus()
    subscribed = asyncio.Event()
    task = asyncio.create_task(bus.run(lambda key_id: None, subscribed.set))
    await asyncio.wait_for(subscribed.wait(), 5)
    await bus.close()
    await asyncio.wait_for(task, 3)


async def test_redis_bus_outage_and_recovery(own_redis: OwnRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiperimeter.bus")
    await own_redis.start()
    channel = f"test:{uuid.uuid4().hex}"
    subscriber_bus = RedisBus(own_redis.url, channel, min_backoff=0.05, max_backoff=0.4)
    publisher = RedisBus(own_redis.url, channel)
    sub = Subscriber(subscriber_bus)
    try:
        await sub.until(lambda: sub.subscriptions == 1, 5)
        await publisher.publish("before")
        await sub.until(lambda: "before" in sub.received, 2)

        await own_redis.kill()
        elapsed = await expect_unavailable(publisher.publish("during"), "bus_unavailable")
        print(f"\nbus, Redis killed: publish raised BackendUnavailable after {elapsed * 1000:.1f} ms")
        assert elapsed < 2.0
        await asyncio.sleep(1.5)  # the subscriber retries several times meanwhile
        assert subscriber_bus.failures >= 3
        warnings = [r for r in caplog.records if r.name == "aiperimeter.bus" and r.levelno == logging.WARNING]
        assert len(warnings) == 1  # once per outage, not per retry

        await own_redis.start()
        start = time.perf_counter()
        await sub.until(lambda: sub.subscriptions == 2, 5)  # resubscribed by itself: the caller resyncs here
        print(f"bus, Redis restarted: resubscribed after {(time.perf_counter() - start) * 1000:.0f} ms")
        await publisher.publish("after")  # the same publisher, reconnected
        await sub.until(lambda: "after" in sub.received, 2)
        assert sub.received == ["before", "after"]
        recovered = [r for r in caplog.records if r.name == "aiperimeter.bus" and "again" in r.getMessage()]
        assert len(recovered) == 1
    finally:
        await sub.stop()
        await subscriber_bus.close()
        await publisher.close()
