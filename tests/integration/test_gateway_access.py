"""For every route of every kind, every method and every credential variant: nothing reaches the upstream unless
the allowlist admits it for that key. The fake upstream records everything; a case fails if anything it must not
see arrives there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiperimeter.config import KINDS
from aiperimeter.gateway.routes import ROUTES, Route
from aiperimeter.keys import generate_key
from tests.support.gateway import GatewayProcess, add_key, revoke_key, start_gateway
from tests.support.http import Response, request
from tests.support.upstream import FakeUpstream

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
SAMPLE_PARAMS = {"{model...}": "org/demo-model:8b", "{digest}": "sha256-" + "a" * 64, "{id}": "0"}


def concrete(path: str) -> str:
    for pattern, value in SAMPLE_PARAMS.items():
        path = path.replace(pattern, value)
    return path


def body_for(route: Route | None, method: str) -> bytes | None:
    if route is not None and route.body == "json":
        return b'{"model": "m1", "prompt": "hi"}'
    if route is not None and route.body == "raw":
        return b"\x00raw blob bytes"
    return b'{"model": "m1"}' if method in ("POST", "PUT", "PATCH") else None


@dataclass
class Keys:
    normal: str
    admin: str
    revoked: str
    expired: str


@dataclass
class Deployment:
    kind: str
    gateway: GatewayProcess
    keys: Keys


@pytest.fixture(scope="module")
def deployments(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Deployment]]:
    out: dict[str, Deployment] = {}
    try:
        for kind in KINDS:
            data_dir: Path = tmp_path_factory.mktemp(kind)
            _, normal = add_key(data_dir, "normal")
            _, admin = add_key(data_dir, "admin", scopes=frozenset({"admin"}))
            revoked_record, revoked = add_key(data_dir, "revoked", scopes=frozenset({"admin"}))
            revoke_key(data_dir, revoked_record.id)
            _, expired = add_key(data_dir, "expired", scopes=frozenset({"admin"}), expires_at=time.time() - 60)
            out[kind] = Deployment(
                kind, start_gateway(data_dir, upstream.url, kind), Keys(normal, admin, revoked, expired)
            )
        yield out
    finally:
        for deployment in out.values():
            deployment.gateway.stop()


def all_targets(kind: str) -> list[tuple[str, str, Route | None]]:
    """Every listed route with every method, plus paths of other kinds (which must be refused here)."""
    listed = {(r.method, concrete(r.path)): r for r in ROUTES[kind]}  # type: ignore[index]
    paths = {concrete(r.path) for routes in ROUTES.values() for r in routes}
    return [(method, path, listed.get((method, path))) for path in sorted(paths) for method in METHODS]


def unknown_key() -> str:
    return generate_key()[1]


CREDENTIALS = {
    "missing": lambda keys: [],
    "wrong": lambda keys: [("Authorization", f"Bearer {unknown_key()}")],
    "bad_checksum": lambda keys: [
        ("Authorization", f"Bearer {keys.normal[:-1]}{'y' if keys.normal[-1] != 'y' else 'z'}")
    ],
    "not_ours": lambda keys: [("Authorization", "Bearer sk-proj-0123456789abcdef")],
    "basic": lambda keys: [("Authorization", "Basic dXNlcjpwYXNz")],
    "revoked": lambda keys: [("Authorization", f"Bearer {keys.revoked}")],
    "expired": lambda keys: [("Authorization", f"Bearer {keys.expired}")],
    "duplicated": lambda keys: [("Authorization", f"Bearer {keys.admin}"), ("Authorization", f"Bearer {keys.admin}")],
    "conflicting": lambda keys: [("Authorization", f"Bearer {keys.admin}"), ("x-api-key", keys.normal)],
    "empty_bearer": lambda keys: [("Authorization", "Bearer ")],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", sorted(CREDENTIALS))
def test_no_valid_credential_reaches_nothing(
    deployments: dict[str, Deployment], upstream: FakeUpstream, kind: str, variant: str
) -> None:
    deployment = deployments[kind]
    failures = []
    for method, path, route in all_targets(kind):
        headers = CREDENTIALS[variant](deployment.keys)
        response = request(deployment.gateway.port, method, path, headers=headers, body=body_for(route, method))
        if response.status != 401:
            failures.append(f"{method} {path}: {response.status}")
        elif method != "HEAD" and response.code is None:
            failures.append(f"{method} {path}: 401 without an error code")
    assert not failures, failures[:20]
    assert upstream.calls() == []


@pytest.mark.parametrize("kind", KINDS)
def test_key_in_query_string_is_not_a_credential(
    deployments: dict[str, Deployment], upstream: FakeUpstream, kind: str
) -> None:
    deployment = deployments[kind]
    for param in ("key", "api_key", "access_token", "token"):
        for route in ROUTES[kind]:  # type: ignore[index]
            target = f"{concrete(route.path)}?{param}={deployment.keys.admin}"
            response = request(deployment.gateway.port, route.method, target, body=body_for(route, route.method))
            assert response.status == 401, (route, param)
    assert upstream.calls() == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("who", ["normal", "admin"])
def test_only_allowlisted_routes_reach_the_upstream(
    deployments: dict[str, Deployment], upstream: FakeUpstream, kind: str, who: str
) -> None:
    deployment = deployments[kind]
    key = getattr(deployment.keys, who)
    failures = []
    for method, path, route in all_targets(kind):
        upstream.clear()
        response: Response = request(deployment.gateway.port, method, path, key=key, body=body_for(route, method))
        calls = upstream.calls()
        allowed = route is not None and (who == "admin" or not route.admin)
        if allowed:
            if response.status != 200 or len(calls) != 1:
                failures.append(f"{method} {path}: expected forwarding, got {response.status} and {len(calls)} calls")
            elif (calls[0].method, calls[0].raw_path) != (method, path):
                failures.append(f"{method} {path}: upstream saw {calls[0].method} {calls[0].raw_path}")
        else:
            expected = "admin_scope_required" if route is not None else "route_not_allowed"
            if response.status != 403 or calls:
                failures.append(f"{method} {path}: expected 403, got {response.status} and {len(calls)} calls")
            elif method != "HEAD" and response.code != expected:
                failures.append(f"{method} {path}: code {response.code}, expected {expected}")
    assert not failures, failures[:20]


def test_anthropic_clients_authenticate_with_x_api_key(
    deployments: dict[str, Deployment], upstream: FakeUpstream
) -> None:
    deployment = deployments["anthropic"]
    response = request(
        deployment.gateway.port,
        "POST",
        "/v1/messages",
        headers=[("x-api-key", deployment.keys.normal), ("anthropic-version", "2023-06-01")],
        body={"model": "claude-x", "max_tokens": 5, "messages": []},
    )
    assert response.status == 200
    (call,) = upstream.calls()
    assert "x-api-key" not in call.headers and "authorization" not in call.headers
    assert call.headers["anthropic-version"] == "2023-06-01"


def test_denials_are_audited_without_secrets(deployments: dict[str, Deployment]) -> None:
    records = [r for r in deployments["ollama"].gateway.audit() if "request_id" in r]  # requests, not key events
    denies = {r["deny"] for r in records}
    assert {"missing_credentials", "invalid_key", "key_revoked", "key_expired", "admin_scope_required"} <= denies
    assert all(r["status"] in (200, 401, 403) for r in records)
