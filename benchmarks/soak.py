"""The hardening run behind `make soak`: attacks, fuzzing, faults and a long soak, and the report they make.

Four parts, each written to benchmarks/results/hardening/<part>.json with the commit it ran on, then rendered
together as benchmarks/results/hardening.md:

- attacks: every case of the attack catalog (tests/data/attacks/) against real gateways and a recording upstream;
- fuzz: at least 1,000,000 generated inputs over the request, stream and policy parsers, each checked by an oracle;
- faults: upstream, Redis, PostgreSQL and worker faults, injected many times, with every audit record accounted for;
- soak: 30 minutes at 70% of the measured capacity, streamed and plain requests mixed.

After each part every secret it created is searched for in every log, audit file and response it saw; a hit fails
the part. The run exits 1 when any target is missed (a bypass, a fuzz failure, a lost record, a gateway error, a
leaked secret), so `make soak` is a gate, not only a report.

    .venv/bin/python benchmarks/soak.py                      # everything, as `make soak` runs it
    .venv/bin/python benchmarks/soak.py --part fuzz --fuzz-inputs 100000
    .venv/bin/python benchmarks/soak.py --render             # the report from the stored parts
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is on the path, the repository root is not
    sys.path.insert(0, str(ROOT))

from benchmarks.host import machine  # noqa: E402
from tests.support.leaks import LEAKS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PARTS_DIR = RESULTS / "hardening"
REPORT = RESULTS / "hardening.md"
PARTS = ("attacks", "fuzz", "faults", "soak")


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"sha": git("rev-parse", "--short=12", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "src"))}


# ---- the parts ----------------------------------------------------------------------------------------------------


def part_attacks(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    from tests.hardening.attacks import run_all

    summary = run_all()
    categories = {name: {"tried": c.tried, "bypasses": c.bypasses} for name, c in summary.by_category.items()}
    failures = [{"case": v.case_id, "category": v.category, "reasons": list(v.reasons)} for v in summary.failed]
    result = {
        "tried": len(summary.verdicts),
        "bypasses": len(failures),
        "categories": categories,
        "failures": failures,
        "seconds": round(summary.seconds, 1),
    }
    return result, [f"attack {f['category']}/{f['case']}: {'; '.join(f['reasons'])}" for f in failures]


def _fuzz(mode: list[str], inputs: int, args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    # Its own process: a crash of the interpreter under a fuzz input is then a finding, not the end of the run.
    name = mode[0].lstrip("-") if mode else "generated"
    out = workdir / f"fuzz-{name}.json"
    command = [sys.executable, "-m", "tests.hardening.fuzz", *mode, "--inputs", str(inputs), "--seed", str(args.seed)]
    command += ["--json", str(out), "--failures-dir", str(RESULTS / "hardening" / "fuzz-failures")]
    if mode:
        command += ["--time-limit", str(args.coverage_seconds)]
    done = subprocess.run(command, cwd=ROOT, check=False)
    if not out.exists():
        return {"exit_code": done.returncode}, [f"fuzz ({name}): exited {done.returncode} without a report"]
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    misses = []
    for target in result["targets"]:
        bad = target["crashes"] + target["hangs"] + target["oracle_failures"]
        if bad:
            misses.append(f"fuzz ({name}) {target['target']}: {bad} failing inputs, saved for --replay")
    if done.returncode != 0 and not misses:
        misses.append(f"fuzz ({name}): exited {done.returncode}")
    return result, misses


def part_fuzz(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """The generated inputs (grammar, mutation, splicing) carry the count; a time-boxed coverage-guided run under
    atheris, where it is installed, reaches what the generators do not think of."""
    generated, misses = _fuzz([], args.fuzz_inputs, args, workdir)
    result = {"generated": generated}
    if generated.get("inputs", 0) < args.fuzz_inputs:
        misses.append(f"fuzz: only {generated.get('inputs', 0):,} of {args.fuzz_inputs:,} inputs ran")
    if args.coverage_seconds > 0:
        from tests.hardening.fuzz import coverage

        if coverage.available():
            result["coverage"], more = _fuzz(["--coverage"], args.fuzz_inputs, args, workdir)
            misses += more
    return result, misses


def part_faults(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    from tests.hardening.faults import run_all

    results = [asdict(r) for r in run_all(workdir, scale=args.fault_scale)]
    misses = []
    for r in results:
        name = f"fault {r['name']}"
        if r["skipped"]:
            misses.append(f"{name}: could not run: {r['skipped']}")
            continue
        misses += [f"{name}: {violation}" for violation in r["violations"]]  # the fail-closed checks among them
        if r["records_lost"]:
            misses.append(f"{name}: {r['records_lost']} audit records lost")
        if r["gateway_errors"]:
            misses.append(f"{name}: {r['gateway_errors']} errors the fault does not explain")
        if not r["recovered"]:
            misses.append(f"{name}: the gateway did not recover by itself")
    return {"scenarios": results}, misses


STEP_SECONDS = 20.0
P99_LIMIT_MS = 250.0  # about twice the p99 of a lightly loaded gateway with this mix (streams take 100 ms)


def open_loop_capacity(stack: Any, closed: float) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate one open-loop step of STEP_SECONDS sustains: every request started and answered, p99 under
    P99_LIMIT_MS. Open-loop traffic costs the gateway more per request than the closed-loop probe's (fewer requests
    per loop turn), so 70% of the closed-loop rate can be a saturated gateway; the soak is offered a share of this."""
    from tests.hardening.load import soak

    best, steps = 0.0, []
    for share in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        rate = closed * share
        step = soak(stack, rate=rate, seconds=STEP_SECONDS, window_s=STEP_SECONDS, warmup=2.0)
        ok = not step.client_errors and not step.gateway_errors and step.p99_ms <= P99_LIMIT_MS
        steps.append({"rate": round(rate, 1), "p99_ms": step.p99_ms, "gateway_cpu_pct": step.gateway_cpu_pct, "ok": ok})
        if not ok:
            break
        best = rate
    return best, steps


def part_soak(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    from tests.hardening.load import measure_capacity, soak, start_stack

    misses = []
    with start_stack(workdir) as stack:
        capacity = measure_capacity(stack, seconds=args.probe_seconds)
        sustained, steps = open_loop_capacity(stack, capacity.rate)
        if not sustained:
            misses.append(f"soak: no open-loop step sustained even 40% of the closed-loop {capacity.rate:,.0f} req/s")
            sustained = capacity.rate * 0.4
        outcome = soak(stack, rate=sustained * args.load, seconds=args.soak_minutes * 60)
    result = {"capacity": asdict(capacity), "open_loop_capacity": sustained, "steps": steps, "load": args.load}
    result |= outcome.to_dict()
    result["rss_samples"] = result["rss_samples"][:: max(1, len(result["rss_samples"]) // 120)]  # the report's size
    misses += [f"soak: {name.replace('_', ' ')} is false" for name, ok in result["verdict"].items() if not ok]
    misses += [f"soak: secret found: {hit}" for hit in result["leak_hits"]]
    return result, misses


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], tuple[dict[str, Any], list[str]]]] = {
    "attacks": part_attacks,
    "fuzz": part_fuzz,
    "faults": part_faults,
    "soak": part_soak,
}


def run_part(name: str, args: argparse.Namespace) -> list[str]:
    started = datetime.now(UTC)
    clock = time.monotonic()
    LEAKS.secrets.clear()
    LEAKS.texts.clear()
    LEAKS.files.clear()
    with tempfile.TemporaryDirectory(prefix=f"aip-soak-{name}-") as tmp:
        result, misses = RUNNERS[name](args, Path(tmp))
        # Before the temporary directory (logs, audit files) goes: no secret this part created may be in any of it.
        leaks = LEAKS.findings()
    misses += [f"{name}: secret leaked: {leak}" for leak in leaks]
    record = {
        "part": name,
        "commit": commit(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - clock, 1),
        "machine": machine(),
        "secrets_checked": len(LEAKS.secrets),
        "secret_hits": len(leaks),
        "misses": misses,
        "result": result,
    }
    PARTS_DIR.mkdir(parents=True, exist_ok=True)
    (PARTS_DIR / f"{name}.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"{name}: {'ok' if not misses else f'{len(misses)} targets missed'} in {record['seconds']:.0f} s")
    for miss in misses:
        print(f"  {miss}")
    return misses


# ---- the report -------------------------------------------------------------------------------------------------


def _load(name: str) -> dict[str, Any] | None:
    path = PARTS_DIR / f"{name}.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


def _ran(record: dict[str, Any]) -> str:
    sha = record["commit"]["sha"] + (" (with uncommitted changes)" if record["commit"]["dirty"] else "")
    return f"_Ran {record['started']} at commit {sha}, {record['seconds']:.0f} s._"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def render() -> str:
    parts = {name: _load(name) for name in PARTS}
    lines = ["# Hardening report", "", "Regenerated by `make soak` (`benchmarks/soak.py`). Targets: 0 bypasses, 0 fuzz"]
    lines += ["failures, 0 audit records lost, 0 gateway-caused errors, flat latency and memory, 0 leaked secrets.", ""]
    summary: list[list[Any]] = []
    attacks, fuzz, faults, soaked = (parts[n] for n in PARTS)
    if attacks:
        r = attacks["result"]
        summary.append(["attack cases tried", f"{r['tried']:,}", f"bypasses: {r['bypasses']}"])
    if fuzz:
        runs = list(fuzz["result"].values())
        inputs = sum(r.get("inputs", 0) for r in runs)
        failures = sum(r.get("failures", 1) for r in runs)
        summary.append(["fuzz inputs run", f"{inputs:,}", f"failures: {failures}"])
    if faults:
        scenarios = faults["result"]["scenarios"]
        injected = sum(s["injected"] for s in scenarios)
        lost = sum(s["records_lost"] for s in scenarios)
        summary.append(["faults injected", f"{injected:,}", f"audit records lost: {lost}"])
    if soaked:
        r = soaked["result"]
        gateway = r["gateway_errors"]
        summary.append(["soak duration", f"{r['seconds'] / 60:.1f} min", f"gateway-caused errors: {gateway}"])
        summary.append(["soak throughput", f"{r['throughput']:,.0f} req/s", f"offered {r['rate']:,.0f}"])
        summary.append(["soak p99 latency", f"{r['p99_ms']:.1f} ms", f"last/first minute {r['p99_ratio']:.2f}"])
        rss = f"{r['rss_kib_start'] / 1024:.1f} → {r['rss_kib_end'] / 1024:.1f} MiB"
        summary.append(["gateway RSS", rss, f"drift {r['rss_drift_mib']:+.1f} MiB ({r['rss_drift_pct']:+.1f}%)"])
    hits = sum(p["secret_hits"] for p in parts.values() if p)
    checked = sum(p["secrets_checked"] for p in parts.values() if p)
    summary.append(["secrets searched for", f"{checked:,}", f"found: {hits}"])
    lines += _table(["measure", "value", "target check"], summary)
    misses = [m for p in parts.values() if p for m in p["misses"]]
    lines += ["", "**Targets missed:** " + ("none." if not misses else f"{len(misses)}"), ""]
    lines += [f"- {m}" for m in misses]
    if attacks:
        lines += ["", "## Attacks", "", _ran(attacks), ""]
        rows = [[c, n["tried"], n["bypasses"]] for c, n in sorted(attacks["result"]["categories"].items())]
        lines += _table(["category", "cases", "bypasses"], rows)
    if fuzz:
        lines += ["", "## Fuzzing", "", _ran(fuzz)]
        for mode, run in fuzz["result"].items():
            lines += ["", f"{mode.capitalize()} inputs, seed {run.get('seed')}:", ""]
            rows = [
                [
                    t["target"],
                    f"{t['inputs']:,}",
                    f"{t['exec_per_second']:,.0f}",
                    t["crashes"],
                    t["hangs"],
                    t["oracle_failures"],
                ]
                for t in run.get("targets", [])
            ]
            lines += _table(["target", "inputs", "inputs/s", "crashes", "hangs", "oracle failures"], rows)
    if faults:
        lines += ["", "## Faults", "", _ran(faults), ""]
        rows = [
            [
                s["name"],
                s["injected"],
                s["requests"],
                s["answered"],
                s["audit_records"],
                s["records_lost"],
                s["gateway_errors"],
                len(s["violations"]),
                "yes" if s["recovered"] else "**no**",
            ]
            for s in faults["result"]["scenarios"]
        ]
        head = ["fault", "injected", "requests", "answered", "audit records", "lost", "gateway errors", "violations"]
        head += ["recovered"]
        lines += _table(head, rows)
    if soaked:
        r = soaked["result"]
        cap = r["capacity"]
        lines += ["", "## Soak", "", _ran(soaked), ""]
        if "steps" in r:
            steps = ", ".join(
                f"{x['rate']:,.0f} ({x['p99_ms']:,.0f} ms{'' if x['ok'] else ', too slow'})" for x in r["steps"]
            )
            offered = (
                f"Closed-loop capacity {cap['rate']:,.0f} req/s (128 callers, the same mix). Open-loop capacity"
                f" {r['open_loop_capacity']:,.0f} req/s: the highest {STEP_SECONDS:.0f}-second step with every request"
                f" answered and p99 under {P99_LIMIT_MS:.0f} ms (req/s and p99 of each step: {steps}). Offered"
                f" {r['load']:.0%} of the open-loop capacity, {r['rate']:,.0f} req/s,"
            )
        else:
            offered = f"Capacity {cap['rate']:,.0f} req/s (closed loop, the same mix); offered {r['load']:.0%} of it,"
        lines += [
            offered,
            f"open loop, {r['streamed']:.0%} streamed (20 events, 5 ms apart), after {r['warmup_s']:.0f} s of warm-up",
            f"at the same rate. {r['requests']:,} requests, {r['ok']:,} answered 2xx; errors by class:"
            f" {r['errors'] or 'none'}.",
            f"Latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms (plain {r['plain_p50_ms']:.1f} /"
            f" {r['plain_p99_ms']:.1f} ms, streamed {r['stream_p50_ms']:.1f} / {r['stream_p99_ms']:.1f} ms), measured"
            " from each request's scheduled time.",
            f"CPU (% of one core): gateway {r['gateway_cpu_pct']:.0f}, load client {r['client_cpu_pct']:.0f}, upstream"
            f" {r['upstream_cpu_pct']:.0f}, everything else {r['other_cpu_pct']:.0f}. Audit records"
            f" {r['audit_records']:,} for {r['audit_expected']:,} requests. Verdict: "
            + ", ".join(f"{k} {'yes' if v else '**no**'}" for k, v in r["verdict"].items())
            + ".",
            "",
        ]
        rows = [
            [
                w["index"] + 1,
                f"{w['throughput']:,.0f}",
                f"{w['p50_ms']:.1f}",
                f"{w['p99_ms']:.1f}",
                sum(w["errors"].values()),
                f"{w['rss_kib'] / 1024:.1f}",
            ]
            for w in r["windows"]
        ]
        lines += _table(["minute", "req/s", "p50 ms", "p99 ms", "errors", "RSS MiB"], rows)
    machine_of = next((p["machine"] for p in parts.values() if p), None)
    if machine_of:
        lines += ["", f"Machine: {machine_of['cpu']}, {machine_of['cores']} cores, Python {machine_of['python']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    # The fault scenarios need PostgreSQL (a cuttable relay in front of it) and start their own redis-server; the
    # defaults are the local services that `.ci/run` uses.
    os.environ.setdefault("AIPERIMETER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    os.environ.setdefault("AIPERIMETER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    parser.add_argument("--render", action="store_true", help="only render the report from the stored parts")
    parser.add_argument("--fuzz-inputs", type=int, default=1_000_000)
    parser.add_argument("--coverage-seconds", type=float, default=240.0, help="the atheris run's time box (0: none)")
    parser.add_argument("--fault-scale", type=float, default=5.0, help="how many times each fault is injected")
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--probe-seconds", type=float, default=20.0, help="the closed-loop capacity probe")
    parser.add_argument("--load", type=float, default=0.7, help="share of the measured capacity to offer")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    misses: list[str] = []
    if not args.render:
        for name in args.part or PARTS:
            misses += run_part(name, args)
    REPORT.write_text(render())
    print(f"report: {REPORT.relative_to(ROOT)}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
