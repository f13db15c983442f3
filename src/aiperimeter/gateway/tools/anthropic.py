"""Anthropic Messages: the tools a request declares, and the guard on the calls a response makes.

Client tools are declared with an `input_schema` (no `type`, or "custom"); the typed built-ins Claude asks the client
to run (`bash_*`, `text_editor_*`, `computer_*`, `memory_*`) come back as ordinary `tool_use` blocks. Every other
typed tool, `mcp_servers` and `container` run at Anthropic, out of the gateway's sight.

A response is a list of content blocks; streamed, each block is `content_block_start`, deltas and
`content_block_stop` at its index. Clients append each started block to the content and apply deltas to
content[index]: a block whose index is not the number of blocks so far (those in `message_start` counted) could be
read as another block, and is unreadable. A `tool_use` block's input arrives as
`input_json_delta` fragments that may not parse until the block stops (fine-grained streaming), so it is judged only
then. A held block is released as start, one delta with the whole input, stop; a stripped one becomes a text block
at the same index. When every `tool_use` was stripped, `stop_reason` "tool_use" becomes "end_turn".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from aiperimeter.gateway.tools.base import (
    MAX_CALL_BYTES,
    BodyResult,
    Declared,
    RawEvent,
    RequestTools,
    blocked_message,
    notice,
    parse_arguments,
    sse,
)
from aiperimeter.gateway.tools.event_guard import (
    EventGuard,
    Slot,
    Verdicts,
    index_of,
    label,
    read_body,
    refused,
    unreadable,
)
from aiperimeter.policy.calls import Decision, Judge, ToolCall

TEXT_BLOCKS = frozenset({"text", "thinking", "redacted_thinking"})  # blocks that are not calls
CLIENT_BUILTINS = ("bash_", "text_editor_", "computer_", "memory_")  # typed tools the client runs
HOSTED_FIELDS = ("mcp_servers", "container")
# Every field name of a message, its events and content blocks: a key that folds to one of these but is not spelled
# as it is could be read as it by a case-insensitive client.
KNOWN_FIELDS = frozenset(
    {
        "cache_creation", "cache_creation_input_tokens", "cache_read_input_tokens", "caller", "citations", "container",
        "content", "content_block", "context_management", "data", "delta", "error", "id", "index", "input",
        "input_tokens", "is_error", "message", "model", "name", "output_tokens", "partial_json", "role",
        "server_name", "server_tool_use", "service_tier", "signature", "stop_reason", "stop_sequence", "text",
        "thinking", "tool_use_id", "type", "usage",
    }
)  # fmt: skip
FREE_FORM = frozenset({"input", "input_schema", "metadata"})  # a call's input is the tool's own data


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_request(doc: dict[str, Any]) -> RequestTools:
    found = RequestTools()
    tools = doc.get("tools")
    if isinstance(tools, list):
        found.declared.extend(_declared(tool) for tool in tools)
    elif tools is not None:
        found.declared.append(Declared(None, "(invalid)", hosted=True))  # unreadable tools: the caller refuses
    choice = doc.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and (name := _str(choice.get("name"))):
        found.forced.append(name)
    messages = doc.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        # Any role: the API takes calls only from the assistant and results only from the user, but a block in the
        # wrong place is reported all the same.
        for block in content if isinstance(content, list) else ():
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_use":
                found.history.append(call_of_block(block))
            elif kind == "tool_result":
                found.results.append((_str(block.get("tool_use_id")), None))
    found.hosted_other = [key for key in HOSTED_FIELDS if doc.get(key) not in (None, [], {}, "")]
    return found


def _declared(tool: Any) -> Declared:
    if not isinstance(tool, dict):
        return Declared(None, "(invalid)", hosted=True)
    kind, name = tool.get("type"), _str(tool.get("name"))
    if kind is None or kind == "custom":
        return Declared(name, "custom")
    if isinstance(kind, str) and kind.startswith(CLIENT_BUILTINS):
        return Declared(name, label(kind, kind))
    return Declared(name, label(kind, "(untyped)"), hosted=True)  # fail closed: every other type runs at Anthropic


def call_of_block(block: dict[str, Any], buffer: str | None = None, error: str | None = None) -> ToolCall:
    """A `tool_use` block as a call: its streamed input `buffer` when one came, else its `input` object."""
    name, call_id = block.get("name"), _str(block.get("id"))
    name = name if isinstance(name, str) else "(unnamed)"
    if error is not None:
        return ToolCall(name, None, call_id, error=error, raw_size=len((buffer or "").encode()))
    if buffer:
        arguments, error = parse_arguments(buffer)
        return ToolCall(name, arguments, call_id, error=error, raw_size=len(buffer.encode()))
    value = block.get("input")  # no input_json_delta at all: the start event's object is the input
    if not isinstance(value, dict):
        return ToolCall(name, None, call_id, error="not_an_object")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return ToolCall(name, None, call_id, error="invalid_json")
    if size > MAX_CALL_BYTES:
        return ToolCall(name, None, call_id, error="too_large", raw_size=size)
    return ToolCall(name, value, call_id, raw_size=size)


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


class _Content:
    """Judges content blocks, and keeps what a message's stop reason and later result blocks depend on."""

    def __init__(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts
        self.stripped = 0  # tool_use calls removed
        self.delivered = 0  # tool_use calls delivered
        self.hidden: dict[str, str] = {}  # stripped hosted call id -> its notice: its result block goes too

    def take(self, call: ToolCall, client: bool) -> tuple[str, str]:
        """The outcome ("deliver", "strip", "block") and, for strip, the notice."""
        outcome = self.verdicts.take(call)
        text = notice(call, self.verdicts.last) if outcome == "strip" else ""
        if client:
            self.delivered += outcome == "deliver"
            self.stripped += outcome == "strip"
        elif outcome == "strip" and call.call_id:
            self.hidden[call.call_id] = text
        return outcome, text

    def hosted(self, block: dict[str, Any]) -> tuple[str, str]:
        """A block that is a call run at the provider (`server_tool_use`, `mcp_tool_use`, any unknown type)."""
        name = label(block.get("name"), label(block.get("type"), "(untyped)"))
        return self.take(ToolCall(name, None, _str(block.get("id")), error="hosted"), client=False)

    def hidden_result(self, block: dict[str, Any]) -> str | None:
        """The notice that replaces a hosted tool's result block, when its call was stripped."""
        kind = _str(block.get("type")) or ""
        return self.hidden.get(_str(block.get("tool_use_id")) or "") if kind.endswith("_tool_result") else None

    def rewrite(self, content: list[Any]) -> tuple[list[Any], bool] | None:
        """Whole blocks as the client gets them, and whether that differs; None when one is blocked."""
        out: list[Any] = []
        changed = False
        for block in content:
            if not isinstance(block, dict):
                if self.verdicts.take(unreadable()) == "block":
                    return None
                changed = True  # never delivered, whatever the verdict
                continue
            kind = _str(block.get("type")) or ""
            hidden = self.hidden_result(block)
            if kind in TEXT_BLOCKS or (kind.endswith("_tool_result") and hidden is None):
                out.append(block)
                continue
            if hidden is not None:
                outcome, text = "strip", hidden
            elif kind == "tool_use":
                outcome, text = self.take(call_of_block(block), client=True)
            else:
                outcome, text = self.hosted(block)
            if outcome == "block":
                return None
            out.append(block if outcome == "deliver" else _text_block(text))
            changed = changed or outcome != "deliver"
        return out, changed

    def stop_reason(self, reason: Any) -> Any:
        return "end_turn" if reason == "tool_use" and self.stripped and not self.delivered else reason


@dataclass(slots=True)
class _Use:
    index: int
    block: dict[str, Any]  # as content_block_start gave it
    slot: Slot
    parts: list[str] = field(default_factory=list)
    size: int = 0


class StreamGuard(EventGuard):
    """Holds each streamed `tool_use` block until it stops, has it judged once, and releases, strips or blocks it."""

    KNOWN_FIELDS = KNOWN_FIELDS
    FREE_FORM = FREE_FORM

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self._content = _Content(self._verdicts)
        self._started = False  # a message_start came: a second one could be read as a new message or ignored
        self._blocks = 0  # content blocks so far, as a client appends them: the next block's index
        self._uses: dict[int, _Use] = {}  # held, by content index
        self._through: set[int] = set()  # judged and delivered while still streaming: the rest passes
        self._dropped: set[int] = set()  # stripped, or released whole: the upstream's later events are not sent

    def _end_held(self, error: str | None, ended: bool) -> None:
        for use in list(self._uses.values()):
            self._finish(use, error, ended)
            if self._verdicts.blocked:
                return

    def _error_event(self, decision: Decision) -> bytes:
        error = {"type": "permission_error", "message": blocked_message(decision.call, decision.verdict)}
        return sse(orjson.dumps({"type": "error", "error": error}), "error")

    def _typed(self, event: RawEvent, doc: dict[str, Any], kind: str) -> None:
        if kind == "message_start":
            self._message_start(event, doc)
        elif kind == "content_block_start":
            self._block_start(event, doc)
        elif kind == "content_block_delta":
            self._delta(event, doc)
        elif kind in ("message_delta", "message_stop"):
            self._end_held(None, True)  # the content is over: a block that never stopped ends here
            delta = doc.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if self._verdicts.blocked:
                return
            if isinstance(delta, dict) and self._content.stop_reason(reason) != reason:
                doc = {**doc, "delta": {**delta, "stop_reason": self._content.stop_reason(reason)}}
                self._out.put(sse(orjson.dumps(doc), event.event))
            else:
                self._out.put(event.raw)
        elif kind not in ("content_block_stop", "ping", "error") and _carries_content(doc):
            self._verdicts.take(unreadable())  # an unknown event with a block or input in it
        else:  # content_block_stop, ping, error, and other types this guard does not know
            index = index_of(doc.get("index"))
            if index in self._uses and kind == "content_block_stop":
                self._finish(self._uses[index])
            elif index not in self._dropped and index not in self._uses and self._has(doc, index):
                self._out.put(event.raw)

    def _has(self, doc: dict[str, Any], index: int | None) -> bool:
        """Whether the client has the block an event addresses, if it addresses one: an event for a block it never
        got is not sent."""
        return index is not None and index < self._blocks if "index" in doc else True

    def _message_start(self, event: RawEvent, doc: dict[str, Any]) -> None:
        message = doc.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if self._started or self._blocks:
            self._verdicts.take(unreadable())
            return
        self._started = True
        self._blocks = len(content) if isinstance(content, list) else 0
        if not content:
            self._out.put(event.raw)
            return
        if not isinstance(message, dict) or not isinstance(content, list):
            self._verdicts.take(unreadable())
            return
        rewritten = self._content.rewrite(content)  # blocks the start already carries are whole
        if rewritten is None:
            return
        if rewritten[1]:
            self._out.put(sse(orjson.dumps({**doc, "message": {**message, "content": rewritten[0]}}), event.event))
        else:
            self._out.put(event.raw)

    def _block_start(self, event: RawEvent, doc: dict[str, Any]) -> None:
        index, block = index_of(doc.get("index")), doc.get("content_block")
        if index is None or not isinstance(block, dict) or index != self._blocks:
            self._verdicts.take(unreadable())  # an index a client would not give the block it appends
            return
        self._blocks += 1
        kind = _str(block.get("type")) or ""
        hidden = self._content.hidden_result(block)
        if kind == "tool_use":
            if not self._count():
                return
            self._uses[index] = _Use(index, block, self._out.hold())
        elif kind in TEXT_BLOCKS or (kind.endswith("_tool_result") and hidden is None):
            self._out.put(event.raw)
        elif hidden is not None:
            self._out.put(self._notice_block(index, hidden))
            self._dropped.add(index)
        else:  # a call that ran at the provider: judged as it appears
            outcome, text = self._content.hosted(block)
            if outcome == "deliver":
                self._through.add(index)
                self._out.put(event.raw)
            elif outcome == "strip":
                self._out.put(self._notice_block(index, text))
                self._dropped.add(index)

    def _delta(self, event: RawEvent, doc: dict[str, Any]) -> None:
        index, delta = index_of(doc.get("index")), doc.get("delta")
        kind = delta.get("type") if isinstance(delta, dict) else None
        if index in self._dropped:
            return
        use = self._uses.get(index) if index is not None else None
        if use is None:
            if index in self._through or (isinstance(delta, dict) and kind != "input_json_delta"):
                if self._has(doc, index):
                    self._out.put(event.raw)
            else:
                self._verdicts.take(unreadable())  # input with no tool_use block to hold it
            return
        if kind != "input_json_delta":
            return  # only input belongs in a tool_use block; anything else is not sent
        partial = delta.get("partial_json") if isinstance(delta, dict) else None
        if not isinstance(partial, str):
            self._verdicts.take(unreadable())
            return
        self._append(use, partial)
        if use.size > MAX_CALL_BYTES:
            self._finish(use, "too_large", ended=False)

    def _append(self, use: _Use, partial: str) -> None:
        use.parts.append(partial)
        use.size += len(partial)
        self._held += len(partial)

    def _fragment(self, event: RawEvent, doc: Any) -> bool:
        """The hot path: an `input_json_delta` for a held block that stays under the cap, appended as `_delta` would.

        Only exact types are taken (`type(x) is int` also turns away a bool index); anything else goes the general
        way. A held index is never in `_dropped`, but that is checked all the same so that the equivalence with
        `_delta` does not rest on it.
        """
        if type(doc) is not dict or doc.get("type") != "content_block_delta":
            return False
        index, delta = doc.get("index"), doc.get("delta")
        use = self._uses.get(index) if type(index) is int else None
        if use is None or type(delta) is not dict or delta.get("type") != "input_json_delta":
            return False
        partial = delta.get("partial_json")
        if type(partial) is not str or event.event not in (None, "content_block_delta") or index in self._dropped:
            return False
        size = len(partial)
        if use.size + size > MAX_CALL_BYTES:
            return False
        use.parts.append(partial)  # `_append`, inlined: this is the per-fragment cost
        use.size += size
        self._held += size
        return True

    def _finish(self, use: _Use, error: str | None = None, ended: bool = True) -> None:
        """Judges a held block once. `ended` is False when a cap cuts it short: a delivered block then streams on."""
        del self._uses[use.index]
        self._held -= use.size
        buffer = "".join(use.parts)
        call = call_of_block(use.block, buffer, error)
        outcome, text = self._content.take(call, client=True)
        if outcome == "block":
            return
        if outcome == "strip":
            use.slot.out = self._notice_block(use.index, text)
        elif not ended:
            use.slot.out = self._render(use.index, use.block, buffer, stop=False)
            self._through.add(use.index)
            return
        elif buffer:  # released as judged: the client parses exactly what the policy saw
            whole = buffer if call.arguments is None else orjson.dumps(call.arguments).decode()
            use.slot.out = self._render(use.index, use.block, whole, stop=True)
        else:
            use.slot.out = self._render(use.index, use.block, None, stop=True)
        self._dropped.add(use.index)

    def _render(self, index: int, block: dict[str, Any], partial: str | None, stop: bool) -> bytes:
        """A tool_use block in one piece: its start (with an empty input when a delta follows), one delta, a stop."""
        start = {**block, "input": {}} if partial is not None else block
        out = [_event("content_block_start", {"index": index, "content_block": start})]
        if partial:
            delta = {"type": "input_json_delta", "partial_json": partial}
            out.append(_event("content_block_delta", {"index": index, "delta": delta}))
        if stop:
            out.append(_event("content_block_stop", {"index": index}))
        return b"".join(out)

    @staticmethod
    def _notice_block(index: int, text: str) -> bytes:
        return b"".join(
            [
                _event("content_block_start", {"index": index, "content_block": _text_block("")}),
                _event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": text}}),
                _event("content_block_stop", {"index": index}),
            ]
        )


def _carries_content(doc: dict[str, Any]) -> bool:
    delta = doc.get("delta")
    tool_input = isinstance(delta, dict) and ("partial_json" in delta or delta.get("type") == "input_json_delta")
    return "content_block" in doc or "message" in doc or tool_input


def _event(kind: str, fields: dict[str, Any]) -> bytes:
    return sse(orjson.dumps({"type": kind, **fields}), kind)


def judge_body(body: bytes, judge: Judge) -> BodyResult:
    verdicts = Verdicts(judge)
    read = read_body(body, "content", verdicts, KNOWN_FIELDS, FREE_FORM)
    if read is None:
        return refused(verdicts)  # never delivered, whatever the verdict
    doc, content = read
    blocks = _Content(verdicts)
    rewritten = blocks.rewrite(content)
    if rewritten is None:
        return refused(verdicts)
    reason = doc.get("stop_reason")
    if not rewritten[1] and blocks.stop_reason(reason) == reason:
        return BodyResult(body, verdicts.decisions)
    doc = {**doc, "content": rewritten[0]}
    if blocks.stop_reason(reason) != reason:
        doc["stop_reason"] = blocks.stop_reason(reason)
    return BodyResult(orjson.dumps(doc), verdicts.decisions)
