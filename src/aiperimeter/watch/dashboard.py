"""The dashboard: a read-only page on the admin listener, and the JSON it draws.

    GET /admin/dashboard                  the page (/admin/dashboard/ redirects to it)
    GET /admin/dashboard/dashboard.js     its script and style sheet: no other resource is ever loaded
    GET /admin/dashboard/dashboard.css
    GET /admin/api/overview?window=3600   traffic rollup, alerts, suspended keys, blocked addresses, canary keys
    GET /admin/api/audit/{request_id}     one audit record the watcher still holds (alert evidence)

Every route needs the admin credential. A browser cannot put a Bearer header on a page navigation, so these GET
routes, and only these, also take HTTP Basic with the admin key as the password (any user name): the key-changing
POST routes never do, or any page the operator visits could send them requests with the browser's remembered
credentials. Every response carries a strict Content-Security-Policy: the page runs only its own script, and
builds the DOM from data with textContent, since key names, models, paths and user agents come from attackers.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from aiperimeter.errors import BadRequest, MethodNotAllowed, NotFound, Unauthenticated
from aiperimeter.gateway.responses import SERVER_HEADER
from aiperimeter.gateway.stages.authenticate import HOW as GATEWAY_HOW
from aiperimeter.gateway.stages.authenticate import presented_key
from aiperimeter.keys import KeyRecord
from aiperimeter.watch.rollup import MAX_WINDOW, MIN_WINDOW, Rollup

if TYPE_CHECKING:
    from aiperimeter.gateway.app import Gateway

PAGE = "/admin/dashboard"
STATIC_PREFIX = "/admin/dashboard/"
API_PREFIX = "/admin/api/"
OVERVIEW = "/admin/api/overview"
AUDIT_PREFIX = "/admin/api/audit/"
DEFAULT_WINDOW = 3600
MAX_ALERTS = 200
MAX_LISTED = 500  # suspended keys, blocks and canaries shown at most (the page says when there are more)
BASIC_CHALLENGE = 'Basic realm="aiperimeter admin", charset="UTF-8"'
HOW = (
    "The dashboard takes an aiperimeter key with the admin scope: as the password when the browser asks "
    "(any user name), or as 'Authorization: Bearer aip_...'."
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Server": SERVER_HEADER,
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC = {
    "dashboard.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_REQUEST_ID = re.compile(r"[0-9a-f]{16,64}")
_WINDOW = re.compile(r"[0-9]{1,8}")
_static_cache: dict[str, bytes] = {}


class RecordLookup(Protocol):
    def get(self, request_id: str) -> Mapping[str, Any] | None: ...


class WatchSource(Protocol):
    """What the dashboard reads of the gateway's watcher."""

    @property
    def rollup(self) -> Rollup: ...

    @property
    def ring(self) -> RecordLookup: ...


def owns(raw_path: str) -> bool:
    """Whether a request target is one of the dashboard's routes."""
    path = raw_path.partition("?")[0]
    return path == PAGE or path.startswith((STATIC_PREFIX, API_PREFIX))


def static_file(name: str) -> bytes:
    data = _static_cache.get(name)
    if data is None:
        data = _static_cache[name] = (resources.files("aiperimeter.watch") / "static" / name).read_bytes()
    return data


def page_weight() -> int:
    """Bytes of everything the page loads: its HTML, script and style sheet."""
    return sum(len(static_file(name)) for name in STATIC)


def credential(headers: CIMultiDictProxy[str]) -> str:
    """The admin key a dashboard request presents: the password of HTTP Basic, or a Bearer / x-api-key token."""
    authorization = headers.getall("Authorization", ())
    if len(authorization) == 1 and authorization[0][:6].lower() == "basic ":
        if "x-api-key" in headers:
            raise Unauthenticated("malformed_credentials", f"Send exactly one credential. {HOW}")
        try:
            decoded = base64.b64decode(authorization[0][6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Unauthenticated(
                "malformed_credentials", f"The Basic credentials are not valid base64. {HOW}"
            ) from None
        _, colon, password = decoded.partition(":")
        if not colon or not password:
            raise Unauthenticated("missing_credentials", f"No admin key was given as the password. {HOW}")
        return password
    try:
        return presented_key(headers)
    except Unauthenticated as exc:
        raise Unauthenticated(exc.code, exc.message.replace(GATEWAY_HOW, HOW)) from None


def challenge(exc: Unauthenticated) -> Unauthenticated:
    """The same refusal, asking a browser for Basic credentials (so it shows its sign-in prompt)."""
    exc.headers = {"WWW-Authenticate": BASIC_CHALLENGE}
    return exc


def window_of(query: str | None) -> int:
    """The `window` query parameter in seconds (DEFAULT_WINDOW when there is no query); 400 for anything else."""
    if not query:
        return DEFAULT_WINDOW
    name, equals, value = query.partition("=")
    if name != "window" or not equals:
        raise BadRequest("invalid_query", "This route takes one query parameter: window (seconds), as ?window=3600.")
    if _WINDOW.fullmatch(value) is None or not MIN_WINDOW <= int(value) <= MAX_WINDOW:
        raise BadRequest(
            "invalid_window", f"window must be a whole number of seconds from {MIN_WINDOW} to {MAX_WINDOW}."
        )
    return int(value)


def _response(status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=body, content_type=content_type, charset="utf-8", headers={**HEADERS, **(extra or {})}
    )


def _json(doc: object) -> web.Response:
    return _response(200, orjson.dumps(doc), "application/json")


class Dashboard:
    """The dashboard's routes over one gateway: its store, and its watcher when watch is on in this process."""

    def __init__(self, gateway: Gateway, verify: Callable[[str], Awaitable[KeyRecord]]) -> None:
        self.gateway = gateway
        self.verify = verify  # the admin API's check of an admin key (store lookup, status, admin scope)

    @property
    def watcher(self) -> WatchSource | None:
        return self.gateway.watcher

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, question, rest = request.raw_path.partition("?")
        query = rest if question else None
        try:
            await self.verify(credential(request.headers))
        except Unauthenticated as exc:
            raise challenge(exc) from None
        if request.method != "GET":
            raise MethodNotAllowed(
                "method_not_allowed", "The dashboard is read-only: it takes GET.", headers={"Allow": "GET"}
            )
        if request.body_exists:
            raise BadRequest("unexpected_body", "This route takes no request body.")
        if path == OVERVIEW:
            return _json(await self.overview(window_of(query)))
        if query is not None:
            raise BadRequest("unexpected_query", "This route takes no query string.")
        if path == PAGE:
            return _response(200, static_file("dashboard.html"), "text/html")
        if path == STATIC_PREFIX:
            return _response(302, b"", "text/plain", {"Location": PAGE})
        if path.startswith(STATIC_PREFIX):
            name = path.removeprefix(STATIC_PREFIX)
            if name in STATIC and name != "dashboard.html":
                return _response(200, static_file(name), STATIC[name])
        if path.startswith(AUDIT_PREFIX):
            return _json(self.audit_record(path.removeprefix(AUDIT_PREFIX)))
        raise NotFound("not_found", "There is no such dashboard route; open /admin/dashboard.")

    def audit_record(self, request_id: str) -> Mapping[str, Any]:
        if _REQUEST_ID.fullmatch(request_id) is None:
            raise BadRequest("invalid_request_id", "A request id is 16 to 64 characters of 0-9 and a-f.")
        watcher = self.watcher
        if watcher is None:
            raise NotFound("watch_off", "Watch is off on this gateway, so it holds no audit records.")
        record = watcher.ring.get(request_id)
        if record is None:
            raise NotFound(
                "record_not_held",
                "The watcher no longer holds this record (it keeps the most recent ones); find it in the audit log "
                "by its request_id.",
            )
        return record

    async def overview(self, window: int) -> dict[str, Any]:
        """Everything the page shows for the last `window` seconds."""
        store = self.gateway.store
        now = time.time()
        watcher = self.watcher
        rollup = watcher.rollup.view(now, window) if watcher is not None else None
        records = await store.list_all()
        alerts = await store.alerts(limit=MAX_ALERTS, since=now - window)
        blocks = await store.blocks(now)
        suspended = [r for r in records if r.status(now) == "suspended"]
        canaries = [r for r in records if r.canary]
        mentioned: set[str] = {str(a["key"]) for a in alerts if a.get("key")}
        mentioned.update(r.id for r in suspended)
        mentioned.update(r.id for r in canaries)
        if rollup is not None:
            mentioned.update(s["key"] for s in rollup["requests"] if s["key"])
            mentioned.update(s["key"] for s in rollup["top_tokens"] if s["key"])
        return {
            "now": now,
            "window": window,
            "watch": {
                "enabled": self.gateway.settings.watch.enabled,
                "running": watcher is not None,
                "message": None if watcher is not None else self._why_no_traffic(),
                "rejected": watcher.rollup.rejected if watcher is not None else 0,
            },
            "traffic": rollup,
            "alerts": alerts,
            "suspended": [{"id": r.id, "name": r.name, "suspended_at": r.suspended_at} for r in suspended[:MAX_LISTED]],
            "suspended_total": len(suspended),
            "blocks": [
                {"address": address, "until": until, "reason": reason} for address, until, reason in blocks[:MAX_LISTED]
            ],
            "blocks_total": len(blocks),
            "canaries": [
                {"id": r.id, "name": r.name, "created_at": r.created_at, "status": r.status(now)}
                for r in canaries[:MAX_LISTED]
            ],
            "canaries_total": len(canaries),
            "names": {r.id: r.name for r in records if r.id in mentioned},
        }

    def _why_no_traffic(self) -> str:
        settings = self.gateway.settings
        if not settings.watch.enabled:
            return (
                "Watch is off (watch.enabled: false in the gateway's configuration): the alerts, suspended keys and "
                "blocks kept in the key store are shown, but no traffic is counted."
            )
        if settings.audit_path is None and settings.redis is None:
            return (
                "No traffic is counted: the audit log goes to standard output, so there is no stream to read. "
                "Write the audit log to a file, or configure Redis."
            )
        return "No traffic is counted: the watcher is not running in this process."
