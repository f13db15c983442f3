"""What every wire format's tool-call module provides, and the pieces they share.

A format module offers:
- `read_request(doc) -> RequestTools`: the tools a request body declares, forces and sends results for;
- `StreamGuard(judge)`: a sans-IO guard for a streamed response (`feed(bytes) -> bytes`, `close() -> bytes`);
- `judge_body(body, judge) -> BodyResult`: the same for a whole (non-streamed) response body.

Guards pass everything that is not a tool call through at once. A tool call is held only until its arguments are
complete, then judged once: delivered as one piece, replaced by a notice (strip), or the response ends with a
policy error (block). Whatever is still held when the stream ends is incomplete, and incomplete is a deny.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import orjson

from aiperimeter.policy.calls import Decision, ToolCall, Verdict

MAX_CALL_BYTES = 1024 * 1024  # a tool call's arguments larger than this are not judged: they are denied
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one SSE event or NDJSON line


@dataclass(frozen=True, slots=True)
class Declared:
    """A tool the request declares. `hosted` tools run at the provider, out of the gateway's sight."""

    name: str | None
    type: str  # "function", "custom", or the provider's hosted type ("web_search", "web_search_20250305", ...)
    hosted: bool = False


@dataclass(slots=True)
class RequestTools:
    """What a request body says about tools."""

    declared: list[Declared] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)  # names tool_choice forces or restricts the model to
    history: list[ToolCall] = field(default_factory=list)  # calls earlier assistant turns made
    results: list[tuple[str | None, str | None]] = field(default_factory=list)  # (call id, tool name) per result
    hosted_other: list[str] = field(default_factory=list)  # other request fields that run tools at the provider


@dataclass(slots=True)
class BodyResult:
    body: bytes  # the body to deliver (unchanged when every call was allowed)
    decisions: list[Decision]
    blocked: Decision | None = None  # set when a call was blocked: the caller answers with a policy error instead


class StreamGuard(Protocol):
    decisions: list[Decision]
    blocked: Decision | None  # once set, the guard has written its error event and writes nothing more

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


def notice(call: ToolCall, verdict: Verdict) -> str:
    """The text a stripped call leaves in its place, so the client (and the model, next turn) can tell."""
    rule = f" (rule {verdict.rule})" if verdict.rule else ""
    return f"[aiperimeter] The tool call {call.name!r} was removed by the gateway's tool policy{rule}."


def blocked_message(call: ToolCall, verdict: Verdict) -> str:
    rule = f" by rule {verdict.rule}" if verdict.rule else ""
    why = f": {verdict.reason}" if verdict.reason else ""
    return f"The tool call {call.name!r} is not allowed{rule}{why}."


def error_json(call: ToolCall, verdict: Verdict) -> bytes:
    """The OpenAI error envelope the gateway uses everywhere, for a blocked call."""
    return orjson.dumps(
        {"error": {"message": blocked_message(call, verdict), "type": "permission_error", "code": "tool_call_blocked"}}
    )


def parse_arguments(raw: str | bytes) -> tuple[dict[str, object] | None, str | None]:
    """OpenAI formats carry arguments as a JSON string: parse the complete buffer, or say why it is unusable."""
    if len(raw) > MAX_CALL_BYTES:
        return None, "too_large"
    if isinstance(raw, str) and not raw.strip():
        return {}, None  # a call without arguments: some servers send "" for a function that takes none
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "invalid_json"
    if not isinstance(value, dict):
        return None, "not_an_object"
    return value, None


@dataclass(slots=True)
class RawEvent:
    event: str | None  # the `event:` field, if any
    data: bytes  # the data lines joined with LF
    raw: bytes  # the whole event, re-serialised with LF line ends, ending in a blank line


class SSESplitter:
    """Splits a server-sent event stream into whole events, keeping each event's text for pass-through.

    Lines end in LF, CRLF or CR; a CR at the end of a chunk is held back in case its LF comes next. An event is
    complete at a blank line; what remains at the end of the stream is returned by `close`.
    """

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []
        self._size = 0
        self._max = max_event
        self.oversized = False  # an event exceeded the cap: the stream cannot be judged

    def feed(self, chunk: bytes) -> list[RawEvent]:
        buffer = self._buffer + chunk
        held = b""
        if buffer.endswith(b"\r"):
            buffer, held = buffer[:-1], b"\r"
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + held
        events: list[RawEvent] = []
        for line in lines:
            if line:
                self._lines.append(line)
                self._size += len(line) + 1
            elif self._lines:
                events.append(self._event())
        if self._size + len(self._buffer) > self._max:
            self.oversized = True
            self._buffer, self._lines, self._size = b"", [], 0
        return events

    def close(self) -> list[RawEvent]:
        if self._buffer:
            self._lines.append(self._buffer)
            self._buffer = b""
        return [self._event()] if self._lines else []

    def _event(self) -> RawEvent:
        lines, self._lines, self._size = self._lines, [], 0
        name: str | None = None
        data: list[bytes] = []
        for line in lines:
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                name = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
        return RawEvent(name, b"\n".join(data), b"\n".join(lines) + b"\n\n")


def sse(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"
