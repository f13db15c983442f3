"""GET /admin/metrics on a real gateway: the numbers match the traffic sent, one worker or two, and the route opens
only to an admin key or the metrics token (which opens nothing else)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from pathlib import Path

import orjson
import psutil
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from tests.integration.test_admin_api import admin_port, wait_for
from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.http import Response, request
from tests.support.leaks import LEAKS
from tests.support.metrics import Samples, samples, value
from tests.support.upstream import FakeUpstream

OK = {"route": "/v1/models", "status_class": "2xx", "outcome": "ok"}


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The scrapers' token, given to the gateway through its environment."""
    value = f"mt-{secrets.token_hex(20)}"
    LEAKS.secrets.add(value)
    monkeypatch.setenv("AIPERIMETER_METRICS_TOKEN", value)
    return value


def start(tmp_path: Path, upstream: FakeUpstream, *extra: str) -> tuple[GatewayProcess, int, str, str]:
    """(gateway, admin port, admin key, normal key)"""
    _, admin = add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    _, key = add_key(tmp_path, "app")
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--admin-listen", "127.0.0.1:0", *extra)
    return gateway, admin_port(gateway), admin, key


def scrape(port: int, credential: str, secrets_: tuple[str, ...] = ()) -> Samples:
    response = request(port, "GET", "/admin/metrics", key=credential)
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert response.headers["cache-control"] == "no-store"
    text = response.body.decode()
    for secret in (credential, *secrets_):
        assert secret not in text
    return samples(text)


def counters(found: Samples) -> Samples:
    return {k: v for k, v in found.items() if k[0] != "aiperimeter_watch_lag_seconds"}


def test_the_metrics_match_the_traffic_sent(upstream: FakeUpstream, tmp_path: Path, token: str) -> None:
    release = asyncio.Event()

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"text":"first"}]}\n\n')
        await asyncio.wait_for(release.wait(), 10)
        await response.write(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":11}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def broken(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()  # the model server dies mid-request
        return web.Response()

    upstream.script("/v1/completions", stream)
    upstream.script("/v1/embeddings", broken)
    gateway, port, admin, key = start(tmp_path, upstream)
    secrets_ = (admin, key, token)
    try:
        for _ in range(2):
            assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        chat = request(gateway.port, "POST", "/v1/chat/completions", key=key, body={"model": "m", "messages": []})
        assert chat.status == 200
        assert request(gateway.port, "GET", "/v1/models").code == "missing_credentials"
        assert request(gateway.port, "GET", "/v1/models", key=key[:-1] + "x").status == 401
        refused = request(gateway.port, "GET", "/v1/secrets", key=key)
        assert refused.status in (403, 404)
        failed = request(gateway.port, "POST", "/v1/embeddings", key=key, body={"model": "m", "input": "x"})
        assert failed.status == 502

        body = orjson.dumps({"model": "m", "prompt": "p", "stream": True})
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            received = b""
            while b"first" not in received:
                chunk = sock.recv(65536)
                assert chunk, "the stream closed before its first event"
                received += chunk
            during = scrape(port, token, secrets_)  # the stream is open: it has started and not ended
            upstream.loop.call_soon_threadsafe(release.set)
            while chunk := sock.recv(65536):  # the gateway closes the connection once the request has finished
                received += chunk
        assert b"[DONE]" in received
        assert value(during, "aiperimeter_active_streams") == 1
        assert value(during, "aiperimeter_inflight_requests") == 1

        found = scrape(port, token, secrets_)
        assert counters(found) == counters(scrape(port, admin, secrets_))  # either credential reads the same
        assert value(found, "aiperimeter_active_streams") == 0 and value(found, "aiperimeter_inflight_requests") == 0
        assert value(found, "aiperimeter_workers") == 1
        requests = {
            (dict(labels)["route"], dict(labels)["status_class"], dict(labels)["outcome"]): count
            for (name, labels), count in found.items()
            if name == "aiperimeter_requests_total"
        }
        assert requests == {
            ("/v1/models", "2xx", "ok"): 2,
            ("/v1/chat/completions", "2xx", "ok"): 1,
            ("/v1/completions", "2xx", "ok"): 1,
            ("none", "4xx", "denied"): 3,  # no key, a wrong key, a path off the allowlist
            ("/v1/embeddings", "5xx", "upstream_error"): 1,
        }
        assert value(found, "aiperimeter_denied_total", code="missing_credentials") == 1
        assert value(found, "aiperimeter_denied_total", code=str(refused.code)) == 1
        assert value(found, "aiperimeter_auth_failures_total", code="missing_credentials") == 1
        assert sum(v for (n, _), v in found.items() if n == "aiperimeter_auth_failures_total") == 2
        assert value(found, "aiperimeter_upstream_errors_total", code=str(failed.code)) == 1
        key_id = key[4:16]
        assert value(found, "aiperimeter_key_requests_total", key=key_id) == 6  # every request its key opened
        assert value(found, "aiperimeter_tokens_total", direction="in", key=key_id) == 3 + 3 + 3 + 7
        assert value(found, "aiperimeter_tokens_total", direction="out", key=key_id) == 5 + 5 + 5 + 11
        assert value(found, "aiperimeter_request_duration_seconds_count") == 8
        assert value(found, "aiperimeter_gateway_overhead_seconds_count") == 4  # those the model server answered
        assert value(found, "aiperimeter_build_info", version=__import__("aiperimeter").__version__) == 1
        assert len(gateway.audit()) == 8
    finally:
        gateway.stop()


def test_only_an_admin_key_or_the_metrics_token_opens_the_metrics(
    upstream: FakeUpstream, tmp_path: Path, token: str
) -> None:
    gateway, port, admin, key = start(tmp_path, upstream)

    def status(
        method: str,
        path: str,
        credential: str | None,
        body: dict[str, object] | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        return request(port, method, path, key=credential, body=body, headers=headers)

    try:
        assert status("GET", "/admin/metrics", None).code == "missing_credentials"
        assert status("GET", "/admin/metrics", token[:-1] + "0").status == 401
        assert status("GET", "/admin/metrics", token + "x").status == 401
        normal = status("GET", "/admin/metrics", key)
        assert (normal.status, normal.code) == (403, "admin_scope_required")
        # The token opens the metrics and nothing else.
        for method, path in (
            ("GET", "/admin/keys"),
            ("POST", "/admin/keys"),
            ("GET", f"/admin/keys/{key[4:16]}"),
            ("POST", f"/admin/keys/{key[4:16]}/revoke"),
            ("GET", "/admin/healthz"),
            ("GET", "/admin/dashboard"),
            ("GET", "/admin/metrics/../keys"),
        ):
            refused = status(method, path, token, body={"name": "x"} if method == "POST" else None)
            assert refused.status in (401, 404), (method, path, refused.status)
        assert request(gateway.port, "GET", "/v1/models", key=token).status == 401  # nor the gateway itself
        assert status("GET", "/admin/keys", admin).status == 200
        assert status("POST", "/admin/metrics", token, body={}).status == 405
        assert status("GET", "/admin/metrics?x=1", token).code == "unexpected_query"
        openmetrics = status(
            "GET", "/admin/metrics", token, headers=[("Accept", "application/openmetrics-text;version=1.0.0")]
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        names = {f.name for f in openmetrics_families(openmetrics.body.decode())}
        assert {"aiperimeter_requests", "aiperimeter_request_duration_seconds", "aiperimeter_workers"} <= names
    finally:
        gateway.stop()
    assert not any(token in line for line in gateway.output)


def test_without_a_metrics_token_only_the_admin_key_opens_them(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIPERIMETER_METRICS_TOKEN", raising=False)
    gateway, port, admin, _ = start(tmp_path, upstream)
    try:
        assert request(port, "GET", "/admin/metrics", key="x" * 40).status == 401
        assert value(scrape(port, admin), "aiperimeter_workers") == 1
    finally:
        gateway.stop()


def test_two_workers_add_up_and_a_killed_worker_takes_nothing_away(
    upstream: FakeUpstream, tmp_path: Path, token: str
) -> None:
    gateway, port, _, key = start(tmp_path, upstream, "--workers", "2")
    line = next(line for line in gateway.output if "2 workers:" in line)
    worker0, worker1 = (int(p) for p in line.rsplit(":", 1)[1].strip(" )\n").split(", "))
    seen: list[float] = []

    def total() -> float:
        found = scrape(port, token, (key,))
        count = value(found, "aiperimeter_requests_total", **OK)
        assert not seen or count >= seen[-1], "a counter went backwards"
        seen.append(count)
        return count

    try:
        sent = 40
        for _ in range(sent):
            assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        assert len({r["pid"] for r in gateway.wait_audit(sent)}) == 2, "one worker served every request"
        wait_for(lambda: total() == sent, 10)  # each worker's snapshot is at most a second old
        assert value(scrape(port, token), "aiperimeter_workers") == 2

        os.kill(worker1, signal.SIGKILL)  # its last snapshot holds every request it served
        wait_for(lambda: not psutil.pid_exists(worker1) or psutil.Process(worker1).status() == "zombie", 10)
        assert total() == sent
        wait_for(lambda: any("restarted as pid" in line for line in gateway.output), 20)
        wait_for(lambda: value(scrape(port, token), "aiperimeter_workers") == 2, 10)
        assert total() == sent
        folder = next((tmp_path / "metrics").iterdir())
        assert (folder / "retired.json").exists()
        assert not [p for p in folder.iterdir() if p.name.startswith(f"{worker1}-")]

        for _ in range(10):
            assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        wait_for(lambda: total() == sent + 10, 10)
        assert psutil.pid_exists(worker0)
    finally:
        gateway.stop()
