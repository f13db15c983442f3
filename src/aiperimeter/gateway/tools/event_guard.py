"""What the guards on typed SSE event streams (OpenAI Responses, Anthropic Messages) share: the feed/close loop that
fails closed on what it cannot read, an outbox in which a held call keeps its place while what follows it waits, and
the one place where a call's verdict is taken and recorded.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

from aiperimeter.gateway.tools.base import MAX_EVENT_BYTES, BodyResult, RawEvent, SSESplitter, error_json
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

LABEL_CHARS = 64  # a type or name echoed from a hostile body is cut to this


def label(value: Any, fallback: str) -> str:
    """A short printable label for a type or name the body gave, or `fallback` when it is not a string."""
    return value[:LABEL_CHARS] if isinstance(value, str) and value else fallback


def index_of(value: Any) -> int | None:
    """An event's index field: a non-negative int (bool is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def unreadable() -> ToolCall:
    """The stand-in judged for bytes that could hide a call but cannot be read."""
    return ToolCall(name="(unreadable)", arguments=None, error="unreadable")


class Slot:
    """A held call's place in the outbox; `out` is what replaces it once it is judged."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out: bytes | None = None


class Outbox:
    """Bytes for the client, in stream order. Nothing passes a slot that is still held."""

    def __init__(self) -> None:
        self._queue: deque[bytes | Slot] = deque()
        self.queued = 0  # bytes waiting, to bound what a held call can make us keep

    def put(self, data: bytes) -> None:
        self._queue.append(data)
        self.queued += len(data)

    def hold(self) -> Slot:
        slot = Slot()
        self._queue.append(slot)
        return slot

    def drain(self) -> bytes:
        out: list[bytes] = []
        while self._queue:
            head = self._queue[0]
            if isinstance(head, Slot):
                if head.out is None:
                    break
                out.append(head.out)
            else:
                out.append(head)
                self.queued -= len(head)
            self._queue.popleft()
        return b"".join(out)

    def clear(self) -> None:
        self._queue.clear()
        self.queued = 0


class Verdicts:
    """Takes the judge's verdict on each call and records it. A decision the guard does not know is a block."""

    def __init__(self, judge: Judge) -> None:
        self._judge = judge
        self.decisions: list[Decision] = []
        self.blocked: Decision | None = None

    def take(self, call: ToolCall) -> str:
        """Returns "deliver", "strip" or "block" (a block also sets `blocked`)."""
        verdict = self._judge(call)
        decision = Decision(call, verdict)
        self.decisions.append(decision)
        if verdict.delivered:
            return "deliver"
        if verdict.decision == "strip":
            return "strip"
        self.blocked = decision
        return "block"

    @property
    def last(self) -> Verdict:
        return self.decisions[-1].verdict


def refused(verdicts: Verdicts) -> BodyResult:
    """The policy error a whole body becomes: for its blocked call, or for a body that could not be read at all."""
    decision = verdicts.blocked or verdicts.decisions[-1]
    return BodyResult(error_json(decision.call, decision.verdict), verdicts.decisions, decision)


class EventGuard:
    """The feed/close loop of a guard on a stream of typed JSON events; a format supplies `_typed` and its held calls.

    Events are read whole. Comments, `[DONE]` and pings pass; any other event that is not a JSON object with a string
    `type` (equal to its `event:` name, if it has one, so no client reads it as another event) could hide a call, and
    is judged as unreadable and never delivered. What waits behind held calls is capped: past the cap, held calls are
    judged as too large. At the end of the stream, whatever is still held is judged as incomplete.
    """

    def __init__(self, judge: Judge) -> None:
        self._verdicts = Verdicts(judge)
        self.decisions = self._verdicts.decisions
        self.blocked: Decision | None = None
        self._sse = SSESplitter()
        self._out = Outbox()
        self._stopped = False

    def feed(self, chunk: bytes) -> bytes:
        if self._stopped:
            return b""
        for event in self._sse.feed(chunk):
            self._event(event)
            if self._verdicts.blocked:
                return self._stop()
        if self._sse.oversized:
            self._sse.oversized = False
            self._verdicts.take(unreadable())
        held = self._held_size()
        if not self._verdicts.blocked and held and self._out.queued + held > MAX_EVENT_BYTES:
            self._end_held("too_large", ended=False)
        return self._stop() if self._verdicts.blocked else self._out.drain()

    def close(self) -> bytes:
        if self._stopped:
            return b""
        for event in self._sse.close():
            self._event(event)
            if self._verdicts.blocked:
                return self._stop()
        self._end_held("incomplete", ended=True)
        return self._stop() if self._verdicts.blocked else self._out.drain()

    def _stop(self) -> bytes:
        """What may go before the blocked call, then the format's error event; nothing is written after it."""
        self._stopped = True
        decision = self.blocked = self._verdicts.blocked
        assert decision is not None
        out = self._out.drain() + self._error_event(decision)
        self._out.clear()
        return out

    def _event(self, event: RawEvent) -> None:
        try:
            doc = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            data = event.data.strip()
            if not data or data == b"[DONE]" or event.event == "ping":
                self._out.put(event.raw)
            else:
                self._verdicts.take(unreadable())
            return
        kind = doc.get("type") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not isinstance(kind, str) or event.event not in (None, kind):
            self._verdicts.take(unreadable())
            return
        self._typed(event, doc, kind)

    def _typed(self, event: RawEvent, doc: dict[str, Any], kind: str) -> None:
        raise NotImplementedError

    def _held_size(self) -> int:
        raise NotImplementedError

    def _end_held(self, error: str | None, ended: bool) -> None:
        """Judges every held call, in stream order, stopping at a block."""
        raise NotImplementedError

    def _error_event(self, decision: Decision) -> bytes:
        raise NotImplementedError
