"""Brute-force protection and address blocks on a real gateway: failed authentications slowed, then the address
blocked everywhere (through the store), blocks made elsewhere followed, exempt networks left alone, and the count
shared through Redis by several workers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import redis

from aiperimeter.keys import generate_key
from aiperimeter.state.sqlite import SQLiteKeyStore
from tests.integration.test_cli import cli
from tests.support.gateway import DB, GatewayProcess, add_key, free_port, revoke_key, start_gateway
from tests.support.http import Response, _read_response, request
from tests.support.leaks import LEAKS
from tests.support.upstream import FakeUpstream

REDIS_DB = 13  # a database of its own on the shared Redis, so no other test's counts meet these


def configure(tmp_path: Path, **brute_force: object) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(orjson.dumps({"watch": {"brute_force": brute_force}}).decode())  # JSON is YAML
    return str(path)


def wrong_key() -> str:
    _, secret = generate_key()
    LEAKS.secrets.add(secret)
    return secret


def timed(gateway: GatewayProcess, key: str) -> tuple[Response, float]:
    start = time.monotonic()
    response = request(gateway.port, "GET", "/v1/models", key=key)
    return response, time.monotonic() - start


def blocks_in(data_dir: Path) -> list[tuple[str, float, str]]:
    async def read() -> list[tuple[str, float, str]]:
        store = SQLiteKeyStore(data_dir / DB)
        try:
            return await store.blocks(time.time())
        finally:
            await store.close()

    return asyncio.run(read())


def until_status(gateway: GatewayProcess, key: str, status: int, within: float) -> float:
    """Ask until the gateway answers `status`; how long that took."""
    start = time.monotonic()
    while request(gateway.port, "GET", "/v1/models", key=key).status != status:
        assert time.monotonic() - start < within, f"no {status} within {within} s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_failures_are_slowed_then_the_address_is_blocked_even_for_a_valid_key(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, window=60, slow_after=2, max_delay=0.8, block_after=7, block_seconds=30, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", config)
    try:
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200
        took: list[float] = []
        for n in range(1, 7):
            response, seconds = timed(gateway, wrong_key())
            assert response.status == 401 and response.code == "invalid_key"
            took.append(seconds)
            if n == 4:
                ok, fast = timed(gateway, valid)  # a success is never held back, whatever came before
                assert ok.status == 200 and fast < 0.15, fast
        print("failed attempts answered after (s):", ", ".join(f"{t:.2f}" for t in took))
        assert max(took[:2]) < 0.1  # up to slow_after: at once
        for seconds, least in zip(took[2:], (0.1, 0.2, 0.4, 0.8), strict=True):
            assert least <= seconds < least + 0.5
        assert took[5] - took[2] >= 0.6  # the delay grows

        last, seconds = timed(gateway, wrong_key())  # the seventh: blocked, answered at once
        assert last.status == 401 and seconds < 0.3
        calls = len(upstream.calls())
        blocked = request(gateway.port, "GET", "/v1/models", key=valid)
        assert blocked.status == 403 and blocked.code == "client_blocked"
        assert 0 < int(blocked.headers["retry-after"]) <= 30
        assert "refused for another" in blocked.json()["error"]["message"]  # type: ignore[index]
        assert request(gateway.port, "POST", "/v1/chat/completions", key=valid, body={"model": "m"}).status == 403
        assert len(upstream.calls()) == calls == 2  # the two served before the block; none after

        [(address, until, reason)] = blocks_in(tmp_path)  # through the store, for every worker and replica
        assert address == "127.0.0.1" and time.time() < until <= time.time() + 30 and "7 failed" in reason
        [event] = [r for r in gateway.wait_audit(12) if r.get("event") == "block"]
        assert (event["address"], event["actor"], event["failures"]) == ("127.0.0.1", "brute-force", 7)
        denied = [r for r in gateway.audit() if r.get("deny") == "client_blocked"]
        assert len(denied) == 2 and all(r["key_id"] is None for r in denied)
    finally:
        gateway.stop()


def test_a_stale_key_retried_behind_a_shared_address_locks_no_one_out(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Everyone behind a NAT or proxy shares its address: one client retrying a revoked key is not guessing, and
    must neither slow nor block the others."""
    _, valid = add_key(tmp_path, "app")
    old, stale = add_key(tmp_path, "old")
    revoke_key(tmp_path, old.id)
    config = configure(tmp_path, window=60, slow_after=2, max_delay=0.8, block_after=5, block_seconds=30, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", config)
    try:
        answers = [timed(gateway, stale) for _ in range(15)]
        assert [(r.status, r.code) for r, _ in answers] == [(401, "key_revoked")] * 15
        assert max(seconds for _, seconds in answers) < 0.3  # never held back
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200
        assert blocks_in(tmp_path) == []
        # Guessing from the same address still counts (the fifth guess blocks it).
        assert [timed(gateway, wrong_key())[0].status for _ in range(5)] == [401] * 5
        assert request(gateway.port, "GET", "/v1/models", key=valid).code == "client_blocked"
    finally:
        gateway.stop()


def request6(port: int, key: str) -> Response:
    """GET /v1/models over IPv6 loopback."""
    head = f"GET /v1/models HTTP/1.1\r\nHost: [::1]:{port}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("::1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        return _read_response(sock, time.monotonic() + 10)


def test_ipv6_failures_block_the_whole_64_everywhere(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, slow_after=3, max_delay=0, block_after=3, block_seconds=30, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--listen", "[::1]:0", "--config", config)
    try:
        assert request6(gateway.port, valid).status == 200
        assert [request6(gateway.port, wrong_key()).status for _ in range(3)] == [401] * 3
        blocked = request6(gateway.port, valid)
        assert (blocked.status, blocked.code) == (403, "client_blocked")
        [(address, _, reason)] = blocks_in(tmp_path)
        assert address == "::/64" and "3 failed" in reason  # the /64 of ::1, as every worker and replica reads it
        [event] = [r for r in gateway.wait_audit(5) if r.get("event") == "block"]
        assert event["address"] == "::/64"
        listed = cli("watch", "blocks", "--json", data_dir=tmp_path)
        assert [b["address"] for b in orjson.loads(listed.stdout)] == ["::/64"], listed.stderr
    finally:
        gateway.stop()

    # A /64 blocked through the store by another process reaches a running gateway.
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--listen", "[::1]:0")  # loopback exempt: no counting
    try:
        assert request6(gateway.port, valid).code == "client_blocked"  # still blocked, read at start

        async def unblock() -> None:
            store = SQLiteKeyStore(tmp_path / DB)
            try:
                assert await store.unblock("::/64", "cli:test")
            finally:
                await store.close()

        asyncio.run(unblock())
        deadline = time.monotonic() + 3
        while request6(gateway.port, valid).status != 200:
            assert time.monotonic() < deadline, "the unblock did not arrive"
            time.sleep(0.05)

        async def block() -> None:
            store = SQLiteKeyStore(tmp_path / DB)
            try:
                await store.block("::/64", time.time() + 60, "operator", "cli:test")
            finally:
                await store.close()

        asyncio.run(block())
        deadline = time.monotonic() + 3
        while request6(gateway.port, valid).status != 403:
            assert time.monotonic() < deadline, "the block did not arrive"
            time.sleep(0.05)
        calls = len(upstream.calls())
        assert request6(gateway.port, valid).code == "client_blocked"
        assert len(upstream.calls()) == calls  # a blocked request never reaches it
    finally:
        gateway.stop()


def test_canary_uses_count_as_failures(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, valid = add_key(tmp_path, "app")
    _, canary = add_key(tmp_path, "bait", canary=True)
    config = configure(tmp_path, slow_after=3, max_delay=0, block_after=3, block_seconds=30, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", config)
    try:
        assert [request(gateway.port, "GET", "/v1/models", key=canary).status for _ in range(3)] == [401] * 3
        assert request(gateway.port, "GET", "/v1/models", key=valid).code == "client_blocked"
        assert upstream.calls() == []
    finally:
        gateway.stop()


def test_a_block_made_through_the_store_reaches_a_running_gateway(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, valid = add_key(tmp_path, "app")
    gateway = start_gateway(tmp_path, upstream.url, "openai")  # defaults: loopback exempt from brute force only
    try:
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200

        async def block(unblock: bool = False) -> None:
            store = SQLiteKeyStore(tmp_path / DB)  # as another process: the CLI, another replica's detector
            try:
                if unblock:
                    assert await store.unblock("127.0.0.1", "cli:test")
                else:
                    await store.block("127.0.0.1", time.time() + 60, "alert 42", "watch")
            finally:
                await store.close()

        asyncio.run(block())
        arrived = until_status(gateway, valid, 403, within=3.0)
        calls = len(upstream.calls())
        asyncio.run(block(unblock=True))
        lifted = until_status(gateway, valid, 200, within=3.0)
        print(f"block reached the gateway in {arrived:.2f} s, the unblock in {lifted:.2f} s")
        assert arrived < 2.0 and lifted < 2.0
        assert len(upstream.calls()) == calls + 1  # blocked requests never reached it
    finally:
        gateway.stop()


def test_exempt_networks_are_never_slowed_or_blocked(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, slow_after=1, max_delay=2, block_after=3)  # exempt: loopback, by default
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--config", config)
    try:
        durations = [timed(gateway, wrong_key())[1] for _ in range(8)]
        assert max(durations) < 0.5, durations
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200
        assert blocks_in(tmp_path) == []
    finally:
        gateway.stop()


def _redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def test_workers_share_the_count_through_redis(tmp_path: Path, upstream: FakeUpstream, redis_url: str) -> None:
    url = _redis_db(redis_url, REDIS_DB)
    client = redis.Redis.from_url(url)
    try:
        stale = list(client.scan_iter("{aiperimeter}:bf:*"))
        if stale:
            client.delete(*stale)
    finally:
        client.close()
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, window=60, slow_after=12, max_delay=0, block_after=12, block_seconds=30, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--workers", "2", "--redis", url, "--config", config)
    try:
        assert [timed(gateway, wrong_key())[0].status for _ in range(11)] == [401] * 11
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200  # eleven: not yet
        assert timed(gateway, wrong_key())[0].status == 401  # the twelfth, on whichever worker
        until_status(gateway, valid, 403, within=3.0)
        failures = [r for r in gateway.wait_audit(13) if r.get("deny") == "invalid_key"]
        per_worker = Counter(r["pid"] for r in failures)
        # Twelve failures spread over both workers, neither of which saw twelve itself: the count was shared.
        assert len(failures) == 12 and len(per_worker) == 2 and max(per_worker.values()) < 12, per_worker
        [event] = [r for r in gateway.audit() if r.get("event") == "block"]
        assert event["failures"] == 12
    finally:
        gateway.stop()


def test_redis_down_falls_back_to_counting_in_the_process(tmp_path: Path, upstream: FakeUpstream) -> None:
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, slow_after=3, max_delay=0, block_after=3, block_seconds=30, exempt=[])
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--redis", nowhere, "--config", config)
    try:
        assert [timed(gateway, wrong_key())[0].status for _ in range(3)] == [401] * 3
        assert request(gateway.port, "GET", "/v1/models", key=valid).code == "client_blocked"
        assert any("counting in this process" in line for line in gateway.output)
    finally:
        gateway.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_brute_force_can_be_turned_off(tmp_path: Path, upstream: FakeUpstream, workers: str) -> None:
    _, valid = add_key(tmp_path, "app")
    config = configure(tmp_path, enabled=False, slow_after=1, max_delay=2, block_after=2, exempt=[])
    gateway = start_gateway(tmp_path, upstream.url, "openai", "--workers", workers, "--config", config)
    try:
        assert max(timed(gateway, wrong_key())[1] for _ in range(5)) < 0.5
        assert request(gateway.port, "GET", "/v1/models", key=valid).status == 200
    finally:
        gateway.stop()
