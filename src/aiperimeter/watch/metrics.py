"""The metric book: what the gateway's traffic adds up to, counted in process, exposed for Prometheus.

The hot path is plain Python: a counter is a dict from a tuple of label values to an int, a histogram a list of
bucket counts over fixed bounds. Recording one request costs a few dict updates, no lock (one event loop per
process) and no call into prometheus_client, which is used only to render a scrape.

Label cardinality is bounded: each family keeps at most MAX_SERIES label sets (the rest are counted under "other"),
and per-key labels name at most `max_keys` key ids; later keys are counted under key="other".

Several workers: each process keeps its own book and writes it to a snapshot file every second (`metric_files`);
the worker that serves the admin API adds the others' snapshots to its own book when it is scraped.
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aiperimeter import __version__

OTHER = "other"  # the label value that stands for everything past a cardinality cap
NO_ROUTE = "none"  # the route label of a request refused before its route was known
MAX_KEYS = 200
MAX_SERIES = 1000  # label sets per family
MAX_LABEL = 200  # characters of one label value
MAX_COUNT = 2**62  # larger counts in a snapshot are not believed


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # as exposed; counters gain `_total`
    help: str
    labels: tuple[str, ...]


COUNTERS: dict[str, Family] = {
    "requests": Family(
        "aiperimeter_requests",
        "Requests finished, by route pattern (none: refused before routing), status class and outcome.",
        ("route", "status_class", "outcome"),
    ),
    "denied": Family("aiperimeter_denied", "Requests the gateway refused, by deny code.", ("code",)),
    "upstream_errors": Family(
        "aiperimeter_upstream_errors",
        "Requests that failed at the model server: unreachable, timed out, broken off (by code), or answered 5xx "
        "(upstream_5xx).",
        ("code",),
    ),
    "auth_failures": Family(
        "aiperimeter_auth_failures", "Requests refused for their credential (401), by deny code.", ("code",)
    ),
    "limit_rejections": Family(
        "aiperimeter_limit_rejections", "Requests refused by a limit: requests, tokens or concurrency.", ("limit",)
    ),
    "tool_decisions": Family(
        "aiperimeter_tool_decisions",
        "Tool-policy decisions (allow, block, strip, audit) on the request, history or response side.",
        ("decision", "side"),
    ),
    "tokens": Family(
        "aiperimeter_tokens",
        "Tokens the model server reported, in (prompt) and out (completion), by key.",
        ("direction", "key"),
    ),
    "key_requests": Family("aiperimeter_key_requests", "Requests that presented a known key, by key id.", ("key",)),
    "alerts": Family("aiperimeter_alerts", "Anomaly alerts raised, by kind and severity.", ("kind", "severity")),
    "blocks": Family("aiperimeter_blocks", "Client addresses blocked, by reason.", ("reason",)),
}
KEY_LABEL = {"tokens": 1, "key_requests": 0}  # families labelled by key id: the position of that label


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    name: str
    help: str
    bounds: tuple[float, ...]


HISTOGRAMS: dict[str, HistogramSpec] = {
    "request_duration": HistogramSpec(
        "aiperimeter_request_duration_seconds",
        "Time from a request's arrival to its end, response relayed (streams: until the last event).",
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
    ),
    "gateway_overhead": HistogramSpec(
        "aiperimeter_gateway_overhead_seconds",
        "Time the gateway added to requests that reached the model server: total minus upstream time.",
        (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    ),
}
GAUGES = ("active_streams", "inflight_requests")  # summed over the live processes
_STATUS_CLASS = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    return _STATUS_CLASS[status // 100] if 100 <= status < 600 else OTHER


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # one per bound (v <= bound), then +Inf; not cumulative
    sum: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.sum)


def empty_counters() -> dict[str, dict[tuple[str, ...], int]]:
    return {name: {} for name in COUNTERS}


def empty_histograms() -> dict[str, Histogram]:
    return {name: Histogram.empty(spec.bounds) for name, spec in HISTOGRAMS.items()}


@dataclass(slots=True)
class Totals:
    """Counts of one process, of retired processes, or of all of them merged."""

    counters: dict[str, dict[tuple[str, ...], int]] = field(default_factory=empty_counters)
    histograms: dict[str, Histogram] = field(default_factory=empty_histograms)
    gauges: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GAUGES, 0.0))
    processes: int = 0  # live processes counted in
    watch_lag: float | None = None

    def add(self, other: Totals, *, live: bool) -> None:
        """Add `other`'s counts; with `live`, also its gauges (a retired process holds no stream open)."""
        for name, series in other.counters.items():
            own = self.counters[name]
            for labels, value in series.items():
                put(own, labels, value)
        for name, histogram in other.histograms.items():
            self.histograms[name].add(histogram)
        if live:
            for name, level in other.gauges.items():
                self.gauges[name] += level
            self.processes += other.processes
            if other.watch_lag is not None:
                self.watch_lag = max(self.watch_lag or 0.0, other.watch_lag)


def put(series: dict[tuple[str, ...], int], labels: tuple[str, ...], value: int) -> None:
    """Add to a series, opening a new one only below MAX_SERIES; past it, the count goes to the "other" labels."""
    old = series.get(labels)
    if old is not None:
        series[labels] = old + value
        return
    if len(series) >= MAX_SERIES:
        labels = (OTHER,) * len(labels)
        value += series.get(labels, 0)
    series[labels] = value


class MetricBook:
    """One process's metrics. The gateway's `Metrics` stage records each request; the watch part counts alerts,
    blocks and its lag; `forward` and the server keep the two gauges."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.counters = empty_counters()
        self.histograms = empty_histograms()
        self.active_streams = 0
        self.inflight_requests = 0
        self.lag: float | None = None
        self._keys: set[str] = set()
        c = self.counters
        self._requests, self._denied, self._upstream = c["requests"], c["denied"], c["upstream_errors"]
        self._auth, self._limits, self._tools = c["auth_failures"], c["limit_rejections"], c["tool_decisions"]
        self._tokens, self._per_key = c["tokens"], c["key_requests"]
        self._duration, self._overhead = self.histograms["request_duration"], self.histograms["gateway_overhead"]

    def key_label(self, key_id: str) -> str:
        if key_id in self._keys:
            return key_id
        if len(self._keys) < self.max_keys:
            self._keys.add(key_id)
            return key_id
        return OTHER

    def request(
        self,
        route: str,
        status: int,
        outcome: str,
        deny: str | None,
        key_id: str | None,
        seconds: float,
        upstream_ms: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        tools: Iterable[tuple[str, str]] = (),
    ) -> None:
        """One finished request. `outcome`: pipeline.Outcome's value; `tools`: (decision, side) pairs."""
        labels = (route, _STATUS_CLASS[status // 100] if 100 <= status < 600 else OTHER, outcome)
        n = self._requests.get(labels)
        if n is None:
            put(self._requests, labels, 1)
        else:
            self._requests[labels] = n + 1
        if outcome == "upstream_error":
            put(self._upstream, (deny or OTHER,), 1)
        elif deny is not None and outcome in ("denied", "ok"):  # ok: a tool policy cut off a stream it had begun
            put(self._denied, (deny,), 1)
            if status == 401:
                put(self._auth, (deny,), 1)
            elif status == 429 and deny.startswith("rate_limit_"):
                put(self._limits, (deny[11:],), 1)
        elif status >= 500 and upstream_ms is not None:
            put(self._upstream, ("upstream_5xx",), 1)
        self._duration.counts[bisect_left(self._duration.bounds, seconds)] += 1
        self._duration.sum += seconds
        if upstream_ms is not None:
            overhead = max(0.0, seconds - upstream_ms / 1000)
            self._overhead.counts[bisect_left(self._overhead.bounds, overhead)] += 1
            self._overhead.sum += overhead
        if key_id is not None:
            key = self.key_label(key_id)
            put(self._per_key, (key,), 1)
            if prompt_tokens:
                put(self._tokens, ("in", key), prompt_tokens)
            if completion_tokens:
                put(self._tokens, ("out", key), completion_tokens)
        for decision in tools:
            put(self._tools, decision, 1)

    # --- called by the watch part -----------------------------------------------------------------------------

    def alert(self, kind: str, severity: str) -> None:
        put(self.counters["alerts"], (kind[:MAX_LABEL], severity[:MAX_LABEL]), 1)

    def block(self, reason: str) -> None:
        put(self.counters["blocks"], (reason[:MAX_LABEL],), 1)

    def watch_lag(self, seconds: float) -> None:
        """How far the watcher's reading of the audit stream trails the traffic."""
        self.lag = max(0.0, seconds) if math.isfinite(seconds) else None

    # --- reading ----------------------------------------------------------------------------------------------

    def totals(self) -> Totals:
        """A copy of this process's counts, to merge or to write down."""
        return Totals(
            counters={name: dict(series) for name, series in self.counters.items()},
            histograms={name: h.copy() for name, h in self.histograms.items()},
            gauges={"active_streams": float(self.active_streams), "inflight_requests": float(self.inflight_requests)},
            processes=1,
            watch_lag=self.lag,
        )


def admit_keys(totals: Totals, admitted: list[str], max_keys: int = MAX_KEYS) -> bool:
    """Relabel per-key series so that merged output names at most `max_keys` keys: those in `admitted` (extended,
    in place, while there is room) keep their label, the rest count as "other". A key once admitted stays so, so a
    series never moves to "other" and back (its counter never goes backwards). Returns whether `admitted` grew."""
    known = set(admitted)
    grew = False
    for name, position in KEY_LABEL.items():
        relabelled: dict[tuple[str, ...], int] = {}
        for labels, value in totals.counters[name].items():
            key = labels[position]
            if key != OTHER and key not in known:
                if len(admitted) < max_keys:
                    admitted.append(key)
                    known.add(key)
                    grew = True
                else:
                    labels = (*labels[:position], OTHER, *labels[position + 1 :])
            put(relabelled, labels, value)
        totals.counters[name] = relabelled
    return grew


# --- exposition -------------------------------------------------------------------------------------------------


class TotalsCollector(Collector):
    """The merged totals as prometheus_client metric families."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        totals = self.totals
        for name, family in COUNTERS.items():
            counter = CounterMetricFamily(family.name, family.help, labels=family.labels)
            for labels, value in sorted(totals.counters[name].items()):
                counter.add_metric(labels, value)
            yield counter
        for name, spec in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(spec.name, spec.help, labels=(), unit="seconds")
            counts = totals.histograms[name]
            histogram.add_metric((), cumulative(spec.bounds, counts.counts), counts.sum)
            yield histogram
        gauges = totals.gauges
        yield _gauge("aiperimeter_active_streams", "Streamed responses being relayed now.", gauges["active_streams"])
        yield _gauge(
            "aiperimeter_inflight_requests", "Requests inside the gateway now.", totals.gauges["inflight_requests"]
        )
        yield _gauge("aiperimeter_workers", "Gateway processes whose counts this scrape includes.", totals.processes)
        info = GaugeMetricFamily("aiperimeter_build_info", "The aiperimeter version serving.", labels=("version",))
        info.add_metric((__version__,), 1)
        yield info
        if totals.watch_lag is not None:
            yield _gauge(
                "aiperimeter_watch_lag_seconds",
                "How far the anomaly watcher's reading of the audit stream trails the traffic.",
                totals.watch_lag,
            )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*map(floatToGoString, bounds), "+Inf"), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def render(totals: Totals, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its Content-Type: OpenMetrics when the scraper's Accept asks for it, else the
    Prometheus text format."""
    encoder, content_type = choose_encoder("")
    if accept:
        with contextlib.suppress(ValueError, TypeError, IndexError):  # a version it cannot parse: the text format
            encoder, content_type = choose_encoder(accept[:1024])
    return encoder(TotalsCollector(totals)), content_type
