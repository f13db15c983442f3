"""What the guards on typed SSE event streams (OpenAI Responses, Anthropic Messages) share: the feed/close loop that
fails closed on what it cannot read, an outbox in which a held call keeps its place while what follows it waits, and
the one place where a call's verdict is taken and recorded.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import orjson

from aiperimeter.gateway.tools.base import MAX_EVENT_BYTES, BodyResult, RawEvent, SSESplitter, error_json
from aiperimeter.gateway.tools.casefold import hides_a_field
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

LABEL_CHARS = 64  # a type or name echoed from a hostile body is cut to this
MAX_CALLS = 4096  # calls in one response; a response with more is not judged call by call: it is refused
PING = {"type": "ping"}


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
        head = self._queue[0] if self._queue else None
        if head is None or (isinstance(head, Slot) and head.out is None):
            return b""  # the usual case while a call is held: nothing became releasable
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
        if len(self.decisions) >= MAX_CALLS:
            self.refuse()
            return "block"
        verdict = self._judge(call)
        decision = Decision(call, verdict)
        self.decisions.append(decision)
        if verdict.delivered:
            return "deliver"
        if verdict.decision == "strip":
            return "strip"
        self.blocked = decision
        return "block"

    def refuse(self) -> None:
        """Blocks the response as unreadable whatever the judge says: what could not be judged call by call."""
        call = unreadable()
        verdict = self._judge(call)
        if verdict.decision != "block":
            verdict = Verdict("block", verdict.rule, verdict.reason)
        self.blocked = Decision(call, verdict)
        self.decisions.append(self.blocked)

    @property
    def last(self) -> Verdict:
        return self.decisions[-1].verdict


def read_body(
    body: bytes, field: str, verdicts: Verdicts, known: frozenset[str], free_form: frozenset[str]
) -> tuple[dict[str, Any], list[Any]] | None:
    """A whole response body and its list of items under `field` (absent: empty); None, with the body judged as
    unreadable, when it is not a JSON object with such a list or hides a case-variant key."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    items = doc.get(field) if isinstance(doc, dict) else None
    if (
        not isinstance(doc, dict)
        or (items is not None and not isinstance(items, list))
        or hides_a_field(body, doc, known, free_form)
    ):
        verdicts.take(unreadable())
        return None
    return doc, items or []


def refused(verdicts: Verdicts) -> BodyResult:
    """The policy error a whole body becomes: for its blocked call, or for a body that could not be read at all."""
    decision = verdicts.blocked or verdicts.decisions[-1]
    return BodyResult(error_json(decision.call, decision.verdict), verdicts.decisions, decision)


class EventGuard:
    """The feed/close loop of a guard on a stream of typed JSON events; a format supplies `_typed` and its held calls.

    Events are read whole. Comments, empty data, `[DONE]` and pings (empty, or exactly `{"type": "ping"}`) pass; any
    other event that is not a JSON object with a string `type` (equal to its `event:` name, if it has one, so no
    client reads it as another event) could hide a call, and is judged as unreadable and never delivered. So is one
    with a line that is not a field SSE parsers know, or with a key that is not one of the format's `KNOWN_FIELDS`
    but that a case-insensitive reader takes for one. What waits behind held calls is capped: past the cap, held
    calls are judged as too large; so is the number of calls. At the end of the stream, whatever is still held is
    judged as incomplete.

    Most events of a streamed call carry only the next fragment of its payload: a format may take those in
    `_fragment`, a fast path that must do exactly what its general path would do with them, and decline the rest.
    """

    KNOWN_FIELDS: ClassVar[frozenset[str]] = frozenset()  # every field name of the format's events
    FREE_FORM: ClassVar[frozenset[str]] = frozenset()  # fields whose objects are the caller's own data: not checked

    def __init__(self, judge: Judge) -> None:
        self._verdicts = Verdicts(judge)
        self.decisions = self._verdicts.decisions
        self.blocked: Decision | None = None
        self._sse = SSESplitter()
        self._out = Outbox()
        self._stopped = False
        self._held = 0  # payload bytes of the calls a format holds, kept by the format as they grow and end
        self._counted = 0  # calls a format started to hold

    def feed(self, chunk: bytes) -> bytes:
        if self._stopped:
            return b""
        general = False  # an event went the general way: something may have become releasable
        for event in self._sse.feed(chunk):
            if self._event(event):
                general = True
                if self._verdicts.blocked:
                    return self._stop()
        if self._sse.oversized:
            self._sse.oversized = False
            if self._verdicts.take(unreadable()) == "block":
                return self._stop()
        if self._held and self._out.queued + self._held > MAX_EVENT_BYTES:
            self._end_held("too_large", ended=False)
            if self._verdicts.blocked:
                return self._stop()
            general = True
        return self._out.drain() if general else b""  # a fragment only grows a held call: nothing to release

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

    def _event(self, event: RawEvent) -> bool:
        """Reads one event; False when `_fragment` took it, so that it changed nothing the client can get yet."""
        if event.odd_lines:  # a field SSE parsers ignore but other readers might not: it can be read two ways
            self._verdicts.take(unreadable())
            return True
        try:
            doc = orjson.loads(event.data)
        except orjson.JSONDecodeError:  # Python's json reads NaN, Infinity and lone surrogates that orjson refuses
            data = event.data.strip()
            if not data or data == b"[DONE]":
                self._out.put(event.raw)
            else:
                self._verdicts.take(unreadable())
            return True
        if self._fragment(event, doc):  # never relayed: the held call is released as judged
            return False
        kind = doc.get("type") if isinstance(doc, dict) else None
        if event.event == "ping" or kind == "ping":
            if doc == PING and event.event in (None, "ping"):
                self._out.put(event.raw)
            else:
                self._verdicts.take(unreadable())
        elif (
            not isinstance(doc, dict)
            or not isinstance(kind, str)
            or event.event not in (None, kind)
            or hides_a_field(event.data, doc, self.KNOWN_FIELDS, self.FREE_FORM)
        ):
            self._verdicts.take(unreadable())
        else:
            self._typed(event, doc, kind)
        return True

    def _count(self) -> bool:
        """Counts a call the format starts to hold; False once there are more than MAX_CALLS: the stream is refused."""
        self._counted += 1
        if self._counted <= MAX_CALLS:
            return True
        self._verdicts.refuse()
        return False

    def _typed(self, event: RawEvent, doc: dict[str, Any], kind: str) -> None:
        raise NotImplementedError

    def _fragment(self, event: RawEvent, doc: Any) -> bool:
        """Takes `doc` when it is only the next payload fragment of a held call; False sends it the general way."""
        return False

    def _end_held(self, error: str | None, ended: bool) -> None:
        """Judges every held call, in stream order, stopping at a block."""
        raise NotImplementedError

    def _error_event(self, decision: Decision) -> bytes:
        raise NotImplementedError
