"""Limits through the real gateway: requests, tokens (reserved, then settled) and concurrency, with the 429s and
headers OpenAI clients understand. Single machine (in-process limiter); the cluster test covers Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from aiohttp import web

from tests.support.gateway import add_key, start_gateway
from tests.support.http import Response, request
from tests.support.upstream import FakeUpstream


def parallel(port: int, key: str, count: int, body: dict[str, object] | None = None) -> list[Response]:
    payload = body or {"model": "m", "messages": []}
    with ThreadPoolExecutor(count) as pool:
        return list(
            pool.map(lambda _: request(port, "POST", "/v1/chat/completions", key=key, body=payload), range(count))
        )


def test_rpm_admits_exactly_the_limit_and_says_when_to_retry(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, key = add_key(tmp_path, rpm=5)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        responses = parallel(gateway.port, key, 20)
        admitted = [r for r in responses if r.status == 200]
        refused = [r for r in responses if r.status == 429]
        assert (len(admitted), len(refused)) == (5, 15)
        assert len(upstream.calls()) == 5  # refused requests never reach the model server
        for r in refused:
            assert r.code == "rate_limit_requests"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-requests"] == "5"
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted)
        assert remaining == [0, 1, 2, 3, 4]
    finally:
        gateway.stop()


def test_token_limit_reserves_before_and_settles_after(upstream: FakeUpstream, tmp_path: Path) -> None:
    """tpm 1000: a request asking for 600 completion tokens reserves about 600; the upstream reports 8 used, so
    the refund lets the next one in at once. Two at the same time cannot both reserve."""
    _, key = add_key(tmp_path, tpm=1000)
    release = threading.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return web.json_response({"usage": {"prompt_tokens": 3, "completion_tokens": 5}})

    upstream.script("/v1/chat/completions", slow)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    body = {"model": "m", "messages": [], "max_tokens": 600}
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, gateway.port, "POST", "/v1/chat/completions", key=key, body=body)
            deadline = time.monotonic() + 10
            while not upstream.calls():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            second = request(gateway.port, "POST", "/v1/chat/completions", key=key, body=body)
            assert (second.status, second.code) == (429, "rate_limit_tokens")
            assert int(second.headers["x-ratelimit-remaining-tokens"]) < 600
            release.set()
            assert first.result(10).status == 200
        # Settled at 8 tokens: room again for another 600 straight away.
        third = request(gateway.port, "POST", "/v1/chat/completions", key=key, body=body)
        assert third.status == 200
        assert int(third.headers["x-ratelimit-remaining-tokens"]) > 300
    finally:
        release.set()
        gateway.stop()


def test_concurrency_slots_are_held_for_the_whole_stream(upstream: FakeUpstream, tmp_path: Path) -> None:
    _, key = add_key(tmp_path, concurrency=2)
    release = threading.Event()
    started = threading.Semaphore(0)

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": []}\n\n')
        started.release()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await response.write(b"data: [DONE]\n\n")
        return response

    upstream.script("/v1/chat/completions", stream)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    body = {"model": "m", "messages": [], "stream": True}
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(request, gateway.port, "POST", "/v1/chat/completions", key=key, body=body) for _ in "ab"
            ]
            assert started.acquire(timeout=10) and started.acquire(timeout=10)
            third = request(gateway.port, "POST", "/v1/chat/completions", key=key, body=body)
            assert (third.status, third.code) == (429, "rate_limit_concurrency")
            release.set()
            assert [f.result(10).status for f in held] == [200, 200]
        assert request(gateway.port, "POST", "/v1/chat/completions", key=key, body=body).status == 200
    finally:
        release.set()
        gateway.stop()


def test_global_limit_spans_keys_and_workers_never_overshoot(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Two workers without Redis each enforce half of the limit: 6 rpm overall admits at most 6."""
    _, first = add_key(tmp_path, "a")
    _, second = add_key(tmp_path, "b")
    config = tmp_path / "gateway.yaml"
    config.write_text(orjson.dumps({"limits": {"global_rpm": 6}}).decode())
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--workers", "2", "--config", str(config))
    try:
        responses = parallel(gateway.port, first, 10) + parallel(gateway.port, second, 10)
        admitted = sum(r.status == 200 for r in responses)
        assert 1 <= admitted <= 6
        assert {r.code for r in responses if r.status == 429} == {"rate_limit_requests"}
    finally:
        gateway.stop()
