"""The request pipeline: an Exchange passes through ordered stages.

A stage implements only the hooks it needs; the pipeline calls only the hooks a stage overrides, so an unused hook
costs nothing on the hot path. `on_request` may raise a Deny to stop the request before the upstream sees it;
`on_event` sees each parsed response event; `on_finish` runs for every request (success, deny, upstream error,
client disconnect), shielded from cancellation, so accounting and the audit record are never lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from aiohttp import web

from aiperimeter.errors import Deny, HTTPFailure, InternalError
from aiperimeter.gateway.responses import SERVER_HEADER, add_cors_headers
from aiperimeter.gateway.routes import Route
from aiperimeter.keys import KeyRecord

log = logging.getLogger("aiperimeter.gateway")


class Outcome(Enum):
    OK = "ok"
    DENIED = "denied"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    ERROR = "error"


@dataclass(slots=True)
class Exchange:
    """Everything the stages know about one request and its response."""

    request: web.BaseRequest
    request_id: str
    started: float  # perf_counter
    client: str
    method: str
    path: str = ""
    query: str = ""
    route: Route | None = None
    params: Mapping[str, str] | None = None  # path parameters of a patterned route
    key: KeyRecord | None = None
    body: bytes = b""
    json: dict[str, Any] | None = None
    model: str | None = None
    stream: bool = False
    status: int = 0
    deny_code: str | None = None
    upstream_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response: web.StreamResponse | None = None
    cors_origin: str | None = None  # a configured CORS origin this request came from
    extra_headers: dict[str, str] | None = None  # added to the response (rate-limit state)
    reservation: Any = None  # what the limits stage took, settled when the request finishes
    tools: Any = None  # the tool policy's plan for this request (stages.tool_policy.ToolPlan), when one applies


@dataclass(slots=True)
class StreamEvent:
    """One unit of a response: an SSE event's data, an NDJSON line, or a whole JSON body."""

    data: bytes


class Stage:
    name: ClassVar[str] = "stage"

    async def on_request(self, ex: Exchange) -> None:
        return None

    async def on_event(self, ex: Exchange, ev: StreamEvent) -> None:
        return None

    async def on_finish(self, ex: Exchange, outcome: Outcome) -> None:
        return None


def _overrides(stage: Stage, hook: str) -> bool:
    return getattr(type(stage), hook) is not getattr(Stage, hook)


def error_response(ex: Exchange, failure: HTTPFailure) -> web.Response:
    response = web.Response(
        status=failure.status, body=failure.body(), content_type="application/json", headers=failure.headers
    )
    response.headers["x-request-id"] = ex.request_id
    response.headers["Server"] = SERVER_HEADER
    if ex.cors_origin is not None:
        add_cors_headers(response.headers, ex.cors_origin)
    return response


class Pipeline:
    """Runs stages in the order given. The stage named `forward` splits request side from response side."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [stage.name for stage in stages]
        if names.count("forward") != 1:
            raise ValueError("a pipeline has exactly one forward stage")
        split = names.index("forward")
        self.stages = tuple(stages)
        self.request_hooks = tuple(s for s in stages[: split + 1] if _overrides(s, "on_request"))
        self.event_hooks = tuple(s for s in stages[split + 1 :] if _overrides(s, "on_event"))
        self.finish_hooks = tuple(s for s in stages if _overrides(s, "on_finish"))
        # Request ids: a random prefix per process and a counter; unique without a system call per request.
        # Eight random bytes: ids also key limiter state shared by every replica.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def emit(self, ex: Exchange, ev: StreamEvent) -> None:
        for stage in self.event_hooks:
            await stage.on_event(ex, ev)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ex = Exchange(
            request=request,
            request_id=f"{self._id_prefix}{next(self._ids):08x}",
            started=time.perf_counter(),
            client=str(peer[0]) if peer else "",
            method=request.method,
        )
        outcome = Outcome.OK
        try:
            for stage in self.request_hooks:
                await stage.on_request(ex)
            if ex.response is None:  # the forward stage always sets it; this guards a broken pipeline
                raise RuntimeError("no response was produced")
            return ex.response
        except HTTPFailure as failure:
            outcome = Outcome.DENIED if isinstance(failure, Deny) else Outcome.UPSTREAM_ERROR
            return self._fail(ex, failure)
        except asyncio.CancelledError:
            outcome = Outcome.CLIENT_DISCONNECTED
            raise
        except (ConnectionResetError, BrokenPipeError):
            outcome = Outcome.CLIENT_DISCONNECTED
            raise
        except Exception:
            log.exception("request %s failed inside the gateway", ex.request_id)
            outcome = Outcome.ERROR
            return self._fail(ex, InternalError())
        finally:
            if self.finish_hooks:
                if outcome is Outcome.CLIENT_DISCONNECTED:
                    # The task is being cancelled: finish in a task of its own that the cancellation cannot reach.
                    await asyncio.shield(self._finish(ex, outcome))
                else:
                    await self._finish(ex, outcome)  # no Task per request on the hot path

    def _fail(self, ex: Exchange, failure: HTTPFailure) -> web.StreamResponse:
        ex.status = failure.status
        ex.deny_code = failure.code
        if ex.response is not None and ex.response.prepared:
            # Headers are out: the only honest signal left is to cut the stream.
            if ex.request.transport is not None:
                ex.request.transport.close()
            return ex.response
        ex.response = error_response(ex, failure)
        return ex.response

    async def _finish(self, ex: Exchange, outcome: Outcome) -> None:
        for stage in self.finish_hooks:
            try:
                await stage.on_finish(ex, outcome)
            except Exception:
                log.exception("stage %s failed while finishing request %s", stage.name, ex.request_id)
