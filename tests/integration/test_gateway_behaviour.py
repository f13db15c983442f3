"""The gateway over real loopback sockets, in front of a fake upstream that records what reaches it."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.support.gateway import GatewayProcess, add_key, free_port, revoke_key, start_gateway
from tests.support.http import raw, request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream


@pytest.fixture(scope="module")
def ollama(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    data_dir = tmp_path_factory.mktemp("ollama")
    _, key = add_key(data_dir, "normal")
    gateway = start_gateway(data_dir, upstream.url, "ollama")
    yield gateway, key
    gateway.stop()


# ---- path tricks against admin routes ------------------------------------------------------------------------

PATH_TRICKS = [
    pytest.param("//api/pull", 400, id="leading-double-slash"),
    pytest.param("/api//pull", 400, id="inner-double-slash"),
    pytest.param("/api/./pull", 400, id="dot-segment"),
    pytest.param("/api/x/../pull", 400, id="dotdot-segment"),
    pytest.param("/v1/models/../../api/pull", 400, id="dotdot-from-allowed-prefix"),
    pytest.param("/api%2fpull", 400, id="encoded-slash-lower"),
    pytest.param("/api%2Fpull", 400, id="encoded-slash-upper"),
    pytest.param("/api/%2e%2e/api/pull", 400, id="encoded-dotdot"),
    pytest.param("/api/%2E/pull", 400, id="encoded-dot"),
    pytest.param("/%61pi/pull", 400, id="encoded-letter"),
    pytest.param("/api/pul%6c", 400, id="encoded-last-letter"),
    pytest.param("/api/pull%00", 400, id="encoded-nul"),
    pytest.param("/api/pull%", 400, id="bare-percent"),
    pytest.param("/api/pull%2", 400, id="truncated-percent"),
    pytest.param("/api/%252e%252e/pull", 400, id="double-encoded"),
    pytest.param("/api\\pull", 400, id="backslash"),
    pytest.param("/api%5cpull", 400, id="encoded-backslash"),
    pytest.param("/api/pull;x=1", 400, id="semicolon-parameter"),
    pytest.param("/api/pull#frag", 400, id="fragment"),
    pytest.param("/v1/models/x%2f..%2f..%2fapi%2fpull", 400, id="encoded-traversal-in-param"),
    pytest.param("/API/PULL", 403, id="upper-case"),
    pytest.param("/Api/Pull", 403, id="mixed-case"),
    pytest.param("/api/pull/", 403, id="trailing-slash"),
    pytest.param("/api/pull.json", 403, id="suffix"),
    pytest.param("/api/pull?x=1", 403, id="query"),
    pytest.param("/api/tags/../pull", 400, id="dotdot-after-allowed"),
    pytest.param("http://127.0.0.1/api/pull", 403, id="absolute-form-same-host"),
    pytest.param("http://evil.example/api/tags", 400, id="absolute-form-other-host"),
    pytest.param("http://127.0.0.1@evil.example/api/tags", 400, id="absolute-form-userinfo"),
    pytest.param("*", 400, id="asterisk-form"),
    pytest.param("api/pull", 400, id="no-leading-slash"),
]


@pytest.mark.parametrize(("target", "status"), PATH_TRICKS)
def test_path_tricks_never_reach_admin_routes(
    ollama: tuple[GatewayProcess, str], upstream: FakeUpstream, target: str, status: int
) -> None:
    gateway, key = ollama
    body = orjson.dumps({"model": "llama3"})
    data = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
    response = raw(gateway.port, data)
    assert response.status == status
    assert upstream.calls() == []


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"POST /api/pull\x00 HTTP/1.1", id="nul"),
        pytest.param(b"POST /api/pull\t HTTP/1.1", id="tab"),
        pytest.param(b"POST /api/\xc3\xbcpull HTTP/1.1", id="utf8"),
        pytest.param(b"POST /api/pull\xff HTTP/1.1", id="invalid-utf8"),
    ],
)
def test_raw_bytes_in_the_request_line_are_refused(
    ollama: tuple[GatewayProcess, str], upstream: FakeUpstream, line: bytes
) -> None:
    gateway, key = ollama
    data = line + f"\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    try:
        response = raw(gateway.port, data)
    except ConnectionError:
        pass  # the parser closed the connection: refused as well
    else:
        assert response.status == 400
    assert upstream.calls() == []


def test_method_override_headers_do_not_travel(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama
    overrides = [("X-HTTP-Method-Override", "DELETE"), ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "DELETE")]
    response = request(gateway.port, "POST", "/api/chat", key=key, headers=overrides, body={"model": "m"})
    assert response.status == 200
    (call,) = upstream.calls()
    assert not {"x-http-method-override", "x-http-method", "x-method-override"} & set(call.headers)


# ---- Host and Origin (DNS rebinding) ----------------------------------------------------------------------------

HOSTS = [
    pytest.param("127.0.0.1", 200, id="ip"),
    pytest.param("localhost", 200, id="localhost"),
    pytest.param("LOCALHOST:8787", 200, id="localhost-upper-port"),
    pytest.param("[::1]:8787", 200, id="ipv6-loopback"),
    pytest.param("evil.example", 403, id="rebinding-domain"),
    pytest.param("localhost.evil.example", 403, id="prefix-lookalike"),
    pytest.param("127.0.0.1.nip.io", 403, id="wildcard-dns"),
    pytest.param("localhost.", 403, id="trailing-dot"),
    pytest.param("127.0.0.1:80@evil.example", 403, id="userinfo"),
    pytest.param("127.0.0.1:abc", 403, id="bad-port"),
    pytest.param("", 403, id="empty"),
]


@pytest.mark.parametrize(("host", "status"), HOSTS)
def test_host_allowlist(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream, host: str, status: int) -> None:
    gateway, key = ollama
    response = request(gateway.port, "GET", "/api/tags", key=key, host=host)
    assert response.status == status
    assert len(upstream.calls()) == (1 if status == 200 else 0)


def test_missing_or_repeated_host_is_refused(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama
    no_host = raw(gateway.port, f"GET /api/tags HTTP/1.0\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    two_hosts = raw(
        gateway.port,
        f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nAuthorization: Bearer {key}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert (no_host.status, two_hosts.status) == (400, 400)
    assert upstream.calls() == []


ORIGINS = [
    pytest.param("http://localhost:3000", 200, id="local-app"),
    pytest.param("http://127.0.0.1:8787", 200, id="self"),
    pytest.param("http://evil.example", 403, id="foreign"),
    pytest.param("https://localhost.evil.example", 403, id="lookalike"),
    pytest.param("null", 403, id="null"),
    pytest.param("file://", 403, id="file"),
]


@pytest.mark.parametrize(("origin", "status"), ORIGINS)
def test_origin_allowlist(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream, origin: str, status: int) -> None:
    gateway, key = ollama
    response = request(gateway.port, "GET", "/api/tags", key=key, headers=[("Origin", origin)])
    assert response.status == status
    assert "access-control-allow-origin" not in response.headers  # CORS is off unless configured
    assert len(upstream.calls()) == (1 if status == 200 else 0)


# ---- forwarding -----------------------------------------------------------------------------------------------


def test_headers_forwarded_and_stripped(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama
    headers = [
        ("Cookie", "session=abc"),
        ("X-Forwarded-For", "10.9.9.9"),
        ("Forwarded", "for=10.9.9.9"),
        ("Connection", "close, X-Secret-Hop"),
        ("X-Secret-Hop", "should-not-pass"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("User-Agent", "test-client/1.0"),
        ("X-Custom", "kept"),
    ]
    response = request(gateway.port, "POST", "/api/chat", key=key, headers=headers, body={"model": "m1"})
    assert response.status == 200
    assert len(response.headers["x-request-id"]) == 24  # 8 random bytes per process, then a counter
    (call,) = upstream.calls()
    for dropped in ("authorization", "cookie", "x-forwarded-for", "forwarded", "x-secret-hop", "proxy-authorization"):
        assert dropped not in call.headers, dropped
    assert call.headers["user-agent"] == "test-client/1.0"
    assert call.headers["x-custom"] == "kept"
    assert call.headers["accept-encoding"] == "identity"
    assert call.body == b'{"model":"m1"}'


def test_upstream_credential_is_injected_and_never_logged(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream_key = "upstream-" + "k" * 40
    LEAKS.secrets.add(upstream_key)
    monkeypatch.setenv("AIPERIMETER_UPSTREAM_API_KEY", upstream_key)
    _, key = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "vllm")
    try:
        response = request(gateway.port, "GET", "/v1/models", key=key)
        assert response.status == 200
        (call,) = upstream.calls()
        assert call.headers["authorization"] == f"Bearer {upstream_key}"
    finally:
        gateway.stop()


def test_healthz_is_public_and_reveals_nothing(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, _ = ollama
    response = request(gateway.port, "GET", "/healthz", host="10.1.2.3")
    assert response.status == 200
    assert response.json() == {"status": "ok"}
    assert "aiohttp" not in response.headers.get("server", "") and "Python" not in response.headers.get("server", "")
    assert upstream.calls() == []
    assert request(gateway.port, "POST", "/healthz").status == 401


def test_error_responses_do_not_reveal_versions(ollama: tuple[GatewayProcess, str]) -> None:
    gateway, _ = ollama
    response = request(gateway.port, "GET", "/api/tags")
    assert response.status == 401
    assert "aiohttp" not in response.headers.get("server", "")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert set(response.json()["error"]) == {"message", "type", "code"}  # type: ignore[arg-type]


# ---- bodies ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    data_dir = tmp_path_factory.mktemp("small")
    config = data_dir / "gateway.yaml"
    config.write_text("max_body_bytes: 2048\n")
    _, key = add_key(data_dir)
    gateway = start_gateway(data_dir, upstream.url, "openai", "--config", str(config))
    yield gateway, key
    gateway.stop()


def test_oversized_body_is_413(small_body: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = small_body
    big = {"model": "m", "prompt": "x" * 5000}
    assert request(gateway.port, "POST", "/v1/completions", key=key, body=big).status == 413
    payload = orjson.dumps(big)
    chunked = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    for start in range(0, len(payload), 1000):
        piece = payload[start : start + 1000]
        chunked += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    assert raw(gateway.port, chunked + b"0\r\n\r\n").status == 413
    assert request(gateway.port, "POST", "/v1/completions", key=key, body={"model": "m"}).status == 200
    assert len(upstream.calls()) == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        pytest.param(b"{not json", [], 400, "invalid_json", id="not-json"),
        pytest.param(b"[1, 2]", [], 400, "invalid_json", id="array"),
        pytest.param(b'{"model": "m1", "model": "m2"}', [], 400, "ambiguous_model", id="duplicate-model"),
        pytest.param(b'{"model": "m1", "mod\\u0065l": "m2"}', [], 400, "ambiguous_model", id="escaped-duplicate"),
        pytest.param(b'{"model": 5}', [], 400, "invalid_model", id="model-not-string"),
        pytest.param(b'{"model": "m1"}', [("Content-Encoding", "gzip")], 415, "encoded_body", id="gzip-claimed"),
        pytest.param(b'{"prompt": "\xff\xfe"}', [], 400, "invalid_json", id="invalid-utf8"),
    ],
)
def test_bodies_the_gateway_cannot_read_exactly_are_refused(
    ollama: tuple[GatewayProcess, str],
    upstream: FakeUpstream,
    body: bytes,
    headers: list[tuple[str, str]],
    status: int,
    code: str,
) -> None:
    gateway, key = ollama
    response = request(gateway.port, "POST", "/api/chat", key=key, headers=headers, body=body)
    assert (response.status, response.code) == (status, code)
    assert upstream.calls() == []


def test_gzip_body_is_refused_not_inflated(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama
    body = gzip.compress(b'{"model": "forbidden"}')
    response = request(gateway.port, "POST", "/api/chat", key=key, headers=[("Content-Encoding", "gzip")], body=body)
    assert response.status == 415
    assert upstream.calls() == []


def test_get_route_with_a_body_is_refused(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama
    response = request(gateway.port, "GET", "/api/tags", key=key, body=b'{"x": 1}')
    assert (response.status, response.code) == (400, "unexpected_body")
    assert upstream.calls() == []


# ---- model scope ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scoped(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    data_dir = tmp_path_factory.mktemp("scoped")
    _, key = add_key(data_dir, "scoped", models=frozenset({"llama3:8b"}))
    gateway = start_gateway(data_dir, upstream.url, "ollama")
    yield gateway, key
    gateway.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("POST", "/api/chat", {"model": "llama3:8b"}, 200, id="allowed-model"),
        pytest.param("POST", "/api/chat", {"model": "mixtral"}, 403, id="other-model"),
        pytest.param("POST", "/api/chat", {"messages": []}, 400, id="no-model"),
        pytest.param("POST", "/api/show", {"name": "mixtral"}, 403, id="legacy-name-field"),
        pytest.param("POST", "/api/show", {"model": "llama3:8b", "name": "mixtral"}, 400, id="model-and-name-differ"),
        pytest.param("POST", "/v1/chat/completions", {"model": "llama3:8b"}, 200, id="openai-route"),
        pytest.param("POST", "/v1/embeddings", {"model": "LLAMA3:8B"}, 403, id="case-differs"),
        pytest.param("GET", "/v1/models/llama3:8b", None, 200, id="path-model-allowed"),
        pytest.param("GET", "/v1/models/mixtral", None, 403, id="path-model-other"),
    ],
)
def test_model_scope(
    scoped: tuple[GatewayProcess, str],
    upstream: FakeUpstream,
    method: str,
    path: str,
    body: dict[str, object] | None,
    status: int,
) -> None:
    gateway, key = scoped
    response = request(gateway.port, method, path, key=key, body=body)
    assert response.status == status
    assert len(upstream.calls()) == (1 if status == 200 else 0)


# ---- streaming --------------------------------------------------------------------------------------------------


def test_stream_arrives_incrementally_and_usage_is_audited(
    ollama: tuple[GatewayProcess, str], upstream: FakeUpstream
) -> None:
    gateway, key = ollama
    release = asyncio.Event()

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices":[{"delta":{"content":"first"}}]}\n\n')
        await asyncio.wait_for(release.wait(), 10)
        await response.write(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":11}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    upstream.script("/v1/chat/completions", stream)
    body = orjson.dumps({"model": "m", "stream": True})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"first" not in received:  # the upstream has not sent its last event yet
            chunk = sock.recv(65536)
            assert chunk, "stream closed before the first event"
            received += chunk
        assert b"x-accel-buffering: no" in received.lower()
        upstream.loop.call_soon_threadsafe(release.set)
        while chunk := sock.recv(65536):
            received += chunk
    assert b"[DONE]" in received
    record = gateway.wait_audit(1)[-1]
    assert record["stream"] is True
    assert record["usage"] == {"prompt_tokens": 7, "completion_tokens": 11}


def test_ollama_ndjson_usage(ollama: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    gateway, key = ollama

    async def chat(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"message":{"content":"hi"},"done":false}\n{"done":true,')
        await response.write(b'"prompt_eval_count":26,"eval_count":298}\n')
        await response.write_eof()
        return response

    upstream.script("/api/chat", chat)
    before = len(gateway.audit())
    response = request(gateway.port, "POST", "/api/chat", key=key, body={"model": "llama3"})
    assert response.status == 200 and response.body.count(b"\n") == 2
    record = gateway.wait_audit(before + 1)[-1]
    assert record["usage"] == {"prompt_tokens": 26, "completion_tokens": 298}
    assert record["model"] == "llama3"


def test_client_disconnect_cancels_the_upstream_request(
    ollama: tuple[GatewayProcess, str], upstream: FakeUpstream
) -> None:
    gateway, key = ollama
    cancelled = threading.Event()

    async def endless(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            for _ in range(600):
                await response.write(b'{"done":false}\n')
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionError):
            cancelled.set()
            raise
        return response

    upstream.script("/api/generate", endless)
    before = len(gateway.audit())
    body = orjson.dumps({"model": "m"})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(
            f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"done" not in received:
            chunk = sock.recv(65536)
            assert chunk, "stream closed early"
            received += chunk
    assert cancelled.wait(5), "the upstream request kept running after the client left"
    record = gateway.wait_audit(before + 1)[-1]
    assert record["outcome"] == "client_disconnected"


def test_upstream_down_is_502_quickly(tmp_path: Path) -> None:
    _, key = add_key(tmp_path)
    gateway = start_gateway(tmp_path, f"http://127.0.0.1:{free_port()}", "openai")
    try:
        started = time.monotonic()
        response = request(gateway.port, "GET", "/v1/models", key=key)
        assert (response.status, response.code) == (502, "upstream_unavailable")
        assert time.monotonic() - started < 2
        assert gateway.wait_audit(1)[-1]["outcome"] == "upstream_error"
    finally:
        gateway.stop()


def test_upstream_timeout_is_504(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("timeouts: {first_byte: 0.5}\n")
    _, key = add_key(tmp_path)

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(text="late")

    upstream.script("/v1/models", slow)
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", str(config))
    try:
        response = request(gateway.port, "GET", "/v1/models", key=key)
        assert (response.status, response.code) == (504, "upstream_timeout")
    finally:
        gateway.stop()


# ---- keys lifecycle -----------------------------------------------------------------------------------------


def test_revocation_reaches_a_running_gateway_within_a_second(upstream: FakeUpstream, tmp_path: Path) -> None:
    record, key = add_key(tmp_path)
    add_key(tmp_path, "other")
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        revoked_at = time.monotonic()
        revoke_key(tmp_path, record.id)
        while (response := request(gateway.port, "GET", "/v1/models", key=key)).status == 200:
            assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
            time.sleep(0.02)
        assert (response.status, response.code) == (401, "key_revoked")
    finally:
        gateway.stop()


def test_expiry_takes_effect_without_restart(upstream: FakeUpstream, tmp_path: Path) -> None:
    add_key(tmp_path, "long-lived")
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        expires_at = time.time() + 1.5
        _, key = add_key(tmp_path, "short", expires_at=expires_at)
        assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
        time.sleep(max(0.0, expires_at - time.time()) + 0.05)
        for _ in range(2):
            response = request(gateway.port, "GET", "/v1/models", key=key)
            assert (response.status, response.code) == (401, "key_expired")
        records = gateway.wait_audit(4)
        expired = [r for r in records if r.get("action") == "expire"]
        assert [(r["event"], r["actor"], r["expired_at"]) for r in expired] == [("key", "system", expires_at)]
        assert [r["key_id"] for r in records if r.get("deny") == "key_expired"] == [expired[0]["key_id"]] * 2
    finally:
        gateway.stop()


def test_keys_created_after_start_work_at_once(upstream: FakeUpstream, tmp_path: Path) -> None:
    add_key(tmp_path, "first")
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        _, key = add_key(tmp_path, "later")
        assert request(gateway.port, "GET", "/v1/models", key=key).status == 200
    finally:
        gateway.stop()
