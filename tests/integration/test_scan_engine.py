"""The real scanner, as a process, against one mock service per catalogued product and verdict on 127.x.y.z."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from aiperimeter.catalog.loader import fingerprints
from aiperimeter.demo.exposed import MockService, plan
from tests.support.services import MockFleet

FIRST = "127.0.20.1"
EXPECTED = plan(fingerprints(), FIRST)


def scan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "aiperimeter", "scan", *args], capture_output=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def scanned() -> Iterator[dict[str, dict[str, Any]]]:
    with MockFleet(FIRST) as fleet:
        targets = [f"{s.address}:{s.port}" for s in fleet.services]
        result = scan(*targets, "--json", "--fail-on", "never", "--rate", "0", "--concurrency", "200")
        assert result.returncode == 0, result.stderr.decode()
        document = orjson.loads(result.stdout)
        yield {f"{f['address']}:{f['port']}": f for f in document["findings"]}


@pytest.mark.parametrize(
    "service", EXPECTED, ids=[f"{s.fingerprint.id}:{s.example.verdict}:{s.example.name}" for s in EXPECTED]
)
def test_each_product_and_verdict_is_identified(scanned: dict[str, dict[str, Any]], service: MockService) -> None:
    finding = scanned.get(f"{service.address}:{service.port}")
    assert finding is not None, "not identified"
    assert (finding["product"], finding["verdict"]) == (service.fingerprint.id, service.example.verdict)
    if service.example.version is not None:
        assert finding["version"] == service.example.version
    if service.example.models is not None:
        assert finding["models"] == service.example.models
    for field in ("host", "port", "product", "version", "verdict", "severity", "dangerous", "fix", "evidence"):
        assert field in finding
    if finding["verdict"] in ("open", "unclaimed") and service.fingerprint.gateway_kind:
        assert "aiperimeter gateway --upstream" in finding["fix"]["gateway"]


def test_nothing_unsafe_is_ever_sent() -> None:
    from aiperimeter.catalog.schema import Probe

    for fp in fingerprints():
        for probe in fp.probes:
            assert isinstance(probe, Probe)
            assert probe.method in ("GET", "HEAD") or probe.jsonrpc in ("initialize", "tools/list"), (fp.id, probe)


def test_closed_ports_and_unresolvable_names_do_not_crash() -> None:
    result = scan(
        "127.0.21.1", "no-such-host.invalid", "127.0.21.2:1", "--json", "--fail-on", "never", "--timeout", "1"
    )
    assert result.returncode == 0, result.stderr.decode()
    document = orjson.loads(result.stdout)
    assert document["findings"] == []
    assert {"target": "no-such-host.invalid", "error": "cannot resolve"} in document["errors"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["8.8.8.8"], "--i-own-these-targets", id="public-address"),
        pytest.param(["10.0.0.0/8"], "--max-hosts", id="range-too-large"),
        pytest.param(["http://u:p@127.0.0.1:1"], "credentials", id="url-credentials"),
        pytest.param(["127.0.0.1:99999"], "port", id="bad-port"),
        pytest.param(["127.0.0.1", "--ports", "80-x"], "--ports", id="bad-ports"),
        pytest.param([], "no targets", id="no-targets"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = scan(*args)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 2, output
    assert message in output and "Traceback" not in output


def test_explain_lists_every_request() -> None:
    result = scan("--explain")
    assert result.returncode == 0
    output = result.stdout.decode()
    for fp in fingerprints():
        for probe in fp.probes:
            assert probe.path in output
