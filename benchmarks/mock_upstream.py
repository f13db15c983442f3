"""A fast mock OpenAI-compatible model server for gateway_bench.py: raw asyncio Protocols on uvloop.

`POST /v1/chat/completions` answers a fixed 610-byte chat.completion (Content-Length, keep-alive). When the request
body holds `"stream": true` it answers an SSE stream instead: 20 chat.completion.chunk events 5 ms apart (chunked
encoding, one event per chunk, the first one at once with the headers), then `data: [DONE]`.

The HTTP/1.1 parser handles keep-alive and pipelined requests with Content-Length or chunked bodies; requests that
arrive while a stream is being sent wait their turn. Anything else gets 404 (unknown route) or 400 and a close.

Run: python benchmarks/mock_upstream.py [--port 0]; it prints `mock upstream listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from typing import cast

import orjson
import uvloop

STREAM_EVENTS = 20
EVENT_INTERVAL = 0.005
COMPLETION_SIZE = 610
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')
CREATED = 1764201600


def completion_body(size: int = COMPLETION_SIZE) -> bytes:
    """A chat.completion of exactly `size` bytes (the assistant's text is padded to fit)."""

    def build(content: str) -> bytes:
        return orjson.dumps(
            {
                "id": "chatcmpl-bench-0000000000000000000000000",
                "object": "chat.completion",
                "created": CREATED,
                "model": "bench-model",
                "system_fingerprint": "fp_bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 64, "total_tokens": 76},
            }
        )

    text = "The quick brown fox jumps over the lazy dog. " * 20
    room = size - len(build(""))
    body = build(text[:room])
    assert len(body) == size, len(body)
    return body


def chunk_event(index: int) -> bytes:
    """One SSE event carrying one token, framed as one HTTP chunk; the last event reports usage."""
    last = index == STREAM_EVENTS - 1
    event = {
        "id": "chatcmpl-bench-stream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": "stop" if last else None}],
    }
    if last:
        event["usage"] = {"prompt_tokens": 12, "completion_tokens": STREAM_EVENTS, "total_tokens": 12 + STREAM_EVENTS}
    return http_chunk(b"data: " + orjson.dumps(event) + b"\n\n")


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


BODY = completion_body()
COMPLETION = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
    % (len(BODY), BODY)
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n"
)
EVENTS = [chunk_event(i) for i in range(STREAM_EVENTS)]
STREAM_END = http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
# What is written at each tick: the headers go with the first event, [DONE] and the last chunk with the last one.
STREAM_WRITES = [STREAM_HEAD + EVENTS[0], *EVENTS[1:-1], EVENTS[-1] + STREAM_END]
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BadRequest(Exception):
    pass


class Request:
    __slots__ = ("body", "close", "method", "target")

    def __init__(self, method: bytes, target: bytes, body: bytes, close: bool) -> None:
        self.method, self.target, self.body, self.close = method, target, body, close


def parse_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]]:
    """Request line and headers (names lowercased; a repeated Content-Length or Transfer-Encoding is refused)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        name = name.lower()
        if not sep or not name or name != name.strip():
            raise BadRequest
        if name in headers and name in (b"content-length", b"transfer-encoding"):
            raise BadRequest
        headers[name] = value.strip()
    return parts[0], parts[1], parts[2], headers


def parse_chunked(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `start`: (body, end offset), or None while it is incomplete."""
    pieces: list[bytes] = []
    pos = start
    while True:
        eol = buffer.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buffer[pos:eol]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest from None
        if size == 0:
            end = buffer.find(b"\r\n\r\n", eol)  # skip any trailers
            return (b"".join(pieces), end + 4) if end >= 0 else None
        if eol + 2 + size + 2 > len(buffer):
            return None
        pieces.append(bytes(buffer[eol + 2 : eol + 2 + size]))
        pos = eol + 2 + size + 2
        if sum(map(len, pieces)) > MAX_BODY:
            raise BadRequest


def parse_request(buffer: bytearray) -> tuple[Request, int] | None:
    """The first complete request in `buffer` and how many bytes it took, or None while it is incomplete."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadRequest
        return None
    method, target, version, headers = parse_head(bytes(buffer[:head_end]))
    connection = headers.get(b"connection", b"").lower()
    close = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
    start = head_end + 4
    if b"transfer-encoding" in headers:
        if headers[b"transfer-encoding"].lower() != b"chunked":
            raise BadRequest
        decoded = parse_chunked(buffer, start)
        if decoded is None:
            return None
        body, end = decoded
        return Request(method, target, body, close), end
    length_text = headers.get(b"content-length", b"0")
    if not length_text.isdigit() or int(length_text) > MAX_BODY:
        raise BadRequest
    end = start + int(length_text)
    if len(buffer) < end:
        return None
    return Request(method, target, bytes(buffer[start:end]), close), end


class MockProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.process()

    def process(self) -> None:
        """Answer every complete request in the buffer, in order; a stream holds the rest until it ends."""
        while not self.streaming and self.transport is not None:
            try:
                parsed = parse_request(self.buffer)
            except BadRequest:
                self.transport.write(BAD_REQUEST)
                self.transport.close()
                return
            if parsed is None:
                return
            request, used = parsed
            del self.buffer[:used]
            self.respond(request)

    def respond(self, request: Request) -> None:
        assert self.transport is not None
        if request.method != b"POST" or request.target.partition(b"?")[0] != b"/v1/chat/completions":
            self.transport.write(NOT_FOUND)
        elif STREAM_FLAG.search(request.body):
            self.streaming = True
            asyncio.get_running_loop().create_task(self.stream(request.close))
            return
        else:
            self.transport.write(COMPLETION)
        if request.close:
            self.transport.close()

    async def stream(self, close: bool) -> None:
        try:
            for index, data in enumerate(STREAM_WRITES):
                if index:
                    await asyncio.sleep(EVENT_INTERVAL)
                if self.transport is None:  # the client went away
                    return
                self.transport.write(data)
            if close and self.transport is not None:
                self.transport.close()
        finally:
            self.streaming = False
        self.process()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"mock upstream listening on http://127.0.0.1:{bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
