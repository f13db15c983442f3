"""The fault scenarios of tests.hardening.faults, each once: the gateway survives every one.

Survival: every expectation the scenario checks holds (fail-closed statuses, clean 502/504, cut streams, refusals of
revoked keys, limits during outages), no answered request is missing from the audit log, no error the fault does
not explain, and the gateway recovered without a restart. `make soak` runs the same scenarios with more faults.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.hardening.faults import SCENARIOS, FaultResult
from tests.hardening.faults.stores import postgres_dies_and_comes_back, redis_dies_and_comes_back


def survived(result: FaultResult) -> None:
    print(result)
    assert result.skipped is None, result.skipped
    assert not result.violations, "\n".join(result.violations)
    assert result.injected > 0 and result.answered > 0
    assert result.records_lost == 0, f"{result.records_lost} answered requests have no audit record"
    assert result.audit_records == result.answered
    assert result.gateway_errors == 0, "\n".join(result.notes)
    assert result.recovered


@pytest.mark.parametrize(
    "name",
    ["upstream_dies_mid_stream", "upstream_answers_garbage", "upstream_answers_slowly", "upstream_resets_connections",
     "worker_killed"],
)  # fmt: skip
def test_the_gateway_survives(name: str, tmp_path: Path) -> None:
    survived(SCENARIOS[name](tmp_path, 1))


def test_the_gateway_survives_redis_dying_and_coming_back(tmp_path: Path, postgres_url: str) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed for the outage test: apt install redis-server")
    survived(redis_dies_and_comes_back(tmp_path, 1, postgres_url))


def test_the_gateway_survives_postgres_dying_and_coming_back(tmp_path: Path, postgres_url: str) -> None:
    survived(postgres_dies_and_comes_back(tmp_path, 1, postgres_url))
