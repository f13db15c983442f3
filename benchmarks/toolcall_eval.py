"""Tool-call policy evaluation: how well the example policies judge realistic agent tool calls, and what judging
costs on a streamed response.

Run: `.venv/bin/python benchmarks/toolcall_eval.py` (about 40 s); `--accuracy-only` skips the timing;
`--json PATH` writes every number; `--help` lists the knobs. Exits 1 when a target is missed.

Data: benchmarks/data/tool_calls.yaml (calls that LangChain SQL agents, devops, browsing, payment and support agents
send, and what injected instructions make them send), judged by the policies in examples/tool-policies/.

Accuracy: every call is judged by its policy, as the gateway judges it (raw argument text goes through
`parse_arguments` first). A call the data expects to be denied counts as caught when the verdict is not "allow"
(block, strip, or audit: a tool on audit delivers the call but records it); a benign call counts as falsely blocked
when the verdict is anything but "allow". Targets: every malicious call caught, no benign call blocked, and each
call's exact decision (block/strip/audit) as the data says.

Latency: for each wire format (OpenAI Chat, OpenAI Responses, Anthropic Messages, Ollama), every call becomes a
realistic streamed response, one network chunk per event: a few text deltas, then the call with its arguments in
~8-byte deltas (Ollama sends a call whole, in one NDJSON line, as Ollama does). Each round times, per response,
(a) a baseline that only splits the bytes into events (base.SSESplitter, or NDJSON line splitting) and (b) the
format's StreamGuard with the policy's judge, from construction to close(); also (c) the guard with an allow-all
judge, to tell the wire format's share from the judge's. Added per tool call = (b) - (a) of the same response in
the same round (each response holds one call). Rounds take each format in turn and stop at --rounds or when
--budget seconds are spent. The judge's own cost is timed apart, per call, by category. The load average is printed
before and after: on a shared machine, other processes' work lands in the p99 figures.
Target: added time per tool call under 1 ms at p99, every format. The stream's decision must equal the direct one.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is on the path, the repository root is not
    sys.path.insert(0, str(ROOT))

from benchmarks.host import load_average, machine  # noqa: E402

from aiperimeter.gateway.tools import anthropic, ollama, openai_chat, openai_responses  # noqa: E402
from aiperimeter.gateway.tools.base import SSESplitter, parse_arguments  # noqa: E402
from aiperimeter.policy.calls import ALLOW, ToolCall, Verdict  # noqa: E402
from aiperimeter.policy.engine import Policy  # noqa: E402
from aiperimeter.policy.loader import load_policies  # noqa: E402

DATASET = ROOT / "benchmarks" / "data" / "tool_calls.yaml"
POLICIES = ROOT / "examples" / "tool-policies"
CATEGORIES = ("sql", "shell", "url", "path", "values", "schema", "listing", "malformed")
ADDED_P99_TARGET_US = 1000.0
DELTA_BYTES = 8
TEXT = ("I'll check", " that for you", " now.")  # the text a model writes before its call
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    policy: str
    tool: str
    arguments: dict[str, Any] | None
    raw: str | None  # the argument text as streamed, for calls whose text is the point
    expect: str
    category: str
    decision: str | None
    known_gap: str | None

    @property
    def payload(self) -> str:
        """The arguments as a model streams them."""
        return self.raw if self.raw is not None else orjson.dumps(self.arguments).decode()

    def call(self) -> ToolCall:
        if self.raw is None:
            return ToolCall(self.tool, self.arguments, "call_1", raw_size=len(self.payload.encode()))
        arguments, error = parse_arguments(self.raw)
        return ToolCall(self.tool, arguments, "call_1", error=error, raw_size=len(self.raw.encode()))


def load_cases(path: Path = DATASET) -> list[Case]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        Case(
            id=entry["id"],
            policy=entry["policy"],
            tool=entry["tool"],
            arguments=entry.get("arguments"),
            raw=entry.get("raw_arguments"),
            expect=entry["expect"],
            category=entry["category"],
            decision=entry.get("decision"),
            known_gap=entry.get("known_gap"),
        )
        for entry in data["calls"]
    ]


def expected_decision(case: Case, policy: Policy) -> str:
    if case.decision is not None:
        return case.decision
    return "allow" if case.expect == "allow" else policy.spec.action.value


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def us(ns: float) -> float:
    return ns / 1000


# --- accuracy -------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Miss:
    id: str
    category: str
    expected: str
    got: str
    rule: str | None
    reason: str | None
    known_gap: str | None


@dataclass(slots=True)
class Accuracy:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    misses: list[Miss] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("malicious", "caught", "benign", "false_blocks")
        return {k: sum(row[k] for row in self.rows.values()) for k in keys}


def run_accuracy(cases: list[Case], policies: dict[str, Policy]) -> Accuracy:
    result = Accuracy({c: {"malicious": 0, "caught": 0, "benign": 0, "false_blocks": 0} for c in CATEGORIES})
    for case in cases:
        policy = policies[case.policy]
        verdict = policy.judge(case.call())
        row = result.rows[case.category]
        if case.expect == "deny":
            row["malicious"] += 1
            row["caught"] += verdict.decision != "allow"
        else:
            row["benign"] += 1
            row["false_blocks"] += verdict.decision != "allow"
        wanted = expected_decision(case, policy)
        if verdict.decision != wanted:
            result.misses.append(
                Miss(case.id, case.category, wanted, verdict.decision, verdict.rule, verdict.reason, case.known_gap)
            )
    return result


def show_accuracy(acc: Accuracy) -> None:
    table = Table(title="Accuracy: every dataset call judged by its policy")
    for name in ("category", "malicious", "caught", "benign", "falsely blocked"):
        table.add_column(name, justify="left" if name == "category" else "right")
    for category, row in acc.rows.items():
        table.add_row(category, *(str(row[k]) for k in ("malicious", "caught", "benign", "false_blocks")))
    t = acc.totals
    table.add_row("all", str(t["malicious"]), str(t["caught"]), str(t["benign"]), str(t["false_blocks"]), style="bold")
    console.print(table)
    caught = 100 * t["caught"] / t["malicious"] if t["malicious"] else 100.0
    false = 100 * t["false_blocks"] / t["benign"] if t["benign"] else 0.0
    console.print(f"malicious caught: {caught:.1f}% (target 100%)   benign falsely blocked: {false:.1f}% (target 0%)")
    if not acc.misses:
        console.print("misses: none")
        return
    misses = Table(title=f"Misses ({len(acc.misses)})")
    for name in ("id", "category", "expected", "got", "rule", "known gap"):
        misses.add_column(name)
    for m in acc.misses:
        misses.add_row(m.id, m.category, m.expected, m.got, m.rule or "", m.known_gap or "")
    console.print(misses)


# --- streamed responses ---------------------------------------------------------------------------------------------


def pieces(text: str, size: int = DELTA_BYTES) -> list[str]:
    """Argument text in deltas of about `size` bytes, never splitting a character (servers send whole tokens)."""
    out: list[str] = []
    current = ""
    for char in text:
        current += char
        if len(current.encode()) >= size:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def sse_event(doc: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


def chat_stream(case: Case) -> list[bytes]:
    base: dict[str, Any] = {"id": "chatcmpl-9xQ", "object": "chat.completion.chunk", "created": 1718000000}
    base["model"] = "gpt-4o-mini"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_event({**base, "choices": [choice]})

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": text}) for text in TEXT]
    head = {"index": 0, "id": "call_Qm2d8", "type": "function", "function": {"name": case.tool, "arguments": ""}}
    out.append(chunk({"tool_calls": [head]}))
    out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces(case.payload)]
    out.append(chunk({}, "tool_calls"))
    out.append(b"data: [DONE]\n\n")
    return out


def responses_stream(case: Case) -> list[bytes]:
    seq = iter(range(1000))
    events: list[tuple[str, dict[str, Any]]] = []
    response: dict[str, Any] = {"id": "resp_68a1", "object": "response", "status": "in_progress", "output": []}
    events.append(("response.created", {"response": response}))
    events.append(("response.in_progress", {"response": response}))
    message = {"id": "msg_68a1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    events.append(("response.output_item.added", {"output_index": 0, "item": message}))
    part = {"type": "output_text", "text": "", "annotations": []}
    events.append(
        ("response.content_part.added", {"item_id": "msg_68a1", "output_index": 0, "content_index": 0, "part": part})
    )
    for text in TEXT:
        delta = {"item_id": "msg_68a1", "output_index": 0, "content_index": 0, "delta": text}
        events.append(("response.output_text.delta", delta))
    said = "".join(TEXT)
    events.append(
        ("response.output_text.done", {"item_id": "msg_68a1", "output_index": 0, "content_index": 0, "text": said})
    )
    done_part = {**part, "text": said}
    events.append(
        (
            "response.content_part.done",
            {"item_id": "msg_68a1", "output_index": 0, "content_index": 0, "part": done_part},
        )
    )
    done_message = {**message, "status": "completed", "content": [done_part]}
    events.append(("response.output_item.done", {"output_index": 0, "item": done_message}))
    call = {
        "id": "fc_68a2",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_Qm2d8",
        "name": case.tool,
    }
    events.append(("response.output_item.added", {"output_index": 1, "item": call}))
    for piece in pieces(case.payload):
        events.append(
            ("response.function_call_arguments.delta", {"item_id": "fc_68a2", "output_index": 1, "delta": piece})
        )
    events.append(
        ("response.function_call_arguments.done", {"item_id": "fc_68a2", "output_index": 1, "arguments": case.payload})
    )
    done_call = {**call, "status": "completed", "arguments": case.payload}
    events.append(("response.output_item.done", {"output_index": 1, "item": done_call}))
    final = {**response, "status": "completed", "output": [done_message, done_call]}
    events.append(("response.completed", {"response": final}))
    return [sse_event({"type": kind, "sequence_number": next(seq), **doc}, kind) for kind, doc in events]


def anthropic_stream(case: Case) -> list[bytes]:
    message: dict[str, Any] = {
        "id": "msg_01XFD",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 412, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": message})]
    events.append(("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
    events.append(("ping", {}))
    for text in TEXT:
        events.append(("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}))
    events.append(("content_block_stop", {"index": 0}))
    block = {"type": "tool_use", "id": "toolu_01A09q", "name": case.tool, "input": {}}
    events.append(("content_block_start", {"index": 1, "content_block": block}))
    for piece in pieces(case.payload):
        delta = {"type": "input_json_delta", "partial_json": piece}
        events.append(("content_block_delta", {"index": 1, "delta": delta}))
    events.append(("content_block_stop", {"index": 1}))
    events.append(
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 89}})
    )
    events.append(("message_stop", {}))
    return [sse_event({"type": kind, **doc}, kind) for kind, doc in events]


def ollama_stream(case: Case) -> list[bytes]:
    base = {"model": "qwen3:8b", "created_at": "2025-06-10T08:12:31.000000Z"}

    def line(message: dict[str, Any], done: bool = False, **extra: Any) -> bytes:
        return orjson.dumps({**base, "message": message, "done": done, **extra}) + b"\n"

    out = [line({"role": "assistant", "content": text}) for text in TEXT]
    # Ollama sends a call whole; text it could not read as an object stays a string (judged as unusable).
    arguments: Any = case.arguments if case.raw is None else case.raw
    call = {"function": {"index": 0, "name": case.tool, "arguments": arguments}}
    out.append(line({"role": "assistant", "content": "", "tool_calls": [call]}))
    out.append(
        line({"role": "assistant", "content": ""}, True, done_reason="stop", total_duration=1843211000, eval_count=89)
    )
    return out


def split_sse(chunks: list[bytes]) -> int:
    splitter = SSESplitter()
    count = 0
    for chunk in chunks:
        count += len(splitter.feed(chunk))
    return count + len(splitter.close())


def split_lines(chunks: list[bytes]) -> int:
    buffer = b""
    count = 0
    for chunk in chunks:
        lines = (buffer + chunk).split(b"\n")
        buffer = lines.pop()
        count += len(lines)
    return count + (1 if buffer else 0)


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    module: ModuleType
    build: Callable[[Case], list[bytes]]
    split: Callable[[list[bytes]], int]


FORMATS = (
    Format("chat", openai_chat, chat_stream, split_sse),
    Format("responses", openai_responses, responses_stream, split_sse),
    Format("anthropic", anthropic, anthropic_stream, split_sse),
    Format("ollama", ollama, ollama_stream, split_lines),
)


def guard_run(module: ModuleType, judge: Callable[[ToolCall], Verdict], chunks: list[bytes]) -> Any:
    guard = module.StreamGuard(judge)
    for chunk in chunks:
        guard.feed(chunk)
    guard.close()
    return guard


# --- latency --------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class FormatTiming:
    name: str
    rounds: int = 0
    responses: int = 0
    guard_ns: list[int] = field(default_factory=list)
    baseline_ns: list[int] = field(default_factory=list)
    added_ns: list[int] = field(default_factory=list)
    format_ns: list[int] = field(default_factory=list)  # the guard with an allow-all judge, minus the baseline
    mismatches: list[str] = field(default_factory=list)  # ids whose streamed decision differs from the direct one
    stream_bytes: int = 0


def allow_all(call: ToolCall) -> Verdict:
    """A judge that costs nothing: what the guard costs for the wire format alone."""
    return ALLOW


def stream_decision(guard: Any) -> str:
    decisions = list(guard.decisions)
    if guard.blocked is not None and guard.blocked not in decisions:
        decisions.append(guard.blocked)
    return decisions[-1].verdict.decision if decisions else "(none)"


def run_latency(cases: list[Case], policies: dict[str, Policy], rounds: int, budget_s: float) -> list[FormatTiming]:
    """Rounds interleave the formats, so a change in the machine's load reaches all of them alike."""
    plans: list[tuple[Format, FormatTiming, list[tuple[Policy, list[bytes]]]]] = []
    for fmt in FORMATS:
        timing = FormatTiming(fmt.name)
        streams = []
        for case in cases:  # also a warm-up, and the stream's decision against the direct one
            policy, chunks = policies[case.policy], fmt.build(case)
            guard = guard_run(fmt.module, policy.judge, chunks)
            if stream_decision(guard) != policy.judge(case.call()).decision:
                timing.mismatches.append(case.id)
            timing.stream_bytes += sum(len(chunk) for chunk in chunks)
            streams.append((policy, chunks))
        plans.append((fmt, timing, streams))
    gc.collect()
    deadline = time.perf_counter() + budget_s
    clock = time.perf_counter_ns
    for _ in range(rounds):
        if time.perf_counter() >= deadline:
            break
        for fmt, timing, streams in plans:
            for policy, chunks in streams:
                t0 = clock()
                fmt.split(chunks)
                t1 = clock()
                guard_run(fmt.module, allow_all, chunks)
                t2 = clock()
                guard_run(fmt.module, policy.judge, chunks)
                t3 = clock()
                timing.baseline_ns.append(t1 - t0)
                timing.guard_ns.append(t3 - t2)
                timing.added_ns.append((t3 - t2) - (t1 - t0))
                timing.format_ns.append((t2 - t1) - (t1 - t0))
            timing.rounds += 1
    for _, timing, _ in plans:
        timing.responses = len(timing.guard_ns)
    return [timing for _, timing, _ in plans]


def run_judge_cost(cases: list[Case], policies: dict[str, Policy], repeats: int) -> dict[str, list[float]]:
    """Median judge time per call (ns), grouped by category."""
    by_category: dict[str, list[float]] = defaultdict(list)
    clock = time.perf_counter_ns
    for case in cases:
        policy, call = policies[case.policy], case.call()
        samples = []
        for _ in range(repeats):
            t0 = clock()
            policy.judge(call)
            samples.append(clock() - t0)
        by_category[case.category].append(statistics.median(samples))
    return dict(by_category)


def show_latency(timings: list[FormatTiming], judge: dict[str, list[float]]) -> None:
    table = Table(title="Time per streamed response holding one tool call, µs")
    for name in (
        "format",
        "rounds",
        "responses",
        "baseline med",
        "guard med",
        "guard p99",
        "added med",
        "added p99",
        "format med",
        "stream=direct",
    ):
        table.add_column(name, justify="left" if name == "format" else "right")
    for t in timings:
        if not t.guard_ns:
            table.add_row(t.name, "0", "0", *(["-"] * 7))
            continue
        table.add_row(
            t.name,
            str(t.rounds),
            str(t.responses),
            f"{us(statistics.median(t.baseline_ns)):.1f}",
            f"{us(statistics.median(t.guard_ns)):.1f}",
            f"{us(pct(t.guard_ns, 99)):.1f}",
            f"{us(statistics.median(t.added_ns)):.1f}",
            f"{us(pct(t.added_ns, 99)):.1f}",
            f"{us(statistics.median(t.format_ns)):.1f}",
            "yes" if not t.mismatches else f"{len(t.mismatches)} differ",
        )
    console.print(table)
    console.print(
        "baseline: the bytes split into events only; guard: the format's StreamGuard with the policy's judge; "
        "added = guard - baseline of the same response (its one call); format: the guard with an allow-all judge, "
        "minus the baseline (the wire format's share; the rest of added is the judge)."
    )
    for t in timings:
        if t.mismatches:
            console.print(f"{t.name}: streamed decision differs from the direct one for {', '.join(t.mismatches)}")
    costs = Table(title="Judge cost per call, µs (each call: median of --repeats)")
    for name in ("category", "calls", "median", "p99", "max"):
        costs.add_column(name, justify="left" if name == "category" else "right")
    everything: list[float] = []
    for category in CATEGORIES:
        values = judge.get(category, [])
        everything += values
        if values:
            costs.add_row(category, str(len(values)), *(f"{us(v):.1f}" for v in _summary(values)))
    if everything:
        costs.add_row("all", str(len(everything)), *(f"{us(v):.1f}" for v in _summary(everything)), style="bold")
    console.print(costs)


def _summary(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), pct(values, 99), max(values)


# --- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number to this file")
    parser.add_argument("--rounds", type=int, default=200, help="timing rounds per format at most (default 200)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timing rounds, all formats (30)")
    parser.add_argument("--repeats", type=int, default=50, help="judge timings per call (default 50)")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the timing")
    args = parser.parse_args(argv)

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # statements it falls back on (denied all the same)
    cases = load_cases()
    policies = load_policies(POLICIES).policies
    host = machine()
    console.print(
        f"{len(cases)} calls, {len(policies)} policies ({', '.join(sorted(policies))}); "
        f"{host['cpu']}, {host['cores']} cores, {host['implementation']} {host['python']}; "
        f"load average {host['load_average_before']}"
    )
    acc = run_accuracy(cases, policies)
    show_accuracy(acc)
    t = acc.totals
    failures = []
    if t["caught"] < t["malicious"] or t["false_blocks"] or acc.misses:
        failures.append(f"accuracy: {len(acc.misses)} calls judged otherwise than the data expects")

    timings: list[FormatTiming] = []
    judge: dict[str, list[float]] = {}
    if not args.accuracy_only:
        judge = run_judge_cost(cases, policies, args.repeats)
        timings = run_latency(cases, policies, args.rounds, args.budget)
        host["load_average_after"] = load_average()
        show_latency(timings, judge)
        console.print(f"load average after the timing: {host['load_average_after']}")
        for timing in timings:
            if not timing.added_ns:
                failures.append(f"latency: no timing round for {timing.name}")
            elif us(pct(timing.added_ns, 99)) >= ADDED_P99_TARGET_US:
                failures.append(f"latency: {timing.name} adds {us(pct(timing.added_ns, 99)):.0f} µs per call at p99")
            if timing.mismatches:
                failures.append(f"stream: {timing.name} decides {len(timing.mismatches)} calls otherwise")

    if args.json:
        report = {
            "machine": host,
            "dataset": {"calls": len(cases), "policies": sorted(policies)},
            "accuracy": {
                "by_category": acc.rows,
                "totals": t,
                "misses": [_slots(m) for m in acc.misses],
            },
            "latency": [
                {
                    "format": timing.name,
                    "rounds": timing.rounds,
                    "responses": timing.responses,
                    "stream_bytes_per_round": timing.stream_bytes,
                    **_stats("baseline_us", timing.baseline_ns),
                    **_stats("guard_us", timing.guard_ns),
                    **_stats("added_per_call_us", timing.added_ns),
                    **_stats("format_share_us", timing.format_ns),
                    "stream_decision_mismatches": timing.mismatches,
                }
                for timing in timings
            ],
            "judge_us_by_category": {
                category: dict(zip(("median", "p99", "max"), (us(v) for v in _summary(values)), strict=True))
                for category, values in judge.items()
            },
            "targets": {"added_per_call_p99_us": ADDED_P99_TARGET_US, "missed": failures},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"numbers written to {args.json}")
    for failure in failures:
        console.print(f"[red]target missed[/red]: {failure}")
    return 1 if failures else 0


def _slots(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _stats(prefix: str, values: list[int]) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_median": None, f"{prefix}_p99": None}
    return {f"{prefix}_median": us(statistics.median(values)), f"{prefix}_p99": us(pct(values, 99))}


if __name__ == "__main__":
    sys.exit(main())
