"""What is usual for one key, learned from its own traffic: robust per-hour peaks, its networks, models, tools, routes
and request sizes. Pure data; the detector decides what departs from it.

Rates are judged by the peak 5-minute count of each hour of the day over the last 14 days. A peak is what a burst
is compared with, and hours of the day carry the daily rhythm. Robust: the threshold comes from the median and the
median absolute deviation of those daily peaks, or twice the second-highest of them (one past outlier cannot raise
it), whichever is higher. Hours that raised an alert are not learned, so an incident does not become the norm.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

DAYS = 14  # days of hourly peaks kept per key
HOURS = 24
SIZE_BUCKETS = 48  # log2 buckets of request sizes
RECENT = 20  # requests in the shape window
MAX_SEEN = 256  # networks, models, tools and routes remembered per key (DetectorSettings.max_seen)


def robust_ceiling(values: list[int], floor: float) -> float:
    """The count above which a 5-minute window is a spike: max(median + 8 MAD, 2 x second-highest, floor)."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    mid = median(ordered)
    mad = median(abs(v - mid) for v in ordered) * 1.4826
    second = ordered[-2] if len(ordered) > 1 else ordered[-1]
    return max(mid + 8 * mad, 2.0 * second, floor)


def quantile_bucket(histogram: list[int], q: float) -> int:
    total = sum(histogram)
    if total <= 0:
        return 0
    running = 0.0
    for index, count in enumerate(histogram):
        running += count
        if running >= q * total:
            return index
    return len(histogram) - 1


@dataclass(slots=True)
class KeyBaseline:
    """Per-key state. `today_*` accumulate the current day; at midnight they move into the 14-day history."""

    first_seen: float
    day: int  # days since the epoch of `today_*`
    requests: int = 0  # requests seen in all
    today_req: list[int] = field(default_factory=lambda: [0] * HOURS)  # peak 5-min requests per hour
    today_tok: list[int] = field(default_factory=lambda: [0] * HOURS)  # peak 5-min tokens per hour
    today_deny: int = 0  # peak 5-min denials today
    flagged: list[bool] = field(default_factory=lambda: [False] * HOURS)  # hours not to learn from
    hist_req: deque[list[int]] = field(default_factory=lambda: deque(maxlen=DAYS))
    hist_tok: deque[list[int]] = field(default_factory=lambda: deque(maxlen=DAYS))
    hist_deny: deque[int] = field(default_factory=lambda: deque(maxlen=DAYS))
    # Thresholds computed from the history once a day: the hot path only compares.
    ceil_req: list[float] = field(default_factory=lambda: [float("inf")] * HOURS)
    ceil_tok: list[float] = field(default_factory=lambda: [float("inf")] * HOURS)
    idle: list[bool] = field(default_factory=lambda: [False] * HOURS)
    ceil_deny: float = float("inf")
    # The sliding 5-minute window: counts per minute slot, their sums, and the minute of the newest slot.
    minute: int = 0
    win_req: list[int] = field(default_factory=lambda: [0] * 5)
    win_tok: list[int] = field(default_factory=lambda: [0] * 5)
    win_deny: list[int] = field(default_factory=lambda: [0] * 5)
    sum_req: int = 0
    sum_tok: int = 0
    sum_deny: int = 0
    # What the key uses: value -> last seen (epoch seconds).
    networks: dict[str, float] = field(default_factory=dict)
    models: dict[str, float] = field(default_factory=dict)
    tools: dict[str, float] = field(default_factory=dict)
    routes: dict[str, float] = field(default_factory=dict)
    last_client: str = ""
    last_network: str = ""
    # Request shape: log2 histograms of prompt bytes and completion tokens, their usual range, and the recent
    # requests outside it (a ring of booleans and its count).
    size_in: list[int] = field(default_factory=lambda: [0] * SIZE_BUCKETS)
    size_out: list[int] = field(default_factory=lambda: [0] * SIZE_BUCKETS)
    range_in: tuple[int, int] = (0, SIZE_BUCKETS)
    range_out: tuple[int, int] = (0, SIZE_BUCKETS)
    shaped: bool = False  # whether the ranges are learned yet
    recent: list[bool] = field(default_factory=lambda: [False] * RECENT)
    recent_at: int = 0
    recent_out: int = 0

    def learned_days(self) -> int:
        return len(self.hist_req)

    def close_day(self, day: int, min_requests: float = 20.0, min_tokens: float = 20_000.0) -> None:
        """Move today into the history (and empty days for a gap), then recompute the day's thresholds."""
        gap = min(day - self.day - 1, DAYS)
        req = [0 if self.flagged[h] else v for h, v in enumerate(self.today_req)]
        tok = [0 if self.flagged[h] else v for h, v in enumerate(self.today_tok)]
        self.hist_req.append(req)
        self.hist_tok.append(tok)
        self.hist_deny.append(self.today_deny)
        for _ in range(max(gap, 0)):
            self.hist_req.append([0] * HOURS)
            self.hist_tok.append([0] * HOURS)
            self.hist_deny.append(0)
        self.day = day
        self.today_req = [0] * HOURS
        self.today_tok = [0] * HOURS
        self.today_deny = 0
        self.flagged = [False] * HOURS
        if sum(self.size_in) > 20_000:  # sizes fade: halve the counts, so that a month-old habit weighs less
            self.size_in = [v // 2 for v in self.size_in]
            self.size_out = [v // 2 for v in self.size_out]
        self.recompute(min_requests=min_requests, min_tokens=min_tokens)

    def recompute(self, *, min_requests: float = 20.0, min_tokens: float = 20_000.0) -> None:
        days = len(self.hist_req)
        # A key that bursts at any hour (a CI bot) has hours without a burst in its history that are not quiet
        # hours: no hour's ceiling is below half of what the key reaches on an ordinary day at any hour.
        anytime = robust_ceiling([max(day) for day in self.hist_req], min_requests) / 2 if days else 0.0
        anytime_tok = robust_ceiling([max(day) for day in self.hist_tok], min_tokens) / 2 if days else 0.0
        for hour in range(HOURS):
            band = [(hour - 1) % HOURS, hour, (hour + 1) % HOURS]  # a rhythm drifts by an hour
            req = [max(day[b] for b in band) for day in self.hist_req]
            tok = [max(day[b] for b in band) for day in self.hist_tok]
            self.ceil_req[hour] = max(robust_ceiling(req, min_requests), anytime)
            self.ceil_tok[hour] = max(robust_ceiling(tok, min_tokens), anytime_tok)
            # Idle: not one request within two hours either side on any of the last 7 to 14 days.
            wide = [(hour + d) % HOURS for d in (-2, -1, 0, 1, 2)]
            self.idle[hour] = days >= 7 and not any(day[b] for day in self.hist_req for b in wide)
        self.ceil_deny = robust_ceiling(list(self.hist_deny), 10.0)
        if self.requests >= 50:
            self.range_in = (quantile_bucket(self.size_in, 0.01), quantile_bucket(self.size_in, 0.99))
            self.range_out = (quantile_bucket(self.size_out, 0.01), quantile_bucket(self.size_out, 0.99))
            self.shaped = True

    def forget(self, before: float) -> None:
        """Drop networks, models, tools and routes unused since `before` (a month): what is usual changes."""
        for seen in (self.networks, self.models, self.tools, self.routes):
            for name in [n for n, at in seen.items() if at < before]:
                del seen[name]

    # --- persistence: a snapshot lets a restarted watcher resume without replaying weeks of audit log ---

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_seen": self.first_seen,
            "day": self.day,
            "requests": self.requests,
            "today_req": self.today_req,
            "today_tok": self.today_tok,
            "today_deny": self.today_deny,
            "hist_req": list(self.hist_req),
            "hist_tok": list(self.hist_tok),
            "hist_deny": list(self.hist_deny),
            "networks": self.networks,
            "models": self.models,
            "tools": self.tools,
            "routes": self.routes,
            "size_in": self.size_in,
            "size_out": self.size_out,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> KeyBaseline:
        """Raises ValueError/TypeError/KeyError on a malformed snapshot (the caller starts afresh)."""

        def counts(value: Any, length: int) -> list[int]:
            if not isinstance(value, list) or len(value) != length:
                raise ValueError("bad counts")
            return [max(0, int(v)) for v in value]

        def seen(value: Any) -> dict[str, float]:
            if not isinstance(value, dict):
                raise ValueError("bad set")
            # The most recently used, within the cap: an oversized set is trimmed, not a reason to forget the key.
            recent = sorted(((float(v), str(k)[:256]) for k, v in value.items()), reverse=True)[:MAX_SEEN]
            return {name: at for at, name in reversed(recent) if math.isfinite(at)}

        state = cls(first_seen=float(doc["first_seen"]), day=int(doc["day"]), requests=int(doc["requests"]))
        if not math.isfinite(state.first_seen):
            raise ValueError("bad time")
        state.today_req = counts(doc["today_req"], HOURS)
        state.today_tok = counts(doc["today_tok"], HOURS)
        state.today_deny = max(0, int(doc["today_deny"]))
        state.hist_req.extend(counts(d, HOURS) for d in doc["hist_req"][-DAYS:])
        state.hist_tok.extend(counts(d, HOURS) for d in doc["hist_tok"][-DAYS:])
        state.hist_deny.extend(max(0, int(v)) for v in doc["hist_deny"][-DAYS:])
        state.networks = seen(doc["networks"])
        state.models = seen(doc["models"])
        state.tools = seen(doc["tools"])
        state.routes = seen(doc["routes"])
        state.size_in = counts(doc["size_in"], SIZE_BUCKETS)
        state.size_out = counts(doc["size_out"], SIZE_BUCKETS)
        state.recompute()
        return state
