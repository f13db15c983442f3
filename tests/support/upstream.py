"""A fake model server that records every request that reaches it, run on its own thread and loop.

It answers any method and path, so a test can tell exactly what got through the gateway. Behaviour for a path can
be scripted with `script(path, handler)`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from aiohttp import web

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    header_list: tuple[tuple[str, str], ...]
    body: bytes


class FakeUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._scripts: dict[str, Handler] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.ServerRunner | None = None
        self.port = 0

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None, auto_decompress=False)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # recording -------------------------------------------------------------------------------------------------
    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    def calls(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def script(self, path: str, handler: Handler) -> None:
        self._scripts[path] = handler

    def unscript(self) -> None:
        self._scripts.clear()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(
            request.method,
            request.raw_path,
            {k.lower(): v for k, v in request.headers.items()},
            tuple(request.headers.items()),
            body,
        )
        with self._lock:
            self.seen.append(seen)
        handler = self._scripts.get(request.path)
        if handler is not None:
            return await handler(request)
        return web.Response(
            body=orjson.dumps(
                {"ok": True, "path": request.raw_path, "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
            ),
            content_type="application/json",
        )
