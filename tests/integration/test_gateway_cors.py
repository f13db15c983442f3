"""CORS only for configured origins; preflights answered by the gateway, never forwarded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.http import request
from tests.support.upstream import FakeUpstream

APP = "https://chat.example.com"


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    data_dir = tmp_path_factory.mktemp("cors")
    config = data_dir / "gw.yaml"
    config.write_text(f"cors_origins: ['{APP}']\n")
    _, key = add_key(data_dir)
    process = start_gateway(data_dir, upstream.url, "openai", "--config", str(config))
    yield process, key
    process.stop()


def test_preflight_from_a_configured_origin(gateway: tuple[GatewayProcess, str], upstream: FakeUpstream) -> None:
    process, _ = gateway
    response = request(
        process.port,
        "OPTIONS",
        "/v1/chat/completions",
        headers=[
            ("Origin", APP),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
    )
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "access-control-allow-credentials" not in response.headers
    assert upstream.calls() == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")], id="other-origin"
        ),
        pytest.param([("Origin", APP)], id="not-a-preflight"),
    ],
)
def test_other_options_requests_need_a_key(
    gateway: tuple[GatewayProcess, str], upstream: FakeUpstream, headers: list[tuple[str, str]]
) -> None:
    process, _ = gateway
    response = request(process.port, "OPTIONS", "/v1/chat/completions", headers=headers)
    assert response.status in (401, 403)
    assert "access-control-allow-origin" not in response.headers or headers[0][1] == APP
    assert upstream.calls() == []


def test_responses_carry_cors_headers_for_the_origin(
    gateway: tuple[GatewayProcess, str], upstream: FakeUpstream
) -> None:
    process, key = gateway
    allowed = request(process.port, "GET", "/v1/models", key=key, headers=[("Origin", APP)])
    assert allowed.status == 200 and allowed.headers["access-control-allow-origin"] == APP
    denied = request(process.port, "GET", "/v1/models", headers=[("Origin", APP)])
    assert denied.status == 401 and denied.headers["access-control-allow-origin"] == APP  # the app can show why
    foreign = request(process.port, "GET", "/v1/models", key=key, headers=[("Origin", "https://evil.example")])
    assert foreign.status == 403 and "access-control-allow-origin" not in foreign.headers
    assert len(upstream.calls()) == 1
