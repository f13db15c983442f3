"""Fault injection: the gateway under a broken model server, a dying Redis or PostgreSQL, a killed worker.

Each scenario runs real gateway processes on loopback, injects its fault, keeps clients going, and returns a
`FaultResult`: faults injected, requests sent and answered, answered requests missing from the audit log (target 0),
errors the fault does not explain (target 0), and whether the gateway recovered by itself. pytest runs each once
(tests/integration/test_faults.py); the soak runs `run_all(workdir, scale)` with each fault repeated `scale` times.

    python -m tests.hardening.faults [--scale N] [--only NAME ...]
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.hardening.faults.result import FaultResult
from tests.hardening.faults.stores import postgres_dies_and_comes_back, redis_dies_and_comes_back
from tests.hardening.faults.upstream_faults import (
    upstream_answers_garbage,
    upstream_answers_slowly,
    upstream_dies_mid_stream,
    upstream_resets_connections,
)
from tests.hardening.faults.workers import worker_killed

Scenario = Callable[[Path, int], FaultResult]

SCENARIOS: dict[str, Scenario] = {
    "upstream_dies_mid_stream": upstream_dies_mid_stream,
    "upstream_answers_garbage": upstream_answers_garbage,
    "upstream_answers_slowly": upstream_answers_slowly,
    "upstream_resets_connections": upstream_resets_connections,
    "redis_dies_and_comes_back": redis_dies_and_comes_back,
    "postgres_dies_and_comes_back": postgres_dies_and_comes_back,
    "worker_killed": worker_killed,
}

__all__ = ["SCENARIOS", "FaultResult", "run_all"]


def run_all(workdir: Path | None = None, scale: float = 1.0, only: list[str] | None = None) -> list[FaultResult]:
    """Every scenario (or those named in `only`), each fault repeated round(scale) times, one after another.
    PostgreSQL comes from AIPERIMETER_TEST_POSTGRES_URL; scenarios that need a missing service come back skipped."""
    repeat = max(1, round(scale))
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="aip-faults-")) if workdir is None else workdir
    try:
        return [SCENARIOS[name](base / name, repeat) for name in (only or SCENARIOS)]
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
