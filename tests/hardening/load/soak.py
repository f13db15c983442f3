"""The open-loop soak: requests at fixed times, latency from the scheduled time, windows, memory, verdict."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import uvloop

from aiperimeter.watch.watcher import RING_BYTES
from tests.hardening.load.client import REQUEST_TIMEOUT, client_session, is_streamed, ms, percentile, request
from tests.hardening.load.stack import Stack, machine_busy_seconds, own_cpu_seconds
from tests.support.leaks import LEAKS

MAX_INFLIGHT = 2048  # beyond this the client refuses to start more (counted as `overload`: the run is invalid)
GATEWAY_ERRORS = ("gateway_5xx", "status_4xx", "broken_stream", "bad_body", "connection")
CLIENT_ERRORS = ("timeout", "overload")
AUDIT_LINE_BYTES = 400  # about one audit line of the soak's requests
MAX_WARMUP = 180.0
BODY_SAMPLES = 2000  # response bodies kept for the secret scan


@dataclass
class Window:
    index: int
    start_s: float
    requests: int
    ok: int
    throughput: float  # 2xx answers per second of requests scheduled in this window
    p50_ms: float
    p99_ms: float
    plain_p99_ms: float
    stream_p99_ms: float
    errors: dict[str, int]
    rss_kib: int  # the gateway's, sampled at the window's end


@dataclass
class SoakResult:
    rate: float
    seconds: float
    streamed: float
    window_s: float
    requests: int
    ok: int
    throughput: float
    errors: dict[str, int]
    gateway_errors: int  # non-2xx, broken stream, bad body, connection error: the upstream was healthy
    client_errors: int  # timeouts and requests the client could not start
    p50_ms: float
    p99_ms: float
    max_ms: float
    plain_p50_ms: float
    plain_p99_ms: float
    stream_p50_ms: float
    stream_p99_ms: float
    launch_lag_p99_ms: float  # how late the client started requests: large means the client is the bottleneck
    max_inflight: int
    rss_kib_before_warmup: int
    rss_kib_start: int
    rss_kib_end: int
    rss_drift_mib: float
    rss_drift_pct: float
    p99_ratio: float  # median window p99 of the last third / of the first third
    client_cpu_pct: float  # of one core
    gateway_cpu_pct: float
    upstream_cpu_pct: float
    other_cpu_pct: float  # other processes on the machine (and the Redis/PostgreSQL services): a disturbed run
    load_average: list[float]
    audit_records: int  # audit lines the gateway wrote for this soak (warm-up included)
    audit_expected: int  # requests of this soak that reached the gateway
    warmup_s: float = 0.0  # unmeasured load at the same rate before the run
    windows: list[Window] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    error_samples: list[tuple[float, str, str]] = field(default_factory=list)  # (scheduled offset s, class, detail)
    leak_hits: list[str] = field(default_factory=list)
    verdict: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Recorder:
    """Per-request outcomes folded into per-window latency lists and error counts as they arrive."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        # arrays, not lists: a 30-minute soak records millions of latencies
        self.latencies: dict[int, array[float]] = {}
        self.plain: dict[int, array[float]] = {}
        self.stream: dict[int, array[float]] = {}
        self.errors: dict[int, dict[str, int]] = {}
        self.sent: dict[int, int] = {}
        self.lags: array[float] = array("d")
        self.error_samples: list[tuple[float, str, str]] = []
        self.bodies: list[bytes] = []
        self.done = 0
        self.overload = 0
        self.audit = (0, 0)  # (records written, requests that reached the gateway)

    def reached(self) -> int:
        return self.done - self.overload

    def record(self, offset: float, streamed: bool, latency: float, error: str | None, body: bytes) -> None:
        window = int(offset // self.window_s)
        self.sent[window] = self.sent.get(window, 0) + 1
        self.done += 1
        if error == "overload":
            self.overload += 1
        if error is not None:
            counts = self.errors.setdefault(window, {})
            counts[error] = counts.get(error, 0) + 1
            if len(self.error_samples) < 200:
                self.error_samples.append((round(offset, 3), error, body[:200].decode(errors="replace")))
            if len(self.bodies) < BODY_SAMPLES:
                self.bodies.append(body)
            return
        self.latencies.setdefault(window, array("d")).append(latency)
        (self.stream if streamed else self.plain).setdefault(window, array("d")).append(latency)
        if self.done % 97 == 1 and len(self.bodies) < BODY_SAMPLES:
            self.bodies.append(body)


async def _open_loop(
    stack: Stack,
    rate: float,
    seconds: float,
    streamed: float,
    recorder: _Recorder,
    actions: list[tuple[float, Callable[[], None]]],
    samples: list[tuple[float, int]],
    sample_every: float,
) -> int:
    """Schedule rate*seconds requests at fixed times; returns the most requests that were in flight at once."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    inflight: set[asyncio.Task[None]] = set()
    peak = 0
    pending_actions = sorted(actions, key=lambda a: a[0])

    async with client_session(stack.secret, 512) as session:

        async def one(index: int, at: float) -> None:
            recorder.lags.append(time.perf_counter() - at)
            kind = is_streamed(index, streamed)
            error, body = await request(session, stack.url, kind)
            recorder.record(at - t0, kind, time.perf_counter() - at, error, body)

        async def sampler() -> None:
            while True:
                samples.append((round(time.perf_counter() - t0, 2), stack.rss_kib()))
                await asyncio.sleep(sample_every)

        t0 = time.perf_counter() + 0.05
        sampling = loop.create_task(sampler())
        index = 0
        try:
            while index < total:
                now = time.perf_counter()
                while pending_actions and t0 + pending_actions[0][0] <= now:
                    pending_actions.pop(0)[1]()
                while index < total and t0 + index / rate <= now:
                    at = t0 + index / rate
                    if len(inflight) >= MAX_INFLIGHT:
                        recorder.record(at - t0, False, 0.0, "overload", b"")
                    else:
                        task = loop.create_task(one(index, at))
                        inflight.add(task)
                        task.add_done_callback(inflight.discard)
                    index += 1
                peak = max(peak, len(inflight))
                if index < total:
                    await asyncio.sleep(max(0.0, t0 + index / rate - time.perf_counter()))
            # every request has its own timeout, so this ends; the bound is a second line of defence
            if inflight:
                await asyncio.wait(set(inflight), timeout=REQUEST_TIMEOUT + 5)
            for action in pending_actions:
                action[1]()
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            for task in list(inflight):
                task.cancel()
    return peak


def soak(
    stack: Stack,
    rate: float,
    seconds: float,
    streamed: float = 0.3,
    window_s: float = 60.0,
    warmup: float | None = None,
    actions: list[tuple[float, Callable[[], None]]] | None = None,
    sample_every: float = 5.0,
) -> SoakResult:
    """Open-loop load at `rate` req/s for `seconds` after `warmup` seconds at the same rate (not measured).

    The default warm-up lasts until the gateway's watcher has filled its ring of recent audit lines (RING_BYTES,
    by design): that memory is the gateway's steady state, and its growth is not drift.

    `actions`: (seconds after the measured start, callable) run by the scheduler, e.g. an upstream fault switch.
    """
    if rate <= 0 or seconds <= 0 or not 0 <= streamed <= 1:
        raise ValueError("rate and seconds must be positive, streamed a share in [0, 1]")
    rss_before, audit_before = stack.rss_kib(), stack.audit_records()
    samples: list[tuple[float, int]] = []
    if warmup is None:
        warmup = min(MAX_WARMUP, max(10.0, RING_BYTES / AUDIT_LINE_BYTES / rate))
    recorder, warm = _Recorder(window_s), _Recorder(warmup or 1.0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if warmup > 0:
            runner.run(_open_loop(stack, rate, warmup, streamed, warm, [], [], warmup))
        rss_start = stack.rss_kib()
        busy = machine_busy_seconds()
        cpu = (own_cpu_seconds(), stack.gateway_cpu(), stack.upstream_cpu(), time.monotonic())
        peak = runner.run(
            _open_loop(stack, rate, seconds, streamed, recorder, actions or [], samples, min(sample_every, window_s))
        )
        wall = time.monotonic() - cpu[3]
        client, gateway, upstream = (
            own_cpu_seconds() - cpu[0],
            stack.gateway_cpu() - cpu[1],
            stack.upstream_cpu() - cpu[2],
        )
        other = max(0.0, machine_busy_seconds() - busy - client - gateway - upstream)
    rss_end = stack.rss_kib()
    samples.append((round(seconds, 2), rss_end))
    # every request that reached the gateway is audited once it is answered; the writer may trail a little
    expected = audit_before + warm.reached() + recorder.reached()
    deadline = time.monotonic() + 10.0
    while (audited := stack.audit_records()) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    recorder.audit = (audited - audit_before, expected - audit_before)
    LEAKS.texts.extend(body.decode(errors="replace") for body in recorder.bodies)
    result = _summarise(
        stack,
        rate,
        seconds,
        streamed,
        recorder,
        samples,
        peak,
        (rss_before, rss_start, rss_end),
        (client, gateway, upstream, other, wall),
    )
    result.warmup_s = round(warmup, 1)
    return result


def _summarise(
    stack: Stack,
    rate: float,
    seconds: float,
    streamed: float,
    rec: _Recorder,
    samples: list[tuple[float, int]],
    peak: int,
    rss: tuple[int, int, int],
    cpu: tuple[float, float, float, float, float],
) -> SoakResult:
    windows: list[Window] = []
    count = max(1, math.ceil(seconds / rec.window_s))
    for w in range(count):
        start, length = w * rec.window_s, min(rec.window_s, seconds - w * rec.window_s)
        lat = rec.latencies.get(w, array("d"))
        in_window = [kib for at, kib in samples if at <= start + length]
        windows.append(
            Window(
                index=w,
                start_s=start,
                requests=rec.sent.get(w, 0),
                ok=len(lat),
                throughput=round(len(lat) / length, 1) if length > 0 else 0.0,
                p50_ms=ms(percentile(lat, 0.5)),
                p99_ms=ms(percentile(lat, 0.99)),
                plain_p99_ms=ms(percentile(rec.plain.get(w, array("d")), 0.99)),
                stream_p99_ms=ms(percentile(rec.stream.get(w, array("d")), 0.99)),
                errors=rec.errors.get(w, {}),
                rss_kib=in_window[-1] if in_window else rss[1],
            )
        )
    everything = [x for lat in rec.latencies.values() for x in lat]
    plain = [x for lat in rec.plain.values() for x in lat]
    stream = [x for lat in rec.stream.values() for x in lat]
    errors: dict[str, int] = {}
    for counts in rec.errors.values():
        for name, n in counts.items():
            errors[name] = errors.get(name, 0) + n
    gateway_errors = sum(errors.get(name, 0) for name in GATEWAY_ERRORS)
    client_errors = sum(errors.get(name, 0) for name in CLIENT_ERRORS)
    rss_before, rss_start, rss_end = rss
    drift_mib = (rss_end - rss_start) / 1024
    drift_pct = 100 * (rss_end - rss_start) / rss_start if rss_start else 0.0
    # The trend, not one noisy minute: the median window p99 of the last third against that of the first third.
    third = max(1, len(windows) // 3)
    first = statistics.median(w.p99_ms for w in windows[:third])
    last = statistics.median(w.p99_ms for w in windows[-third:])
    p99_ratio = round(last / first, 2) if first else 0.0
    client, gateway, upstream, other, wall = cpu
    lag_p99 = ms(percentile(rec.lags, 0.99))
    requests = int(rate * seconds)
    result = SoakResult(
        rate=rate,
        seconds=seconds,
        streamed=streamed,
        window_s=rec.window_s,
        requests=requests,
        ok=len(everything),
        throughput=round(len(everything) / seconds, 1),
        errors=errors,
        gateway_errors=gateway_errors,
        client_errors=client_errors,
        p50_ms=ms(percentile(everything, 0.5)),
        p99_ms=ms(percentile(everything, 0.99)),
        max_ms=ms(max(everything, default=0.0)),
        plain_p50_ms=ms(percentile(plain, 0.5)),
        plain_p99_ms=ms(percentile(plain, 0.99)),
        stream_p50_ms=ms(percentile(stream, 0.5)),
        stream_p99_ms=ms(percentile(stream, 0.99)),
        launch_lag_p99_ms=lag_p99,
        max_inflight=peak,
        rss_kib_before_warmup=rss_before,
        rss_kib_start=rss_start,
        rss_kib_end=rss_end,
        rss_drift_mib=round(drift_mib, 2),
        rss_drift_pct=round(drift_pct, 2),
        p99_ratio=p99_ratio,
        client_cpu_pct=round(100 * client / wall, 1),
        gateway_cpu_pct=round(100 * gateway / wall, 1),
        upstream_cpu_pct=round(100 * upstream / wall, 1),
        other_cpu_pct=round(100 * other / wall, 1),
        load_average=[round(x, 2) for x in os.getloadavg()],
        audit_records=rec.audit[0],
        audit_expected=rec.audit[1],
        windows=windows,
        rss_samples=samples,
        error_samples=rec.error_samples,
        leak_hits=stack.leak_hits(rec.bodies),
    )
    result.verdict = {
        "all_answered": rec.done == requests,
        "no_gateway_errors": gateway_errors == 0,
        "no_client_errors": client_errors == 0,
        # the last third's p99 within 1.5x of the first third's, or within 5 ms (tiny latencies jitter by ratio)
        "latency_flat": p99_ratio <= 1.5 or (last - first) <= 5.0,
        "memory_flat": drift_pct <= 10.0 or drift_mib <= 5.0,
        "client_kept_up": lag_p99 <= 50.0,
        "audit_complete": rec.audit[0] == rec.audit[1],
        "no_leaks": not result.leak_hits,
        # other processes took a fifth of a core or more: the figures say more about them than about the gateway
        "undisturbed": other <= 0.2 * wall,
    }
    return result
