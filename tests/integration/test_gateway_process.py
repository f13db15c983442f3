"""Starting and running the gateway process: refusals, exposure, workers."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.support.gateway import add_key, free_port, revoke_key, run_gateway_expecting_exit, start_gateway
from tests.support.http import request
from tests.support.upstream import FakeUpstream


def test_refuses_to_start_without_a_credential(upstream: FakeUpstream, tmp_path: Path) -> None:
    code, output = run_gateway_expecting_exit(tmp_path, "--upstream", upstream.url, "--listen", "127.0.0.1:0")
    assert code == 2
    assert "no active API key" in output and "aiperimeter keys create" in output
    assert "Traceback" not in output


def test_refuses_to_start_when_every_key_is_revoked(upstream: FakeUpstream, tmp_path: Path) -> None:
    record, _ = add_key(tmp_path)
    revoke_key(tmp_path, record.id)
    code, output = run_gateway_expecting_exit(tmp_path, "--upstream", upstream.url, "--listen", "127.0.0.1:0")
    assert code == 2 and "no active API key" in output


def test_non_loopback_listen_needs_expose(upstream: FakeUpstream, tmp_path: Path) -> None:
    add_key(tmp_path)
    code, output = run_gateway_expecting_exit(tmp_path, "--upstream", upstream.url, "--listen", "0.0.0.0:0")
    assert code == 2
    assert "--expose" in output and "Traceback" not in output


def test_exposed_listener_warns_what_is_exposed(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, key = add_key(tmp_path)
    port = free_port()
    gateway = start_gateway(tmp_path, upstream.url, "ollama", "--listen", f"0.0.0.0:{port}", "--expose")
    try:
        output = "".join(gateway.output)
        assert "WARNING" in output and "without TLS" in output and upstream.url in output
        assert request(port, "GET", "/api/tags", key=key).status == 200
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--upstream", "ftp://x"], "http:// or https://", id="bad-scheme"),
        pytest.param(["--upstream", "http://u:p@127.0.0.1:1"], "must not carry credentials", id="userinfo"),
        pytest.param(["--upstream", "http://127.0.0.1:1", "--kind", "tgi"], "kind", id="unknown-kind"),
        pytest.param(["--upstream", "http://127.0.0.1:1", "--listen", "::1:80"], "brackets", id="bare-ipv6"),
        pytest.param(["--upstream", "http://127.0.0.1:1", "--tls-cert", "c.pem"], "go together", id="half-tls"),
        pytest.param([], "no upstream given", id="no-upstream"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(tmp_path: Path, args: list[str], message: str) -> None:
    add_key(tmp_path)
    code, output = run_gateway_expecting_exit(tmp_path, *args)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


def test_config_file_errors_name_file_and_field(tmp_path: Path) -> None:
    add_key(tmp_path)
    config = tmp_path / "gw.yaml"
    config.write_text("upstream: http://127.0.0.1:1\nmax_body_byte: 10\n")
    code, output = run_gateway_expecting_exit(tmp_path, "--config", str(config))
    assert code == 2 and str(config) in output and "max_body_byte" in output and "unknown setting" in output
    config.write_text("upstream: [unclosed\n")
    code, output = run_gateway_expecting_exit(tmp_path, "--config", str(config))
    assert code == 2 and "not valid YAML at line" in output


def test_tls_listener(upstream: FakeUpstream, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    _, key = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    try:
        assert gateway.url.startswith("https://")
        import ssl
        import urllib.request

        context = ssl.create_default_context()
        ca.configure_trust(context)
        req = urllib.request.Request(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, context=context, timeout=5) as response:
            assert response.status == 200
    finally:
        gateway.stop()


def test_workers_share_the_port_and_spread_long_streams(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, key = add_key(tmp_path)
    release = asyncio.Event()
    started = threading.Semaphore(0)

    async def long_stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        started.release()
        await asyncio.wait_for(release.wait(), 20)
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.script("/v1/chat/completions", long_stream)
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--workers", "2")
    streams = 16
    results: list[int] = []

    def client() -> None:
        results.append(request(gateway.port, "POST", "/v1/chat/completions", key=key, body={"model": "m"}).status)

    try:
        threads = [threading.Thread(target=client) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for _ in range(streams):  # every stream is open at once before any ends
            assert started.acquire(timeout=15)
        upstream.loop.call_soon_threadsafe(release.set)
        for thread in threads:
            thread.join(20)
        assert results == [200] * streams
        pids = {r["pid"] for r in gateway.wait_audit(streams)}
        assert len(pids) == 2, f"all {streams} streams were served by one worker"
    finally:
        gateway.stop()


def test_a_killed_worker_is_replaced(upstream: FakeUpstream, tmp_path: Path) -> None:
    import os
    import signal
    import time

    _, key = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--workers", "2")
    try:
        for _ in range(8):
            assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        victim = int(gateway.audit()[0]["pid"])  # type: ignore[arg-type]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while "restarted as pid" not in "".join(gateway.output):
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.1)
        responses = [request(gateway.port, "GET", "/v1/models", key=key) for _ in range(20)]
        assert [r.status for r in responses] == [200] * 20
        # Audit lines are flushed in batches per worker, so match by request id rather than file position.
        served = {r.headers["x-request-id"] for r in responses}
        deadline = time.monotonic() + 10
        while not served <= {r["request_id"] for r in gateway.audit()}:
            assert time.monotonic() < deadline, "requests missing from the audit log"
            time.sleep(0.05)
        assert victim not in {r["pid"] for r in gateway.audit() if r["request_id"] in served}
    finally:
        assert gateway.stop() == 0


def test_graceful_stop_exits_zero_and_keeps_the_audit_log(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, key = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
    assert gateway.stop() == 0
    (record,) = gateway.audit()
    assert record["status"] == 200 and orjson.dumps(record).find(key.encode()) == -1
