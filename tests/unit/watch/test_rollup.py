"""The dashboard's rollup: buckets, windows, caps, the view's shape, and traffic that arrives late or lies."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from aiperimeter.watch.observation import Observation
from aiperimeter.watch.rollup import (
    FUTURE_SKEW,
    HOUR,
    HOUR_RETENTION,
    LATENCY_BOUNDS,
    MAX_POINTS,
    MAX_WINDOW,
    MINUTE,
    MINUTE_RETENTION,
    TOP_KEYS,
    Rollup,
    percentile,
    step_for,
)

NOW = 1_800_000_000.0  # a round minute and hour: 1_800_000_000 = 30_000_000 minutes


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def obs(t: float, key: str | None = "aaaaaaaaaaaa", **fields: Any) -> Observation:
    values: dict[str, Any] = {"client": "203.0.113.9", "route": "chat", "model": "m", "status": 200, "deny": None}
    values.update(fields)
    return Observation(time=t, request_id=f"{t:.6f}", key=key, **values)


def rollup(**kwargs: Any) -> tuple[Rollup, Clock]:
    clock = Clock()
    return Rollup(clock=clock, **kwargs), clock


def series(view: dict[str, Any]) -> dict[str | None, list[int]]:
    return {s["key"] if s["kind"] == "key" else s["kind"]: s["values"] for s in view["requests"]}


# --- buckets and windows ---


def test_requests_land_in_their_minute_and_the_view_ends_at_the_current_one() -> None:
    r, _ = rollup()
    r.add(obs(NOW - 30, "aaaaaaaaaaaa"))  # the previous minute
    r.add(obs(NOW - 59.9, "aaaaaaaaaaaa"))
    r.add(obs(NOW + 1, "bbbbbbbbbbbb"))  # the current minute
    view = r.view(NOW + 5, 3600)
    assert view["step"] == 60
    assert len(view["times"]) == 61  # both ends partial: the window is covered whole
    assert view["times"][-1] == NOW
    assert view["times"][0] == NOW - 3600
    got = series(view)
    assert got["aaaaaaaaaaaa"][-2:] == [2, 0]
    assert got["bbbbbbbbbbbb"][-2:] == [0, 1]
    assert sum(got["aaaaaaaaaaaa"][:-2]) == 0
    assert view["totals"]["requests"] == 3
    assert view["totals"]["keys"] == 2


@pytest.mark.parametrize(
    ("window", "step"),
    [
        pytest.param(60, 60, id="one-minute"),
        pytest.param(3600, 60, id="1h"),
        pytest.param(6 * 3600, 300, id="6h"),
        pytest.param(86400, 900, id="24h"),
        pytest.param(7 * 86400, 7200, id="7d"),
        pytest.param(14 * 86400, 10800, id="14d"),
        pytest.param(25 * 3600, 3600, id="past-24h-uses-hours"),
    ],
)
@pytest.mark.parametrize("now", [NOW, NOW + 1234.5])
def test_each_window_gets_a_step_that_keeps_its_series_short(window: int, step: int, now: float) -> None:
    assert step_for(window) == step
    r, _ = rollup()
    times = r.view(now, window)["times"]
    assert window // step <= len(times) <= MAX_POINTS + 1
    assert times[0] <= now - window < times[0] + step
    assert times[-1] <= now < times[-1] + step
    assert all(b - a == step for a, b in itertools.pairwise(times))


def test_a_full_day_of_minutes_is_in_the_24h_view() -> None:
    r, clock = rollup()
    clock.now = NOW + 450  # mid-step: the first point is partial
    r.add(obs(clock.now - 86400 + 1, "aaaaaaaaaaaa"))
    r.add(obs(clock.now - 86400 - 61, "bbbbbbbbbbbb"))  # more than a minute before the window
    assert set(series(r.view(clock.now, 86400))) == {"aaaaaaaaaaaa"}


def test_a_window_covers_its_span_and_nothing_before_it() -> None:
    r, _ = rollup()
    r.add(obs(NOW - 2 * HOUR, "aaaaaaaaaaaa"))
    r.add(obs(NOW - 10, "bbbbbbbbbbbb"))
    assert set(series(r.view(NOW, 3600))) == {"bbbbbbbbbbbb"}
    assert set(series(r.view(NOW, 6 * 3600))) == {"aaaaaaaaaaaa", "bbbbbbbbbbbb"}


def test_traffic_older_than_a_day_is_kept_hourly_for_the_long_views() -> None:
    r, _ = rollup()
    r.add(obs(NOW - 3 * 86400, "aaaaaaaaaaaa", tokens_in=5))
    r.add(obs(NOW - 3 * 86400 + 60, "aaaaaaaaaaaa", tokens_in=7))
    assert r.view(NOW, 86400)["totals"]["requests"] == 0
    week = r.view(NOW, 7 * 86400)
    assert week["totals"]["requests"] == 2
    assert week["totals"]["tokens_in"] == 12
    assert sum(1 for v in series(week)["aaaaaaaaaaaa"] if v) == 1  # one 2-hour point holds both


def test_hourly_and_minute_views_agree_on_totals() -> None:
    r, _ = rollup()
    rng = random.Random(7)
    for _ in range(2000):
        t = NOW - rng.uniform(0, 86000)
        r.add(obs(t, rng.choice(["aaaaaaaaaaaa", "bbbbbbbbbbbb", None]), tokens_out=rng.randint(0, 50)))
    day = r.view(NOW, 86400)["totals"]
    week = r.view(NOW, 7 * 86400)["totals"]
    assert day["requests"] == week["requests"] == 2000
    assert day["tokens_out"] == week["tokens_out"]


def test_buckets_past_their_retention_are_dropped_as_the_clock_moves() -> None:
    r, clock = rollup()
    for minute in range(3 * 24 * 60):  # three days, a request a minute, the clock following the traffic
        clock.now = NOW + minute * MINUTE
        r.add(obs(clock.now, "aaaaaaaaaaaa"))
    assert len(r.minutes) <= MINUTE_RETENTION // MINUTE + 1
    assert len(r.hours) == 3 * 24
    clock.now += 16 * 86400
    r.add(obs(clock.now, "aaaaaaaaaaaa"))
    assert len(r.hours) == 1
    assert len(r.minutes) == 1


# --- caps: memory bounded whatever the number of keys ---


def test_a_bucket_holds_a_bounded_number_of_keys_and_the_rest_is_other() -> None:
    r, _ = rollup(minute_keys=4, hour_keys=4)
    for i in range(1000):
        r.add(obs(NOW - 5, f"k{i:011d}"))
    (bucket,) = r.minutes.values()
    assert len(bucket.keys) <= 5  # four named keys and "other"
    view = r.view(NOW, 3600)
    assert view["totals"]["requests"] == 1000
    assert sum(sum(v) for v in series(view).values()) == 1000  # nothing lost, only folded


def test_a_busy_key_keeps_its_name_after_many_small_ones() -> None:
    r, _ = rollup(minute_keys=3, hour_keys=3)
    for i in range(50):
        r.add(obs(NOW - 20, f"small{i:07d}"))
    for _ in range(40):
        r.add(obs(NOW - 10, "busybusybusy", tokens_out=10))
    view = r.view(NOW, 3600)
    got = series(view)
    assert sum(got["busybusybusy"]) >= 38  # its first requests, before it outgrew the smallest row, count as other
    assert (
        sum(got["busybusybusy"]) + sum(got["other"]) + sum(sum(v) for k, v in got.items() if k.startswith("small"))
        == 90
    )
    assert view["top_tokens"][0]["key"] == "busybusybusy"
    assert view["top_tokens"][0]["tokens_out"] >= 380


def test_a_long_tail_of_keys_keeps_memory_bounded() -> None:
    r, _ = rollup(minute_keys=4, hour_keys=4)
    for i in range(100_000):
        r.add(obs(NOW - 5, f"k{i:011d}"))
    (bucket,) = r.minutes.values()
    assert len(bucket.keys) <= 5 and len(bucket.waiting) <= 16
    assert r.view(NOW, 3600)["totals"]["requests"] == 100_000


def test_the_view_draws_the_top_keys_and_sums_the_rest() -> None:
    r, _ = rollup()
    for i in range(12):
        for _ in range(i + 1):
            r.add(obs(NOW - 30, f"key{i:09d}"))
    view = r.view(NOW, 3600)
    named = [s["key"] for s in view["requests"] if s["kind"] == "key"]
    assert len(named) == TOP_KEYS
    assert named == [f"key{i:09d}" for i in range(11, 3, -1)]  # busiest first
    assert view["requests"][-1]["kind"] == "other"
    assert sum(view["requests"][-1]["values"]) == 1 + 2 + 3 + 4


def test_deny_reasons_are_capped_per_bucket() -> None:
    r, _ = rollup(reasons=2)
    for reason in ("invalid_key", "rate_limited", "route_not_allowed", "tool_not_allowed"):
        r.add(obs(NOW - 1, None, status=403, deny=reason))
    view = r.view(NOW, 3600)
    assert [d["reason"] for d in view["deny_totals"]] == ["invalid_key", "rate_limited", None]
    assert view["deny_totals"][-1]["count"] == 2
    assert view["totals"]["denied"] == 4


def test_a_rollup_needs_room_for_keys() -> None:
    with pytest.raises(ValueError, match="room"):
        Rollup(minute_keys=1)


# --- the view's shape ---


def test_view_shape_is_json_and_series_share_the_time_axis() -> None:
    r, _ = rollup()
    r.add(obs(NOW - 100, "aaaaaaaaaaaa", tokens_in=10, tokens_out=20, total_ms=12.0, stream=True))
    r.add(obs(NOW - 90, None, status=401, deny="invalid_key", total_ms=0.4))
    r.add(obs(NOW - 80, "aaaaaaaaaaaa", status=502, total_ms=3000.0))
    view = orjson.loads(orjson.dumps(r.view(NOW, 3600)))
    assert set(view) == {
        "now", "window", "step", "times", "requests", "denied", "deny_totals", "top_tokens", "status", "latency",
        "totals",
    }  # fmt: skip
    n = len(view["times"])
    for one in view["requests"] + view["denied"]:
        assert len(one["values"]) == n
    assert len(view["latency"]["p50"]) == len(view["latency"]["p95"]) == n
    assert {s["kind"] for s in view["requests"]} == {"key", "none"}
    assert view["denied"] == [{"reason": "invalid_key", "values": [0] * (n - 3) + [1, 0, 0]}]
    assert view["status"] == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1, "other": 0}
    assert view["top_tokens"] == [
        {"key": "aaaaaaaaaaaa", "kind": "key", "tokens_in": 10, "tokens_out": 20, "requests": 2, "denied": 0}
    ]
    assert view["totals"]["streams"] == 1
    assert view["latency"]["p50"][-1] is None  # no request in the current minute
    assert view["latency"]["p95"][-3] is not None


def test_latency_percentiles_come_from_the_histogram() -> None:
    r, _ = rollup()
    for i in range(100):
        r.add(obs(NOW - 30, total_ms=15.0 if i < 90 else 4000.0))
    totals = r.view(NOW, 3600)["totals"]
    assert 10.0 <= totals["p50_ms"] <= 20.0
    assert 2000.0 <= totals["p95_ms"] <= 5000.0
    assert percentile([0] * (len(LATENCY_BOUNDS) + 1), 0.5) is None
    assert percentile([0] * len(LATENCY_BOUNDS) + [3], 0.99) == pytest.approx(LATENCY_BOUNDS[-1] * 2, rel=0.01)


@pytest.mark.parametrize(
    ("window", "now"),
    [
        pytest.param(59, NOW, id="too-short"),
        pytest.param(MAX_WINDOW + 1, NOW, id="too-long"),
        pytest.param(3600.0, NOW, id="float-window"),
        pytest.param(True, NOW, id="bool-window"),
        pytest.param(3600, float("nan"), id="nan-now"),
        pytest.param(3600, float("inf"), id="inf-now"),
    ],
)
def test_view_refuses_bad_arguments(window: Any, now: float) -> None:
    r, _ = rollup()
    with pytest.raises(ValueError):
        r.view(now, window)


# --- late, out-of-order and hostile traffic ---


def test_order_of_arrival_does_not_change_the_view() -> None:
    rng = random.Random(3)
    records = [
        obs(NOW - rng.uniform(0, 5 * 86400), rng.choice(["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"]),
            tokens_in=rng.randint(0, 9), status=rng.choice([200, 401, 500]),
            deny=rng.choice([None, "invalid_key"]), total_ms=rng.uniform(0, 900))
        for _ in range(3000)
    ]  # fmt: skip
    ordered, _ = rollup()
    ordered.add_all(sorted(records, key=lambda o: o.time))
    shuffled, _ = rollup()
    rng.shuffle(records)
    shuffled.add_all(records)
    for window in (3600, 86400, 7 * 86400):
        assert ordered.view(NOW, window) == shuffled.view(NOW, window)


@pytest.mark.parametrize(
    "t",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("-inf"), id="-inf"),
        pytest.param(NOW + FUTURE_SKEW + 1, id="future"),
        pytest.param(NOW - HOUR_RETENTION - 1, id="too-old"),
        pytest.param(1e300, id="huge"),
    ],
)
def test_impossible_times_are_rejected_not_bucketed(t: float) -> None:
    r, _ = rollup()
    r.add(obs(t))
    assert r.rejected == 1
    assert r.minutes == {} and r.hours == {}
    assert r.view(NOW, MAX_WINDOW)["totals"]["requests"] == 0


def test_a_record_slightly_ahead_of_the_clock_is_counted() -> None:
    r, _ = rollup()
    r.add(obs(NOW + FUTURE_SKEW - 1))
    assert r.rejected == 0
    assert r.view(NOW + FUTURE_SKEW, 3600)["totals"]["requests"] == 1


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        pytest.param({"tokens_in": -5, "tokens_out": -1}, {"tokens_in": 0, "tokens_out": 0}, id="negative-tokens"),
        pytest.param({"tokens_in": 10**30}, {"tokens_in": 1 << 40}, id="huge-tokens"),
        pytest.param({"total_ms": float("nan")}, {"p50_ms": 0.5}, id="nan-latency"),
        pytest.param({"total_ms": -3.0}, {"p50_ms": 0.5}, id="negative-latency"),
        pytest.param({"total_ms": float("inf")}, {"p50_ms": LATENCY_BOUNDS[-1] * 1.5}, id="inf-latency"),
    ],
)
def test_hostile_numbers_are_clamped(fields: dict[str, Any], check: dict[str, Any]) -> None:
    r, _ = rollup()
    r.add(obs(NOW - 1, **fields))
    totals = r.view(NOW, 3600)["totals"]
    for name, value in check.items():
        assert totals[name] == value, name


@pytest.mark.parametrize("status", [0, 99, 600, 99999, -1])
def test_odd_statuses_count_as_other(status: int) -> None:
    r, _ = rollup()
    r.add(obs(NOW - 1, status=status))
    assert r.view(NOW, 3600)["status"]["other"] == 1


def test_hostile_key_names_are_data() -> None:
    r, _ = rollup()
    hostile = ["<img src=x onerror=alert(1)>", "\x00other", "", "__proto__", "a" * 256]
    for key in hostile:
        r.add(obs(NOW - 1, key, deny=key or None))
    view = orjson.loads(orjson.dumps(r.view(NOW, 3600)))
    keys = {s["key"] for s in view["requests"] if s["kind"] == "key"}
    assert "<img src=x onerror=alert(1)>" in keys and "__proto__" in keys
    assert view["totals"]["requests"] == len(hostile)
