"""Scenarios 5-6: Redis dies and comes back; PostgreSQL dies and comes back.

Redis is a redis-server of the scenario's own on a free port (killed with SIGKILL, started again on the same port);
PostgreSQL is the shared server behind a relay that is cut (tests.support.proxy), in a schema of the scenario's own.
A steady load of a verified key runs throughout: every one of its requests must succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psycopg
from psycopg import sql

from aiperimeter.keys import KeyRecord, generate_key, new_key
from aiperimeter.state.bus import RedisBus
from aiperimeter.state.postgres import PostgresKeyStore
from tests.hardening.faults.client import Reply, send
from tests.hardening.faults.harness import logged_again, logs
from tests.hardening.faults.load import Load
from tests.hardening.faults.result import FaultResult, Ledger, wait_for
from tests.support.gateway import GatewayProcess, free_port, start_gateway
from tests.support.leaks import LEAKS
from tests.support.proxy import ThreadedProxy
from tests.support.upstream import FakeUpstream

POSTGRES_ENV = "AIPERIMETER_TEST_POSTGRES_URL"
RPM = 5  # the limited keys' requests per minute


def postgres_or_none(url: str | None) -> str | None:
    return url or os.environ.get(POSTGRES_ENV) or None


@contextlib.contextmanager
def own_schema(url: str) -> Iterator[str]:
    """A URL pointing at a new, empty schema, dropped with everything in it afterwards."""
    name = f"aip_faults_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def pg_key(database: str, name: str, **kwargs: object) -> tuple[KeyRecord, str]:
    record, secret = new_key(name, **kwargs)  # type: ignore[arg-type]
    LEAKS.secrets.add(secret)

    async def add() -> None:
        store = PostgresKeyStore(database)
        try:
            await store.add(record, "faults")
        finally:
            await store.close()

    asyncio.run(add())
    return record, secret


def revoke(database: str, key_id: str, bus: str | None = None) -> None:
    """Revoke in the store; with `bus`, also announce it on the Redis bus, as `aiperimeter keys revoke` does."""

    async def run() -> None:
        store = PostgresKeyStore(database)
        try:
            await store.revoke(key_id, time.time(), "faults")
        finally:
            await store.close()
        if bus is not None:
            channel = RedisBus(bus)
            try:
                await channel.publish(key_id)
            finally:
                await channel.close()

    asyncio.run(run())


class RedisServer:
    """A redis-server of the scenario's own, that it may kill and start again on the same port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
            return False

        if not wait_for(accepting, 10):
            self.kill()
            raise RuntimeError("redis-server did not start")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def _get(port: int, key: str) -> Reply:
    return send(port, "GET", "/v1/models", key=key)


def _until(port: int, key: str, status: int, timeout: float, ledger: Ledger, explained: bool = False) -> Reply:
    """Asks until the answer has `status` (bounded): for changes the gateway learns of in the background."""
    deadline = time.monotonic() + timeout
    while True:
        reply = ledger.note(_get(port, key), explained=explained)
        if reply.status == status or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def _limited(ledger: Ledger, port: int, key: str, when: str, exact: bool) -> None:
    """RPM + 3 requests of a key limited to RPM: the limit holds (exactly, when the shared limiter is up)."""
    replies = [ledger.note(_get(port, key)) for _ in range(RPM + 3)]
    allowed = sum(r.status == 200 for r in replies)
    refused = {r.code for r in replies if r.status != 200}
    ledger.check(refused <= {"rate_limit_requests"}, f"{when}: a limited key got {refused}")
    ledger.check(allowed == RPM if exact else 1 <= allowed <= RPM, f"{when}: {allowed} of {RPM + 3} allowed")
    ledger.result.notes.append(f"{when}: rpm {RPM} allowed {allowed} of {RPM + 3}")


def redis_dies_and_comes_back(workdir: Path, repeat: int = 1, postgres_url: str | None = None) -> FaultResult:
    """Valid keys keep working; limits fall back to each process's share; revocation works during the outage
    (through the store's change feed) and after it (through the bus); the gateway logs both edges, recovers alone."""
    result = FaultResult("redis_dies_and_comes_back")
    database, binary = postgres_or_none(postgres_url), shutil.which("redis-server")
    if database is None or binary is None:
        result.skipped = f"needs {POSTGRES_ENV} and redis-server"
        return result
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = FakeUpstream().start()
    redis = RedisServer(binary).start()
    gateway: GatewayProcess | None = None
    recovered = True
    try:
        with own_schema(database) as db:
            _, steady = pg_key(db, "steady", rpm=10_000_000)  # limited, so its every request meets the limiter
            config = workdir / "gateway.yaml"
            workdir.mkdir(parents=True, exist_ok=True)
            settings = {"limits": {"replicas": 1}, "watch": {"stream": f"aiperimeter:faults:{secrets.token_hex(4)}"}}
            config.write_text(orjson.dumps(settings).decode())
            args = ("--database", db, "--redis", redis.url, "--config", str(config))
            gateway = start_gateway(workdir / "gw", upstream.url, "openai", *args)
            port = gateway.port
            with Load(ledger, lambda n: _get(port, steady)) as load:
                for round_ in range(repeat):
                    keys = {n: pg_key(db, n, **({"rpm": RPM} if n.startswith("limited") else {})) for n in (
                        "limited-up", "limited-down", "limited-back", "victim-down", "victim-back")}  # fmt: skip
                    for name in ("victim-down", "victim-back"):
                        ledger.check(_get(port, keys[name][1]).status == 200, f"{name} not served before the outage")
                    _limited(ledger, port, keys["limited-up"][1], "redis up", exact=True)
                    outages = logs(gateway).count("shared limiter unavailable")
                    redis.kill()
                    result.injected += 1
                    ledger.check(
                        logged_again(gateway, "shared limiter unavailable", outages, 15),
                        "the outage was not logged",
                    )
                    _limited(ledger, port, keys["limited-down"][1], "redis down", exact=False)
                    revoke(db, keys["victim-down"][0].id)  # the bus is down: the store's change feed must carry it
                    gone = _until(port, keys["victim-down"][1], 401, 10, ledger)
                    ledger.check(gone.code == "key_revoked", f"revoked during the outage, still: {gone}")
                    ledger.check(load.wait_more(10), "the steady load stalled while Redis was down")
                    backs = logs(gateway).count("shared limiter available again")
                    reconnects = logs(gateway).count("revocation bus connected again")
                    redis.start()
                    back = logged_again(gateway, "shared limiter available again", backs, 20)
                    recovered &= ledger.check(back, f"round {round_}: the return of Redis was not noticed")
                    ledger.check(
                        logged_again(gateway, "revocation bus connected again", reconnects, 20),
                        "the revocation bus did not reconnect",
                    )
                    revoke(db, keys["victim-back"][0].id, bus=redis.url)
                    gone = _until(port, keys["victim-back"][1], 401, 5, ledger)
                    ledger.check(gone.code == "key_revoked", f"revoked after the outage, still: {gone}")
                    _limited(ledger, port, keys["limited-back"][1], "redis back", exact=True)
                    ledger.check(load.wait_more(10), "the steady load stalled after Redis came back")
    finally:
        if gateway is not None:
            gateway.stop()
            ledger.audit([gateway.data_dir / "audit.jsonl"])
        redis.kill()
        upstream.stop()
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result


def postgres_dies_and_comes_back(workdir: Path, repeat: int = 1, postgres_url: str | None = None) -> FaultResult:
    """Keys verified before the outage keep working (bounded stale window); keys the gateway cannot check get 503,
    never 401; when the database returns, the gateway serves every key again by itself."""
    result = FaultResult("postgres_dies_and_comes_back")
    database = postgres_or_none(postgres_url)
    if database is None:
        result.skipped = f"needs {POSTGRES_ENV}"
        return result
    ledger = Ledger(result)
    started = time.monotonic()
    upstream = FakeUpstream().start()
    gateway: GatewayProcess | None = None
    recovered = True
    try:
        with own_schema(database) as db:
            _, steady = pg_key(db, "steady")
            target = urlsplit(db)
            with ThreadedProxy(target.hostname or "127.0.0.1", target.port or 5432) as relay:
                via = target._replace(netloc=f"{target.username}@127.0.0.1:{relay.port}").geturl()
                workdir.mkdir(parents=True, exist_ok=True)
                config = workdir / "gateway.yaml"
                config.write_text(orjson.dumps({"key_cache_ttl": 0.5, "key_stale_window": 30}).decode())
                gateway = start_gateway(
                    workdir / "gw", upstream.url, "openai", "--database", via, "--config", str(config)
                )
                port = gateway.port
                with Load(ledger, lambda n: _get(port, steady)) as load:
                    for round_ in range(repeat):
                        _, unseen = pg_key(db, f"unseen-{round_}")
                        never = generate_key()[1]  # well formed, in no store: only the store could say so
                        LEAKS.secrets.add(never)
                        outages = logs(gateway).count("key store unavailable")
                        mark = time.monotonic()
                        load.reset_slowest()
                        relay.cut()
                        result.injected += 1
                        ledger.check(
                            logged_again(gateway, "key store unavailable", outages, 15),
                            "the outage was not logged",
                        )
                        before = load.sent
                        for secret, what in ((unseen, "a valid key not yet verified"), (never, "an unknown key")):
                            reply = ledger.note(send(port, "GET", "/v1/models", key=secret, timeout=30), True)
                            ledger.check(
                                (reply.status, reply.code) == (503, "store_unavailable"), f"{what} got {reply}"
                            )
                        # Those two waited out the store's timeout; a verified key's requests must not wait with them.
                        meanwhile = load.sent - before
                        ledger.check(meanwhile >= 20, f"only {meanwhile} verified requests while the store timed out")
                        ledger.check(load.wait_more(10, 30), "the steady load stalled while the database was down")
                        down = time.monotonic() - mark
                        result.notes.append(
                            f"round {round_}: verified key's slowest answer in the outage "
                            f"{load.reset_slowest():.2f} s, {load.sent} requests so far"
                        )
                        relay.restore()
                        back = _until(port, unseen, 200, 30, ledger, explained=True)
                        result.notes.append(
                            f"round {round_}: down {down:.1f} s, back in {time.monotonic() - mark - down:.1f} s"
                        )
                        recovered &= ledger.check(back.status == 200, f"round {round_}: not recovered: {back}")
                        refused = ledger.note(send(port, "GET", "/v1/models", key=never))
                        ledger.check(refused.code == "invalid_key", f"an unknown key after the outage: {refused}")
                        ledger.check(load.wait_more(10), "the steady load stalled after the database came back")
                ledger.check("key store available again" in logs(gateway), "the recovery was not logged")
                gateway.stop()  # before its relay goes
    finally:
        if gateway is not None:
            gateway.stop()
            ledger.audit([gateway.data_dir / "audit.jsonl"])
        upstream.stop()
    result.recovered = recovered
    result.seconds = time.monotonic() - started
    return result
