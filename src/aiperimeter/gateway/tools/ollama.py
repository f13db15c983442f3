"""Ollama `/api/chat`: the tools a request declares and answers, and the calls a response makes.

Requests use the OpenAI tool shape. Streams are NDJSON lines `{"message":{..,"tool_calls":[..]},"done":false}` ending
with `{"done":true,..}`. A call's `arguments` is an object and a call usually arrives whole in one line: such a call
is complete at once, and a line whose calls are all whole and allowed passes unchanged. Calls have no id. A call
whose `arguments` is a string (JSON text) is accumulated per `function.index` until it closes, a new call with a name
takes its index, or the stream is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aiperimeter.gateway.tools.base import (
    MAX_EVENT_BYTES,
    BodyResult,
    RequestTools,
    blocked_message,
    encodable,
    error_json,
    notice,
)
from aiperimeter.gateway.tools.casefold import hides_a_field
from aiperimeter.gateway.tools.hold import REWRITABLE, UNNAMED, GuardCore, HeldCall
from aiperimeter.gateway.tools.openai_chat import (
    append_notices,
    arguments_of,
    declared_tools,
    refuse_deep_history,
    unreadable_body,
)
from aiperimeter.gateway.tools.openai_chat_stream import index_of
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

LANE = 0  # one message per response
_ENVELOPE = ("model", "created_at")
# Every field name of a chat response line: Ollama's Go client matches keys without regard to case, so a key that
# folds to one of these but is spelled otherwise is the real field to it and nothing to us.
KNOWN_FIELDS = frozenset(
    (
        *("model", "remote_model", "remote_host", "created_at", "message", "done", "done_reason", "error", "context"),
        *("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count"),
        *("eval_duration", "logprobs", "top_logprobs", "token", "logprob", "bytes"),
        *("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"),
        *("id", "type", "function", "index", "name", "arguments"),
    )
)
FREE_FORM = frozenset(("arguments",))  # a call's arguments object: the tool's own keys


def _hides_case_variant(raw: bytes, doc: Any) -> bool:
    return hides_a_field(raw, doc, KNOWN_FIELDS, FREE_FORM)


def _name(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _bad_calls(calls: Any) -> bool:
    """Calls in a shape no reader agrees on: a call could hide there."""
    if calls is None:
        return False
    if not isinstance(calls, list):
        return True
    for call in calls:
        body = call.get("function") if isinstance(call, dict) else None
        if not isinstance(body, dict):
            return True
        name, args = body.get("name"), body.get("arguments")
        if not (name is None or isinstance(name, str)) or not (args is None or isinstance(args, dict | str)):
            return True
    return False


def _call(entry: dict[str, Any]) -> ToolCall:
    body = entry["function"]
    args, error, size = arguments_of(body.get("arguments"))
    return ToolCall(_name(body.get("name")) or UNNAMED, args, _name(entry.get("id")), "function", error, size)


def read_request(doc: dict[str, Any]) -> RequestTools:
    out = RequestTools()
    body: Any = doc  # the caller parsed JSON: anything may be here
    if not isinstance(body, dict):
        return out
    out.declared = declared_tools(doc.get("tools"))
    messages = doc.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list):
            for entry in calls:
                if isinstance(entry, dict) and isinstance(entry.get("function"), dict):
                    out.history.append(_call(entry))
        elif role == "tool":
            name = _name(message.get("tool_name")) or _name(message.get("name"))
            out.results.append((_name(message.get("tool_call_id")), name))
    refuse_deep_history(out.history)
    return out


def judge_body(body: bytes, judge: Judge) -> BodyResult:
    decisions: list[Decision] = []
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return unreadable_body(judge, decisions)
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not (message is None or isinstance(message, dict)):
        return unreadable_body(judge, decisions)
    if _hides_case_variant(body, doc):
        return unreadable_body(judge, decisions)
    if message is None or not message.get("tool_calls"):
        return BodyResult(body, decisions)
    if _bad_calls(message["tool_calls"]):
        return unreadable_body(judge, decisions)
    kept: list[Any] = []
    notices: list[str] = []
    for entry in message["tool_calls"]:
        tool = _call(entry)
        verdict = judge(tool)
        decision = Decision(tool, verdict)
        decisions.append(decision)
        if verdict.decision not in ("allow", "audit", "strip"):
            return BodyResult(error_json(tool, verdict), decisions, decision)
        if verdict.delivered:
            kept.append(entry)
        else:
            notices.append(notice(tool, verdict))
    if not notices:
        return BodyResult(body, decisions)
    _strip(message, kept, notices)
    if not kept and doc.get("done_reason") in REWRITABLE:
        doc["done_reason"] = "stop"
    if not encodable(doc):  # nested too deep to write back: what else it holds cannot be delivered
        return unreadable_body(judge, decisions)
    return BodyResult(orjson.dumps(doc), decisions)


def _strip(message: dict[str, Any], kept: list[Any], notices: list[str]) -> None:
    if kept:
        message["tool_calls"] = kept
    else:
        message.pop("tool_calls", None)
    append_notices(message, notices)


@dataclass(eq=False, slots=True)
class _OllamaCall(HeldCall):
    entry: dict[str, Any] = field(default_factory=dict)  # its first fragment as sent: other fields go out as they came
    envelope: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Done:
    """The final line, rewritten at release when every call was stripped and its done_reason promised calls."""

    guard: StreamGuard
    doc: dict[str, Any]
    raw: bytes
    ready: bool = True

    @property
    def held_size(self) -> int:
        return len(self.raw)

    def render(self) -> bytes:
        if self.guard.stripped and not self.guard.released and self.doc.get("done_reason") in REWRITABLE:
            return orjson.dumps({**self.doc, "done_reason": "stop"}) + b"\n"
        return self.raw


class StreamGuard(GuardCore):
    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self._line = bytearray()
        self._skipping = False  # inside a line longer than the cap: dropped up to its newline
        self._open: dict[int | None, _OllamaCall] = {}
        self.released = 0
        self.stripped = 0

    def _feed(self, chunk: bytes) -> None:
        end = chunk.find(b"\n")
        if 0 <= end == len(chunk) - 1 and not self._line and not self._skipping and end < MAX_EVENT_BYTES:
            self._event(chunk)  # one whole line and nothing pending, the usual chunk: no copying
            self._flush()
            return
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start : end + 1]
            start = len(chunk) if end < 0 else end + 1
            if self._skipping:
                self._skipping = end < 0
                continue
            self._line += piece
            if len(self._line) > MAX_EVENT_BYTES:
                self._line, self._skipping = bytearray(), end < 0
                self._unreadable()
                self._flush()
            elif end >= 0:
                line, self._line = bytes(self._line), bytearray()
                self._event(line)
                self._flush()

    def _close(self) -> None:
        if self._line and not self._skipping:
            line, self._line = bytes(self._line), bytearray()
            self._event(line)
            self._flush()

    def _error(self, decision: Decision) -> bytes:
        return orjson.dumps({"error": blocked_message(decision.call, decision.verdict)}) + b"\n"

    def _notice_event(self, call: ToolCall, verdict: Verdict) -> bytes:
        return self._line_of({}, {"role": "assistant", "content": notice(call, verdict)})

    @staticmethod
    def _line_of(envelope: dict[str, Any], message: dict[str, Any]) -> bytes:
        return orjson.dumps({**envelope, "message": message, "done": False}) + b"\n"

    def _event(self, line: bytes) -> None:
        if not line.strip():
            self._outbox.put(LANE, line)
            return
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._unreadable()
            return
        if _hides_case_variant(line, doc):
            self._unreadable()
            return
        if self._next_fragment(doc):
            return
        message = doc.get("message") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not (message is None or isinstance(message, dict)):
            self._unreadable()
            return
        calls = message.get("tool_calls") if message is not None else None
        if _bad_calls(calls):
            self._unreadable()
            return
        done = doc.get("done") is True
        if (done or calls) and not encodable(doc):  # it may have to be rebuilt, and cannot be
            self._unreadable()
            return
        if message is None or not calls:
            if done:
                self._decide_all(incomplete=False)  # the response is done: every call ended with it
            self._outbox.put(LANE, _Done(self, doc, line) if done else line)
            return
        assert isinstance(calls, list)
        if self._outbox.free(LANE) and all(isinstance(c["function"].get("arguments"), dict) for c in calls):
            self._whole(doc, message, calls, line)
        else:
            self._partial(doc, message, calls)

    def _next_fragment(self, doc: Any) -> bool:
        """The next piece of an open call's string arguments, appended without rebuilding the line:
        `{..,"message":{"role":"assistant","content":"","tool_calls":[{"function":{"index":i,"arguments":".."}}]},
        "done":false}`. Anything else (a name, text, done, a call not yet open) returns False and takes the general
        path, which does with this exact shape only what is done here."""
        if type(doc) is not dict or doc.get("done") is True:
            return False
        message = doc.get("message")
        if type(message) is not dict:
            return False
        calls = message.get("tool_calls")
        if type(calls) is not list or len(calls) != 1:
            return False
        for key, value in message.items():  # beside the call, only the role and empty text: nothing to send first
            if value and key != "role" and key != "tool_calls":
                return False
        entry = calls[0]
        body = entry.get("function") if type(entry) is dict else None
        if type(body) is not dict or body.get("name") is not None:
            return False
        slot, text = body.get("index"), body.get("arguments")
        if type(text) is not str or not (slot is None or type(slot) is int):
            return False
        call = self._open.get(slot)
        if call is None:
            return False
        self._append(call, text)  # once the call is judged this does nothing: late fragments are never delivered
        return True

    def _whole(self, doc: dict[str, Any], message: dict[str, Any], calls: list[Any], line: bytes) -> None:
        """Every call in the line is whole and nothing is held: judge them now; the line goes as it came if all are
        allowed, else without the stripped calls and with their notices."""
        kept: list[Any] = []
        notices: list[str] = []
        for entry in calls:
            self._count()
            tool = _call(entry)
            verdict = self._verdict(tool)
            if verdict.delivered:
                kept.append(entry)
            else:
                notices.append(notice(tool, verdict))
        self.released += len(kept)
        self.stripped += len(notices)
        if notices:
            _strip(message, kept, notices)
            line = orjson.dumps(doc) + b"\n"
        self._outbox.put(LANE, _Done(self, doc, line) if doc.get("done") is True else line)

    def _partial(self, doc: dict[str, Any], message: dict[str, Any], calls: list[Any]) -> None:
        """Calls held in the lane: text first, then each call, then (if done) the final line."""
        envelope = {k: doc[k] for k in _ENVELOPE if k in doc}
        rest = {k: v for k, v in message.items() if k != "tool_calls"}
        done = doc.get("done") is True
        if not done and any(v for k, v in rest.items() if k != "role"):
            self._outbox.put(LANE, orjson.dumps({**doc, "message": rest}) + b"\n")
        for entry in calls:
            body = entry["function"]
            slot = index_of(body.get("index"))
            name = _name(body.get("name"))
            call = self._open.get(slot)
            if call is None or name is not None:
                if call is not None:
                    self._decide(call)  # a named call at the same index: the previous one ended
                call = _OllamaCall(LANE, self._render, name=name, entry=entry, envelope=envelope)
                self._hold(call)
                self._open[slot] = call
            elif call.verdict is not None:
                continue  # a fragment after its call was decided is never delivered
            args = body.get("arguments")
            if isinstance(args, dict):
                call.value, call.size = args, len(orjson.dumps(args))  # the line was checked to be encodable
                self._decide(call)
            elif isinstance(args, str):
                self._append(call, args)
        if done:
            self._decide_all(incomplete=False)
            final = {**doc, "message": rest}
            self._outbox.put(LANE, _Done(self, final, orjson.dumps(final) + b"\n"))

    def _render(self, held: HeldCall) -> bytes:
        assert isinstance(held, _OllamaCall) and held.tool is not None and held.verdict is not None
        if not held.delivered:
            self.stripped += 1
            return self._line_of(held.envelope, {"role": "assistant", "content": notice(held.tool, held.verdict)})
        self.released += 1
        body = dict(held.entry["function"])
        body["name"] = held.tool.name
        body["arguments"] = held.tool.arguments if held.tool.arguments is not None else held.buf.decode()
        entry = {**held.entry, "function": body}
        return self._line_of(held.envelope, {"role": "assistant", "content": "", "tool_calls": [entry]})
