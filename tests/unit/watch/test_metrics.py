"""The metric book, its snapshots and their merge, and what a scraper reads (parsed with prometheus_client's own
parsers). Other processes are real child processes; no sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from aiperimeter.gateway.pipeline import Exchange, Outcome
from aiperimeter.gateway.routes import ROUTES
from aiperimeter.gateway.stages.metrics import Metrics
from aiperimeter.keys import new_key
from aiperimeter.policy.calls import Decision, ToolCall, Verdict
from aiperimeter.watch import metric_files
from aiperimeter.watch.metric_files import MAX_FILE, MetricFiles, decode, encode, stamp
from aiperimeter.watch.metrics import HISTOGRAMS, MAX_SERIES, OTHER, MetricBook, Totals, admit_keys, put, render
from tests.support.metrics import Samples, samples, value

DASHBOARD = Path(__file__).parents[3] / "examples" / "grafana" / "aiperimeter.json"


def scrape(totals: Totals) -> Samples:
    body, content_type = render(totals, None)
    assert content_type.startswith("text/plain")
    return samples(body.decode())


def ok(book: MetricBook, key: str | None = "aaaaaaaaaaaa", seconds: float = 0.05, tokens: int = 0) -> None:
    book.request("/v1/chat/completions", 200, "ok", None, key, seconds, 40.0, tokens, tokens)


# --- recording ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(
            ("/v1/models", 200, "ok", None, "k1", 0.01, 8.0, None, None),
            {("aiperimeter_requests_total", ("route", "/v1/models"), ("status_class", "2xx"), ("outcome", "ok")): 1,
             ("aiperimeter_key_requests_total", ("key", "k1")): 1},
            id="ok",
        ),
        pytest.param(
            ("none", 401, "denied", "missing_credentials", None, 0.001, None, None, None),
            {("aiperimeter_denied_total", ("code", "missing_credentials")): 1,
             ("aiperimeter_auth_failures_total", ("code", "missing_credentials")): 1,
             ("aiperimeter_requests_total", ("route", "none"), ("status_class", "4xx"), ("outcome", "denied")): 1},
            id="unauthenticated",
        ),
        pytest.param(
            ("/v1/chat/completions", 429, "denied", "rate_limit_tokens", "k1", 0.001, None, None, None),
            {("aiperimeter_denied_total", ("code", "rate_limit_tokens")): 1,
             ("aiperimeter_limit_rejections_total", ("limit", "tokens")): 1,
             ("aiperimeter_auth_failures_total", ("code", "rate_limit_tokens")): 0},
            id="rate-limited",
        ),
        pytest.param(
            ("/v1/chat/completions", 502, "upstream_error", "upstream_unavailable", "k1", 0.002, None, None, None),
            {("aiperimeter_upstream_errors_total", ("code", "upstream_unavailable")): 1,
             ("aiperimeter_denied_total", ("code", "upstream_unavailable")): 0},
            id="upstream-unreachable",
        ),
        pytest.param(
            ("/v1/chat/completions", 503, "ok", None, "k1", 0.002, 1.0, None, None),
            {("aiperimeter_upstream_errors_total", ("code", "upstream_5xx")): 1},
            id="upstream-answers-5xx",
        ),
        pytest.param(
            ("/v1/chat/completions", 200, "ok", "tool_call_blocked", "k1", 0.2, 150.0, 10, 20),
            {("aiperimeter_denied_total", ("code", "tool_call_blocked")): 1,
             ("aiperimeter_tokens_total", ("direction", "in"), ("key", "k1")): 10,
             ("aiperimeter_tokens_total", ("direction", "out"), ("key", "k1")): 20},
            id="stream-cut-by-tool-policy",
        ),
        pytest.param(
            ("/v1/chat/completions", 499, "client_disconnected", None, "k1", 0.3, None, None, None),
            {("aiperimeter_requests_total", ("route", "/v1/chat/completions"), ("status_class", "4xx"),
              ("outcome", "client_disconnected")): 1,
             ("aiperimeter_upstream_errors_total", ("code", "upstream_5xx")): 0},
            id="client-left",
        ),
    ],
)  # fmt: skip
def test_a_request_counts_where_it_belongs(call: tuple[Any, ...], expected: dict[tuple[Any, ...], int]) -> None:
    book = MetricBook()
    book.request(*call)
    found = scrape(book.totals())
    for (name, *labels), count in expected.items():
        assert value(found, name, **dict(labels)) == count, name
    assert value(found, "aiperimeter_request_duration_seconds_count") == 1
    assert value(found, "aiperimeter_gateway_overhead_seconds_count") == (1 if call[6] is not None else 0)


def test_histograms_bucket_inclusively_and_overhead_is_total_minus_upstream() -> None:
    book = MetricBook()
    book.request("/v1/models", 200, "ok", None, None, 0.25, 242.0, None, None)  # exactly on a bound: le="0.25"
    book.request("/v1/models", 200, "ok", None, None, 999.0, 998_998.5, None, None)  # past every bound
    found = scrape(book.totals())
    duration = "aiperimeter_request_duration_seconds"
    assert value(found, f"{duration}_bucket", le="0.1") == 0
    assert value(found, f"{duration}_bucket", le="0.25") == 1
    assert value(found, f"{duration}_bucket", le="300.0") == 1
    assert value(found, f"{duration}_bucket", le="+Inf") == 2
    assert value(found, f"{duration}_sum") == pytest.approx(999.25)
    overhead = "aiperimeter_gateway_overhead_seconds"  # 0.008 s and 0.0015 s
    assert value(found, f"{overhead}_bucket", le="0.001") == 0
    assert value(found, f"{overhead}_bucket", le="0.0025") == 1
    assert value(found, f"{overhead}_bucket", le="0.01") == 2
    assert value(found, f"{overhead}_bucket", le="+Inf") == 2
    assert value(found, f"{overhead}_sum") == pytest.approx(0.0095)


def test_per_key_labels_stop_at_the_cap_and_the_rest_count_as_other() -> None:
    book = MetricBook(max_keys=3)
    for n in range(6):
        ok(book, key=f"key{n}", tokens=10)
    found = scrape(book.totals())
    for n in range(3):
        assert value(found, "aiperimeter_key_requests_total", key=f"key{n}") == 1
        assert value(found, "aiperimeter_tokens_total", direction="out", key=f"key{n}") == 10
    assert value(found, "aiperimeter_key_requests_total", key=OTHER) == 3
    assert value(found, "aiperimeter_tokens_total", direction="in", key=OTHER) == 30
    assert not any(("key", "key4") in labels for _, labels in found)


def test_a_family_holds_at_most_max_series_label_sets() -> None:
    series: dict[tuple[str, ...], int] = {}
    for n in range(MAX_SERIES + 50):
        put(series, (f"code{n}",), 1)
    assert len(series) == MAX_SERIES + 1  # the cap, plus the one "other" series
    assert series[(OTHER,)] == 50
    assert sum(series.values()) == MAX_SERIES + 50


def test_watch_counters_and_lag() -> None:
    book = MetricBook()
    book.alert("canary", "critical")
    book.alert("canary", "critical")
    book.block("brute_force")
    book.watch_lag(2.5)
    found = scrape(book.totals())
    assert value(found, "aiperimeter_alerts_total", kind="canary", severity="critical") == 2
    assert value(found, "aiperimeter_blocks_total", reason="brute_force") == 1
    assert value(found, "aiperimeter_watch_lag_seconds") == 2.5
    book.watch_lag(float("nan"))
    assert ("aiperimeter_watch_lag_seconds", frozenset()) not in scrape(book.totals())


async def test_the_stage_records_an_exchange_as_the_audit_record_has_it() -> None:
    book = MetricBook()
    stage = Metrics(book)
    record, _ = new_key("svc")
    route = next(r for r in ROUTES["openai"] if r.path == "/v1/chat/completions")
    ex = Exchange(make_mocked_request("POST", route.path), "r1", time.perf_counter(), "127.0.0.1", "POST")
    ex.route, ex.key, ex.status, ex.upstream_ms = route, record, 200, 1.5
    ex.prompt_tokens, ex.completion_tokens = 12, 34

    class Plan:  # the shape of stages.tool_policy.ToolPlan that the stage reads
        def __init__(self) -> None:
            self.decisions = [
                Decision(ToolCall("run_sql", None), Verdict("allow", "r1", None), {"side": "request"}),
                Decision(ToolCall("shell", None), Verdict("block", "r2", "no"), {}),
            ]

    ex.tools = Plan()
    await stage.on_finish(ex, Outcome.OK)
    gone = Exchange(make_mocked_request("GET", "/v1/models"), "r2", time.perf_counter(), "127.0.0.1", "GET")
    await stage.on_finish(gone, Outcome.CLIENT_DISCONNECTED)  # no status: 499, as the audit log writes it
    found = scrape(book.totals())
    assert value(found, "aiperimeter_tokens_total", direction="in", key=record.id) == 12
    assert value(found, "aiperimeter_tokens_total", direction="out", key=record.id) == 34
    assert value(found, "aiperimeter_tool_decisions_total", decision="allow", side="request") == 1
    assert value(found, "aiperimeter_tool_decisions_total", decision="block", side="response") == 1
    assert value(found, "aiperimeter_requests_total", route="none", status_class="4xx", outcome="client_disconnected")
    assert value(found, "aiperimeter_gateway_overhead_seconds_count") == 1


# --- exposition --------------------------------------------------------------------------------------------------


def full_book() -> MetricBook:
    book = MetricBook()
    ok(book, tokens=5)
    book.request("none", 401, "denied", "invalid_key", None, 0.001, None, None, None)
    book.request("/v1/chat/completions", 429, "denied", "rate_limit_requests", "k", 0.001, None, None, None)
    book.request("/v1/chat/completions", 502, "upstream_error", "upstream_broken", "k", 0.1, None, None, None)
    book.request("/v1/chat/completions", 200, "ok", None, "k", 0.1, 90.0, 1, 2, [("strip", "response")])
    book.alert("new_network", "high")
    book.block("brute_force")
    book.watch_lag(0.5)
    book.active_streams, book.inflight_requests = 2, 3
    return book


def test_both_formats_parse_and_name_the_same_metrics() -> None:
    totals = full_book().totals()
    text, text_type = render(totals, "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    om, om_type = render(totals, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert text_type.startswith("text/plain; version=0.0.4")
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    assert om.endswith(b"# EOF\n")
    plain = {f.name: f.type for f in text_string_to_metric_families(text.decode())}
    assert {f.name: f.type for f in openmetrics_families(om.decode())} == plain
    assert plain["aiperimeter_requests"] == "counter" and plain["aiperimeter_build_info"] == "gauge"
    assert plain["aiperimeter_request_duration_seconds"] == "histogram"
    found = samples(text.decode())
    assert value(found, "aiperimeter_active_streams") == 2 and value(found, "aiperimeter_inflight_requests") == 3
    assert value(found, "aiperimeter_workers") == 1
    assert value(found, "aiperimeter_build_info", version=__import__("aiperimeter").__version__) == 1


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=banana", "x" * 5000, "", "*/*"])
def test_an_odd_accept_header_gets_the_text_format(accept: str) -> None:
    body, content_type = render(full_book().totals(), accept)
    assert content_type.startswith(("text/plain", "application/openmetrics-text"))
    assert body


def test_label_values_are_escaped_not_interpreted() -> None:
    book = MetricBook()
    book.block('a"b\\c\nd} 1\nevil_metric 5')
    found = scrape(book.totals())
    assert value(found, "aiperimeter_blocks_total", reason='a"b\\c\nd} 1\nevil_metric 5') == 1
    assert not any(name == "evil_metric" for name, _ in found)


def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    exposed = {name for name, _ in scrape(full_book().totals())}
    doc = json.loads(DASHBOARD.read_text())
    assert doc["schemaVersion"] >= 39
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    queries: list[str] = []

    def walk(node: object) -> Iterator[tuple[str, object]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield k, v
                yield from walk(v)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for k, v in walk(doc):
        if k in ("expr", "definition") and isinstance(v, str):
            queries.append(v)
        if k == "datasource" and isinstance(v, dict) and v.get("type") == "prometheus":
            assert v["uid"] == "${DS_PROMETHEUS}"
    used = {name for q in queries for name in re.findall(r"\baiperimeter_[a-z0-9_]+", q)}
    assert len(queries) >= 20 and len(used) >= 14
    assert used <= exposed, f"the dashboard queries metrics that are not exposed: {sorted(used - exposed)}"
    titles = " ".join(p["title"] for p in doc["panels"]).lower()
    for topic in ("route", "denies", "p95", "overhead", "tokens by key", "streams", "limit", "tool", "alerts"):
        assert topic in titles, topic


# --- merging -----------------------------------------------------------------------------------------------------


def test_admitted_keys_keep_their_series_and_later_keys_go_to_other() -> None:
    admitted: list[str] = []
    first = MetricBook()
    for key in ("a", "b"):
        ok(first, key=key, tokens=1)
    totals = first.totals()
    assert admit_keys(totals, admitted, max_keys=3) and admitted == ["a", "b"]
    later = MetricBook()
    for key in ("c", "d", "a"):
        ok(later, key=key, tokens=1)
    merged = first.totals()
    merged.add(later.totals(), live=True)
    assert admit_keys(merged, admitted, max_keys=3)
    assert admitted == ["a", "b", "c"]
    assert merged.counters["key_requests"] == {("a",): 2, ("b",): 1, ("c",): 1, (OTHER,): 1}
    again = first.totals()
    again.add(later.totals(), live=True)
    assert not admit_keys(again, admitted, max_keys=3)  # stable: the same keys named, d still under other
    assert again.counters == merged.counters


def test_a_snapshot_round_trips() -> None:
    totals = full_book().totals()
    data = encode(totals, pid=7, started=123)
    back, doc = decode(data)
    assert (doc["pid"], doc["started"]) == (7, 123)
    assert back.counters == totals.counters and back.gauges == totals.gauges and back.processes == 1
    assert {n: (h.counts, h.sum) for n, h in back.histograms.items()} == {
        n: (h.counts, h.sum) for n, h in totals.histograms.items()
    }


def _doc(**change: object) -> bytes:
    doc = orjson.loads(encode(full_book().totals(), pid=1, started=1))
    doc.update(change)
    return orjson.dumps(doc)


BOUNDS = list(HISTOGRAMS["request_duration"].bounds)
COUNTS = [0] * (len(BOUNDS) + 1)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"v": 1, "counters": ', id="truncated"),
        pytest.param(_doc(v=2), id="other-version"),
        pytest.param(_doc(counters={"made_up": []}), id="unknown-counter"),
        pytest.param(_doc(counters={"denied": [[["a", "b"], 1]]}), id="wrong-arity"),
        pytest.param(_doc(counters={"denied": [[["a"], -1]]}), id="negative"),
        pytest.param(_doc(counters={"denied": [[["a"], 1.5]]}), id="fractional"),
        pytest.param(_doc(counters={"denied": [[["a"], True]]}), id="boolean"),
        pytest.param(_doc(counters={"denied": [[["a"], 2**63 - 1]]}), id="huge"),
        pytest.param(b'{"v": 1, "counters": {"denied": [[["a"], 100000000000000000000000]]}}', id="past-64-bits"),
        pytest.param(_doc(counters={"denied": [[[1], 1]]}), id="label-not-a-string"),
        pytest.param(_doc(counters={"denied": [[["x" * 300], 1]]}), id="label-too-long"),
        pytest.param(_doc(counters={"denied": [[["a"], 1], [["a"], 2]]}), id="repeated-series"),
        pytest.param(_doc(counters={"denied": [[[f"c{n}"], 1] for n in range(MAX_SERIES + 2)]}), id="too-many-series"),
        pytest.param(_doc(histograms={"request_duration": {"bounds": [1.0], "counts": [0, 0], "sum": 0}}),
                     id="other-buckets"),
        pytest.param(_doc(histograms={"request_duration": {"bounds": BOUNDS, "counts": COUNTS[1:], "sum": 0}}),
                     id="missing-bucket"),
        pytest.param(_doc(histograms={"request_duration": {"bounds": BOUNDS, "counts": COUNTS, "sum": -1}}),
                     id="negative-sum"),
        pytest.param(_doc(histograms={"request_duration": {"bounds": BOUNDS, "counts": COUNTS, "sum": "1"}}),
                     id="sum-not-a-number"),
        pytest.param(_doc(gauges={"active_streams": 1}), id="missing-gauge"),
        pytest.param(_doc(gauges={"active_streams": 1, "inflight_requests": 1e12}), id="absurd-gauge"),
        pytest.param(b" " * (MAX_FILE + 1), id="too-large"),
    ],
)  # fmt: skip
def test_a_malformed_snapshot_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):  # any reason will do: the caller logs it
        decode(data)


# --- files of several processes ----------------------------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A real other process, standing for another worker."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    assert process.stdin is not None
    process.stdin.close()


def other_worker(files: MetricFiles, process: subprocess.Popen[bytes], book: MetricBook) -> Path:
    """Write `book` as the snapshot of `process`, the way that process would."""
    import psutil

    started = stamp(psutil.Process(process.pid).create_time())
    path = files.prepare() / f"{process.pid}-{started}.json"
    metric_files.write_atomic(path, encode(book.totals(), pid=process.pid, started=started))
    return path


def end(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(10)


def test_files_are_private_and_a_snapshot_is_written_only_when_it_changed(tmp_path: Path) -> None:
    book = MetricBook()
    files = MetricFiles(tmp_path, book)
    files.write()
    path = files.folder / files.name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(files.folder.parent).st_mode) == 0o700
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(1, 1))
    files.write()  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == 1 != before
    ok(book)
    files.write()
    assert path.stat().st_mtime_ns != 1
    assert decode(path.read_bytes())[0].counters["requests"] == book.counters["requests"]
    assert not [p for p in files.folder.iterdir() if p.name.endswith(".tmp")]


def test_a_scrape_adds_every_running_process_and_folds_the_stopped(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    mine, theirs = MetricBook(), MetricBook()
    files = MetricFiles(tmp_path, mine)
    files.write()
    for _ in range(3):
        ok(mine, key="k", tokens=2)
    for _ in range(5):
        ok(theirs, key="k", tokens=2)
    theirs.active_streams = 4
    path = other_worker(files, child, theirs)

    found = scrape(files.scrape())
    assert value(found, "aiperimeter_workers") == 2
    assert value(found, "aiperimeter_key_requests_total", key="k") == 8
    assert value(found, "aiperimeter_active_streams") == 4
    assert value(found, "aiperimeter_request_duration_seconds_count") == 8
    assert path.exists()

    end(child)  # the other worker stops: its counts are kept, its streams are not
    found = scrape(files.scrape())
    assert value(found, "aiperimeter_workers") == 1
    assert value(found, "aiperimeter_key_requests_total", key="k") == 8
    assert value(found, "aiperimeter_tokens_total", direction="in", key="k") == 16
    assert value(found, "aiperimeter_active_streams") == 0
    assert not path.exists()
    retired = files.folder / "retired.json"
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert decode(retired.read_bytes())[0].counters["key_requests"] == {("k",): 5}

    # A scrape after the fold counts the retired process once; a book that starts afresh starts from the retired.
    assert value(scrape(files.scrape()), "aiperimeter_key_requests_total", key="k") == 8
    afresh = MetricFiles(tmp_path, MetricBook())
    assert value(scrape(afresh.scrape()), "aiperimeter_key_requests_total", key="k") == 5


def test_a_file_folded_but_not_removed_is_not_counted_twice(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    files = MetricFiles(tmp_path, MetricBook())
    theirs = MetricBook()
    ok(theirs)
    path = other_worker(files, child, theirs)
    data = path.read_bytes()
    end(child)
    files.scrape()
    path.write_bytes(data)  # as if the removal after the fold had failed
    assert value(scrape(files.scrape()), "aiperimeter_requests_total", route="/v1/chat/completions",
                 status_class="2xx", outcome="ok") == 1  # fmt: skip
    assert not path.exists()


def test_a_bad_file_is_skipped_with_one_log_line(
    tmp_path: Path, child: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    mine = MetricBook()
    ok(mine)
    files = MetricFiles(tmp_path, mine)
    files.write()
    path = other_worker(files, child, MetricBook())
    path.write_bytes(b'{"v": 1, "counters": {"denied": [[["x"], -987654]]}}')
    (files.folder / "notes.txt").write_text("not a snapshot")
    os.symlink("/etc/passwd", files.folder / "1-1.json")
    with caplog.at_level(logging.WARNING, logger="aiperimeter.watch"):
        first = scrape(files.scrape())
        files.scrape()
    assert value(first, "aiperimeter_workers") == 1  # the bad one is not counted, the own book is
    assert value(first, "aiperimeter_request_duration_seconds_count") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if path.name in line]) == 1, lines
    assert not any("987654" in line or "passwd" in line for line in lines)  # names the file, never its contents
    assert path.exists()  # its process still runs; it may write a good one


def test_a_snapshot_whose_contents_disagree_with_its_name_is_skipped(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    files = MetricFiles(tmp_path, MetricBook())
    theirs = MetricBook()
    ok(theirs)
    path = other_worker(files, child, theirs)
    doc = orjson.loads(path.read_bytes())
    doc["pid"] = os.getpid()
    path.write_bytes(orjson.dumps(doc))
    assert value(scrape(files.scrape()), "aiperimeter_request_duration_seconds_count") == 0


def test_a_corrupt_retired_file_is_kept_aside_and_counting_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = MetricBook()
    ok(book)
    files = MetricFiles(tmp_path, book)
    files.prepare()
    (files.folder / "retired.json").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="aiperimeter.watch"):
        assert value(scrape(files.scrape()), "aiperimeter_request_duration_seconds_count") == 1
    assert [p.name for p in files.folder.iterdir() if p.name.startswith("retired.json.bad-")]
    assert any("retired.json" in r.getMessage() for r in caplog.records)


def test_while_another_process_folds_a_scrape_only_reads(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    import fcntl

    files = MetricFiles(tmp_path, MetricBook())
    theirs = MetricBook()
    ok(theirs)
    path = other_worker(files, child, theirs)
    end(child)
    with open(files.folder / ".lock", "a+b") as held:  # another gateway on this data dir, folding now
        fcntl.flock(held, fcntl.LOCK_EX)
        found = scrape(files.scrape())
        assert path.exists() and not (files.folder / "retired.json").exists()
    assert value(found, "aiperimeter_request_duration_seconds_count") == 1
    assert value(found, "aiperimeter_workers") == 1
    assert value(scrape(files.scrape()), "aiperimeter_request_duration_seconds_count") == 1  # folded now, once
    assert not path.exists()


async def test_the_snapshot_task_writes_at_once_and_last_at_stop(tmp_path: Path) -> None:
    book = MetricBook()
    files = MetricFiles(tmp_path, book)
    path = files.folder / files.name
    files.start()
    try:
        for _ in range(200):  # the first snapshot is written as the task starts, by a thread
            if path.exists():
                break
            await asyncio.sleep(0.01)
        assert decode(path.read_bytes())[0].processes == 1
        ok(book)
    finally:
        await files.stop()
    assert decode(path.read_bytes())[0].counters["requests"] == book.counters["requests"]  # the last counts
    body, content_type = await files.exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
