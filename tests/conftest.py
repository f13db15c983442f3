from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.leaks import LEAKS


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaks() -> Iterator[None]:
    """After the whole suite, no secret a test created may appear in any log line, audit record or response."""
    yield
    findings = LEAKS.findings()
    assert not findings, "secrets leaked:\n" + "\n".join(findings)


def service_url(variable: str) -> str:
    """The URL of a test service from the environment. Skips without it, unless CI requires every service."""
    url = os.environ.get(variable)
    if not url:
        if os.environ.get("AIPERIMETER_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{variable} is not set, and this run requires every service test to run")
        pytest.skip(f"set {variable} to run this test against a real server")
    return url


@pytest.fixture
def postgres_url() -> str:
    return service_url("AIPERIMETER_TEST_POSTGRES_URL")


@pytest.fixture
def redis_url() -> str:
    return service_url("AIPERIMETER_TEST_REDIS_URL")
