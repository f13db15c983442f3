"""The engine: a short run of every target finds nothing, and crashes, hangs and oracle failures are each counted,
saved and replayable."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.hardening.fuzz import TARGETS, run
from tests.hardening.fuzz.engine import OracleFailure, Source, Target, Watchdog, check_one, fuzz_target, replay


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_run_of_each_target_finds_nothing(name: str, tmp_path: Path) -> None:
    report = fuzz_target(TARGETS[name], 2000, seed=20261127, failures_dir=tmp_path)
    assert report.inputs == 2000
    assert (report.crashes, report.hangs, report.oracle_failures) == (0, 0, 0), report.examples


def test_inputs_are_reproducible_from_the_seed() -> None:
    target = TARGETS["request_path"]
    first = [Source(target, random.Random("7:x")).next() for _ in range(3)]
    again = [Source(target, random.Random("7:x")).next() for _ in range(3)]
    assert first == again


def _picky(data: bytes) -> None:
    if data.startswith(b"boom"):
        raise ValueError("unexpected")
    if data.startswith(b"deny"):
        raise OracleFailure("allowed what the model forbids")
    if data.startswith(b"wait"):
        ends = time.monotonic() + 10  # bounded: the watchdog ends it long before
        while time.monotonic() < ends:
            pass


def _picky_target() -> Target:
    return Target("picky", _picky, lambda rng: rng.choice([b"ok", b"boom", b"deny"]), tokens=[b"x"])


def test_crashes_and_oracle_failures_are_counted_saved_and_replayable(tmp_path: Path) -> None:
    target = _picky_target()
    report = fuzz_target(target, 300, seed=1, failures_dir=tmp_path)
    assert report.crashes > 0 and report.oracle_failures > 0
    assert report.inputs == 300
    kinds = {example["kind"] for example in report.examples}
    assert kinds == {"crash", "oracle"}
    for example in report.examples:
        saved = bytes.fromhex(Path(example["file"]).read_text().strip())
        assert replay(target, saved).startswith(example["kind"])
        assert "--replay picky" in example["reproduce"]


def test_the_watchdog_ends_an_input_that_hangs() -> None:
    with Watchdog(seconds=0.2) as watchdog:
        assert watchdog.armed
        found = check_one(_picky_target(), b"wait", watchdog)
        assert check_one(_picky_target(), b"ok", watchdog) is None
    assert found is not None and found[0] == "hang"


def test_run_splits_the_budget_over_the_targets(tmp_path: Path) -> None:
    report = run(["request_path", "policy_engine"], inputs=3000, seed=3, failures_dir=tmp_path)
    assert report.inputs >= 3000  # the budget, and the speed probe's inputs on top
    assert {t.target for t in report.targets} == {"request_path", "policy_engine"}
    assert all(t.inputs > 0 for t in report.targets)
    assert report.as_dict()["failures"] == 0
