"""Listeners: real sockets bound by the test on 0.0.0.0, :: and 127.0.0.1, with mock AI services behind them.

The audit probes wildcard binds over loopback, so no traffic leaves the host. `--ports` keeps it to the test's own
sockets, so nothing else listening on this machine is touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import orjson
import pytest

from tests.support.services import ExampleServer


def audit_listeners(*ports: int) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "audit", "--ports", ",".join(map(str, ports)), "--format", "json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr.decode()
    return done.returncode, orjson.loads(done.stdout)


def by_socket(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["socket"]: f for f in doc["findings"]}


def test_open_ollama_on_all_interfaces_is_named_and_judged() -> None:
    with ExampleServer("ollama", "open", "0.0.0.0") as exposed, ExampleServer("ollama", "open", "127.0.0.1") as local:
        code, doc = audit_listeners(exposed.port, local.port)
    findings = by_socket(doc)
    assert code == 1
    assert set(findings) == {f"0.0.0.0:{exposed.port}"}
    finding = findings[f"0.0.0.0:{exposed.port}"]
    assert finding["kind"] == "listener"
    assert (finding["product"], finding["verdict"]) == ("ollama", "open")
    assert finding["severity"] in ("high", "critical")
    assert finding["process"].endswith(f"(pid {os.getpid()})")  # this test process owns the socket
    assert "127.0.0.1" in finding["fix"]
    # The same product on loopback is fine, and the report says so.
    assert doc["listeners_fine"] == [
        {"socket": f"127.0.0.1:{local.port}", "process": finding["process"], "product": "Ollama", "verdict": "open"}
    ]


def test_ipv6_wildcard_is_probed_over_ipv6_loopback() -> None:
    with ExampleServer("ollama", "open", "::") as exposed:
        _, doc = audit_listeners(exposed.port)
    finding = by_socket(doc)[f"[::]:{exposed.port}"]
    assert (finding["product"], finding["verdict"]) == ("ollama", "open")


@pytest.mark.parametrize(
    ("product", "verdict", "severity"),
    [
        pytest.param("vllm", "protected", "low", id="protected-vllm-still-reported-low"),
        pytest.param("aiperimeter-gateway", "protected", "info", id="the-gateway-itself-is-info"),
    ],
)
def test_protected_services_beyond_loopback(product: str, verdict: str, severity: str) -> None:
    with ExampleServer(product, verdict, "0.0.0.0") as server:
        code, doc = audit_listeners(server.port)
    finding = by_socket(doc)[f"0.0.0.0:{server.port}"]
    assert (finding["product"], finding["verdict"], finding["severity"]) == (product, verdict, severity)
    assert code == 0  # nothing at or above the default --fail-on high


def test_a_non_ai_listener_is_not_a_finding() -> None:
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    try:
        code, doc = audit_listeners(listener.getsockname()[1])
    finally:
        listener.close()
    assert (code, doc["findings"], doc["listeners_fine"]) == (0, [], [])
