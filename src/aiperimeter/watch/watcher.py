"""The watcher: reads the audit stream, feeds the dashboard's rollups and the detector, and handles each alert once:
kept in the store (which every replica shares, so the replica that keeps it first is the one that acts), automatic
actions by severity, then delivery.

It lives in one process per gateway (the one that serves the admin API; in single-process mode, the only one).
After a restart it resumes from a snapshot of the baselines and the stream position, written every few minutes;
without one it warms up on the tail of the audit stream, and alerts about traffic older than the warm-up are kept
but neither acted on nor delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from aiperimeter.config import WatchSettings
from aiperimeter.errors import BackendUnavailable
from aiperimeter.gateway.stages.client_guard import Exemptions, numeric, subject
from aiperimeter.state.base import KeyStore
from aiperimeter.watch.alerts import Alert
from aiperimeter.watch.deliver import Delivery
from aiperimeter.watch.detector import Detector
from aiperimeter.watch.feed import Feed
from aiperimeter.watch.observation import Observation
from aiperimeter.watch.rollup import Rollup

log = logging.getLogger("aiperimeter.watch")

RING_BYTES = 16 << 20  # recent audit lines kept, for alerts' evidence (about 40,000 requests)
PINNED = 5_000  # records named as evidence by an alert, kept after they leave the ring
POLL = 0.5  # seconds between reads of an idle file feed
SNAPSHOT_EVERY = 300.0
STALE = 600.0  # alerts about traffic older than this (at start-up) are history: not acted on, not delivered


class Records:
    """Recent audit lines, for the evidence an alert names: the raw batches the feed read, up to RING_BYTES, and
    the lines alerts named (up to PINNED) after their batch has gone. A lookup searches the batches, newest first.

    Raw batches rather than a record per request: a few large buffers are returned to the system when they go,
    where tens of thousands of small long-lived objects would pin the allocator's pages (measured: 20,000 records
    kept one by one held 230 MB of RSS for 8 MB of data)."""

    def __init__(self, keep_bytes: int = RING_BYTES, pinned: int = PINNED) -> None:
        self._batches: deque[bytes] = deque()
        self._size = 0
        self._keep = keep_bytes
        self._pinned: OrderedDict[str, bytes] = OrderedDict()
        self._max_pinned = pinned

    def add_batch(self, raw: bytes) -> None:
        if not raw:
            return
        self._batches.append(raw)
        self._size += len(raw)
        while self._size > self._keep and len(self._batches) > 1:
            self._size -= len(self._batches.popleft())

    def _find(self, request_id: str) -> bytes | None:
        needle = b'"request_id":' + orjson.dumps(request_id)  # as the gateway's orjson wrote it
        for batch in reversed(self._batches):
            at = batch.rfind(needle)
            if at >= 0:
                end = batch.find(b"\n", at)
                return batch[batch.rfind(b"\n", 0, at) + 1 : end if end >= 0 else len(batch)]
        return None

    def pin(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            if request_id in self._pinned:
                continue
            line = self._find(request_id)
            if line is not None:
                self._pinned[request_id] = line
        while len(self._pinned) > self._max_pinned:
            self._pinned.popitem(last=False)

    def get(self, request_id: str) -> dict[str, Any] | None:
        line = self._pinned.get(request_id) or self._find(request_id)
        if line is None:
            return None
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None


class Actions:
    """What the watcher may do to stop an incident, through the gateway's own machinery. The gateway supplies the
    callbacks that make a change take effect at once (cache eviction, the revocation bus, the audit log)."""

    def __init__(
        self,
        store: KeyStore,
        settings: WatchSettings,
        *,
        on_key_change: Callable[[str, str, str], Any] | None = None,  # (key id, action, actor), may be async
        on_block: Callable[[str, float, str], Any] | None = None,  # (address, until, reason)
    ) -> None:
        self.store = store
        self.settings = settings
        self.on_key_change = on_key_change
        self.on_block = on_block
        self.exempt = Exemptions(settings.brute_force.exempt)

    def for_alert(self, alert: Alert) -> tuple[str, ...]:
        return tuple(self.settings.actions.get(alert.severity, ()))

    async def apply(self, alert: Alert, now: float) -> list[str]:
        done: list[str] = []
        for action in self.for_alert(alert):
            try:
                if action == "suspend_key":
                    result = await self._suspend(alert, now)
                else:
                    result = await self._block(alert, now)
            except BackendUnavailable:
                result = f"{action} failed: the store is unavailable"
            if result:
                done.append(result)
        return done

    async def _suspend(self, alert: Alert, now: float) -> str | None:
        if alert.key is None:
            return None
        record = await self.store.get(alert.key)
        if record is None:  # a JWT subject or a deleted key: nothing in the store to suspend
            return None
        if record.status(now) != "active" or record.canary:
            return None
        actor = f"watch:{alert.id}"
        if await self.store.suspend(alert.key, now, actor) is None:
            return None
        await _maybe_await(self.on_key_change, alert.key, "suspend", actor)
        log.warning("suspended key %s after alert %s (%s); resume it with: aiperimeter keys resume %s",
                    alert.key, alert.id, alert.kind, alert.key)  # fmt: skip
        return f"suspended key {alert.key}"

    async def _block(self, alert: Alert, now: float) -> str | None:
        if not alert.client or numeric(alert.client) is None or alert.client in self.exempt:
            return None
        address = subject(alert.client)  # an IPv6 client's whole /64: it may move within it at will
        until = now + self.settings.block_seconds
        reason = f"alert {alert.kind} ({alert.id})"
        await self.store.block(address, until, reason, f"watch:{alert.id}")
        await _maybe_await(self.on_block, address, until, reason)
        log.warning("blocked %s for %.0f s after alert %s (%s)", address, self.settings.block_seconds, alert.id,
                    alert.kind)  # fmt: skip
        return f"blocked {address} for {self.settings.block_seconds:.0f} s"


async def _maybe_await(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if asyncio.iscoroutine(result):
        await result


class Watcher:
    def __init__(
        self,
        feed: Feed,
        store: KeyStore,
        settings: WatchSettings,
        *,
        state_path: Path | None = None,
        delivery: Delivery | None = None,
        actions: Actions | None = None,
        detector: Detector | None = None,
        on_alert: Callable[[Alert], None] | None = None,  # metrics
        on_lag: Callable[[float], None] | None = None,  # metrics
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.store = store
        self.settings = settings
        self.state_path = state_path
        self.delivery = delivery or Delivery(
            settings.webhook_url, min_severity=settings.min_severity, timeout=settings.webhook_timeout
        )
        self.actions = actions or Actions(store, settings)
        self.detector = detector or Detector()
        self.rollup = Rollup()
        self.ring = Records()
        self.on_alert = on_alert
        self.on_lag = on_lag
        self.clock = clock
        self.started = clock()
        self.records = 0  # audit records read
        self.alerts = 0  # alerts raised (kept or not)
        self.lag = 0.0  # seconds between a record's time and its reading, for the newest record
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._last_snapshot = self.started

    # --- lifecycle ---

    def start(self) -> None:
        self._restore()
        self.delivery.start()
        self._task = asyncio.create_task(self._run(), name="watcher")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(5):
                    await self._task
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self._save()
        await self.delivery.close()
        await self.feed.close()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                records = await self.feed.read()
                self.ring.add_batch(self.feed.last_batch)
                if records:
                    await self.process(records)
                    if self.on_lag is not None:
                        self.on_lag(self.lag)
                elif not self._stop.is_set():
                    await asyncio.wait_for(self._stop.wait(), POLL)
            except TimeoutError:
                pass
            except Exception:  # the watcher must outlive any one bad batch; the gateway serves on regardless
                log.exception("the watcher failed on a batch of audit records; continuing")
                await asyncio.sleep(POLL)
            if self.clock() - self._last_snapshot >= SNAPSHOT_EVERY:
                await self._save()

    # --- the work ---

    async def process(self, records: list[dict[str, Any]]) -> None:
        """Judge a batch of audit records, in order (also what `aiperimeter watch replay` drives)."""
        for count, record in enumerate(records, 1):
            if count % 16 == 0:
                await asyncio.sleep(0)  # a long batch must not hold the gateway's requests in this process
            obs = Observation.from_record(record)
            if obs is None:
                continue
            self.records += 1
            try:
                self.rollup.add(obs)
                alerts = self.detector.observe(obs)
            except Exception:  # one record the code did not foresee must not cost the rest of the batch
                log.exception("the watcher could not judge audit record %s; skipped", obs.request_id)
                continue
            self.lag = max(0.0, self.clock() - obs.time)
            for alert in alerts:
                await self.handle(alert)

    async def handle(self, alert: Alert) -> None:
        self.alerts += 1
        self.ring.pin(alert.evidence)
        stale = alert.time < self.started - STALE
        acting = () if stale else self.actions.for_alert(alert)
        try:
            new = await self.store.add_alert(alert.to_dict())
        except BackendUnavailable:
            new = True  # the store is down: better twice than never
            log.warning("could not keep alert %s: the store is unavailable", alert.id)
        if not new:
            return  # another replica (or an earlier run) raised it first
        if self.on_alert is not None:
            self.on_alert(alert)
        if stale:
            log.info("alert %s about traffic before this start (%s): kept, not delivered", alert.id, alert.kind)
            return
        if acting:
            done = await self.actions.apply(alert, self.clock())
            if done:
                alert = replace(alert, actions=tuple(done))
                with contextlib.suppress(BackendUnavailable):
                    await self.store.set_alert_actions(alert.id, list(done))
        self.delivery.deliver(alert)

    # --- persistence ---

    async def _save(self) -> None:
        """The snapshot is taken on the loop (the baselines must not change under it), encoded and written in a
        thread: the process also serves requests."""
        self._last_snapshot = self.clock()
        if self.state_path is None:
            return
        doc = {"version": 1, "position": self.feed.position(), "detector": self.detector.snapshot()}
        await asyncio.to_thread(_write_private, self.state_path, doc)

    def _restore(self) -> None:
        if self.state_path is None:
            return
        try:
            doc = orjson.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError):
            log.warning("the watcher's saved baselines in %s are unreadable; learning afresh", self.state_path)
            return
        if not isinstance(doc, dict) or doc.get("version") != 1:
            return
        position, detector = doc.get("position"), doc.get("detector")
        if isinstance(detector, dict):
            loaded = self.detector.restore(detector)
            log.info("the watcher resumed %d key baselines from %s", loaded, self.state_path)
        if isinstance(position, dict) and not self.feed.seek(position):
            log.info("the audit stream changed since the baselines were saved; reading it from the start")


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    """Replace `path` atomically with `doc` as JSON, readable by the owner only."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(doc))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save the watcher's baselines to %s: %s", path, exc.strerror)
