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


def encodable(doc: object) -> bool:
    """Whether orjson can write `doc` back: it reads objects nested deeper (1024) than it writes (254), so a parsed
    event that must be rebuilt is checked first."""
    try:
        orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return False
    return True


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
    # a line that is not data/event/id/retry or a comment: SSE parsers ignore it, other readers might not, so a
    # guard treats the event as unreadable
    odd_lines: bool = False


_BOM = b"\xef\xbb\xbf"
_FIELDS = frozenset((b"data", b"event", b"id", b"retry"))


class SSESplitter:
    """Splits a server-sent event stream into whole events, keeping each event's text for pass-through.

    Lines end in LF, CRLF or CR; a CR at the end of a chunk is held back in case its LF comes next. An event is
    complete at a blank line; what remains at the end of the stream is returned by `close`. Each chunk is scanned
    once: the unfinished line is kept as pieces, so a long line arriving in many chunks costs linear time. A UTF-8
    BOM at the very start of the stream is dropped, as the spec says (and as spec-following clients do).
    """

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._partial: list[bytes] = []  # pieces of the line not yet ended
        self._partial_size = 0
        self._cr = False  # the last chunk ended in a CR, not yet counted as the end of its line
        self._lines: list[bytes] = []
        self._size = 0
        self._max = max_event
        self.oversized = False  # an event exceeded the cap: the stream cannot be judged
        self._start = True  # nothing read yet but what could be the start of a BOM (kept in `_partial`)

    def idle(self) -> bool:
        """Nothing is pending: the next chunk starts a new line of a new event."""
        return not (self._partial or self._lines or self._cr)

    def single(self, chunk: bytes) -> bytes | None:
        """The data of `chunk` when it is one whole `data:` event and nothing is pending, the usual chunk of a
        stream: `feed` would return just that event, with `chunk` as its text. None when it is anything else."""
        if (
            chunk[:5] == b"data:"
            and self.idle()
            and 13 not in chunk  # no CR anywhere
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1] == 10  # the only two LFs end it
        ):
            self._start = False  # the stream has begun without a BOM
            return chunk[6:-2] if chunk[5] == 32 else chunk[5:-2]
        return None

    def feed(self, chunk: bytes) -> list[RawEvent]:
        if self._start:
            chunk = self._take_partial() + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._partial, self._partial_size = [chunk] if chunk else [], len(chunk)  # the rest may follow
                return []
            self._start = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        data = self.single(chunk)
        if data is not None:
            return [RawEvent(None, data, chunk)]
        events: list[RawEvent] = []
        if not chunk:
            return events
        if self._cr:  # the held CR ends its line now; an LF right after it belongs to the same line end
            self._cr = False
            self._line(self._take_partial(), events)
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._partial:
                lines[0] = self._take_partial() + lines[0]
            for line in lines:
                self._line(line, events)
        if tail:
            self._partial.append(tail)
            self._partial_size += len(tail)
        if self._size + self._partial_size + self._cr > self._max:
            self.oversized = True
            self._partial, self._partial_size, self._cr, self._lines, self._size = [], 0, False, [], 0
        return events

    def close(self) -> list[RawEvent]:
        tail = self._take_partial() + (b"\r" if self._cr else b"")  # or what could have been the start of a BOM
        self._cr = False
        if tail:
            self._lines.append(tail)
        return [self._event()] if self._lines else []

    def _take_partial(self) -> bytes:
        line = b"".join(self._partial)
        self._partial, self._partial_size = [], 0
        return line

    def _line(self, line: bytes, events: list[RawEvent]) -> None:
        if line:
            self._lines.append(line)
            self._size += len(line) + 1
        elif self._lines:
            events.append(self._event())

    def _event(self) -> RawEvent:
        lines, self._lines, self._size = self._lines, [], 0
        name: str | None = None
        data: list[bytes] = []
        odd = False
        for line in lines:
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                name = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
            elif line == b"data":  # a field without a colon has an empty value
                data.append(b"")
            elif line == b"event":
                name = ""
            elif not line.startswith(b":") and line.split(b":", 1)[0] not in _FIELDS:
                odd = True
        return RawEvent(name, b"\n".join(data), b"\n".join(lines) + b"\n\n", odd)


def sse(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data + b"\n\n"
