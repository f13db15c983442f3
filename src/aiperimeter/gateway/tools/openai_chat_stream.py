"""The guard for a streamed OpenAI Chat Completions response (SSE `data:` chunks ending with `data: [DONE]`).

Each tool call (`delta.tool_calls[]` by index, or the deprecated `delta.function_call`) is held until its arguments
close as a JSON object, or until the call ends (a new id at its index, its choice's finish_reason, `[DONE]`); custom
tools (free-text `input`) only when the call ends. Released calls go out as one delta each, renumbered densely per
choice; a stripped call becomes a content delta with the notice. Chunks that carry no call pass unchanged.

Most chunks of a streamed call only carry the next few characters of its arguments: `_next_fragment` takes those
after one parse and a few type checks, and `_Frame` recognises the ones after it by their bytes. Both only take what
the general path would only append, and hand everything else to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aiperimeter.gateway.tools.base import RawEvent, SSESplitter, encodable, error_json, notice, sse
from aiperimeter.gateway.tools.casefold import hides_a_field
from aiperimeter.gateway.tools.hold import REWRITABLE, GuardCore, HeldCall
from aiperimeter.policy.calls import Decision, Judge, ToolCall, Verdict

LEGACY = "function_call"  # the open-call key of the deprecated single function call
_CALL_FIELDS = (("function", "arguments"), ("custom", "input"))
_ARGUMENTS_KEY = (b'{"arguments":', b',"arguments":')  # a quote after `{` or `,` opens a key: outside any string
_PAD_KEY = b',"obfuscation":'  # OpenAI pads each chunk with a random string, the chunk's last member
CALL_KINDS = ("function", "custom")
# Every field name of a chat completion and its chunks: a key that folds to one of these but is spelled otherwise is
# the real field to a case-insensitive reader (Go's encoding/json) and nothing to us.
KNOWN_FIELDS = frozenset(
    (
        *("id", "object", "created", "model", "choices", "usage", "system_fingerprint", "service_tier"),
        *("obfuscation", "error", "message", "code", "param", "prompt_filter_results"),
        *("index", "delta", "finish_reason", "logprobs", "content_filter_results"),
        *("role", "content", "refusal", "tool_calls", "function_call", "audio", "annotations", "reasoning_content"),
        *("type", "function", "custom", "name", "arguments", "input"),
        *("token", "logprob", "bytes", "top_logprobs", "data", "expires_at", "transcript"),
        *("url_citation", "start_index", "end_index", "url", "title"),
        *("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"),
        *("cached_tokens", "audio_tokens", "reasoning_tokens", "accepted_prediction_tokens"),
        *("rejected_prediction_tokens",),
    )
)
FREE_FORM = frozenset(("arguments",))  # arguments some servers send as an object: the tool's own keys


def hides_case_variant(raw: bytes, doc: Any) -> bool:
    """A key in the parsed event or body that a case-insensitive reader takes for a field we read otherwise."""
    return hides_a_field(raw, doc, KNOWN_FIELDS, FREE_FORM)


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


def _bad_kind(call: dict[str, Any]) -> bool:
    """More than one body, a body other than its `type`'s, or a type no client runs: readers differ on which body
    is the call (the SDK goes by `type`, or by the body present without it), so none is."""
    kind = call.get("type")
    bodies = [k for k in CALL_KINDS if call.get(k) is not None]
    if kind is None:
        return len(bodies) > 1
    return kind not in CALL_KINDS or any(body != kind for body in bodies)


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
        if _bad_kind(call):
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


@dataclass(frozen=True, slots=True)
class _Frame:
    """The bytes of a whole-event argument fragment `_next_fragment` took, around its arguments string.

    Servers send a call's fragments in the same bytes but for that string, so the next ones are recognised by their
    bytes and only the string is parsed. That is exact: `head` ends in the key `"arguments":` (outside any string),
    so one JSON string token put after it is read as that key's value and the rest parses as before; a probe when
    the frame was learnt showed that value is the call's arguments; and a string token holds no raw line break, so
    the chunk is still one whole event. Whatever else the bytes say was checked on the chunk the frame came from,
    including that none of its keys is a case variant of a field (`_event` checks that before a frame is learnt):
    a string token is a value, never a key, so a chunk in the frame has exactly the keys of that chunk.
    A padded frame allows for OpenAI's `obfuscation` string as well: a second token after `tail`, then `}`."""

    head: bytes  # `data: {..,"function":{"arguments":`
    tail: bytes  # `}}]},..}` and the blank line; padded, `}}]},..,"obfuscation":`
    padded: bool
    key: int  # the choice index
    slot: int  # the call index


def _string(token: bytes) -> str | None:
    """The text of a JSON string token with nothing around it (so with no raw line break in it), or None."""
    if len(token) < 2 or token[0] != 34 or token[-1] != 34:
        return None
    try:
        text: str = orjson.loads(token)
    except orjson.JSONDecodeError:
        return None
    return text


class StreamGuard(GuardCore):
    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self._sse = SSESplitter()
        self._choices: dict[int, _Choice] = {}
        self._done = False
        self._frame: _Frame | None = None

    def _feed(self, chunk: bytes) -> None:
        if self._done:  # nothing after [DONE] reaches a client: SDKs stop reading there
            return
        if self._frame is not None and self._sse.idle() and self._same_frame(chunk):
            self._flush()  # a whole chunk that is the next argument fragment: the commonest by far
            return
        data = self._sse.single(chunk)
        if data is None:
            self._events(self._sse.feed(chunk))
        else:  # one whole event, the usual chunk: no splitting
            self._event(None, data, chunk)
            self._flush()

    def _close(self) -> None:
        if not self._done:
            self._events(self._sse.close())

    def _events(self, events: list[RawEvent]) -> None:
        for event in events:
            if self._done:
                return
            if event.odd_lines:
                self._unreadable()  # a line SSE parsers skip that another reader might take for data
            elif not self._same_frame(event.raw):
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
        if data[:6] == b"[DONE]":
            self._decide_all(incomplete=False)  # the stream ended normally: every call ended with it
            self._outbox.put(None, raw)
            self._done = True
            return
        try:  # data that does not parse is never relayed, whatever the event's name: other parsers may read it
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._unreadable()
            return
        if hides_case_variant(data, doc):  # before `_next_fragment`: a frame is only learnt from a checked chunk
            self._unreadable()
            return
        if self._next_fragment(doc, raw):
            return
        if not isinstance(doc, dict) or _bad_chunk(doc):
            self._unreadable()
            return
        self._chunk(doc, raw)

    def _next_fragment(self, doc: Any, raw: bytes) -> bool:
        """The commonest chunk, the next piece of an open function call's arguments, appended without rebuilding:
        `{..,"choices":[{"index":i,"delta":{"tool_calls":[{"index":j,"function":{"arguments":".."}}]},
        "logprobs":null,"finish_reason":null}]}`. Anything else (a name, an id, text, a finish reason, usage, a call
        not yet open) returns False and takes the general path, which does with this exact shape what is done here.
        Key counts stand in for key sets: index, delta and function are required below, so the sizes leave room only
        for a null finish_reason and logprobs beside them, and a call `type` (which an open call does not read)."""
        if type(doc) is not dict:
            return False
        choices = doc.get("choices")
        if type(choices) is not list or len(choices) != 1 or doc.get("usage") is not None:
            return False
        part = choices[0]
        if type(part) is not dict or part.get("finish_reason", 0) is not None:
            return False
        size = len(part)
        if not (size == 3 or (size == 4 and part.get("logprobs", 0) is None)):
            return False
        delta = part.get("delta")
        if type(delta) is not dict or len(delta) != 1:
            return False
        calls = delta.get("tool_calls")
        if type(calls) is not list or len(calls) != 1:
            return False
        entry = calls[0]
        if type(entry) is not dict or not (len(entry) == 2 or (len(entry) == 3 and entry.get("type") == "function")):
            return False
        body, key, slot = entry.get("function"), part.get("index"), entry.get("index")
        if type(body) is not dict or type(key) is not int or type(slot) is not int or body.get("name") is not None:
            return False
        text = body.get("arguments")
        state = self._choices.get(key)
        call = state.open.get(slot) if state is not None else None
        if type(text) is not str or call is None or call.kind != "function":
            return False
        frame = self._frame
        if frame is None or frame.key != key or frame.slot != slot:  # learnt once per call index: see `_Frame`
            self._learn_frame(raw, doc, text, key, slot)
        self._append(call, text)  # once the call is judged this does nothing: late fragments are never delivered
        return True

    def _learn_frame(self, raw: bytes, doc: dict[str, Any], text: str, key: int, slot: int) -> None:
        """Keeps the bytes around this fragment's arguments as the `_Frame`, when they are found as orjson writes
        them right after the key, in a one-line event, and a probe string put there (and one in the padding) is
        read back as the call's arguments (and the padding): not another `arguments`, nor one a later duplicate key
        overrides. Only those tokens differ from this chunk, so nothing else can read differently."""
        pad = doc.get("obfuscation")
        padding = orjson.dumps(pad) + b"}\n\n" if isinstance(pad, str) else b""
        if not (padding and raw.endswith(_PAD_KEY + padding)):
            pad, padding = None, b""  # not a string last: the frame keeps it as it is, like every other member
        end = len(raw) - len(padding)
        literal = orjson.dumps(text)
        at = raw.rfind(literal, 0, end)
        head, tail = raw[:at], raw[at + len(literal) : end]
        if at < 0 or not head.endswith(_ARGUMENTS_KEY) or raw[:5] != b"data:" or raw.find(b"\n") != len(raw) - 2:
            return
        if pad is not None and not tail.endswith(_PAD_KEY):
            return
        probe = head[5:] + orjson.dumps(text + ".") + tail
        if pad is not None:
            probe += orjson.dumps(pad + ".") + b"}"
        try:  # the probe differs from this chunk in one or two strings: it has the same shape
            back = orjson.loads(probe)
            arguments = back["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        except (orjson.JSONDecodeError, LookupError, TypeError):
            return
        if arguments == text + "." and (pad is None or back.get("obfuscation") == pad + "."):
            self._frame = _Frame(head, tail, pad is not None, key, slot)

    def _same_frame(self, raw: bytes) -> bool:
        """An event in the bytes of the last `_Frame` but for its string tokens: appended after parsing only the
        arguments string (and checking the padding one). Anything else returns False and is read the usual way."""
        frame = self._frame
        if frame is None or not raw.startswith(frame.head):
            return False
        if frame.padded:  # the tail has a quote after a comma, which no string token holds: it is the first match
            end = raw.find(frame.tail, len(frame.head))
            if end < 0 or raw[-3:] != b"}\n\n" or _string(raw[end + len(frame.tail) : -3]) is None:
                return False
        elif raw.endswith(frame.tail):
            end = len(raw) - len(frame.tail)
        else:
            return False
        text = _string(raw[len(frame.head) : end])
        state = self._choices.get(frame.key)
        call = state.open.get(frame.slot) if state is not None else None
        if text is None or call is None or call.kind != "function":
            return False
        self._append(call, text)
        return True

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
            # choices that never held a call: nothing waits, nothing to rewrite (no object choice at all: behind
            # every held call, like a chunk without choices)
            self._outbox.put(keys[0] if keys else None, raw)
            return
        if not encodable(doc):  # parsed but nested too deep to rebuild: unreadable
            self._unreadable()
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
            if not encodable(doc):  # it may have to be rebuilt
                self._unreadable()
                return
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
            custom = delta.get("type") == "custom" or (delta.get("type") is None and delta.get("custom") is not None)
            kind = "custom" if custom else "function"
            call = _ChatCall(state.index, self._render, call_id=call_id, kind=kind, choice=state, envelope=envelope)
            self._hold(call)
            state.open[slot] = call
        elif delta.get("type") not in (None, call.kind) or any(
            delta.get(k) is not None for k in CALL_KINDS if k != call.kind
        ):
            self._unreadable()  # a later fragment of another kind: a merging reader would hold both bodies
            return
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
