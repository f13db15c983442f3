"""A model server that misbehaves on request, byte by byte: the upstream side of the fault scenarios.

It runs on its own thread and loop. Each request picks its behaviour with an `X-Fault` header (the gateway forwards
unknown headers), so a faulty request and a healthy one can be in flight at once. It speaks keep-alive like a real
server, so the gateway's connection pool is exercised too. Everything it does wait for is bounded (`HOLD`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson

HOLD = 20.0  # the longest any behaviour stalls, should the gateway never give up
MARKER = b"UPSTREAM-JUNK-7f3a9c"  # in every malformed byte sent: it must never reach a client or a log

Behaviour = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
JSON_OK = orjson.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
SSE_EVENTS = [
    b'data: {"choices": [{"delta": {"content": "he"}}]}\n\n',
    b'data: {"choices": [{"delta": {"content": "llo"}}]}\n\n',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n',
    b"data: [DONE]\n\n",
]


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _ok(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" +
                 f"Content-Length: {len(JSON_OK)}\r\n\r\n".encode() + JSON_OK)  # fmt: skip
    return True


async def _stream(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for event in SSE_EVENTS:
        writer.write(chunk(event))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    return True


async def _half_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(chunk(SSE_EVENTS[0]) + chunk(SSE_EVENTS[1][:20]))  # an event cut in the middle
    await writer.drain()


async def _stream_cut_fin(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await _half_stream(writer)
    return False  # the connection is closed: FIN


async def _stream_cut_rst(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    await _half_stream(writer)
    reset(writer)
    return False


async def _close_before_head(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    return False


async def _reset_before_head(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    reset(writer)
    return False


async def _reset_mid_body(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + b'{"a": "')
    await writer.drain()
    reset(writer)
    return False


async def _stall(reader: asyncio.StreamReader) -> None:
    """Sends nothing until the gateway gives up on the request (closes its connection), at most HOLD seconds."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(), HOLD)


async def _slow_head(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    with up.holding():
        await _stall(reader)
    return False


async def _slow_body(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"a": 1, ')
    await writer.drain()
    with up.holding():
        await _stall(reader)
    return False


async def _slow_stream(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(chunk(SSE_EVENTS[0]))
    await writer.drain()
    with up.holding():
        await _stall(reader)
    return False


async def _drip_stream(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Never silent for long, never done: an event every 0.2 s, for HOLD seconds, unless the gateway hangs up."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    with up.holding(), contextlib.suppress(ConnectionError):
        deadline = time.monotonic() + HOLD
        while time.monotonic() < deadline and not reader.at_eof():
            writer.write(chunk(SSE_EVENTS[0]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), 0.2)
    return False


def _junk(data: bytes) -> Behaviour:
    async def send(up: RawUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return False

    return send


_rng = random.Random(8)
_BINARY = bytes(_rng.randrange(256) for _ in range(4096)) + MARKER + bytes(_rng.randrange(256) for _ in range(512))
JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
# name -> the bytes a broken server sends before closing; each must end in a 502, or a cut if its head was valid
GARBAGE: dict[str, bytes] = {
    "text": b"THIS IS NOT HTTP " + MARKER + b"\r\n\r\n",
    "binary": _BINARY,
    "http09": b'{"choices": [], "note": "' + MARKER + b'"}',
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 20\r\n\r\n" + MARKER,
    "bad-length": JSON_HEAD + b"Content-Length: 12abc\r\n\r\n" + MARKER,
    "negative-length": JSON_HEAD + b"Content-Length: -20\r\n\r\n" + MARKER,
    "double-length": JSON_HEAD + b"Content-Length: 20\r\nContent-Length: 21\r\n\r\n" + MARKER + b"xx",
    "short-length": JSON_HEAD + b"Content-Length: 5000\r\n\r\n" + MARKER,
    "bad-chunked": JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n" + MARKER + b"\r\n0\r\n\r\n",
    "chunk-overrun": JSON_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\n" + MARKER + b"\r\n0\r\n\r\n",
    "te-and-length": JSON_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nZZ\r\n" + MARKER,
    "huge-header": JSON_HEAD + b"X-Big: " + MARKER + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "many-headers": JSON_HEAD + b"".join(b"X-H%d: %s\r\n" % (n, MARKER) for n in range(5000)) + b"\r\n{}",
    "nul-in-header": JSON_HEAD + b"X-Bad: a\x00" + MARKER + b"\r\nContent-Length: 2\r\n\r\n{}",
}

BEHAVIOURS: dict[str, Behaviour] = {
    "ok": _ok,
    "stream": _stream,
    "stream-cut-fin": _stream_cut_fin,
    "stream-cut-rst": _stream_cut_rst,
    "close-before-head": _close_before_head,
    "reset-before-head": _reset_before_head,
    "reset-mid-body": _reset_mid_body,
    "slow-head": _slow_head,
    "slow-body": _slow_body,
    "slow-stream": _slow_stream,
    "drip-stream": _drip_stream,
    **{f"garbage-{name}": _junk(data) for name, data in GARBAGE.items()},
}


class _Holding:
    def __init__(self, up: RawUpstream) -> None:
        self.up = up

    def __enter__(self) -> None:
        with self.up.changed:
            self.up.held += 1
            self.up.changed.notify_all()

    def __exit__(self, *exc: object) -> None:
        with self.up.changed:
            self.up.held -= 1
            self.up.changed.notify_all()


class RawUpstream:
    def __init__(self) -> None:
        self.port = 0
        self.seen: Counter[str] = Counter()  # behaviour name -> requests received
        self.held = 0  # requests a slow behaviour is holding right now
        self.changed = threading.Condition()
        self.reset_accepts = 0  # the next this many connections are reset as soon as they are accepted
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> RawUpstream:
        self._thread.start()
        self._call(self._listen())
        return self

    def _call(self, coro: Awaitable[None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def holding(self) -> _Holding:
        return _Holding(self)

    def wait_held(self, count: int, timeout: float = 10.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.held >= count, timeout)

    def count(self, name: str) -> int:
        with self.changed:
            return self.seen[name]

    # faults of the whole server ----------------------------------------------------------------------------------
    def die(self) -> None:
        """The server is gone: its port refuses connections and every open connection is reset."""

        async def die() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                reset(writer)
            self._writers.clear()

        self._call(die())

    def revive(self) -> None:
        self._call(self._listen())  # the same port again

    def reset_next(self, count: int) -> None:
        """Resets every open connection (the gateway's idle pool among them) and the next `count` ones accepted."""

        async def arm() -> None:
            self.reset_accepts = count
            for writer in list(self._writers):
                reset(writer)
            self._writers.clear()

        self._call(arm())

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    # serving -----------------------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.reset_accepts > 0:
            self.reset_accepts -= 1
            with self.changed:
                self.seen["reset-on-accept"] += 1
            reset(writer)
            return
        self._writers.add(writer)
        try:
            keep = True
            while keep:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HOLD)
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length") or 0))
                name = headers.get("x-fault", "ok")
                behaviour = BEHAVIOURS.get(name, _ok)
                with self.changed:
                    self.seen[name] += 1
                keep = await behaviour(self, reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.close()
