"""Wires the gateway: builds the stages in their one order and serves them through aiohttp's low-level server."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from redis.asyncio import Redis

from aiperimeter.config import GatewaySettings
from aiperimeter.errors import BackendUnavailable, BadRequest, ConfigError, HTTPFailure, InternalError
from aiperimeter.gateway.cors import Cors
from aiperimeter.gateway.jwt import JWTVerifier
from aiperimeter.gateway.keycache import KeyCache
from aiperimeter.gateway.pipeline import Pipeline, Stage
from aiperimeter.gateway.responses import SERVER_HEADER
from aiperimeter.gateway.routes import ROUTES, RouteTable
from aiperimeter.gateway.stages.account import Account
from aiperimeter.gateway.stages.audit_log import AuditLog, AuditSink
from aiperimeter.gateway.stages.authenticate import Authenticate
from aiperimeter.gateway.stages.client_guard import REDIS_TIMEOUT, ClientGuard
from aiperimeter.gateway.stages.forward import Forward
from aiperimeter.gateway.stages.host_guard import HostGuard
from aiperimeter.gateway.stages.limits import Limit
from aiperimeter.gateway.stages.metrics import Metrics
from aiperimeter.gateway.stages.request_body import RequestBody
from aiperimeter.gateway.stages.route_policy import RoutePolicy
from aiperimeter.gateway.stages.tool_policy import ToolPolicy
from aiperimeter.gateway.upstream import credential_header, new_session
from aiperimeter.hosts import is_loopback_host
from aiperimeter.policy.engine import PolicySet
from aiperimeter.policy.loader import load_policies
from aiperimeter.state.base import KeyStore, open_key_store
from aiperimeter.state.bus import RedisBus, RevocationBus
from aiperimeter.state.limits import Limiter, MemoryLimiter
from aiperimeter.state.redis_limits import RedisLimiter, connect
from aiperimeter.watch.feed import StreamPublisher
from aiperimeter.watch.metric_files import MetricFiles
from aiperimeter.watch.metrics import MetricBook
from aiperimeter.watch.watcher import Watcher

log = logging.getLogger("aiperimeter.gateway")

# The only routes served without a credential. They reveal nothing about the upstream or versions.
PUBLIC_ROUTES = frozenset({("GET", "/healthz"), ("HEAD", "/healthz")})
_HEALTH_BODY = orjson.dumps({"status": "ok"})
_HEALTH_HEADERS = {"Server": SERVER_HEADER, "Cache-Control": "no-store"}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(settings: GatewaySettings) -> frozenset[str]:
    hosts = set(LOOPBACK_NAMES) | set(settings.allowed_hosts)
    if settings.listen_host not in ("0.0.0.0", "::"):
        hosts.add(settings.listen_host.lower())
    return frozenset(hosts)


def build_pipeline(
    settings: GatewaySettings,
    keys: KeyCache,
    session: aiohttp.ClientSession,
    sink: AuditSink,
    limit: Limit,
    jwt: JWTVerifier | None = None,
    policies: PolicySet | None = None,
    book: MetricBook | None = None,
    guard: ClientGuard | None = None,
) -> Pipeline:
    """The gateway's stages, in the order every request meets them:

    1. client_guard  - blocked client addresses refused first; failed authentications slowed, then blocked
    2. host_guard    - Host and Origin on the allowlist (DNS rebinding); the raw target parsed, ambiguity refused
    3. authenticate  - exactly one valid credential: an unexpired, unrevoked, unsuspended key, or a verified JWT
    4. route_policy  - method and exact path on the upstream kind's allowlist; admin routes need the admin scope
    5. request_body  - body read within its limit, JSON parsed once, the key's model scope enforced
    6. limits        - requests, tokens (reserved, settled at the end) and concurrency, per key and overall
    7. tool_policy   - declared and forced tools and returned tool results held to the key's tool policy
    8. forward       - the authorised path sent upstream, the response relayed chunk by chunk; under a tool policy
                       through its wire format's guard: each call held until complete, then judged and released,
                       stripped or blocked
    9. account       - token usage read from the response events
    10. audit_log    - one record per request, whatever happened, with every tool-call decision
    11. metrics      - the request counted into this process's metric book (watch.metrics)
    """
    book = book or MetricBook()
    forward = Forward(
        session,
        settings.upstream,
        credential_header(settings.kind, settings.upstream_api_key),
        first_byte_timeout=settings.timeouts.first_byte,
        idle_timeout=settings.timeouts.idle,
        total_timeout=settings.timeouts.total,
    )
    stages: list[Stage] = [
        *([guard] if guard is not None else []),
        HostGuard(allowed_hosts(settings), frozenset(settings.cors_origins)),
        Authenticate(keys, jwt, guard.failed if guard is not None else None),
        RoutePolicy(RouteTable.for_kind(settings.kind), settings.kind),
        RequestBody(settings.max_body_bytes, settings.timeouts.client_idle),
        limit,
        ToolPolicy(policies or PolicySet(), settings.default_tool_policy),
        forward,
        Account(),
        AuditLog(sink),
        Metrics(book),
    ]
    pipeline = Pipeline(stages)
    forward.emit = pipeline.emit if pipeline.event_hooks else None
    forward.book = book
    return pipeline


async def require_credentials(store: KeyStore, settings: GatewaySettings) -> None:
    """No credential, no gateway: there is no default secret to fall back on. A JWT issuer counts."""
    if settings.jwt is None and not await store.has_active(time.time()):
        raise ConfigError(
            "no active API key exists, so no request could ever be served. Create one first:\n"
            f"    aiperimeter keys create --name my-app --data-dir {settings.data_dir}",
            source=str(settings.data_dir),
        )


def load_tool_policies(settings: GatewaySettings) -> PolicySet:
    if settings.tool_policies is None:
        return PolicySet()
    policies = load_policies(settings.tool_policies)
    default = settings.default_tool_policy
    if default is not None and policies.get(default) is None:
        raise ConfigError(
            f"no policy named {default!r} in {settings.tool_policies}; choose one of: "
            + (", ".join(policies.names()) or "(the folder has none)"),
            field="default_tool_policy",
        )
    return policies


def exposure_warning(settings: GatewaySettings) -> str | None:
    """Refuse a non-loopback listener unless asked for; warn about it unless TLS protects the keys in transit."""
    host = settings.listen_host
    if is_loopback_host(host):
        return None
    if not settings.expose:
        raise ConfigError(
            f"{settings.listen} is reachable from other machines. The gateway listens on loopback by default; "
            "to serve other hosts, pass --expose (and preferably --tls-cert/--tls-key)",
            field="listen",
        )
    if settings.tls_cert is not None:
        return None
    return (
        f"WARNING: serving {settings.listen} without TLS. Every host that can reach this address can send "
        f"requests to the {settings.kind} model server at {settings.upstream} with a key, and API keys cross the "
        "network in clear text. Configure --tls-cert/--tls-key, or put TLS in front."
    )


class _ProtocolErrors(RequestHandler):
    """Requests the HTTP parser refuses never reach the pipeline. aiohttp's default answer to them echoes the
    offending bytes (a credential among them) in the response and the log, and names its version; ours does not."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        log.info("refused a request from %s that is not valid HTTP/1.1 (%s)", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed")
        failure: HTTPFailure = (
            BadRequest("malformed_request", "The request is not valid HTTP/1.1.") if status < 500 else InternalError()
        )
        response = web.Response(
            status=failure.status,
            body=failure.body(),
            content_type="application/json",
            headers={"Server": SERVER_HEADER},
        )
        response.force_close()
        return response


class GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProtocolErrors(self, loop=self._loop, **self._kwargs)


class Gateway:
    """One worker's gateway: the store, the key cache, the upstream pool, the audit sink and the pipeline."""

    def __init__(self, settings: GatewaySettings, store: KeyStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_key_store(
            settings.data_dir, settings.database.reveal() if settings.database else None
        )
        self.keys = KeyCache(
            self.store, ttl=settings.key_cache_ttl, poll=settings.revocation_poll, stale=settings.key_stale_window
        )
        self.sink = AuditSink(settings.audit_path)
        self.session: aiohttp.ClientSession | None = None
        self.pipeline: Pipeline | None = None
        lease = settings.limits.lease
        self.limiter: Limiter
        self.bus: RevocationBus | None = None
        if settings.redis is not None:
            self.limiter = RedisLimiter(connect(settings.redis.reveal()), lease=lease)
            self.bus = RedisBus(settings.redis.reveal())
            local_share = 1
        else:
            self.limiter = MemoryLimiter(lease=lease)
            local_share = settings.workers  # workers do not share memory: each enforces its share
        self.limit = Limit(
            self.limiter,
            MemoryLimiter(lease=lease),
            settings.limits,
            local_share=local_share,
            fallback_share=settings.limits.replicas * settings.workers,
        )
        self._bus_task: asyncio.Task[None] | None = None
        self.jwt = JWTVerifier(settings.jwt) if settings.jwt is not None else None
        self.policies = load_tool_policies(settings)
        self.guard = ClientGuard(
            self.store,
            settings.watch.brute_force,
            self.sink,
            connect(settings.redis.reveal(), timeout=REDIS_TIMEOUT, max_connections=4) if settings.redis else None,
        )
        # This process's counts; the process serving the admin API adds up every process's (watch.metric_files).
        self.metrics = MetricBook()
        self.metric_files = MetricFiles(settings.data_dir, self.metrics)
        self.watcher: Watcher | None = None  # set in the one process that watches (watch.service.build_watcher)
        self._stream: Redis | None = None  # the shared audit stream's connection, in a cluster

    async def start(self) -> web.Server:
        await require_credentials(self.store, self.settings)
        await self._warn_unknown_policies()
        await self.keys.start()
        if self.jwt is not None:
            await self.jwt.start()
        if self.bus is not None:
            # Revocations arrive within milliseconds; after a reconnection, events may have been missed, so the
            # whole cache is dropped and every key is verified afresh.
            self._bus_task = asyncio.create_task(
                self.bus.run(lambda key_id: self.keys.evict({key_id}), self.keys.clear), name="revocation-bus"
            )
        self.limit.start(self.settings.limits.lease)
        self.metric_files.start()
        if self.settings.redis is not None and self.settings.watch.enabled:
            # Every process appends its audit lines to the stream that each replica's watcher reads.
            self._stream = connect(self.settings.redis.reveal(), timeout=2.0, max_connections=2)
            self.sink.tap = StreamPublisher(self._stream, stream=self.settings.watch.stream)
        await self.guard.start()
        self.session = new_session(self.settings)
        self.pipeline = build_pipeline(
            self.settings,
            self.keys,
            self.session,
            self.sink,
            self.limit,
            self.jwt,
            self.policies,
            book=self.metrics,
            guard=self.guard,
        )
        handle = self.pipeline.handle
        routes = ROUTES[self.settings.kind]
        cors = Cors(frozenset(self.settings.cors_origins), frozenset(r.method for r in routes))
        book = self.metrics

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            if (request.method, request.raw_path) in PUBLIC_ROUTES:
                return web.Response(body=_HEALTH_BODY, content_type="application/json", headers=_HEALTH_HEADERS)
            if request.method == "OPTIONS" and cors.origins:
                preflight = cors.preflight(request)
                if preflight is not None:
                    return preflight
            book.inflight_requests += 1
            try:
                return await handle(request)
            finally:
                book.inflight_requests -= 1

        return GatewayServer(
            handler,
            handler_cancellation=True,  # a client that goes away cancels its upstream request
            access_log=None,
            auto_decompress=False,  # compressed request bodies are refused, never inflated
            keepalive_timeout=self.settings.timeouts.keepalive,
            # After an answer to a request whose body was not read to its end (413, a body timeout), the rest is
            # read and dropped for this long so the client sees the answer, not a reset; aiohttp's 10 s would let
            # a slow client hold the connection five times longer than needed.
            lingering_time=2.0,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=100,
        )

    async def key_changed(self, key_id: str, action: str, actor: str, **extra: object) -> None:
        """After the store has a key's change: this worker forgets the key at once, the other processes hear of it
        on the bus (they also follow the store's change feed), and the audit log records it. The admin API and the
        watcher's actions both change keys through here."""
        self.keys.evict({key_id})
        if self.bus is not None:
            try:
                await self.bus.publish(key_id)
            except BackendUnavailable:
                log.warning("revocation bus unavailable: gateways will see key %s change through the store", key_id)
        self.sink.write({"time": time.time(), "event": "key", "action": action, "key_id": key_id, "actor": actor,
                         **extra})  # fmt: skip
        self.sink.flush()

    async def _warn_unknown_policies(self) -> None:
        """Keys naming a policy this gateway lacks are refused on every request: say so once, at start."""
        now = time.time()
        missing = sorted(
            {
                record.tool_policy
                for record in await self.store.list_all()
                if record.tool_policy is not None
                and self.policies.get(record.tool_policy) is None
                and record.status(now) == "active"
            }
        )
        if missing:
            log.warning(
                "active keys name tool policies this gateway has not loaded (their requests will be refused): %s",
                ", ".join(missing),
            )

    async def close(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        if self.jwt is not None:
            await self.jwt.close()
        await self.limit.stop()
        await self.metric_files.stop()
        if self._bus_task is not None:
            self._bus_task.cancel()
            await asyncio.gather(self._bus_task, return_exceptions=True)
        if self.bus is not None:
            await self.bus.close()
        await self.limiter.close()
        await self.keys.stop()
        await self.guard.stop()
        if self.session is not None:
            await self.session.close()
        await self.store.close()
        self.sink.close()
        if self._stream is not None:
            await asyncio.sleep(0)  # the last lines' append is under way
            await self._stream.aclose()
