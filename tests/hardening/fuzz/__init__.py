"""Fuzzing of the gateway's parsers and policy evaluators, each against an oracle (a model or an independent reader).

`run()` splits an input budget over the targets (weighted by the square root of each one's speed) and returns a
`FuzzReport`; `python -m tests.hardening.fuzz --inputs N --seed S --json out.json` does the same from the command
line. `coverage.run()` (`--coverage`) runs the same targets coverage-guided under atheris instead.

Targets: request_path (paths), request_body (bodies), stream_framers (streams), tool_guard_<format> (tool_guards,
read back by wire_readers), policy_engine (policy).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from tests.hardening.fuzz import bodies, paths, policy, streams, tool_guards
from tests.hardening.fuzz.engine import (
    FuzzReport,
    OracleFailure,
    Target,
    TargetReport,
    fuzz_target,
    measure_rates,
    merged,
    split_budget,
)

TARGETS: dict[str, Target] = {
    t.name: t for t in (paths.TARGET, bodies.TARGET, streams.TARGET, *tool_guards.TARGETS, policy.TARGET)
}

__all__ = ["TARGETS", "FuzzReport", "OracleFailure", "Target", "TargetReport", "run"]


def run(
    targets: Sequence[str] | None = None,
    inputs: int = 1_000_000,
    seed: int = 0,
    time_limit: float | None = None,
    failures_dir: Path | None = None,
) -> FuzzReport:
    """Fuzz `targets` (all by default) with `inputs` inputs in total, shared out by `split_budget`. With
    `time_limit` (seconds, after a short speed probe) each target also stops at its part of that time."""
    chosen = [TARGETS[name] for name in (targets or TARGETS)]
    rates, probes = measure_rates(chosen, seed, failures_dir=failures_dir)
    shares = split_budget(inputs, rates)
    expected = {name: shares[name] / rates[name] for name in shares}  # seconds each target should take
    ends = None if time_limit is None else time.monotonic() + time_limit
    reports = []
    for n, target in enumerate(chosen):
        deadline = None
        if ends is not None:  # this target's part of the time left, in proportion to what it was expected to take
            left = sum(expected[t.name] for t in chosen[n:])
            deadline = time.monotonic() + (ends - time.monotonic()) * expected[target.name] / left
        report = fuzz_target(target, shares[target.name], seed, deadline=deadline, failures_dir=failures_dir)
        reports.append(merged(report, probes[target.name]))
    return FuzzReport(seed, reports)
