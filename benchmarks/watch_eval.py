"""The anomaly detector against weeks of synthetic traffic with injected incidents: recall, time to detect,
precision, false alerts per key per week, and the detector's cost per request.

Run: `.venv/bin/python benchmarks/watch_eval.py` (about a minute: 5 simulated weeks, 40 keys, about 550,000
requests); `--keys`, `--learn-weeks`, `--eval-weeks`, `--per-type`, `--seed` shape the scenario (see
benchmarks/watch_traffic.py for what it models); `--json PATH` and `--markdown PATH` write the results.
Exits 1 when a target is missed.

Scoring. An alert matches an incident when its time is within [start, end + 5 min] of the incident and it names the
incident's key or the one address that sent the incident's requests (an attacker's own, or the key's usual machine:
an address-level alert about a key's probe from that machine is about the probe). Alerts are counted once per
alert id (the store keeps one). An incident is detected by its first matching alert; time to detect is that alert's
time minus the incident's first request.
- Recall of a type: incidents detected / incidents; "within 5 min" counts those detected no later than 5 minutes in.
- An alert in the evaluation weeks is true when it matches some incident, else false. Precision overall: true /
  all. Precision of a type: among alerts of the kinds that detected that type, those matching an incident of the
  type / (those + the false ones of those kinds); alerts matching other types are left out.
- False alerts per key per week: false alerts in the evaluation weeks / (honest keys x evaluation weeks), also by
  alert kind and by the kind of key (address-level alerts have no key). Alerts in the learning weeks are all false
  (no incident is injected there); they are reported apart, for information.
Cost: CPU time of the observe() calls (process time around batches of them) / observations, and the p50/p99 of
single calls timed with perf_counter on every 16th observation.

Targets: every incident detected within 5 minutes of simulated time; fewer than 1 false alert per key per simulated
evaluation week; under 20 µs of detector CPU per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is on the path, the repository root is not
    sys.path.insert(0, str(ROOT))

from benchmarks.host import machine  # noqa: E402
from benchmarks.watch_traffic import INCIDENT_TYPES, MINUTE, Incident, Scenario, add_arguments, scenario_from  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GRACE = 5 * MINUTE  # an alert up to 5 minutes after an incident's last request still belongs to it
DETECT_TARGET = 5 * MINUTE
FALSE_PER_KEY_WEEK_TARGET = 1.0
COST_TARGET_US = 20.0
SAMPLE_EVERY = 16
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


class AlertLike(Protocol):
    """What scoring reads of an alert (aiperimeter.watch.alerts.Alert has it)."""

    @property
    def id(self) -> str: ...
    @property
    def time(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def client(self) -> str | None: ...


def matches(alert: AlertLike, incident: Incident, grace: float = GRACE) -> bool:
    if not incident.start <= alert.time <= incident.end + grace:
        return False
    if incident.key is not None and alert.key == incident.key:
        return True
    return incident.client is not None and alert.client == incident.client


@dataclass(slots=True)
class Detection:
    incident: Incident
    first: AlertLike | None = None  # the first matching alert
    kinds: Counter[str] = field(default_factory=Counter)  # kinds of every matching alert

    @property
    def delay(self) -> float | None:
        return None if self.first is None else self.first.time - self.incident.start


@dataclass(slots=True)
class TypeScore:
    incidents: int = 0
    detected: int = 0
    within_target: int = 0
    delays: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # alert kinds that matched incidents of the type
    true_alerts: int = 0  # alerts of those kinds matching an incident of this type
    false_alerts: int = 0  # false alerts of those kinds

    @property
    def recall(self) -> float:
        return self.detected / self.incidents if self.incidents else 1.0

    @property
    def precision(self) -> float:
        judged = self.true_alerts + self.false_alerts
        return self.true_alerts / judged if judged else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "detected": self.detected,
            "recall": round(self.recall, 4),
            "detected_within_5min": self.within_target,
            "time_to_detect_median_s": round(statistics.median(self.delays), 1) if self.delays else None,
            "time_to_detect_max_s": round(max(self.delays), 1) if self.delays else None,
            "precision": round(self.precision, 4),
            "alert_kinds": dict(self.kinds),
        }


@dataclass(slots=True)
class Score:
    types: dict[str, TypeScore]
    detections: list[Detection]
    true_alerts: int
    false_alerts: list[AlertLike]  # evaluation weeks
    learning_alerts: list[AlertLike]  # learning weeks: all false
    honest_keys: int
    eval_weeks: float
    learn_weeks: float
    key_kinds: Mapping[str, str]

    @property
    def precision(self) -> float:
        total = self.true_alerts + len(self.false_alerts)
        return self.true_alerts / total if total else 1.0

    def per_key_week(self, alerts: Sequence[AlertLike], weeks: float) -> float:
        return len(alerts) / (self.honest_keys * weeks) if self.honest_keys and weeks else 0.0

    @property
    def false_per_key_week(self) -> float:
        return self.per_key_week(self.false_alerts, self.eval_weeks)

    def subject_kind(self, alert: AlertLike) -> str:
        if alert.key is None:
            return "address"
        return self.key_kinds.get(alert.key, "other")

    def breakdown(self, alerts: Iterable[AlertLike]) -> dict[str, dict[str, int]]:
        """Alert kind -> kind of key -> count."""
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for alert in alerts:
            table[alert.kind][self.subject_kind(alert)] += 1
        return {kind: dict(row) for kind, row in sorted(table.items())}


def score(
    incidents: Sequence[Incident],
    alerts: Iterable[AlertLike],
    *,
    eval_start: float,
    key_kinds: Mapping[str, str],
    honest_keys: int,
    eval_weeks: float,
    learn_weeks: float,
    grace: float = GRACE,
) -> Score:
    """Match alerts (in time order) to incidents; see the module docstring for the rules."""
    seen: set[str] = set()
    unique = []
    for alert in alerts:
        if alert.id not in seen:
            seen.add(alert.id)
            unique.append(alert)
    unique.sort(key=lambda a: a.time)
    learning = [a for a in unique if a.time < eval_start]
    evaluation = [a for a in unique if a.time >= eval_start]
    detections = [Detection(i) for i in incidents]
    by_subject: dict[str, list[Detection]] = defaultdict(list)
    for detection in detections:
        for subject in (detection.incident.key, detection.incident.client):
            if subject is not None:
                by_subject[subject].append(detection)
    types = {t: TypeScore() for t in INCIDENT_TYPES}
    for incident in incidents:
        types.setdefault(incident.type, TypeScore()).incidents += 1
    false_alerts: list[AlertLike] = []
    hits: list[tuple[AlertLike, set[str]]] = []
    for alert in evaluation:
        candidates = {id(d): d for s in (alert.key, alert.client) if s is not None for d in by_subject.get(s, ())}
        matched = [d for d in candidates.values() if matches(alert, d.incident, grace)]
        if not matched:
            false_alerts.append(alert)
            continue
        hits.append((alert, {d.incident.type for d in matched}))
        for detection in matched:
            detection.kinds[alert.kind] += 1
            if detection.first is None:
                detection.first = alert
    for detection in detections:
        row = types[detection.incident.type]
        row.kinds.update(detection.kinds)
        delay = detection.delay
        if delay is not None:
            row.detected += 1
            row.delays.append(delay)
            row.within_target += delay <= DETECT_TARGET
    for name, row in types.items():
        row.true_alerts = sum(1 for alert, kinds in hits if name in kinds and alert.kind in row.kinds)
        row.false_alerts = sum(1 for alert in false_alerts if alert.kind in row.kinds)
    return Score(types, detections, len(hits), false_alerts, learning, honest_keys, eval_weeks, learn_weeks, key_kinds)


# --- running the detector ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    observations: int = 0
    cpu_ns: int = 0
    samples: list[int] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def us_per_request(self) -> float:
        return self.cpu_ns / 1000 / self.observations if self.observations else 0.0


def run_detector(scenario: Scenario, batch: int = 4096) -> Run:
    from aiperimeter.watch.detector import Detector

    detector = Detector()
    observe = detector.observe
    run = Run()
    stream = scenario.observations()
    started = time.perf_counter()
    clock, cpu = time.perf_counter_ns, time.process_time_ns
    while True:
        chunk = [obs for _, obs in zip(range(batch), stream, strict=False)]
        if not chunk:
            break
        alerts = run.alerts
        samples = run.samples
        begin = cpu()
        for index, obs in enumerate(chunk):
            if index % SAMPLE_EVERY:
                found = observe(obs)
            else:
                t0 = clock()
                found = observe(obs)
                samples.append(clock() - t0)
            if found:
                alerts.extend(found)
        run.cpu_ns += cpu() - begin
        run.observations += len(chunk)
    run.wall_s = time.perf_counter() - started
    return run


# --- reporting --------------------------------------------------------------------------------------------------------


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


Rows = list[list[str]]


def type_rows(result: Score) -> Rows:
    rows = []
    for name, row in result.types.items():
        delays = row.delays
        rows.append(
            [
                name,
                str(row.incidents),
                str(row.detected),
                _pct(row.recall),
                f"{row.within_target}/{row.incidents}",
                _minutes(statistics.median(delays) if delays else None),
                _minutes(max(delays) if delays else None),
                _pct(row.precision),
                ", ".join(f"{k} {n}" for k, n in row.kinds.most_common()) or "-",
            ]
        )
    incidents = sum(r.incidents for r in result.types.values())
    within = sum(r.within_target for r in result.types.values())
    detected = sum(r.detected for r in result.types.values())
    recall = detected / incidents if incidents else 1.0
    rows.append(
        [
            "all",
            str(incidents),
            str(detected),
            _pct(recall),
            f"{within}/{incidents}",
            "",
            "",
            _pct(result.precision),
            f"{result.true_alerts} true, {len(result.false_alerts)} false alerts",
        ]
    )
    return rows


TYPE_HEADERS = [
    "incident",
    "injected",
    "detected",
    "recall",
    "within 5 min",
    "median TTD",
    "max TTD",
    "precision",
    "alert kinds that matched",
]


def false_rows(result: Score, alerts: Sequence[AlertLike], weeks: float) -> tuple[list[str], Rows]:
    table = result.breakdown(alerts)
    kinds = sorted({k for row in table.values() for k in row})
    counts = Counter(result.key_kinds.values())
    headers = ["alert kind", *kinds, "total", "per key per week"]
    rows = []
    for alert_kind, row in table.items():
        total = sum(row.values())
        rows.append(
            [
                alert_kind,
                *(str(row.get(k, 0)) for k in kinds),
                str(total),
                f"{total / (result.honest_keys * weeks):.2f}",
            ]
        )
    per_kind = Counter(result.subject_kind(a) for a in alerts)
    rows.append(
        ["all", *(str(per_kind[k]) for k in kinds), str(len(alerts)), f"{result.per_key_week(alerts, weeks):.2f}"]
    )
    per_key = []
    for k in kinds:
        n = counts.get(k, 0)
        per_key.append(f"{per_kind[k] / (n * weeks):.2f}" if n and weeks else "-")
    rows.append(["per key of the kind per week", *per_key, "", ""])
    return headers, rows


def miss_rows(result: Score, scenario: Scenario) -> Rows:
    rows = []
    for detection in result.detections:
        delay = detection.delay
        if delay is not None and delay <= DETECT_TARGET:
            continue
        incident = detection.incident
        got = "never" if detection.first is None else f"{detection.first.kind} after {_minutes(delay)}"
        rows.append(
            [incident.type, incident.victim_kind or "-", scenario.day_label(incident.start), incident.detail, got]
        )
    return rows


def example_rows(result: Score, scenario: Scenario, alerts: Sequence[AlertLike], per_cell: int = 2) -> Rows:
    """A few false alerts of each (alert kind, key kind), with what the traffic was doing then."""
    taken: Counter[tuple[str, str]] = Counter()
    rows = []
    for alert in alerts:
        cell = (alert.kind, result.subject_kind(alert))
        if taken[cell] >= per_cell:
            continue
        taken[cell] += 1
        subject = alert.key if alert.key is not None else alert.client
        context = scenario.context(subject, alert.time) or ["no benign episode noted: ordinary traffic for the kind"]
        summary = getattr(alert, "summary", "")
        baseline = getattr(alert, "baseline", "")
        rows.append(
            [
                alert.kind,
                cell[1],
                scenario.day_label(alert.time),
                f"{summary}; usual: {baseline}",
                "; ".join(dict.fromkeys(context))[:300],
            ]
        )
    return rows


def show(title: str, headers: Sequence[str], rows: Rows) -> None:
    table = Table(title=title)
    for i, name in enumerate(headers):
        table.add_column(name, justify="left" if i == 0 or not rows or not _numeric(rows[0][i]) else "right")
    for row in rows:
        table.add_row(*row, style="bold" if row and row[0] == "all" else None)
    console.print(table)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text == "-")


def markdown(title: str, headers: Sequence[str], rows: Rows) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number here")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the tables here")
    parser.add_argument("--examples", type=int, default=2, help="false alerts shown per alert kind and key kind (2)")
    args = parser.parse_args(argv)
    host = machine()
    scenario = scenario_from(args)
    summary = scenario.summary()
    console.print(
        f"scenario: seed {args.seed}, {len(scenario.honest)} honest keys ("
        + ", ".join(f"{n} {k}" for k, n in summary["keys"].items())
        + f"), {args.learn_weeks} learning + {args.eval_weeks} evaluation weeks, {len(scenario.incidents)} incidents; "
        f"{host['cpu']}, {host['cores']} cores, Python {host['python']}, load average {host['load_average_before']}"
    )
    run = run_detector(scenario)
    key_kinds = {k.id: k.kind for k in scenario.keys}
    result = score(
        scenario.incidents,
        run.alerts,
        eval_start=scenario.eval_start,
        key_kinds=key_kinds,
        honest_keys=len(scenario.honest),
        eval_weeks=args.eval_weeks,
        learn_weeks=args.learn_weeks,
    )
    p50, p99 = pct(run.samples, 50) / 1000, pct(run.samples, 99) / 1000
    console.print(
        f"{run.observations:,} observations, {len(run.alerts):,} alerts raised; detector CPU "
        f"{run.us_per_request:.2f} µs per request (single calls: p50 {p50:.2f} µs, p99 {p99:.2f} µs); "
        f"generation and detection took {run.wall_s:.0f} s"
    )
    sections: list[tuple[str, Sequence[str], Rows]] = [
        ("Incidents: recall, time to detect (TTD), precision", TYPE_HEADERS, type_rows(result))
    ]
    headers, rows = false_rows(result, result.false_alerts, args.eval_weeks)
    sections.append(
        (f"False alerts in the {args.eval_weeks} evaluation weeks, by alert kind and key kind", headers, rows)
    )
    headers, rows = false_rows(result, result.learning_alerts, args.learn_weeks)
    sections.append((f"Alerts in the {args.learn_weeks} learning weeks (no incidents; informational)", headers, rows))
    misses = miss_rows(result, scenario)
    if misses:
        sections.append(
            ("Incidents not detected within 5 minutes", ["incident", "key kind", "when", "what", "first alert"], misses)
        )
    examples = example_rows(result, scenario, result.false_alerts, args.examples)
    if examples:
        sections.append(
            (
                "False alerts, examples (evaluation weeks)",
                ["alert", "key kind", "when", "alert says", "the traffic then"],
                examples,
            )
        )
    failures = []
    incidents = len(scenario.incidents)
    within = sum(r.within_target for r in result.types.values())
    if within < incidents:
        failures.append(f"{incidents - within} of {incidents} incidents not detected within 5 minutes")
    if result.false_per_key_week >= FALSE_PER_KEY_WEEK_TARGET:
        failures.append(f"{result.false_per_key_week:.2f} false alerts per key per week")
    if run.us_per_request >= COST_TARGET_US:
        failures.append(f"detector CPU {run.us_per_request:.1f} µs per request")
    targets = [
        ["every incident detected within 5 minutes", f"{within}/{incidents}", _verdict(within == incidents)],
        [
            "false alerts per key per evaluation week < 1",
            f"{result.false_per_key_week:.2f}",
            _verdict(result.false_per_key_week < FALSE_PER_KEY_WEEK_TARGET),
        ],
        [
            "detector CPU per request < 20 µs",
            f"{run.us_per_request:.2f} µs (p99 of single calls {p99:.2f} µs)",
            _verdict(run.us_per_request < COST_TARGET_US),
        ],
    ]
    sections.append(("Targets", ["target", "measured", "result"], targets))
    for title, head, body in sections:
        show(title, head, body)
    if args.markdown:
        command = (
            f"benchmarks/watch_eval.py --seed {args.seed} --keys {args.keys} --learn-weeks {args.learn_weeks} "
            f"--eval-weeks {args.eval_weeks} --per-type {args.per_type}"
        )
        text = (
            f"# Watch: anomaly detection on synthetic traffic\n\nScenario: `{command}`: {run.observations:,} requests, "
            f"{len(scenario.honest)} honest keys, {len(scenario.incidents)} incidents. {host['cpu']}, "
            f"Python {host['python']}, load average {host['load_average_before']}.\n\n"
        )
        text += "\n".join(markdown(title, head, body) for title, head, body in sections)
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        report = {
            "machine": host,
            "scenario": {**summary, "observations": run.observations, "honest_keys": len(scenario.honest)},
            "incidents": {name: row.to_dict() for name, row in result.types.items()},
            "precision": round(result.precision, 4),
            "true_alerts": result.true_alerts,
            "false_alerts": len(result.false_alerts),
            "false_alerts_per_key_week": round(result.false_per_key_week, 3),
            "false_alerts_by_kind": result.breakdown(result.false_alerts),
            "learning_alerts": len(result.learning_alerts),
            "learning_alerts_per_key_week": round(result.per_key_week(result.learning_alerts, args.learn_weeks), 3),
            "learning_alerts_by_kind": result.breakdown(result.learning_alerts),
            "detections": [
                {
                    **d.incident.to_dict(),
                    "first_alert": d.first.kind if d.first else None,
                    "time_to_detect_s": round(d.delay, 1) if d.delay is not None else None,
                }
                for d in result.detections
            ],
            "false_alert_examples": [
                dict(zip(["kind", "key_kind", "when", "alert", "context"], r, strict=True)) for r in examples
            ],
            "cost": {
                "us_per_request": round(run.us_per_request, 3),
                "p50_us": round(p50, 3),
                "p99_us": round(p99, 3),
                "sampled_calls": len(run.samples),
            },
            "targets": {row[0]: {"measured": row[1], "result": row[2]} for row in targets},
            "failures": failures,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    for failure in failures:
        console.print(f"[red]target missed:[/red] {failure}")
    return 1 if failures else 0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
