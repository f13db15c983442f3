"""Rotation, suspension and their audit trail, through the CLI, against a running gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.support.gateway import add_key, start_gateway
from tests.support.http import request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream


def keys_cli(data_dir: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "aiperimeter", "keys", *args, "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "USER": "alice", "LOGNAME": "alice"},
    )
    assert done.returncode == 0, done.stderr.decode()
    doc = orjson.loads(done.stdout)
    assert isinstance(doc, dict)
    if isinstance(doc.get("secret"), str):
        LEAKS.secrets.add(doc["secret"])
    return doc


def wait_for(check: object, seconds: float = 5.0) -> float:
    """Seconds until check() holds; fails after `seconds`."""
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - started < seconds, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - started


def status(port: int, key: str) -> tuple[int, str | None]:
    response = request(port, "GET", "/v1/models", key=key)
    return response.status, response.code if response.status != 200 else None


def test_rotation_keeps_the_old_secret_for_the_grace_then_refuses_it(upstream: FakeUpstream, tmp_path: Path) -> None:
    record, old = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        assert status(gateway.port, old) == (200, None)  # cached by the gateway before the rotation
        rotated = keys_cli(tmp_path, "rotate", record.id, "--grace", "3s")
        new = str(rotated["secret"])
        assert new != old and rotated["id"] == record.id
        assert rotated["rotation_grace_until"] is not None
        assert status(gateway.port, new) == (200, None)
        assert status(gateway.port, old) == (200, None)  # within the grace
        wait_for(lambda: status(gateway.port, old) == (401, "key_rotated"), 8)
        assert status(gateway.port, new) == (200, None)
        listed = subprocess.run(
            [sys.executable, "-m", "aiperimeter", "keys", "list", "--json", "--data-dir", str(tmp_path)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        (entry,) = orjson.loads(listed.stdout)
        assert entry["rotation_grace_until"] is None  # the grace is over
    finally:
        gateway.stop()


def test_suspend_and_resume_reach_the_running_gateway_within_a_second(upstream: FakeUpstream, tmp_path: Path) -> None:
    record, secret = add_key(tmp_path)
    gateway = start_gateway(tmp_path, upstream.url, "openai")
    try:
        assert status(gateway.port, secret) == (200, None)
        keys_cli(tmp_path, "suspend", record.id)
        wait_for(lambda: status(gateway.port, secret) == (401, "key_suspended"), 1.0)
        keys_cli(tmp_path, "resume", record.id)
        wait_for(lambda: status(gateway.port, secret) == (200, None), 1.0)
    finally:
        gateway.stop()


def test_lifecycle_events_are_in_the_audit_log_with_their_actor(tmp_path: Path) -> None:
    created = keys_cli(tmp_path, "create", "--name", "svc", "--rpm", "60", "--tpm", "5000", "--concurrency", "2")
    key_id = str(created["id"])
    assert created["limits"] == {"rpm": 60, "tpm": 5000, "concurrency": 2}
    keys_cli(tmp_path, "rotate", key_id, "--grace", "0s")
    keys_cli(tmp_path, "suspend", key_id)
    keys_cli(tmp_path, "resume", key_id)
    keys_cli(tmp_path, "revoke", key_id)
    events = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [(e["event"], e["action"], e["key_id"], e["actor"]) for e in events] == [
        ("key", action, key_id, "cli:alice") for action in ("create", "rotate", "suspend", "resume", "revoke")
    ]
    rotate = events[1]
    assert rotate["grace_until"] <= time.time()
    text = (tmp_path / "audit.jsonl").read_text()
    assert str(created["secret"]) not in text
