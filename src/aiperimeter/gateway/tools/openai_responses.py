"""OpenAI Responses API: the tools a request declares, and the guard on the calls a response makes.

Requests declare flat tools (`{"type":"function","name":..}`) and replay earlier calls and their results as `input`
items. A response streams SSE events named for their `type`: a call is an output item whose payload (`arguments`
JSON, or a custom tool's free-text `input`) arrives as deltas and ends with `.done` events, and snapshots of the
whole response (`response.completed` and friends) repeat every item in `response.output`.

A held call is released as four events (item added, one delta with the whole payload, payload done, item done);
a stripped one becomes a `message` item at the same output_index; every snapshot the client gets says the same.
Provider-hosted tool items are refused at request time; one that appears anyway is judged as it appears.
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
from aiperimeter.gateway.tools.responses_items import (
    CALL_ITEMS,
    FREE_FORM,
    KNOWN_FIELDS,
    SAFE_ITEMS,
    Items,
    Record,
    call_of_item,
    call_of_payload,
    notice_item,
    text_of,
)
from aiperimeter.policy.calls import Decision, Judge

EVENTS = {"function_call": "response.function_call_arguments", "custom_tool_call": "response.custom_tool_call_input"}
DELTAS = {f"{prefix}.delta": item for item, prefix in EVENTS.items()}
DONES = {f"{prefix}.done": item for item, prefix in EVENTS.items()}
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "response.done"})


def read_request(doc: dict[str, Any]) -> RequestTools:
    found = RequestTools()
    tools = doc.get("tools")
    if isinstance(tools, list):
        found.declared.extend(_declared(tool) for tool in tools)
    elif tools is not None:
        found.declared.append(Declared(None, "(invalid)", hosted=True))  # unreadable tools: the caller refuses
    found.forced = _forced(doc.get("tool_choice"))
    items = doc.get("input")  # a plain string is one user message
    for item in items if isinstance(items, list) else ():
        kind = text_of(item.get("type")) if isinstance(item, dict) else None
        if kind in CALL_ITEMS:
            found.history.append(call_of_item(item))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            found.results.append((text_of(item.get("call_id")), None))
    if doc.get("prompt") is not None:
        found.hosted_other.append("prompt")  # a stored prompt brings tools of its own, hosted ones too, out of sight
    return found


def _declared(tool: Any) -> Declared:
    if not isinstance(tool, dict):
        return Declared(None, "(invalid)", hosted=True)
    kind, name = tool.get("type"), text_of(tool.get("name"))
    if kind in ("function", "custom"):
        return Declared(name, kind)
    return Declared(name, label(kind, "(untyped)"), hosted=True)  # fail closed: every other type runs at OpenAI


def _forced(choice: Any) -> list[str]:
    if not isinstance(choice, dict):
        return []  # "none" | "auto" | "required"
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = text_of(choice.get("name"))
        return [name] if name else []
    tools = choice.get("tools") if kind == "allowed_tools" else None
    entries = tools if isinstance(tools, list) else []
    return [name for entry in entries if isinstance(entry, dict) and (name := text_of(entry.get("name")))]


@dataclass(slots=True)
class _Call:
    index: int
    type: str  # "function_call" | "custom_tool_call"
    item: dict[str, Any]  # as `response.output_item.added` gave it
    slot: Slot
    parts: list[str] = field(default_factory=list)
    size: int = 0
    final: str | None = None  # the whole payload a `.done` event or the finished item gave
    status: str | None = None
    seqs: list[int] = field(default_factory=list)  # sequence numbers for the events that replace the call's

    @property
    def item_id(self) -> str:
        return text_of(self.item.get("id")) or ""


class StreamGuard(EventGuard):
    """Holds each streamed call until it ends, has it judged once, and releases, strips or blocks it."""

    KNOWN_FIELDS = KNOWN_FIELDS
    FREE_FORM = FREE_FORM

    def __init__(self, judge: Judge) -> None:
        super().__init__(judge)
        self._items = Items(self._verdicts)
        self._calls: dict[int, _Call] = {}  # held, by output_index
        self._ids: dict[str, int] = {}  # item id -> output_index, for events that name only the item
        self._through: dict[int, str] = {}  # judged and delivered while still streaming: the rest passes
        self._dropped: set[int] = set()  # stripped, or released whole: the upstream's later events are not sent
        self._seq = 0

    def _end_held(self, error: str | None, ended: bool) -> None:
        for call in list(self._calls.values()):
            self._finish(call, error, ended)
            if self._verdicts.blocked:
                return

    def _error_event(self, decision: Decision) -> bytes:
        message = blocked_message(decision.call, decision.verdict)
        error = {"type": "error", "code": "tool_call_blocked", "message": message, "param": None}
        return sse(orjson.dumps({**error, "sequence_number": self._seq + 1}), "error")

    def _typed(self, event: RawEvent, doc: dict[str, Any], kind: str) -> None:
        seq = index_of(doc.get("sequence_number"))
        self._seq = max(self._seq, seq or 0)
        response = doc.get("response")
        if kind == "response.output_item.added":
            self._added(event, doc, seq)
        elif kind in DELTAS or kind in DONES:
            self._payload(event, doc, kind, seq)
        elif kind == "response.output_item.done":
            self._item_done(event, doc, seq)
        elif kind in TERMINAL or (isinstance(response, dict) and response.get("output")):
            self._snapshot(event, doc, response)
        elif isinstance(item := doc.get("item"), dict) and text_of(item.get("type")) not in SAFE_ITEMS:
            self._verdicts.take(unreadable())  # an item that is a call, in an event not made for items
        else:
            index = self._route(doc)
            if index not in self._dropped and index not in self._calls:
                self._out.put(event.raw)

    def _route(self, doc: dict[str, Any]) -> int | None:
        index = index_of(doc.get("output_index"))
        item_id = text_of(doc.get("item_id"))
        return self._ids.get(item_id) if index is None and item_id else index

    def _added(self, event: RawEvent, doc: dict[str, Any], seq: int | None) -> None:
        index, item = index_of(doc.get("output_index")), doc.get("item")
        if item is None:
            self._out.put(event.raw)  # an empty added event carries nothing
            return
        kind = text_of(item.get("type")) if isinstance(item, dict) else None
        if index is not None:  # a reused index starts over
            if index in self._calls:
                self._finish(self._calls[index])
                if self._verdicts.blocked:
                    return
            self._through.pop(index, None)
            self._dropped.discard(index)
        if isinstance(item, dict) and kind in SAFE_ITEMS:
            self._out.put(event.raw)
            return
        if not isinstance(item, dict) or index is None:
            self._verdicts.take(unreadable())
            return
        item_id = text_of(item.get("id"))
        if item_id and self._ids.setdefault(item_id, index) != index:  # events naming the item could go to either
            self._verdicts.take(unreadable())
            return
        if kind in CALL_ITEMS:
            if not self._count():
                return
            call = self._calls[index] = _Call(index, kind, item, self._out.hold(), seqs=[seq or self._seq])
            payload = item.get(CALL_ITEMS[kind][1])  # clients add the deltas to what the added item carries
            if isinstance(payload, str) and payload:
                self._append(call, payload)
            return
        record = self._items.judge(item, index, whole=False)  # a hosted tool ran at the provider: judged as it appears
        if record is None:
            return
        if record.delivered:
            self._through[index] = str(kind)
            self._out.put(event.raw)
        else:
            self._out.put(self._notice_events(index, record.item or {}, [seq or self._seq]))
            self._dropped.add(index)

    def _payload(self, event: RawEvent, doc: dict[str, Any], kind: str, seq: int | None) -> None:
        index = self._route(doc)
        if index in self._dropped:
            return
        if index in self._through:
            self._out.put(event.raw)
            return
        call = self._calls.get(index) if index is not None else None
        done = kind in DONES
        item_type = DONES[kind] if done else DELTAS[kind]
        text = doc.get(CALL_ITEMS[item_type][1] if done else "delta")
        if call is None or call.type != item_type or not (done or isinstance(text, str)):
            self._verdicts.take(unreadable())  # a call's payload with no call to hold it
            return
        if seq is not None and len(call.seqs) < 6:
            call.seqs.append(seq)
        if not done:
            self._append(call, str(text))
            return
        if isinstance(text, str):
            call.final = text
        self._finish(call)

    def _append(self, call: _Call, text: str) -> None:
        call.parts.append(text)
        call.size += len(text)
        self._held += len(text)
        if call.size > MAX_CALL_BYTES:
            self._finish(call, error="too_large", ended=False)

    def _fragment(self, event: RawEvent, doc: Any) -> bool:
        """The hot path: a `.delta` event for a held call, by its output_index and with a sequence number, that stays
        under the cap, taken as `_typed` and `_payload` would take it.

        Only exact types are taken (`type(x) is int` also turns away a bool); anything else goes the general way. A
        held index is never in `_dropped` or `_through`, but that is checked here all the same so that the
        equivalence with `_payload` does not rest on it.
        """
        kind = doc.get("type") if type(doc) is dict else None
        item_type = DELTAS.get(kind) if type(kind) is str else None
        if item_type is None:
            return False
        index, seq, text = doc.get("output_index"), doc.get("sequence_number"), doc.get("delta")
        call = self._calls.get(index) if type(index) is int else None
        if call is None or call.type != item_type or type(text) is not str or type(seq) is not int or seq < 0:
            return False
        if (event.event is not None and event.event != kind) or index in self._dropped or index in self._through:
            return False
        size = len(text)
        if call.size + size > MAX_CALL_BYTES:
            return False
        if seq > self._seq:
            self._seq = seq
        if len(call.seqs) < 6:
            call.seqs.append(seq)
        call.parts.append(text)  # `_append`, less its cap check: this fragment stays under the cap
        call.size += size
        self._held += size
        return True

    def _item_done(self, event: RawEvent, doc: dict[str, Any], seq: int | None) -> None:
        index, item = index_of(doc.get("output_index")), doc.get("item")
        if index in self._dropped:
            return
        call = self._calls.get(index) if index is not None else None
        if call is not None:
            if isinstance(item, dict) and item.get("type") == call.type:
                payload = item.get(CALL_ITEMS[call.type][1])
                call.final = payload if isinstance(payload, str) else call.final
                call.status = text_of(item.get("status"))
            if seq is not None and len(call.seqs) < 6:
                call.seqs.append(seq)
            self._finish(call)
            return
        kind = text_of(item.get("type")) if isinstance(item, dict) else None
        if item is None or kind in SAFE_ITEMS or (index in self._through and self._through[index] == kind):
            self._out.put(event.raw)
            return
        if not isinstance(item, dict):
            self._verdicts.take(unreadable())
            return
        record = self._items.judge(item, -1 if index is None else index)  # a call that did not stream: whole
        if record is None:
            return
        if record.delivered:
            self._out.put(event.raw)
        else:
            self._out.put(sse(orjson.dumps({**doc, "item": record.item}), event.event))
        if index is not None:
            self._dropped.add(index)

    def _snapshot(self, event: RawEvent, doc: dict[str, Any], response: Any) -> None:
        """A snapshot of the whole response: its end ends every held call; its items say what the client got."""
        output = response.get("output") if isinstance(response, dict) else None
        if output is not None and not isinstance(output, list):
            self._verdicts.take(unreadable())
            return
        items = output or []
        held = {call.item_id: call for call in self._calls.values() if call.item_id}
        for item in items if held else ():
            call = held.get(text_of(item.get("id")) or "") if isinstance(item, dict) else None
            if call is not None and item.get("type") == call.type:
                payload = item.get(CALL_ITEMS[call.type][1])
                call.final = payload if isinstance(payload, str) else call.final
        self._end_held(None, True)
        if self._verdicts.blocked:
            return
        if not items:
            self._out.put(event.raw)
            return
        rewritten = self._items.rewrite(items)
        if rewritten is None:
            return
        if not rewritten[1]:
            self._out.put(event.raw)
            return
        self._out.put(sse(orjson.dumps({**doc, "response": {**response, "output": rewritten[0]}}), event.event))

    def _finish(self, call: _Call, error: str | None = None, ended: bool = True) -> None:
        """Judges a held call once. `ended` is False when a cap cuts it short: a delivered call then streams on."""
        del self._calls[call.index]
        self._held -= call.size
        text = call.final if call.final is not None else "".join(call.parts)
        field_ = CALL_ITEMS[call.type][1]
        tool_call = call_of_payload(call.type, call.item.get("name"), text_of(call.item.get("call_id")), text, error)
        outcome = self._verdicts.take(tool_call)
        if outcome == "block":
            return
        if outcome == "strip":
            item = notice_item(tool_call, self._verdicts.last, call.item_id or str(call.index))
            record = Record(call.type, item, tool_call, delivered=False)
            call.slot.out = self._notice_events(call.index, item, call.seqs)
            self._dropped.add(call.index)
        elif not ended:
            record = Record(call.type, None, tool_call)
            call.slot.out = self._release(call, text, None)
            self._through[call.index] = call.type
        else:
            if tool_call.kind == "function" and tool_call.arguments is not None:
                text = orjson.dumps(tool_call.arguments).decode()  # the client parses exactly what was judged
            status = call.status or ("incomplete" if error == "incomplete" else "completed")
            record = Record(call.type, {**call.item, field_: text, "status": status}, tool_call)
            call.slot.out = self._release(call, text, record.item)
            self._dropped.add(call.index)
        self._items.remember(call.item, call.index, record)

    def _release(self, call: _Call, text: str, done: dict[str, Any] | None) -> bytes:
        """The call as one piece: added, one delta, and when it `done`, the payload done and item done events."""
        field_, prefix, where = CALL_ITEMS[call.type][1], EVENTS[call.type], {"output_index": call.index}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.output_item.added", {**where, "item": {**call.item, field_: ""}})
        ]
        if text:
            events.append((f"{prefix}.delta", {"item_id": call.item_id, **where, "delta": text}))
        if done is not None:
            events.append((f"{prefix}.done", {"item_id": call.item_id, **where, field_: text}))
            events.append(("response.output_item.done", {**where, "item": done}))
        return self._render(events, call.seqs)

    def _notice_events(self, index: int, item: dict[str, Any], seqs: list[int]) -> bytes:
        """A `message` item with one text part at `index`, in the events that stream one."""
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        empty = {**part, "text": ""}
        return self._render(
            [
                (
                    "response.output_item.added",
                    {"output_index": index, "item": {**item, "status": "in_progress", "content": []}},
                ),
                ("response.content_part.added", {**where, "part": empty}),
                ("response.output_text.delta", {**where, "delta": part["text"], "logprobs": []}),
                ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
                ("response.content_part.done", {**where, "part": part}),
                ("response.output_item.done", {"output_index": index, "item": item}),
            ],
            seqs,
        )

    def _render(self, events: list[tuple[str, dict[str, Any]]], seqs: list[int]) -> bytes:
        seqs = seqs or [self._seq]
        return b"".join(
            sse(orjson.dumps({"type": kind, **fields, "sequence_number": seqs[min(n, len(seqs) - 1)]}), kind)
            for n, (kind, fields) in enumerate(events)
        )


def judge_body(body: bytes, judge: Judge) -> BodyResult:
    verdicts = Verdicts(judge)
    read = read_body(body, "output", verdicts, KNOWN_FIELDS, FREE_FORM)
    if read is None:
        return refused(verdicts)  # never delivered, whatever the verdict
    doc, output = read
    rewritten = Items(verdicts).rewrite(output)
    if rewritten is None:
        return refused(verdicts)
    if not rewritten[1]:
        return BodyResult(body, verdicts.decisions)
    return BodyResult(orjson.dumps({**doc, "output": rewritten[0]}), verdicts.decisions)
