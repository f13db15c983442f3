"""The admin API: manage the keys of a running gateway over HTTP, on a listener of its own.

Off unless `admin_listen` is set. It listens apart from the gateway so that it can stay on loopback (or behind a
firewall) while the gateway serves the network; a non-loopback admin address needs `expose` and TLS.

One process serves it: the only worker in single-process mode; with several workers, worker 0 (the supervisor
reserves the port, as it does for the gateway's, and starts the listener in worker 0 only, again after a restart).
Every change goes through the key store, which every worker and replica follows, so it does not matter which
process makes it.

Routes (JSON, errors in the OpenAI envelope):

    GET  /admin/healthz
    GET  /admin/keys                    {"object": "list", "data": [key, ...]}
    POST /admin/keys                    {name, models, scopes, expires_in, rpm, tpm, concurrency, tool_policy, canary}
                                        -> key + secret
    GET  /admin/keys/{id}
    POST /admin/keys/{id}/revoke
    POST /admin/keys/{id}/rotate        {grace} (seconds the old secret keeps working) -> key + new secret
    POST /admin/keys/{id}/suspend
    POST /admin/keys/{id}/resume
    GET  /admin/metrics                 Prometheus metrics of every worker (OpenMetrics when Accept asks for it);
                                        also opened by `watch.metrics_token`, which opens no other route
    GET  /admin/dashboard, /admin/api/overview, /admin/api/audit/{request_id}   (aiperimeter.watch.dashboard)

Every request needs `Authorization: Bearer <aiperimeter key with the admin scope>`, verified against the store on
every call (no cache: a revoked admin key stops working at once). The caller's key never appears in a response or
a log line. Each change is made through the store with actor `admin-api:<caller's key id>`, evicted from this
worker's key cache, published on the revocation bus when Redis is configured, and recorded as a `key` event in the
audit log, as `aiperimeter keys` does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aiperimeter.config import GatewaySettings, split_host_port
from aiperimeter.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    HTTPFailure,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
)
from aiperimeter.gateway.app import Gateway, GatewayServer
from aiperimeter.gateway.responses import SERVER_HEADER
from aiperimeter.gateway.stages.authenticate import HOW as GATEWAY_HOW
from aiperimeter.gateway.stages.authenticate import CanaryRefused, canary_details, presented_key, usable
from aiperimeter.hosts import is_loopback_host
from aiperimeter.keys import (
    ADMIN_SCOPE,
    ID_RE,
    KEY_RE,
    KNOWN_SCOPES,
    POLICY_NAME_RE,
    KeyRecord,
    canary_conflicts,
    hash_key,
    new_key,
    new_secret,
    parse_key,
)
from aiperimeter.watch.dashboard import Dashboard
from aiperimeter.watch.dashboard import owns as dashboard_owns

log = logging.getLogger("aiperimeter.admin")

MAX_BODY = 64 * 1024
BODY_TIMEOUT = 30.0
MAX_SECONDS = 100 * 365 * 86400.0
MAX_LIMIT = 1_000_000_000
DEFAULT_GRACE = 600.0  # as `aiperimeter keys rotate`
ACTIONS = ("revoke", "rotate", "suspend", "resume")
_HEADERS = {"Server": SERVER_HEADER, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HOW = "The admin API takes an aiperimeter key with the admin scope, as 'Authorization: Bearer aip_...'."


# --- settings ---------------------------------------------------------------------------------------------------


def admin_address(settings: GatewaySettings) -> tuple[str, int] | None:
    return split_host_port(settings.admin_listen) if settings.admin_listen else None


def check_admin_listen(settings: GatewaySettings) -> None:
    """Refuse an admin address other machines can reach unless asked for (`expose`) and protected by TLS."""
    address = admin_address(settings)
    if address is None:
        return
    host, port = address
    if port and port == settings.listen_port:
        raise ConfigError(
            f"{settings.admin_listen} uses the gateway's port; give the admin API a port of its own, as 127.0.0.1:8788",
            field="admin_listen",
        )
    if is_loopback_host(host):
        return
    if not settings.expose or settings.tls_cert is None:
        raise ConfigError(
            f"{settings.admin_listen} is reachable from other machines, and the admin API creates and revokes keys. "
            "Keep it on loopback (as 127.0.0.1:8788), or pass --expose together with --tls-cert/--tls-key",
            field="admin_listen",
        )


def url_of(host: str, port: int, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


# --- requests ---------------------------------------------------------------------------------------------------


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=200)
    models: list[str] | None = Field(None, min_length=1, max_length=1000)
    scopes: list[str] = Field(default_factory=list, max_length=16)
    expires_in: float | None = Field(None, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    rpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    concurrency: int | None = Field(None, ge=1, le=MAX_LIMIT)
    tool_policy: str | None = Field(None, pattern=POLICY_NAME_RE.pattern)
    canary: bool = False  # a tripwire to plant: never served, any use raises a critical alert

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must be 1 to 200 characters")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [v.strip() for v in value]
        if not all(names) or max(map(len, names)) > 200:
            raise ValueError("each model name must be 1 to 200 characters; give null for every model")
        return names

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        if not set(value) <= KNOWN_SCOPES:
            raise ValueError(f"unknown scope; known scopes: {', '.join(sorted(KNOWN_SCOPES))}")
        return value


class Rotate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grace: float = Field(DEFAULT_GRACE, ge=0, le=MAX_SECONDS, allow_inf_nan=False)


class NoFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _invalid(exc: ValidationError, model: type[BaseModel]) -> BadRequest:
    """A readable 400 that names fields but never repeats a value that was sent."""
    known = ", ".join(model.model_fields) or "none: send no body, or {}"
    problems: list[str] = []
    code = ""
    for item in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in item["loc"])
        where = where if _FIELD.fullmatch(where) else "(a field)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r} (known fields: {known})")
            code = code or "unknown_field"
        elif item["type"] == "missing":
            problems.append(f"{where} is required")
            code = code or "missing_field"
        else:
            problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
            code = code or "invalid_field"
    return BadRequest(code or "invalid_field", "Invalid request: " + "; ".join(problems[:5]) + ".")


def _parse(model: type[M], doc: dict[str, Any]) -> M:
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise _invalid(exc, model) from None


async def _read_json(request: web.BaseRequest) -> dict[str, Any]:
    """The body as a JSON object ({} when empty), read within MAX_BODY bytes and BODY_TIMEOUT seconds."""
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise UnsupportedMediaType("encoded_body", "Send the request body uncompressed.")
    too_large = PayloadTooLarge("body_too_large", f"The request body is larger than {MAX_BODY} bytes.")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large
    data = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while len(data) <= MAX_BODY:
                chunk = await request.content.read(MAX_BODY + 1 - len(data))
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise BadRequest("body_timeout", "The request body stopped arriving.") from None
    if len(data) > MAX_BODY:
        raise too_large
    if not data.strip():
        return {}
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise UnsupportedMediaType("unsupported_media_type", "Send the request body as application/json.")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "The request body is not valid JSON (UTF-8).") from None
    if not isinstance(doc, dict):
        raise BadRequest("invalid_json", "The request body must be a JSON object.")
    return doc


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json", headers=_HEADERS)


def _error(failure: HTTPFailure) -> web.Response:
    response = web.Response(
        status=failure.status,
        body=failure.body(),
        content_type="application/json",
        headers={**_HEADERS, **failure.headers},
    )
    response.force_close()  # the body may not have been read
    return response


# Routes: name -> the methods it takes.
_METHODS: dict[str, tuple[str, ...]] = {
    "healthz": ("GET",),
    "keys": ("GET", "POST"),
    "key": ("GET",),
    **{action: ("POST",) for action in ACTIONS},
}


def _route(path: str) -> tuple[str, str | None]:
    """(route name, key id) of a raw path; 400 for a malformed id, 404 for anything else."""
    if path == "/admin/healthz":
        return "healthz", None
    if path == "/admin/keys":
        return "keys", None
    if path.startswith("/admin/keys/"):
        parts = path.removeprefix("/admin/keys/").split("/")
        if len(parts) == 1 or (len(parts) == 2 and parts[1] in ACTIONS):
            if not ID_RE.fullmatch(parts[0]):
                raise BadRequest(
                    "invalid_key_id",
                    "The path does not hold a key id; ids are 12 characters of a-z and 2-7, as GET /admin/keys shows.",
                )
            return ("key" if len(parts) == 1 else parts[1]), parts[0]
    raise NotFound("not_found", "There is no such admin API route; see GET /admin/keys.")


# --- the API ----------------------------------------------------------------------------------------------------


class AdminAPI:
    """The handler of the admin listener, over one worker's gateway (its store, key cache, bus and audit sink)."""

    actor_prefix: ClassVar[str] = "admin-api"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.dashboard = Dashboard(gateway, self.verify)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except HTTPFailure as failure:
            if failure.status in (401, 403):
                log.info("admin API refused a request from %s: %s", request.remote, failure.code)
            if isinstance(failure, CanaryRefused):
                self._canary_used(request, failure.record)
            return _error(failure)
        except Exception:
            log.exception("an admin API request failed")
            return _error(InternalError())

    def _canary_used(self, request: web.BaseRequest, record: KeyRecord) -> None:
        """A canary key tried on the admin listener (API or dashboard): the audit record the gateway writes for one,
        so the watcher raises the same alert. Answered as an unknown key all the same."""
        self.gateway.sink.write(
            {"time": time.time(), "request_id": os.urandom(12).hex(), "key_id": record.id,
             "client": request.remote or "", "method": request.method,
             "path": request.raw_path.partition("?")[0][:256], "route": None, "model": None, "status": 401,
             "outcome": "denied", "deny": "invalid_key", "listener": "admin", "pid": os.getpid(),
             **canary_details(request.headers)}
        )  # fmt: skip

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if dashboard_owns(request.raw_path):  # read-only GET routes that also take Basic auth, for browsers
            return await self.dashboard.handle(request)
        if request.raw_path.partition("?")[0] == "/admin/metrics":  # the one route the scrapers' token opens
            return await self._metrics(request)
        caller = await self._authenticate(request)
        path, question, _ = request.raw_path.partition("?")
        name, key_id = _route(path)
        if request.method not in _METHODS[name]:
            raise MethodNotAllowed(
                "method_not_allowed",
                f"This admin API route takes {' or '.join(_METHODS[name])}.",
                headers={"Allow": ", ".join(_METHODS[name])},
            )
        if question:
            raise BadRequest("unexpected_query", "The admin API takes no query string.")
        if request.method == "GET":
            if request.body_exists:
                raise BadRequest("unexpected_body", "This route takes no request body.")
            return await self._read(name, key_id)
        doc = await _read_json(request)
        actor = f"{self.actor_prefix}:{caller.id}"
        if name == "keys":
            return await self._create(_parse(CreateKey, doc), actor)
        assert key_id is not None
        return await self._change(name, key_id, doc, actor)

    async def _metrics(self, request: web.BaseRequest) -> web.Response:
        """GET /admin/metrics, for an admin key or the metrics token: every process's metrics, merged."""
        if not self._scraper(request):
            await self._authenticate(request)
        if request.method != "GET":
            raise MethodNotAllowed("method_not_allowed", "This admin API route takes GET.", headers={"Allow": "GET"})
        if "?" in request.raw_path:
            raise BadRequest("unexpected_query", "The admin API takes no query string.")
        if request.body_exists:
            raise BadRequest("unexpected_body", "This route takes no request body.")
        body, content_type = await self.gateway.metric_files.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": content_type})

    def _scraper(self, request: web.BaseRequest) -> bool:
        """Whether the request presents the metrics token (compared in constant time, as digests of equal length)."""
        token = self.gateway.settings.watch.metrics_token
        if token is None:
            return False
        try:
            presented = presented_key(request.headers)
        except Unauthenticated:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, hashlib.sha256(token.reveal().encode("utf-8", "surrogatepass")).digest())

    async def _authenticate(self, request: web.BaseRequest) -> KeyRecord:
        """The caller's key, verified as the gateway verifies keys, but against the store on every call."""
        try:
            token = presented_key(request.headers)
        except Unauthenticated as exc:  # the same codes as the gateway's, with the admin API's advice
            raise Unauthenticated(exc.code, exc.message.replace(GATEWAY_HOW, HOW)) from None
        return await self.verify(token)

    async def verify(self, token: str) -> KeyRecord:
        """The admin key `token` names, if it is usable now and has the admin scope."""
        if not token.isascii() or KEY_RE.fullmatch(token) is None or parse_key(token) is None:
            raise Unauthenticated("malformed_credentials", f"The API key is not an aiperimeter key. {HOW}")
        secret_hash = hash_key(token)
        record = usable(await self.gateway.store.by_hash(secret_hash), secret_hash, time.time())
        if ADMIN_SCOPE not in record.scopes:
            raise Forbidden("admin_scope_required", "The admin API needs a key with the admin scope.")
        return record

    async def _get(self, key_id: str) -> KeyRecord:
        record = await self.gateway.store.get(key_id)
        if record is None:
            raise NotFound("key_not_found", f"No key has the id {key_id}; see GET /admin/keys.")
        return record

    async def _read(self, name: str, key_id: str | None) -> web.Response:
        if name == "healthz":
            return _json(200, {"status": "ok"})
        if key_id is None:
            records, now = await self.gateway.store.list_all(), time.time()
            return _json(200, {"object": "list", "data": [r.public(now) for r in records]})
        return _json(200, (await self._get(key_id)).public(time.time()))

    async def _create(self, spec: CreateKey, actor: str) -> web.Response:
        if spec.canary and (given := canary_conflicts(spec.model_dump(exclude={"name", "canary"}))):
            raise BadRequest("canary_options", f"A canary key is never served, so it takes no {', '.join(given)}.")
        now = time.time()
        record, secret = new_key(
            spec.name,
            scopes=frozenset(spec.scopes),
            models=frozenset(spec.models) if spec.models is not None else None,
            expires_at=now + spec.expires_in if spec.expires_in is not None else None,
            now=now,
            rpm=spec.rpm,
            tpm=spec.tpm,
            concurrency=spec.concurrency,
            tool_policy=spec.tool_policy,
            canary=spec.canary,
        )
        if spec.tool_policy is not None and self.gateway.policies.get(spec.tool_policy) is None:
            raise BadRequest(
                "unknown_tool_policy",
                f"This gateway has no tool policy named {spec.tool_policy!r}; loaded: "
                + (", ".join(self.gateway.policies.names()) or "none (start it with --tool-policies DIR)"),
            )
        await self.gateway.store.add(record, actor)
        await self._done("create", record, actor)
        return _json(201, {**record.public(time.time()), "secret": secret})

    async def _change(self, action: str, key_id: str, doc: dict[str, Any], actor: str) -> web.Response:
        store = self.gateway.store
        grace = 0.0
        if action == "rotate":
            grace = _parse(Rotate, doc).grace
        else:
            _parse(NoFields, doc)  # revoke, suspend and resume take no fields
        current = await self._get(key_id)
        if action == "rotate" and current.canary:
            raise Conflict(
                "canary_not_rotatable",
                f"Key {key_id} is a canary: a new secret would be bait no one has found. Create another canary and "
                "revoke this one.",
            )
        now = time.time()
        secret: str | None = None
        extra: dict[str, object] = {}
        result: KeyRecord | None
        if action == "revoke":
            result = await store.revoke(key_id, now, actor)
        elif action == "suspend":
            result = await store.suspend(key_id, now, actor)
        elif action == "resume":
            result = await store.resume(key_id, actor)
        else:
            secret, new_hash = new_secret(key_id)
            extra["grace_until"] = now + grace
            result = await store.rotate(key_id, new_hash, now + grace, actor)
        if result is None:
            raise Conflict("key_not_changeable", f"Key {key_id} cannot be changed: it is revoked.")
        await self._done(action, result, actor, **extra)
        body: dict[str, object] = result.public(time.time())
        if secret is not None:
            body = {**body, "secret": secret, **extra}
        return _json(200, body)

    async def _done(self, action: str, record: KeyRecord, actor: str, **extra: object) -> None:
        await self.gateway.key_changed(record.id, action, actor, **extra)
        log.info("admin API: %s key %s (by %s)", action, record.id, actor)


# --- the listener -----------------------------------------------------------------------------------------------


@dataclass
class AdminListener:
    server: asyncio.Server
    factory: web.Server
    url: str

    async def close(self, grace: float) -> None:
        self.server.close()
        await self.factory.shutdown(grace)
        await self.server.wait_closed()


async def start_admin(
    gateway: Gateway, host: str, port: int, *, reuse_port: bool, tls: ssl.SSLContext | None
) -> AdminListener:
    """Serve the admin API of `gateway` on host:port (TLS when the gateway has it)."""
    factory = GatewayServer(
        AdminAPI(gateway).handle,
        access_log=None,
        auto_decompress=False,
        keepalive_timeout=gateway.settings.timeouts.keepalive,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=100,
    )
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(factory, host, port, reuse_port=reuse_port, ssl=tls, backlog=128)
    except OSError as exc:
        await factory.shutdown(0)
        raise ConfigError(
            f"cannot serve the admin API on {host}:{port}: {exc.strerror or exc}", field="admin_listen"
        ) from None
    return AdminListener(server, factory, url_of(host, server.sockets[0].getsockname()[1], tls is not None))


def reserve_admin_port(settings: GatewaySettings, taken: int) -> tuple[socket.socket, int]:
    """For several workers: bind the admin address without listening (SO_REUSEPORT), so worker 0 (and any worker 0
    restarted after it) can listen on the same port, even when port 0 was asked for. `taken`: the gateway's port."""
    address = admin_address(settings)
    assert address is not None
    host, port = address
    for _ in range(5):
        sock: socket.socket | None = None
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(info[4])
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise ConfigError(
                f"cannot serve the admin API on {settings.admin_listen}: {exc.strerror or exc}", field="admin_listen"
            ) from None
        bound = int(sock.getsockname()[1])
        if bound != taken:
            return sock, bound
        sock.close()  # port 0 gave the gateway's own port (both may be shared): ask again
    raise ConfigError("could not find a free port for the admin API", field="admin_listen")
