"""Sans-IO framing of response bodies into events, and token usage read from those events.

Framers take bytes as they arrive, in any split, and return complete events; they never do I/O, so they are
tested whole, byte by byte and split at every offset.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from aiperimeter.gateway.tools.base import RawEvent, SSESplitter


class Framer(Protocol):
    def feed(self, chunk: bytes) -> list[bytes]: ...

    def close(self) -> list[bytes]: ...


class SSEFramer:
    """Server-sent events: returns the data of each complete event that has data lines (joined with newlines).

    The splitting is the tool guards' (`gateway.tools.base.SSESplitter`): one SSE reader in the gateway. An event
    over the cap is not ours to account: it is dropped.
    """

    def __init__(self, max_event: int = 8 * 1024 * 1024) -> None:
        self._splitter = SSESplitter(max_event)

    def _data(self, events: list[RawEvent]) -> list[bytes]:
        if self._splitter.oversized:
            self._splitter.oversized = False
        return [e.data for e in events if e.data or _has_data_line(e.raw)]

    def feed(self, chunk: bytes) -> list[bytes]:
        return self._data(self._splitter.feed(chunk))

    def close(self) -> list[bytes]:
        return self._data(self._splitter.close())


def _has_data_line(raw: bytes) -> bool:
    # a field named exactly "data" (a line "dataX: ..." is another field, which SSE readers ignore)
    return any(line == b"data" or line.startswith(b"data:") for line in raw.split(b"\n"))


class NDJSONFramer:
    """Newline-delimited JSON (Ollama streams): returns each complete non-empty line."""

    def __init__(self, max_line: int = 8 * 1024 * 1024) -> None:
        self._buffer = b""
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        *lines, self._buffer = buffer.split(b"\n")
        if len(self._buffer) > self._max_line:
            self._buffer = b""
        return [line.rstrip(b"\r") for line in lines if line.strip()]

    def close(self) -> list[bytes]:
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []


class WholeBody:
    """A non-streamed body: one event at the end, if it stayed under the cap."""

    def __init__(self, cap: int = 4 * 1024 * 1024) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._cap = cap

    def feed(self, chunk: bytes) -> list[bytes]:
        self._size += len(chunk)
        if self._size <= self._cap:
            self._chunks.append(chunk)
        return []

    def close(self) -> list[bytes]:
        return [b"".join(self._chunks)] if 0 < self._size <= self._cap else []


def framer_for(content_type: str) -> Framer:
    content_type = content_type.lower()
    if content_type.startswith("text/event-stream"):
        return SSEFramer()
    if content_type.startswith(("application/x-ndjson", "application/ndjson", "application/jsonl")):
        return NDJSONFramer()
    return WholeBody()


def is_stream(content_type: str) -> bool:
    return content_type.lower().startswith(
        ("text/event-stream", "application/x-ndjson", "application/ndjson", "application/jsonl")
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(event: bytes) -> tuple[int | None, int | None] | None:
    """(prompt, completion) tokens an event reports, in any of the wire formats; None when it reports none.

    OpenAI chat/completions: `usage.prompt_tokens/completion_tokens`; OpenAI Responses: `usage` or
    `response.usage` with `input_tokens/output_tokens`; Anthropic: `usage` or `message.usage` (message_start, then
    cumulative output in message_delta); Ollama: `prompt_eval_count/eval_count` on the final object.
    """
    if b"usage" not in event and b"eval_count" not in event:
        return None
    try:
        doc = orjson.loads(event)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if "eval_count" in doc or "prompt_eval_count" in doc:
        return _int(doc.get("prompt_eval_count")), _int(doc.get("eval_count"))
    usage = doc.get("usage")
    for container in ("response", "message"):
        inner = doc.get(container)
        if usage is None and isinstance(inner, dict):
            usage = inner.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    if prompt is None and completion is None:
        return None
    return prompt, completion
