"""Coverage-guided mode: each target under atheris (libFuzzer), every loaded module instrumented.

libFuzzer ends its process, and stops at the first failure, so each target runs in a child process; the parent
reads the run count and the outcome from its output. Crashing inputs are kept under the failures folder.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.hardening.fuzz.engine import HANG_SECONDS, FuzzReport, TargetReport


def available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# The child imports the gateway inside `instrument_imports`, before anything else has imported it.
CHILD = """
import sys
import atheris
with atheris.instrument_imports(include=["aiperimeter"]):
    import tests.hardening.fuzz
from tests.hardening.fuzz.coverage import child
child(sys.argv[1], *map(int, sys.argv[2:5]), *sys.argv[5:7])
"""
ROOT = Path(__file__).resolve().parents[3]


def child(name: str, runs: int, seconds: int, seed: int, corpus: str, artifacts: str) -> None:
    """In the child process: hand one target to libFuzzer (which exits the process)."""
    import atheris

    from tests.hardening.fuzz import TARGETS

    target = TARGETS[name]
    for n, data in enumerate(target.seeds):
        (Path(corpus) / f"seed-{n}").write_bytes(data)
    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={runs}",
            f"-max_total_time={seconds}",
            f"-seed={seed or 1}",
            f"-timeout={int(HANG_SECONDS)}",
            f"-max_len={target.max_len}",
            f"-artifact_prefix={artifacts}/{name}-",
            "-rss_limit_mb=2048",
            corpus,
        ],
        target.check,
    )
    atheris.Fuzz()


def run_target(name: str, runs: int, seconds: int, seed: int, failures_dir: Path) -> TargetReport:
    failures_dir.mkdir(parents=True, exist_ok=True)
    report = TargetReport(name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as corpus:
        args = [name, str(runs), str(seconds), str(seed), corpus, str(failures_dir)]
        try:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=seconds + 120,
                check=False,
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed the child
            report.seconds = time.perf_counter() - started
            report.hangs = 1
            report.examples.append({"kind": "hang", "error": "libFuzzer did not finish in time", "reproduce": ""})
            return report
    report.seconds = time.perf_counter() - started
    log = done.stdout + done.stderr
    counts = re.findall(r"Done (\d+) runs", log) or re.findall(r"#(\d+)\s", log)
    report.inputs = int(counts[-1]) if counts else 0
    if done.returncode != 0:
        if "libFuzzer: timeout" in log:
            report.hangs = 1
        elif "OracleFailure" in log:
            report.oracle_failures = 1
        else:
            report.crashes = 1
        artifact = re.findall(r"Test unit written to (\S+)", log)
        report.examples.append(
            {
                "kind": "hang" if report.hangs else "oracle" if report.oracle_failures else "crash",
                "error": log[-1500:],
                "file": artifact[-1] if artifact else "",
                "reproduce": f"{sys.executable} -m tests.hardening.fuzz --raw --replay {name} {artifact[-1]}"
                if artifact
                else "",
            }
        )
    return report


def run(targets: Sequence[str], inputs: int, seed: int, time_limit: float, failures_dir: Path) -> FuzzReport:
    """Each target for up to `inputs` runs in total split evenly, and `time_limit` seconds split evenly."""
    runs = max(1, inputs // len(targets))
    seconds = max(1, int(time_limit / len(targets)))
    return FuzzReport(seed, [run_target(n, runs, seconds, seed, failures_dir) for n in targets], mode="coverage")
