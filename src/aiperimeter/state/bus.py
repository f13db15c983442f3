"""Revocation events pushed to every replica: the id of a key that changed, delivered to every subscriber at once.

The bus is an accelerator, not the record: delivery is at most once, and ids published while a subscriber is
disconnected are lost. `run` therefore calls `on_subscribed` every time its subscription is (re)established, and a
subscriber must then resynchronise (e.g. drop its cache of verified keys, or read the key store's change feed).

`RedisBus` uses Redis pub/sub. `publish` raises `BackendUnavailable("bus_unavailable")` within about `timeout`
seconds when Redis is down; `run` reconnects by itself with a bounded exponential backoff, logs one warning per outage
and one line when it is back, and pings an idle subscription every `ping_every` seconds so that a silently dead
connection is noticed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aiperimeter.errors import BackendUnavailable
from aiperimeter.state.redis_limits import connect

log = logging.getLogger("aiperimeter.bus")


class RevocationBus(Protocol):
    async def publish(self, key_id: str) -> None:
        """Tell every subscriber that this key changed. Raises BackendUnavailable when the bus is down."""
        ...

    async def run(self, on_key: Callable[[str], None], on_subscribed: Callable[[], None] | None = None) -> None:
        """Call `on_key` for every published id until cancelled or closed; `on_subscribed` after each (re)subscribe."""
        ...

    async def close(self) -> None: ...


def _deliver(on_key: Callable[[str], None], key_id: str) -> None:
    try:
        on_key(key_id)
    except Exception:
        log.exception("revocation handler failed for key %s", key_id)


class MemoryBus:
    """In-process fan-out: for tests and the single-machine mode (one process)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[str | None]] = set()
        self._closed = False

    async def publish(self, key_id: str) -> None:
        if self._closed:
            raise BackendUnavailable("bus_unavailable", "The revocation bus is closed.")
        for queue in self._queues:
            queue.put_nowait(key_id)

    async def run(self, on_key: Callable[[str], None], on_subscribed: Callable[[], None] | None = None) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            if on_subscribed is not None:
                on_subscribed()
            while not self._closed:
                key_id = await queue.get()
                if key_id is None:
                    return
                _deliver(on_key, key_id)
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(None)


class RedisBus:
    """`RevocationBus` over Redis pub/sub on `channel`."""

    def __init__(
        self,
        target: str | Redis,
        channel: str = "aiperimeter:keys",
        *,
        timeout: float = 1.0,
        ping_every: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        if min(timeout, ping_every, min_backoff, max_backoff) <= 0:
            raise ValueError("timeout, ping_every and the backoffs must be positive")
        if isinstance(target, str):
            self.redis: Redis = connect(target, timeout=timeout, max_connections=8)
            self._owned = True
        else:
            self.redis = target
            self._owned = False
        self.channel = channel
        self.timeout = timeout
        self.ping_every = ping_every
        self.min_backoff = min_backoff
        self.max_backoff = max(max_backoff, min_backoff)
        self.connected = False
        self.failures = 0  # failed (re)subscriptions and dropped subscriptions, for metrics
        self._closed = asyncio.Event()

    async def publish(self, key_id: str) -> None:
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self.redis.publish(self.channel, key_id)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable("bus_unavailable", "The revocation bus is unavailable.") from exc

    async def run(self, on_key: Callable[[str], None], on_subscribed: Callable[[], None] | None = None) -> None:
        backoff = self.min_backoff
        outage = False
        while not self._closed.is_set():
            pubsub: Any = self.redis.pubsub()
            try:
                await self._subscribe(pubsub)
                if outage:
                    log.info("revocation bus connected again")
                outage, backoff = False, self.min_backoff
                self.connected = True
                if on_subscribed is not None:
                    on_subscribed()
                await self._listen(pubsub, on_key)
            except (RedisError, OSError, TimeoutError) as exc:
                if self._closed.is_set():
                    return
                self.failures += 1
                if not outage:
                    log.warning("revocation bus unavailable (%s): reconnecting in the background", type(exc).__name__)
                outage = True
            finally:
                self.connected = False
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.aclose()
            if outage:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._closed.wait()
                backoff = min(backoff * 2, self.max_backoff)

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe and wait for the server's confirmation: from then on, every publish reaches us."""
        async with asyncio.timeout(self.timeout * 2):
            await pubsub.subscribe(self.channel)
            for _ in range(100):
                message = await pubsub.get_message(timeout=self.timeout)
                if message is not None and message["type"] == "subscribe":
                    return
        raise RedisConnectionError("no subscription confirmation")

    async def _listen(self, pubsub: Any, on_key: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged: float | None = None
        while not self._closed.is_set():
            message = await pubsub.get_message(timeout=min(1.0, self.ping_every))
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    data = message["data"]
                    _deliver(on_key, data.decode(errors="replace") if isinstance(data, bytes) else str(data))
                elif message["type"] == "pong":
                    pinged = None
            if pinged is not None and now - pinged > self.timeout * 2:
                raise RedisConnectionError("no answer to ping")
            if pinged is None and now - heard >= self.ping_every:
                await pubsub.ping()
                pinged = now

    async def close(self) -> None:
        self._closed.set()
        if self._owned:
            await self.redis.aclose()
