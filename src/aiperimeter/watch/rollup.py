"""Traffic in time buckets, for the dashboard: requests per key, denies per reason, tokens, status classes, latency.

Two resolutions: one-minute buckets for the last 24 hours, one-hour buckets for the last 14 days. Memory is bounded
whatever the traffic: each bucket holds at most a fixed number of keys and deny reasons (when a new one arrives at a
full bucket, the smallest entry is folded into "other", so the busy keys keep their names), and buckets older than
their retention are dropped. Times are the traffic's own; records from the future (a skewed or forged clock) and
from before the retention are counted as rejected, never bucketed.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiperimeter.watch.observation import Observation

MINUTE = 60
HOUR = 3600
MAX_WINDOW = 14 * 86400
MIN_WINDOW = MINUTE
# How long buckets are kept: the views promise 24 hours of minutes and 14 days of hours; the margin covers the
# partial first point of a view that reaches back that far.
MINUTE_RETENTION = 25 * HOUR
HOUR_RETENTION = 15 * 86400
FUTURE_SKEW = 300.0  # seconds a record may be ahead of this process's clock (replicas' clocks differ a little)
TOP_KEYS = 8  # series drawn per key; the rest are summed as "other"
TOP_REASONS = 8
TOP_TOKEN_KEYS = 10
MAX_POINTS = 120  # points per series at most: the view's step grows with the window
STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 14400, 21600, 43200, 86400)

# Latency histogram: upper bounds of each bin in milliseconds (the last bin is open-ended).
LATENCY_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0)
_BINS = len(LATENCY_BOUNDS) + 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

NO_KEY = ""  # requests without an accepted credential (key ids are never empty)
OTHER = "\x00other"  # the folded remainder (never a key id or deny code: those are printable)
_MAX_TOKENS = 1 << 40  # a hostile record's token count is clamped, not trusted to stay small


@dataclass(slots=True)
class Bucket:
    """One interval's traffic. keys: key -> [requests, tokens_in, tokens_out, denied]."""

    start: int
    key_cap: int
    reason_cap: int
    requests: int = 0
    denied: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    streams: int = 0
    keys: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    status: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    latency: list[int] = field(default_factory=lambda: [0] * _BINS)
    # Once the bucket is full: requests of keys without a row (counted under "other" meanwhile), and a lower bound of
    # the smallest named row's requests. A key whose waiting count reaches the bound may take that row's place.
    waiting: dict[str, int] = field(default_factory=dict)
    floor: int = 0

    def add(
        self, key: str, deny: str | None, tin: int, tout: int, status_class: int, latency_bin: int, stream: bool
    ) -> None:
        self.requests += 1
        self.tokens_in += tin
        self.tokens_out += tout
        self.status[status_class] += 1
        self.latency[latency_bin] += 1
        if stream:
            self.streams += 1
        row = self.keys.get(key)
        if row is None:
            row = self._new_key(key)
        row[0] += 1
        row[1] += tin
        row[2] += tout
        if deny is not None:
            self.denied += 1
            row[3] += 1
            reasons = self.reasons
            if deny in reasons:
                reasons[deny] += 1
            elif len(reasons) < self.reason_cap:
                reasons[deny] = 1
            else:
                reasons[OTHER] = reasons.get(OTHER, 0) + 1

    def _new_key(self, key: str) -> list[int]:
        """The row a key without one counts in: its own while there is room; once full, "other", until the key has
        had as many requests as the smallest named row, whose counts then join "other" while the key takes its place.
        So a busy key that arrives after many small ones is still drawn under its name, and the common case (a key
        seen before, or a full bucket's long tail) costs a dictionary lookup, not a scan."""
        keys = self.keys
        named = len(keys) - (OTHER in keys)
        if named < self.key_cap:
            row = keys[key] = [0, 0, 0, 0]
            return row
        other = keys.get(OTHER)
        if other is None:
            other = keys[OTHER] = [0, 0, 0, 0]
        waiting = self.waiting
        seen = waiting.get(key, 0) + 1
        if seen <= self.floor:
            if seen == 1 and len(waiting) >= 4 * self.key_cap:
                waiting.clear()  # bounded: a long tail of one-off keys forgets its oldest counts
            waiting[key] = seen
            return other
        smallest = min((k for k in keys if k != OTHER), key=lambda k: keys[k][0])
        least = keys[smallest][0]
        if least >= seen:
            self.floor = least
            waiting[key] = seen
            return other
        folded = keys.pop(smallest)
        for i, value in enumerate(folded):
            other[i] += value
        waiting.pop(key, None)
        self.floor = least
        row = keys[key] = [0, 0, 0, 0]
        return row

    def merge_into(self, total: Bucket) -> None:
        """Add this bucket's counts to `total` (a bucket without caps, used only for a view)."""
        total.requests += self.requests
        total.denied += self.denied
        total.tokens_in += self.tokens_in
        total.tokens_out += self.tokens_out
        total.streams += self.streams
        for key, row in self.keys.items():
            into = total.keys.get(key)
            if into is None:
                total.keys[key] = list(row)
            else:
                for i, value in enumerate(row):
                    into[i] += value
        for reason, count in self.reasons.items():
            total.reasons[reason] = total.reasons.get(reason, 0) + count
        for i, count in enumerate(self.status):
            total.status[i] += count
        for i, count in enumerate(self.latency):
            total.latency[i] += count


def _status_class(status: int) -> int:
    return status // 100 - 1 if 100 <= status < 600 else 5


def percentile(histogram: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of a latency histogram, interpolated linearly within its bin; None when empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS[i - 1] if i > 0 else 0.0
            high = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else LATENCY_BOUNDS[-1] * 2
            return round(low + (high - low) * max(0.0, rank - seen) / count, 3)
        seen += count
    return LATENCY_BOUNDS[-1] * 2  # unreachable with a consistent histogram


def step_for(window: int) -> int:
    """Seconds per point of a view: the finest step that keeps a series within MAX_POINTS points."""
    base = MINUTE if window <= 86400 else HOUR
    for step in STEPS:
        if step >= base and window / step <= MAX_POINTS:
            return step
    return STEPS[-1]


class Rollup:
    """Aggregates Observations for the dashboard. add() is called for every request; view() for every refresh."""

    def __init__(
        self,
        *,
        minute_keys: int = 40,
        hour_keys: int = 100,
        reasons: int = 24,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(minute_keys, hour_keys) < 2 or reasons < 1:
            raise ValueError("a bucket needs room for at least two keys and one reason")
        self.minute_keys = minute_keys
        self.hour_keys = hour_keys
        self.reason_cap = reasons
        self.clock = clock
        self.minutes: dict[int, Bucket] = {}  # minute number (epoch // 60) -> bucket
        self.hours: dict[int, Bucket] = {}  # hour number (epoch // 3600) -> bucket
        self.rejected = 0  # observations outside [now - 14 days, now + FUTURE_SKEW], or with a non-finite time
        self._now_minute = -1  # the current minute by the clock; expired buckets are dropped when it changes

    def add(self, obs: Observation) -> None:
        now = self.clock()
        t = obs.time
        if not now - HOUR_RETENTION <= t <= now + FUTURE_SKEW:  # also refuses NaN and infinities
            self.rejected += 1
            return
        minute_now = int(now // MINUTE)
        if minute_now != self._now_minute:
            self._now_minute = minute_now
            self._expire(now)
        tin = obs.tokens_in
        tout = obs.tokens_out
        if not 0 <= tin <= _MAX_TOKENS:
            tin = 0 if tin < 0 else _MAX_TOKENS
        if not 0 <= tout <= _MAX_TOKENS:
            tout = 0 if tout < 0 else _MAX_TOKENS
        ms = obs.total_ms
        latency_bin = bisect_left(LATENCY_BOUNDS, ms) if ms >= 0 else 0  # NaN compares false: bin 0
        status_class = _status_class(obs.status)
        key = obs.key or NO_KEY
        deny = obs.deny
        stream = obs.stream
        if t >= now - MINUTE_RETENTION:
            number = int(t // MINUTE)
            bucket = self.minutes.get(number)
            if bucket is None:
                bucket = self.minutes[number] = Bucket(number * MINUTE, self.minute_keys, self.reason_cap)
            bucket.add(key, deny, tin, tout, status_class, latency_bin, stream)
        number = int(t // HOUR)
        bucket = self.hours.get(number)
        if bucket is None:
            bucket = self.hours[number] = Bucket(number * HOUR, self.hour_keys, self.reason_cap)
        bucket.add(key, deny, tin, tout, status_class, latency_bin, stream)

    def add_all(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self.add(obs)

    def _expire(self, now: float) -> None:
        oldest_minute = int((now - MINUTE_RETENTION) // MINUTE)
        for number in [n for n in self.minutes if n < oldest_minute]:
            del self.minutes[number]
        oldest_hour = int((now - HOUR_RETENTION) // HOUR)
        for number in [n for n in self.hours if n < oldest_hour]:
            del self.hours[number]

    def view(self, now: float, window_seconds: int) -> dict[str, Any]:
        """The last `window_seconds` before `now`, JSON-ready: series share the `times` axis (each point's start).
        The first and last points are partial: together they cover the window, to the bucket."""
        if not isinstance(window_seconds, int) or not MIN_WINDOW <= window_seconds <= MAX_WINDOW:
            raise ValueError(f"the window must be {MIN_WINDOW} to {MAX_WINDOW} seconds")
        if not math.isfinite(now):
            raise ValueError("now must be a finite time")
        self._expire(now)
        step = step_for(window_seconds)
        source, size = (self.minutes, MINUTE) if step < HOUR else (self.hours, HOUR)
        last = int(now // step) * step
        first = int((now - window_seconds) // step) * step
        times = list(range(first, last + 1, step))
        points = [Bucket(t, 0, 0) for t in times]
        total = Bucket(first, 0, 0)
        lo, hi = int(now - window_seconds) // size, int(now) // size  # the buckets of the window, both ends partial
        for number, bucket in source.items():
            if lo <= number <= hi:
                bucket.merge_into(points[(bucket.start - first) // step])
        for point in points:
            point.merge_into(total)
        return _render(now, window_seconds, step, times, points, total)


def _label(key: str) -> dict[str, Any]:
    if key == OTHER:
        return {"key": None, "kind": "other"}
    if key == NO_KEY:
        return {"key": None, "kind": "none"}
    return {"key": key, "kind": "key"}


def _top(counts: dict[str, int], n: int) -> list[str]:
    named = sorted((k for k in counts if k != OTHER and counts[k] > 0), key=lambda k: (-counts[k], k))
    return named[:n]


def _render(
    now: float, window: int, step: int, times: list[int], points: list[Bucket], total: Bucket
) -> dict[str, Any]:
    key_requests = {k: row[0] for k, row in total.keys.items()}
    top_keys = _top(key_requests, TOP_KEYS)
    shown = set(top_keys)
    request_series = [{**_label(k), "values": [p.keys[k][0] if k in p.keys else 0 for p in points]} for k in top_keys]
    rest = [sum(row[0] for k, row in p.keys.items() if k not in shown) for p in points]
    if any(rest):
        request_series.append({**_label(OTHER), "values": rest})

    top_reasons = _top(total.reasons, TOP_REASONS)
    shown_reasons = set(top_reasons)
    deny_series: list[dict[str, Any]] = [
        {"reason": r, "values": [p.reasons.get(r, 0) for p in points]} for r in top_reasons
    ]
    rest = [sum(c for r, c in p.reasons.items() if r not in shown_reasons) for p in points]
    if any(rest):
        deny_series.append({"reason": None, "values": rest})
    deny_totals: list[dict[str, Any]] = [{"reason": r, "count": total.reasons[r]} for r in top_reasons]
    remainder = total.denied - sum(total.reasons[r] for r in top_reasons)
    if remainder > 0:
        deny_totals.append({"reason": None, "count": remainder})

    by_tokens = sorted(
        (k for k, row in total.keys.items() if k != OTHER and row[1] + row[2] > 0),
        key=lambda k: (-(total.keys[k][1] + total.keys[k][2]), k),
    )[:TOP_TOKEN_KEYS]
    top_tokens = [
        {
            **_label(k),
            "tokens_in": total.keys[k][1],
            "tokens_out": total.keys[k][2],
            "requests": total.keys[k][0],
            "denied": total.keys[k][3],
        }
        for k in by_tokens
    ]
    return {
        "now": now,
        "window": window,
        "step": step,
        "times": times,
        "requests": request_series,
        "denied": deny_series,
        "deny_totals": deny_totals,
        "top_tokens": top_tokens,
        "status": dict(zip(STATUS_CLASSES, total.status, strict=True)),
        "latency": {
            "p50": [percentile(p.latency, 0.50) for p in points],
            "p95": [percentile(p.latency, 0.95) for p in points],
        },
        "totals": {
            "requests": total.requests,
            "denied": total.denied,
            "tokens_in": total.tokens_in,
            "tokens_out": total.tokens_out,
            "streams": total.streams,
            "keys": sum(1 for k in total.keys if k not in (OTHER, NO_KEY)),
            "p50_ms": percentile(total.latency, 0.50),
            "p95_ms": percentile(total.latency, 0.95),
        },
    }
