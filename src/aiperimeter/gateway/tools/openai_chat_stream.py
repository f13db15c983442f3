"""The guard for a streamed OpenAI Chat Completions response (SSE `data:` chunks ending with `data: [DONE]`).

Each tool call (`delta.tool_calls[]` by index, or the deprecated `delta.function_call`) is held until its arguments
close as a JSON object, or until the call ends (a new id at its index, its choice's finish_reason, `[DONE]`); custom
tools (free-text `input`) only when the call ends. Released calls go out as one delta each, renumbered densely per
choice; a stripped call becomes a content delta with the notice. Chunks that carry no call pass unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aiperimeter.gateway.tools.base import RawEvent, SSESplitter, error_json, notice, sse
from aiperimeter.gateway.tools.hold import REWRITABLE, GuardCore, HeldCall
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

LEGACY = "function_call"  # the open-call key of the deprecated single function call
_CALL_FIELDS = (("function", "arguments"), ("custom", "input"))


def index_of(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _bad_body(body: Any, text_field: str, *, object_ok: bool) -> bool:
    if body is None:
        return False
    if not isinstance(body, dict):
        return True
    name, text = body.get("name"), body.get(text_field)
    return not (
        (name is None or isinstance(name, str))
        and (text is None or isinstance(text, str) or (object_ok and isinstance(text, dict)))
    )


def bad_calls(holder: dict[str, Any]) -> bool:
    """Whether a delta or message carries calls in a shape no reader agrees on: a call could hide there."""
    calls, legacy = holder.get("tool_calls"), holder.get("function_call")
    if _bad_body(legacy, "arguments", object_ok=True):
        return True
    if calls is None:
        return False
    if not isinstance(calls, list):
        return True
    for call in calls:
        if not isinstance(call, dict) or not (call.get("id") is None or isinstance(call.get("id"), str)):
            return True
        if any(_bad_body(call.get(kind), text, object_ok=kind == "function") for kind, text in _CALL_FIELDS):
            return True
    return False


def carries_calls(holder: dict[str, Any]) -> bool:
    return bool(holder.get("tool_calls")) or isinstance(holder.get("function_call"), dict)


def _bad_chunk(doc: dict[str, Any]) -> bool:
    choices = doc.get("choices")
    if choices is None:
        return False
    if not isinstance(choices, list):
        return True
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta, message = choice.get("delta"), choice.get("message")
        if isinstance(delta, dict) and bad_calls(delta):
            return True
        if isinstance(message, dict) and (bad_calls(message) or carries_calls(message)):
            return True  # a whole message inside a stream chunk is not a shape we can hold
    return False


@dataclass(eq=False, slots=True)
class _ChatCall(HeldCall):
    choice: _Choice | None = None
    envelope: dict[str, Any] = field(default_factory=dict)  # the chunk's id/object/created/model, to re-send in
    legacy: bool = False


@dataclass(slots=True)
class _Choice:
    index: int
    open: dict[int | str | None, _ChatCall] = field(default_factory=dict)  # the latest call per upstream index
    released: int = 0
    stripped: int = 0

    def all_stripped(self) -> bool:
        return self.stripped > 0 and self.released == 0


@dataclass(slots=True)
class _Finish:
    """A chunk with a finish_reason, rewritten at release when every call of its choice was stripped."""

    choice: _Choice
    doc: dict[str, Any]
    raw: bytes | None = None
    ready: bool = True

    @property
    def held_size(self) -> int:
        return len(self.raw) if self.raw is not None else 256

    def render(self) -> bytes:
        if not self.choice.all_stripped():
            return self.raw if self.raw is not None else sse(orjson.dumps(self.doc))
        for part in self.doc.get("choices") or ():
            if isinstance(part, dict) and part.get("finish_reason") in REWRITABLE:
                part["finish_reason"] = "stop"
        return sse(orjson.dumps(self.doc))


class StreamGuard(GuardCore):
    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self._sse = SSESplitter()
        self._choices: dict[int, _Choice] = {}
        self._done = False

    def _feed(self, chunk: bytes) -> None:
        if not self._done:  # nothing after [DONE] reaches a client: SDKs stop reading there
            self._events(self._sse.feed(chunk))

    def _close(self) -> None:
        if not self._done:
            self._events(self._sse.close())

    def _events(self, events: list[RawEvent]) -> None:
        for event in events:
            if self._done:
                return
            self._event(event.event, event.data, event.raw)
            self._flush()
        if self._sse.oversized and not self._done:
            self._sse.oversized = False
            self._unreadable()
            self._flush()

    def _error(self, decision: Decision) -> bytes:
        return sse(error_json(decision.call, decision.verdict)) + sse(b"[DONE]")

    def _notice_event(self, call: ToolCall, verdict: Verdict) -> bytes:
        doc = {"object": "chat.completion.chunk", "choices": [_part(0, {"content": notice(call, verdict)})]}
        return sse(orjson.dumps(doc))

    def _event(self, name: str | None, data: bytes, raw: bytes) -> None:
        if not data:
            self._outbox.put(None, raw)  # comments, keep-alives, an id or retry: nothing a call could hide in
            return
        if data.startswith(b"[DONE]"):
            self._decide_all(incomplete=False)  # the stream ended normally: every call ended with it
            self._outbox.put(None, raw)
            self._done = True
            return
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            if name == "ping":
                self._outbox.put(None, raw)
            else:
                self._unreadable()
            return
        if not isinstance(doc, dict) or _bad_chunk(doc):
            self._unreadable()
            return
        self._chunk(doc, raw)

    def _chunk(self, doc: dict[str, Any], raw: bytes) -> None:
        choices = doc.get("choices")
        if not choices:
            self._outbox.put(None, raw)  # usage-only final chunk, an error, metadata: behind every held call
            return
        assert isinstance(choices, list)
        parts = [c for c in choices if isinstance(c, dict)]
        calls = any(isinstance(c.get("delta"), dict) and carries_calls(c["delta"]) for c in parts)
        keys = [index_of(c.get("index")) or 0 for c in parts]
        if not calls and len(parts) == len(choices) == 1:
            self._plain(keys[0], parts[0], doc, raw)
            return
        if not calls and not any(key in self._choices for key in keys):
            self._outbox.put(keys[0], raw)  # choices that never held a call: nothing waits, nothing to rewrite
            return
        envelope = {k: v for k, v in doc.items() if k not in ("choices", "usage", "obfuscation")}
        for key, choice in zip(keys, parts, strict=True):
            self._split(key, choice, envelope)
        if doc.get("usage") is not None:
            self._outbox.put(None, sse(orjson.dumps({**envelope, "choices": [], "usage": doc["usage"]})))

    def _plain(self, key: int, choice: dict[str, Any], doc: dict[str, Any], raw: bytes) -> None:
        finish = choice.get("finish_reason")
        if finish is not None:
            self._end_choice(key)
        state = self._choices.get(key)
        if state is not None and finish in REWRITABLE:
            self._outbox.put(key, _Finish(state, doc, raw))
        else:
            self._outbox.put(key, raw)

    def _split(self, key: int, choice: dict[str, Any], envelope: dict[str, Any]) -> None:
        """One choice of a chunk that is rebuilt: its text first, then its calls, then its finish_reason."""
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        finish = choice.get("finish_reason")
        rest = {k: v for k, v in delta.items() if k not in ("tool_calls", "function_call")}
        extra = {k: v for k, v in choice.items() if k not in ("index", "delta", "finish_reason") and v is not None}
        if rest or extra:
            self._outbox.put(key, sse(orjson.dumps({**envelope, "choices": [{**_part(key, rest), **extra}]})))
        if carries_calls(delta):
            state = self._choices.setdefault(key, _Choice(key))
            for call in delta.get("tool_calls") or ():
                self._fragment(state, call, envelope)
            if isinstance(delta.get("function_call"), dict):
                self._legacy(state, delta["function_call"], envelope)
        if finish is not None:
            self._end_choice(key)
            doc = {**envelope, "choices": [_part(key, {}, finish)]}
            held = self._choices.get(key)
            self._outbox.put(key, _Finish(held, doc) if held is not None else sse(orjson.dumps(doc)))

    def _fragment(self, state: _Choice, delta: dict[str, Any], envelope: dict[str, Any]) -> None:
        slot = index_of(delta.get("index"))
        call_id = delta.get("id") or None
        call = state.open.get(slot)
        if call is None or (call_id is not None and call_id != call.call_id):
            if call is not None:
                self._decide(call)  # a new id at the same index: some servers number parallel calls all 0
            custom = delta.get("type") == "custom" or (delta.get("type") is None and "custom" in delta)
            kind = "custom" if custom else "function"
            call = _ChatCall(state.index, self._render, call_id=call_id, kind=kind, choice=state, envelope=envelope)
            self._hold(call)
            state.open[slot] = call
        self._take(call, delta.get(call.kind), "input" if call.kind == "custom" else "arguments")

    def _legacy(self, state: _Choice, delta: dict[str, Any], envelope: dict[str, Any]) -> None:
        call = state.open.get(LEGACY)
        if call is None:
            call = _ChatCall(state.index, self._render, choice=state, envelope=envelope, legacy=True)
            self._hold(call)
            state.open[LEGACY] = call
        self._take(call, delta, "arguments")

    def _take(self, call: _ChatCall, body: Any, text_field: str) -> None:
        if call.verdict is not None or not isinstance(body, dict):
            return  # fragments after a call was judged are never delivered
        name = body.get("name")
        if call.name is None and isinstance(name, str) and name:
            call.name = name  # the name comes once; a later, different one is not what was judged
        text = body.get(text_field)
        if isinstance(text, dict):
            text = orjson.dumps(text).decode()
        if isinstance(text, str):
            self._append(call, text)

    def _end_choice(self, key: int) -> None:
        state = self._choices.get(key)
        if state is not None:
            for call in sorted(state.open.values(), key=lambda c: c.seq):
                self._decide(call)

    def _render(self, held: HeldCall) -> bytes:
        assert isinstance(held, _ChatCall) and held.choice is not None and held.tool is not None
        assert held.verdict is not None
        state = held.choice
        tool, text = held.tool, held.buf.decode("utf-8", "replace")
        held.buf = bytearray()  # released: only its id is kept, so late fragments are dropped, not re-judged
        delta: dict[str, Any]
        if not held.delivered:
            state.stripped += 1
            delta = {"content": notice(tool, held.verdict)}
        elif held.legacy:
            delta = {"function_call": {"name": tool.name, "arguments": text}}
        else:
            call: dict[str, Any] = {"index": state.released}
            if held.call_id is not None:
                call["id"] = held.call_id
            call["type"] = held.kind
            call[held.kind] = {"name": tool.name, "input" if held.kind == "custom" else "arguments": text}
            delta = {"tool_calls": [call]}
        if held.delivered:
            state.released += 1
        return sse(orjson.dumps({**held.envelope, "choices": [_part(state.index, delta)]}))


def _part(index: int, delta: dict[str, Any], finish: Any = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}
