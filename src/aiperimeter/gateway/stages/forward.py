"""Send the authorised request upstream and relay the response, chunk by chunk as it arrives.

The path sent is the path that was authorised, byte for byte (`encoded=True`: no re-quoting, no normalising).
Each chunk is written to the client as soon as it arrives and framed into events for the response-side stages.
A client disconnect cancels this task, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from aiperimeter.errors import ToolCallBlocked, UpstreamError, UpstreamTimeout
from aiperimeter.gateway.pipeline import Exchange, Stage, StreamEvent
from aiperimeter.gateway.responses import SERVER_HEADER, add_cors_headers
from aiperimeter.gateway.streams import Framer, framer_for, is_stream
from aiperimeter.gateway.tools.base import blocked_message
from aiperimeter.gateway.upstream import response_headers, upstream_headers
from aiperimeter.watch.metrics import MetricBook

SMALL_BODY = 64 * 1024  # fixed-length responses up to this size are relayed in one write
MAX_JUDGED_BODY = 16 * 1024 * 1024  # a non-streamed response a tool policy must read whole
STRIPPED_HEADER = "X-Aiperimeter-Tool-Calls-Stripped"

Emit = Callable[[Exchange, StreamEvent], Awaitable[None]]


class _Relayed(web.StreamResponse):
    """A relayed response that may hold its last bytes back until it is ended, which aiohttp does once the handler
    returns: after the audit record is written."""

    tail = b""

    async def write_eof(self, data: bytes = b"") -> None:
        tail, self.tail = self.tail, b""
        await super().write_eof(tail + data)


class Forward(Stage):
    name: ClassVar[str] = "forward"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        credential: tuple[str, str] | None,
        *,
        first_byte_timeout: float,
        idle_timeout: float,
        total_timeout: float,
    ) -> None:
        self.session = session
        self.base = base
        self.credential = credential
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.total_timeout = total_timeout
        self.emit: Emit | None = None  # set by the pipeline builder: the response-side stages
        self.book: MetricBook | None = None  # set by the pipeline builder: counts the streams open
        self._urls: dict[str, URL] = {}

    async def on_request(self, ex: Exchange) -> None:
        target = self.base + ex.path + ("?" + ex.query if ex.query else "")
        url = self._urls.get(target)
        if url is None:
            if len(self._urls) >= 1024:
                self._urls.clear()
            url = self._urls[target] = URL(target, encoded=True)  # as authorised: no re-quoting, no normalising
        headers = upstream_headers(ex.request.headers, self.credential)
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                upstream = await self.session.request(
                    ex.method,
                    url,
                    headers=headers,
                    data=ex.body if ex.body or ex.method in ("POST", "PUT", "PATCH") else None,
                    allow_redirects=False,
                )
        except TimeoutError:
            raise UpstreamTimeout("upstream_timeout", "The model server did not answer in time.") from None
        except aiohttp.ClientError:
            raise UpstreamError("upstream_unavailable", "The model server could not be reached.") from None
        try:
            await self._relay(ex, upstream, sent)
        finally:
            upstream.release()

    async def _relay(self, ex: Exchange, upstream: aiohttp.ClientResponse, sent: float) -> None:
        ex.status = upstream.status
        content_type = upstream.headers.get("Content-Type", "")
        ex.stream = is_stream(content_type)
        framer = framer_for(content_type)
        length = upstream.content_length
        headers = response_headers(upstream.headers)
        headers["x-request-id"] = ex.request_id
        if ex.extra_headers:
            headers.update(ex.extra_headers)
        headers.setdefault("Server", SERVER_HEADER)
        if ex.cors_origin is not None:
            add_cors_headers(headers, ex.cors_origin)
        content = upstream.content
        if ex.method == "HEAD" or upstream.status in (204, 304):
            length = 0  # no body follows, whatever Content-Length says
        elif ex.tools is not None and upstream.status < 400:
            if upstream.status >= 300:  # SDKs follow redirects: the call would be made where no policy holds
                raise UpstreamError("upstream_redirect", "The model server answered with a redirect; not followed.")
            await self._relay_guarded(ex, upstream, headers, framer, sent)
            return
        if not ex.stream and length is not None and length <= SMALL_BODY:
            body = content.read_nowait(length) if length else b""  # usually here already, with the head
            if len(body) < length:
                body += await self._read(ex, content.readexactly(length - len(body)))
            ex.upstream_ms = (time.perf_counter() - sent) * 1000
            ex.response = web.Response(status=upstream.status, body=body, headers=headers)
            ex.bytes_out = length
            framer.feed(body)
            await self._emit_all(ex, framer.close())
            return
        if ex.stream:
            headers["X-Accel-Buffering"] = "no"
            headers["Cache-Control"] = "no-cache"
        stream = _Relayed(status=upstream.status, headers=headers)
        if length is not None:
            stream.content_length = length
        ex.response = stream
        await stream.prepare(ex.request)
        book = self.book if ex.stream else None
        if book is not None:
            book.active_streams += 1
        try:
            while True:
                chunk = await self._read(ex, content.readany())
                if not chunk:
                    break
                if length is not None and ex.bytes_out + len(chunk) >= length:
                    stream.tail = chunk  # completes the body: goes out when the response ends
                else:
                    await stream.write(chunk)
                ex.bytes_out += len(chunk)
                events = framer.feed(chunk)
                if events:
                    await self._emit_all(ex, events)
            ex.upstream_ms = (time.perf_counter() - sent) * 1000
            await self._emit_all(ex, framer.close())
            # No write_eof here: aiohttp ends the response (chunked: its last chunk; fixed length: its tail) once the
            # handler returns, after the audit record is written, so a client never holds a whole answer whose
            # record a killed worker could lose.
        finally:
            if book is not None:
                book.active_streams -= 1

    async def _relay_guarded(
        self, ex: Exchange, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], framer: Framer, sent: float
    ) -> None:
        """Relay a response whose tool calls a policy judges: through the wire format's guard, which holds each call
        back only until its arguments are complete. Anything the guard could not read is refused, never passed."""
        plan = ex.tools
        encodings = {t.strip().lower() for v in upstream.headers.getall("Content-Encoding", ()) for t in v.split(",")}
        if encodings - {"identity", ""}:
            raise UpstreamError("upstream_encoded", "The model server compressed its response; it cannot be checked.")
        content = upstream.content
        # Judged as the client will read it: a client that asked for a stream reads a stream, one that did not
        # parses the whole body, whatever Content-Type the upstream gave.
        ex.stream = plan.streamed
        if not plan.streamed:
            body = await self._read_whole(ex, content)
            ex.upstream_ms = (time.perf_counter() - sent) * 1000
            ex.bytes_out = len(body)
            framer.feed(body)
            await self._emit_all(ex, framer.close())
            result = plan.format.judge_body(body, plan.judge)
            plan.decisions.extend(result.decisions)
            if result.blocked is not None:
                blocked = result.blocked
                raise ToolCallBlocked("tool_call_blocked", blocked_message(blocked.call, blocked.verdict), blocked)
            stripped = sum(d.verdict.decision == "strip" for d in result.decisions)
            if stripped:
                headers[STRIPPED_HEADER] = str(stripped)
            ex.response = web.Response(status=upstream.status, body=result.body, headers=headers)
            return
        guard = plan.format.StreamGuard(plan.judge)
        headers["X-Accel-Buffering"] = "no"
        headers["Cache-Control"] = "no-cache"
        stream = ex.response = web.StreamResponse(status=upstream.status, headers=headers)
        await stream.prepare(ex.request)
        book = self.book
        if book is not None:
            book.active_streams += 1
        try:
            while guard.blocked is None:
                chunk = await self._read(ex, content.readany())
                if not chunk:
                    out = guard.close()
                    if out:
                        await stream.write(out)
                        ex.bytes_out += len(out)
                    break
                out = guard.feed(chunk)
                if out:
                    await stream.write(out)
                    ex.bytes_out += len(out)
                events = framer.feed(chunk)
                if events:
                    await self._emit_all(ex, events)
        finally:
            plan.decisions.extend(guard.decisions)
            if book is not None:
                book.active_streams -= 1
        ex.upstream_ms = (time.perf_counter() - sent) * 1000
        await self._emit_all(ex, framer.close())
        if guard.blocked is not None:
            ex.deny_code = "tool_call_blocked"  # the stream ended with the policy's error event
        # The response is ended by aiohttp after the audit record is written (see _relay).

    async def _read_whole(self, ex: Exchange, content: aiohttp.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await self._read(ex, content.readany())
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_JUDGED_BODY:
                raise UpstreamError("response_too_large", "The model's response is too large for the tool policy.")
            chunks.append(chunk)

    async def _read(self, ex: Exchange, pending: Awaitable[bytes]) -> bytes:
        # Silence is bounded by the idle timeout, the whole answer by the total one: an upstream that sends a byte
        # just inside the idle timeout, forever, must not hold a request (and its concurrency slot) for ever.
        left = ex.started + self.total_timeout - time.perf_counter()
        try:
            async with asyncio.timeout(min(self.idle_timeout, max(left, 0.0))):
                return await pending
        except TimeoutError:
            if left <= self.idle_timeout:
                raise UpstreamTimeout("upstream_timeout", "The model server's answer took too long.") from None
            raise UpstreamTimeout("upstream_timeout", "The model server stopped sending.") from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError):
            raise UpstreamError("upstream_broken", "The model server broke off the response.") from None

    async def _emit_all(self, ex: Exchange, events: list[bytes]) -> None:
        if self.emit is not None:
            for data in events:
                await self.emit(ex, StreamEvent(data))
