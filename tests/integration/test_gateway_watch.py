"""The watcher inside the real gateway: a key's learned behaviour (three weeks of history in its audit log), a burst
through the gateway, the alert posted to a webhook, and the key suspended by the automatic action, on every worker."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from aiperimeter.watch.observation import Observation
from tests.integration.test_cli import cli
from tests.support.gateway import GatewayProcess, add_key, start_gateway
from tests.support.http import request
from tests.support.traffic import record
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.slow


def seed_history(audit: Path, key: str, *, days: int = 21, client: str = "127.0.0.1") -> None:
    """Three weeks of a steady key: two to four requests an hour, around the clock, up to an hour ago."""
    rng = random.Random(7)
    now = time.time()
    start = now - days * 86400
    lines = []
    at, n = start, 0
    while at < now - 3600:
        at += rng.uniform(600, 1800)
        n += 1
        obs = Observation(
            time=at, request_id=f"history-{n}", key=key, client=client, route="models", model=None, status=200,
            tokens_in=3, tokens_out=5, bytes_in=0,  # as the fake upstream's answers
        )  # fmt: skip
        lines.append(orjson.dumps(record(obs), option=orjson.OPT_APPEND_NEWLINE))
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_bytes(b"".join(lines))


def wait_for(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def hook() -> FakeUpstream:
    receiver = FakeUpstream().start()
    yield receiver  # type: ignore[misc]
    receiver.stop()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
def test_a_burst_is_alerted_posted_and_the_key_suspended(
    upstream: FakeUpstream, hook: FakeUpstream, tmp_path: Path, workers: int
) -> None:
    record_, secret = add_key(tmp_path, "steady")
    seed_history(tmp_path / "audit.jsonl", record_.id)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "watch:\n"
        f"  webhook_url: http://127.0.0.1:{hook.port}/services/T000/B000/hook-secret-part\n"
        "  actions:\n"
        "    high: [suspend_key]\n"
        "    critical: [suspend_key]\n"
    )
    gateway: GatewayProcess = start_gateway(
        tmp_path, upstream.url, "openai", "--config", str(config), "--workers", str(workers)
    )
    try:
        assert request(gateway.port, "GET", "/v1/models", key=secret).status == 200
        statuses = [request(gateway.port, "GET", "/v1/models", key=secret).status for _ in range(80)]
        assert statuses.count(200) >= 20  # the burst was served until the watcher acted
        # Every worker refuses it: the one that suspended it at once, the others when they read the store's change
        # feed (a fraction of a second; at once with Redis).
        wait_for(
            lambda: all(request(gateway.port, "GET", "/v1/models", key=secret).status == 401 for _ in range(8)), 20
        )
        refused = [request(gateway.port, "GET", "/v1/models", key=secret) for _ in range(8)]
        assert {r.code for r in refused} == {"key_suspended"}
        wait_for(lambda: any(s.raw_path.startswith("/services/") for s in hook.seen), 10)
        posted = [orjson.loads(s.body) for s in hook.seen if s.raw_path.startswith("/services/")]
        alert = next(p["alert"] for p in posted if p["alert"]["actions"])
        assert alert["kind"] == "volume_spike" and alert["key"] == record_.id and alert["severity"] == "high"
        assert alert["details"]["observed"] > alert["details"]["ceiling"]
        assert any("suspended key" in action for action in alert["actions"])
        assert set(alert["evidence"]) <= {r.get("request_id") for r in gateway.audit()}
        events = [r for r in gateway.audit() if r.get("event") == "key" and r.get("key_id") == record_.id]
        assert [e["action"] for e in events] == ["suspend"] and str(events[0]["actor"]).startswith("watch:")
    finally:
        gateway.stop()
    assert not any("hook-secret-part" in line for line in gateway.output)


def test_a_canary_use_raises_a_critical_alert_with_the_callers_details(
    upstream: FakeUpstream, hook: FakeUpstream, tmp_path: Path
) -> None:
    add_key(tmp_path, "real")  # the gateway needs one usable key
    bait, secret = add_key(tmp_path, "deploy-config", canary=True)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"watch:\n  webhook_url: http://127.0.0.1:{hook.port}/services/T1/B1/canary-hook-secret\n")
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", str(config))
    try:
        used = request(gateway.port, "GET", "/v1/models", key=secret, headers=[("User-Agent", "leaked-config/1.0")])
        assert used.status == 401 and used.code == "invalid_key"
        wait_for(lambda: any(s.raw_path.startswith("/services/") for s in hook.seen), 15)
        (body,) = [orjson.loads(s.body) for s in hook.seen if s.raw_path.startswith("/services/")]
        alert = body["alert"]
        assert (alert["kind"], alert["severity"], alert["key"], alert["client"]) == (
            "canary", "critical", bait.id, "127.0.0.1"
        )  # fmt: skip
        assert alert["details"]["user_agent"] == "leaked-config/1.0" and "GET /v1/models" in alert["observed"]
        (record_,) = [r for r in gateway.audit() if r.get("canary")]
        assert alert["evidence"] == [record_["request_id"]]
        assert "CRITICAL" in body["text"]
    finally:
        gateway.stop()
    assert upstream.calls() == []
    listed = cli("watch", "alerts", "--json", data_dir=tmp_path)
    assert [a["kind"] for a in orjson.loads(listed.stdout)] == ["canary"]
