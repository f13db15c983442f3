"""Canary keys on a real gateway: answered exactly as keys that do not exist, never forwarded, recorded with the
caller's details; made with `keys create --canary` or the admin API, and marked in `keys list`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from aiperimeter.keys import KEY_RE, generate_key, parse_key
from tests.integration.test_admin_api import admin_port, api
from tests.support.gateway import GatewayProcess, add_key, revoke_key, start_gateway
from tests.support.http import Response, request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

# Headers that differ between any two answers: the request's own id, and the clock.
PER_REQUEST = {"x-request-id", "date"}
LONG_AGENT = "scanner/1.0\t(" + "x" * 400 + ")"


def stranger() -> str:
    """A key of the right form and checksum that the store has never seen."""
    _, secret = generate_key()
    LEAKS.secrets.add(secret)
    return secret


def answer(response: Response) -> tuple[int, dict[str, str], bytes]:
    return response.status, {k: v for k, v in response.headers.items() if k not in PER_REQUEST}, response.body


@pytest.fixture
def gateway(tmp_path: Path, upstream: FakeUpstream) -> Iterator[GatewayProcess]:
    add_key(tmp_path, "app")
    process = start_gateway(tmp_path, upstream.url, "openai")
    yield process
    process.stop()


def canary_records(gateway: GatewayProcess, count: int = 1, within: float = 5.0) -> list[dict[str, object]]:
    """The audit records of canary uses, once there are `count` of them (or `within` seconds have passed)."""
    deadline = time.monotonic() + within
    while True:
        found = [r for r in gateway.audit() if r.get("canary") is True]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_canary_is_answered_as_a_key_that_does_not_exist(
    tmp_path: Path, upstream: FakeUpstream, gateway: GatewayProcess
) -> None:
    canary, secret = add_key(tmp_path, "bait", canary=True)
    cases: list[tuple[str, str, dict[str, object] | None]] = [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "m"}),
    ]
    for method, path, body in cases:
        for header in ("Authorization", "x-api-key"):
            value = f"Bearer {secret}" if header == "Authorization" else secret
            other = f"Bearer {stranger()}" if header == "Authorization" else stranger()
            used = request(gateway.port, method, path, headers=[(header, value)], body=body)
            unknown = request(gateway.port, method, path, headers=[(header, other)], body=body)
            assert used.status == 401 and used.code == "invalid_key"
            assert answer(used) == answer(unknown), (method, path, header)
    # Cached by now, revoked later: the answer never changes.
    revoke_key(tmp_path, canary.id)
    assert answer(request(gateway.port, "GET", "/v1/models", key=secret)) == answer(
        request(gateway.port, "GET", "/v1/models", key=stranger())
    )
    assert upstream.calls() == []


def test_a_canary_use_is_recorded_with_the_callers_details(
    tmp_path: Path, upstream: FakeUpstream, gateway: GatewayProcess
) -> None:
    canary, secret = add_key(tmp_path, "bait", canary=True)
    request(
        gateway.port,
        "POST",
        "/v1/chat/completions?stolen=1",
        key=secret,
        headers=[("User-Agent", LONG_AGENT)],
        body={"model": "m"},
    )
    request(gateway.port, "GET", "/v1/models", key=stranger(), headers=[("User-Agent", "curl/8.5")])
    [hit] = canary_records(gateway)
    records = gateway.wait_audit(2)
    assert hit["key_id"] == canary.id and hit["client"] == "127.0.0.1"
    assert (hit["method"], hit["path"], hit["status"], hit["deny"]) == (
        "POST",
        "/v1/chat/completions",
        401,
        "invalid_key",
    )
    agent = str(hit["user_agent"])
    assert len(agent) == 256 and agent.startswith("scanner/1.0?(xxx")  # printable, truncated
    [other] = [r for r in records if r is not hit and r.get("request_id") != hit["request_id"]]
    assert "canary" not in other and "user_agent" not in other and other["key_id"] is None
    assert upstream.calls() == []
    assert secret not in (tmp_path / "audit.jsonl").read_text()


def test_a_canary_among_valid_keys_changes_nothing_for_them(
    tmp_path: Path, upstream: FakeUpstream, gateway: GatewayProcess
) -> None:
    _, secret = add_key(tmp_path, "bait", canary=True)
    _, valid = add_key(tmp_path, "svc")
    assert request(gateway.port, "GET", "/v1/models", key=secret).status == 401
    assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200
    assert len(upstream.calls()) == 1


# --- making canaries --------------------------------------------------------------------------------------------


def keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "keys", *args, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done


def test_keys_create_canary_looks_like_any_key_and_is_marked_in_the_list(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    created = keys(tmp_path, "create", "--name", "bait", "--canary")
    assert created.returncode == 0, created.stderr
    match = KEY_RE.search(created.stdout)
    assert match is not None
    secret = match.group(0)
    LEAKS.secrets.add(secret)
    key_id = parse_key(secret)  # same prefix, id, length and valid checksum as any key
    assert key_id is not None and len(secret) == len(generate_key()[1])
    text = " ".join(created.stdout.split())
    assert "canary" in text and ".env" in text and "critical alert" in text
    LEAKS.texts.append(created.stdout.replace(secret, "<shown once>") + created.stderr)

    listed = keys(tmp_path, "list")
    assert listed.returncode == 0 and "CANARY" in listed.stdout
    [row] = [line for line in listed.stdout.splitlines() if key_id in line]
    assert "CANARY" in row
    [doc] = orjson.loads(keys(tmp_path, "list", "--json").stdout)
    assert doc["canary"] is True and doc["status"] == "active" and doc["scopes"] == []

    rotated = keys(tmp_path, "rotate", key_id)
    assert rotated.returncode == 2 and "is a canary" in rotated.stderr and not KEY_RE.search(rotated.stdout)

    add_key(tmp_path, "app")
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        used = request(gateway.port, "GET", "/v1/models", key=secret)
        assert used.status == 401 and used.code == "invalid_key"
        assert [r["key_id"] for r in canary_records(gateway)] == [key_id]
    finally:
        gateway.stop()
    assert upstream.calls() == []


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(("--scope", "admin"), id="admin-scope"),
        pytest.param(("--models", "m1"), id="models"),
        pytest.param(("--expires", "30d"), id="expiry"),
        pytest.param(("--rpm", "10"), id="limits"),
        pytest.param(("--tool-policy", "analytics"), id="tool-policy"),
    ],
)
def test_keys_create_refuses_a_canary_with_options_that_make_no_sense(tmp_path: Path, extra: tuple[str, ...]) -> None:
    done = keys(tmp_path, "create", "--name", "bait", "--canary", *extra)
    assert done.returncode == 2 and f"cannot be combined with {extra[0]}" in " ".join(done.stderr.split())
    assert not KEY_RE.search(done.stdout)
    assert orjson.loads(keys(tmp_path, "list", "--json").stdout) == []


def test_admin_api_creates_canaries_and_never_accepts_one(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, admin = add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--admin-listen", "127.0.0.1:0")
    try:
        port = admin_port(gateway)
        created = api(port, "POST", "/admin/keys", admin, {"name": "bait", "canary": True})
        assert created.status == 201, created.body
        doc = created.json()
        secret = str(doc["secret"])
        assert doc["canary"] is True and parse_key(secret) == doc["id"]
        assert api(port, "GET", f"/admin/keys/{doc['id']}", admin).json()["canary"] is True
        plain = api(port, "POST", "/admin/keys", admin, {"name": "svc"}).json()
        assert plain["canary"] is False

        refused = api(port, "POST", "/admin/keys", admin, {"name": "bait", "canary": True, "scopes": ["admin"]})
        assert refused.status == 400 and refused.code == "canary_options" and "scopes" in str(refused.json()["error"])
        refused = api(port, "POST", "/admin/keys", admin, {"name": "bait", "canary": True, "rpm": 5})
        assert refused.status == 400 and refused.code == "canary_options"
        rotated = api(port, "POST", f"/admin/keys/{doc['id']}/rotate", admin, {})
        assert rotated.status == 409 and rotated.code == "canary_not_rotatable"

        # At the gateway as at the admin API, the canary is a key that does not exist.
        used = request(gateway.port, "GET", "/v1/models", key=secret)
        assert answer(used) == answer(request(gateway.port, "GET", "/v1/models", key=stranger()))
        on_admin = api(port, "GET", "/admin/keys", secret)
        assert on_admin.status == 401 and on_admin.code == "invalid_key"
        assert [r["key_id"] for r in canary_records(gateway, 2)] == [doc["id"]] * 2  # the gateway's, the admin API's
    finally:
        gateway.stop()
    assert upstream.calls() == []


def test_a_canary_tried_on_the_admin_listener_is_recorded_and_raises_the_alert(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    add_key(tmp_path, "ops", scopes=frozenset({"admin"}))
    canary, secret = add_key(tmp_path, "bait", canary=True)
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--admin-listen", "127.0.0.1:0")
    try:
        port = admin_port(gateway)
        agent = [("User-Agent", LONG_AGENT)]
        used = request(port, "GET", "/admin/keys?limit=5", headers=[("Authorization", f"Bearer {secret}"), *agent])
        unknown = request(port, "GET", "/admin/keys?limit=5", headers=[("Authorization", f"Bearer {stranger()}")])
        assert used.status == 401 and used.code == "invalid_key"
        assert answer(used) == answer(unknown)  # told apart from an unknown key only in the audit log
        basic = "Basic " + base64.b64encode(f"admin:{secret}".encode()).decode()
        dashboard = request(port, "GET", "/admin/dashboard", headers=[("Authorization", basic)])
        assert dashboard.status == 401 and dashboard.code == "invalid_key"

        first, second = canary_records(gateway, 2)
        for record, path in ((first, "/admin/keys"), (second, "/admin/dashboard")):
            assert record["key_id"] == canary.id and record["client"] == "127.0.0.1"
            assert (record["method"], record["path"], record["status"], record["deny"]) == (
                "GET",
                path,
                401,
                "invalid_key",
            )
            assert isinstance(record["request_id"], str) and len(record["request_id"]) >= 16
        assert first["user_agent"] == LONG_AGENT.replace("\t", "?")[:256] and second["user_agent"] is None
        assert first["request_id"] != second["request_id"]
        # Only a canary is recorded there: the stranger's key left no line.
        assert not [r for r in gateway.audit() if r.get("deny") == "invalid_key" and not r.get("canary")]

        # The watcher reads the audit log and raises the critical alert, which the CLI lists from the store.
        deadline = time.monotonic() + 10
        while True:
            listed = subprocess.run(
                [sys.executable, "-m", "aiperimeter", "watch", "alerts", "--json", "--data-dir", str(tmp_path)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            canaries = [a for a in orjson.loads(listed.stdout) if a["kind"] == "canary"]
            if canaries or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [(a["severity"], a["key"]) for a in canaries] == [("critical", canary.id)]
    finally:
        gateway.stop()
    assert upstream.calls() == []
